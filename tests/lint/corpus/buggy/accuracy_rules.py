# ruff: noqa
# Small-argument accuracy losses: log(1 + x), exp(x) - 1, log(1 - exp(x)), products of probabilities.
import math

import numpy as np
import torch
import torch.nn.functional as F


def log_target(y):
    return torch.log(1 + y)  # expect: FG106


def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * (np.exp(x) - 1))  # expect: FG107


def compound_rate(r, t):
    return math.exp(r * t) - 1  # expect: FG107


def event_probability(rate, t):
    return 1 - torch.exp(-rate * t)  # expect: FG114


def log_survival(log_cdf):
    return torch.log(1 - torch.exp(log_cdf))  # expect: FG108


def sequence_logprob(step_probs):
    return torch.log(torch.prod(step_probs, dim=-1))  # expect: FG110


def sequence_likelihood(probs, tokens):
    p = 1.0
    for t, tok in enumerate(tokens):
        p *= probs[t, tok]  # expect: FG110
    return p


def joint(logits, y):
    return torch.prod(F.softmax(logits, -1).gather(-1, y))  # expect: FG110


def log_odds_rate(x):
    return np.log(x + 1)  # expect: FG106


def log_one_minus(x):
    return np.log(1 - x)  # expect: FG106


def softplus_std(raw):
    return torch.log(1 + torch.exp(raw))  # expect: FG105


def softplus_np(x):
    return np.log1p(np.exp(x))  # expect: FG105
