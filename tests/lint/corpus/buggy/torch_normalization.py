# ruff: noqa
# Normalising by norms, std and sums with no eps.
import torch
import torch.nn as nn


def cosine_loss(a, b):
    a_n = a / a.norm(dim=1, keepdim=True)  # expect: FG201
    b_n = b / torch.norm(b, dim=1, keepdim=True)  # expect: FG201
    return 1 - (a_n * b_n).sum(1).mean()


class MyLayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d))
        self.beta = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.gamma * (x - mean) / std + self.beta  # expect: FG201


class GatedPool(nn.Module):
    def forward(self, scores, mask):
        attn = torch.relu(scores) * mask
        attn = attn / attn.sum(dim=-1, keepdim=True)  # expect: FG201
        return attn


def contrastive_loss(x1, x2, y, margin=1.0):
    d = torch.sqrt(torch.sum((x1 - x2) ** 2, dim=1))  # expect: FG202
    return (y * d ** 2 + (1 - y) * torch.clamp(margin - d, min=0) ** 2).mean()


def keypoint_loss(pred, gt):
    dx = pred[..., 0] - gt[..., 0]
    dy = pred[..., 1] - gt[..., 1]
    return torch.sqrt(dx ** 2 + dy ** 2).mean()  # expect: FG202


def triplet_loss(a, p, n, margin=0.2):
    d_ap = ((a - p) ** 2).sum(-1).sqrt()  # expect: FG202
    d_an = ((a - n).pow(2)).sum(-1).sqrt()  # expect: FG202
    return torch.relu(d_ap - d_an + margin).mean()


@torch.no_grad()
def normalized_step(params, lr):
    for p in params:
        p -= lr * p.grad / p.grad.norm()  # expect: FG201


class UnitEmbedding(torch.nn.Module):
    def forward(self, x):
        return x / x.norm(dim=-1, keepdim=True)  # expect: FG201


@torch.no_grad()
def unit_features(x):
    return x / x.norm(dim=-1, keepdim=True)  # expect: FG204
