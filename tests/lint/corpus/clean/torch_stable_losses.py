# ruff: noqa
# The stable versions of the usual losses: nothing here should be reported.
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(20, 1)

    def forward(self, x):
        return self.fc(x)  # logits


def bce_loss(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target)


def bce_clamped(pred, target, eps=1e-7):
    pred = pred.clamp(eps, 1 - eps)
    return -(target * torch.log(pred) + (1 - target) * torch.log(1 - pred)).mean()


def bce_eps(pred, target):
    return -(target * torch.log(pred + 1e-7) + (1 - target) * torch.log(1 - pred + 1e-7)).mean()


def ce_loss(logits, labels):
    return F.cross_entropy(logits, labels, label_smoothing=0.1)


def nll(logits, labels):
    return F.nll_loss(F.log_softmax(logits, dim=1), labels)


def focal(logits, targets, gamma=2.0):
    logp = F.logsigmoid(logits) * targets + F.logsigmoid(-logits) * (1 - targets)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def entropy(logits):
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def train(loader):
    model = Net()
    criterion = nn.BCEWithLogitsLoss()
    for step, (x, y) in enumerate(loader):
        out = model(x)
        loss = criterion(out, y)
        probs = torch.sigmoid(out)  # for metrics only
        acc = ((probs > 0.5) == y).float().mean()
        logger.log(logging.INFO, "step %d loss %.3f acc %.3f", step, loss.item(), acc.item())
        loss.backward()


def log_constants(n_classes):
    return math.log(n_classes) + math.log(2) + math.log(1 + 2)


def kl_standard_normal(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def reparameterize(mu, logvar):
    std = torch.exp(0.5 * logvar)
    return mu + torch.randn_like(std) * std


def gaussian_nll(mu, var, y, eps=1e-6):
    var = var.clone()
    var.clamp_(min=eps)
    return 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()
