# ruff: noqa
# Max-shifted softmax and logsumexp, the way tutorials write them correctly.
import numpy as np
import torch


def log_sum_exp(vec):
    max_score = vec.max()
    return max_score + torch.log(torch.sum(torch.exp(vec - max_score)))


def softmax(x):
    e = np.exp(x - np.max(x, axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_shifted(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=-1, keepdims=True)


def gaussian_kernel(size, sigma):
    x = np.arange(size) - size // 2
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def lse(x, dim=-1):
    return torch.logsumexp(x, dim=dim)


def log_softmax(x):
    return x - torch.logsumexp(x, dim=-1, keepdim=True)


def stable_sigmoid(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def softplus(x):
    return np.logaddexp(0, x)


def log1p_exp_neg(x):
    return torch.log1p(torch.exp(-torch.abs(x))) + torch.clamp(x, min=0)
