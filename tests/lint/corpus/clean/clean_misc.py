# ruff: noqa
# Code that uses log/exp/sqrt/prod without any of the unstable patterns.
import math

import numpy as np
import torch


def lr_schedule(step, warmup=1000):
    return min(1.0, step / warmup) * math.exp(-step / 10000)


def log_scale(x):
    return np.log10(np.abs(x) + 1e-12)


def geometric_mean(x):
    return np.exp(np.mean(np.log(x)))


def total_size(shape):
    return math.prod(shape)


def numel(t):
    return torch.prod(torch.tensor(t.shape))


def cosine_warmup(step, total):
    return 0.5 * (1 + math.cos(math.pi * step / total))


def rms(x):
    return torch.sqrt(torch.mean(x**2) + 1e-8)


def log_prob_normal(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)


def expm1_ok(x):
    return torch.expm1(x)


def log1p_ok(x):
    return torch.log1p(x)


def perplexity(nll):
    return math.exp(nll)


def sample_temperature(logits, t=1.0):
    probs = torch.softmax(logits / t, dim=-1)
    return torch.multinomial(probs, 1)
