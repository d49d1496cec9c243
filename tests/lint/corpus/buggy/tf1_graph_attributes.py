# ruff: noqa
# TF 1.x models that keep their graph's tensors as attributes, and log/sqrt of values that cannot take them.
import tensorflow as tf
import torch
import torch.nn.functional as F


class Classifier:
    def __init__(self, x, labels, w, b):
        self.labels = labels
        self.probs = tf.nn.softmax(tf.matmul(x, w) + b)
        self.loss = -tf.reduce_sum(self.labels * tf.log(self.probs))  # expect: FG102

    def accuracy(self):
        return tf.reduce_mean(tf.cast(tf.argmax(self.probs, 1), tf.float32))


def cross_entropy(labels, probabilities):
    return -tf.reduce_sum(labels * tf.log(tf.abs(probabilities)), axis=1)  # expect: FG111


def kl_term(mu, logvar):
    return -0.5 * torch.mean(torch.sum(1 + logvar - mu**2 - logvar.log(), dim=1))  # expect: FG115


def rank_score(logits, labels):
    return -torch.mean(torch.sum(labels * torch.sqrt(F.softmax(logits, dim=-1)), dim=-1))  # expect: FG116
