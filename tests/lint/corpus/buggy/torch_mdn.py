# ruff: noqa
# Mixture density network: the loss turns into nan / inf after some iterations.
import math

import torch
import torch.nn as nn

ONEOVERSQRT2PI = 1.0 / math.sqrt(2 * math.pi)


def gaussian_probability(sigma, mu, target):
    ret = ONEOVERSQRT2PI * torch.exp(-0.5 * ((target - mu) / sigma) ** 2) / sigma
    return ret


def mdn_loss(pi, sigma, mu, target):
    result = torch.exp(-0.5 * ((target - mu) / sigma) ** 2) / sigma * ONEOVERSQRT2PI
    result = torch.sum(result * pi, dim=1)
    result = -torch.log(result)  # expect: FG101
    return torch.mean(result)
