# ruff: noqa
# More of the same, in the spellings people use.
import math

import numpy as np
import torch
import torch.nn.functional as F


def crf_log_sum_exp(vec):
    return torch.log(torch.sum(torch.exp(vec)))  # expect: FG101


def scores_lse(x):
    return x.exp().sum(-1).log()  # expect: FG101


def scalar_lse(scores):
    return math.log(sum(math.exp(s) for s in scores))  # expect: FG101


def torch_softmax(x):
    return torch.exp(x) / torch.exp(x).sum(dim=1, keepdim=True)  # expect: FG103


def info_nce(pos, logits):
    return -torch.log(torch.exp(pos) / torch.exp(logits).sum(dim=1)).mean()  # expect: FG103


def compute_loss(outputs, labels):
    log_probs = torch.log(outputs)  # expect: FG111
    return F.nll_loss(log_probs, labels)


def sigmoid_sq(x):
    return torch.exp(x) / (1 + torch.exp(x))  # expect: FG109


def numpy_bce(z, y):
    from scipy.special import expit

    p = expit(z)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))  # expect: FG117, FG112


def std_from_logvar(logvar):
    return logvar.exp().sqrt()  # expect: FG113
