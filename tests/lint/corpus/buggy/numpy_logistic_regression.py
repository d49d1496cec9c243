# ruff: noqa
# Logistic regression by gradient descent; the cost goes to nan.
import numpy as np


def sigmoid(z):
    return 1 / (1 + np.exp(-z))  # expect: FG109


def cost(w, X, y):
    h = sigmoid(X @ w)
    return -np.mean(y * np.log(h) + (1 - y) * np.log(1 - h))  # expect: FG111


def cost_inline(w, X, y):
    h = 1.0 / (1.0 + np.exp(-(X @ w)))  # expect: FG109
    return -np.mean(y * np.log(h) + (1 - y) * np.log(1 - h))  # expect: FG111


def log_likelihood(w, X, y):
    z = X @ w
    return np.sum(y * z - np.log(1 + np.exp(z)))  # expect: FG105
