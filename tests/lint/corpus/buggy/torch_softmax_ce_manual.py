# ruff: noqa
# Hand-written cross-entropy through softmax probabilities, indexed by the labels.
import torch
import torch.nn.functional as F


def cross_entropy(logits, labels):
    probs = F.softmax(logits, dim=1)
    return -torch.log(probs[range(len(labels)), labels]).mean()  # expect: FG102


def entropy_bonus(logits):
    p = torch.softmax(logits, -1)
    return -(p * p.log()).sum(-1).mean()  # expect: FG102


def nll_from_softmax(output, target):
    return F.nll_loss(torch.log(F.softmax(output, dim=1)), target)  # expect: FG102, FG302


def label_smoothing_loss(logits, target_dist):
    return -(target_dist * logits.softmax(-1).log()).sum(-1).mean()  # expect: FG102


def nll_on_probabilities(out, target):
    return F.nll_loss(F.softmax(out, dim=1), target)  # expect: FG302
