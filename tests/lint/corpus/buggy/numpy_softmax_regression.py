# ruff: noqa
# Softmax regression from scratch in NumPy (course assignment style).
import numpy as np


def softmax(x):
    e = np.exp(x)
    return e / np.sum(e, axis=1, keepdims=True)  # expect: FG103


def cross_entropy(y_pred, y_true):
    return -np.sum(y_true * np.log(y_pred)) / y_true.shape[0]  # expect: FG111


def train(X, Y, W, lr=0.1, epochs=100):
    for _ in range(epochs):
        probs = softmax(X @ W)
        loss = -np.mean(np.sum(Y * np.log(probs), axis=1))  # expect: FG111
        W -= lr * X.T @ (probs - Y) / len(X)
    return W


def log_normaliser(scores):
    return np.log(np.sum(np.exp(scores)))  # expect: FG101
