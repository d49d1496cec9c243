# ruff: noqa
# Masks that fit in half precision, causal -inf masks, normalisations with eps.
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def forward(self, q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5
        if mask is not None:
            scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        return F.softmax(scores, dim=-1) @ v


class CausalAttention(nn.Module):
    def forward(self, q, k, v):
        T = q.size(-2)
        causal_mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        att = (q @ k.transpose(-2, -1)).masked_fill(causal_mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        return att @ v


class SafeMaskedSoftmax(nn.Module):
    def forward(self, scores, mask):
        scores = scores.masked_fill(~mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        return torch.nan_to_num(attn, nan=0.0)


class Norms(nn.Module):
    def forward(self, x, a, b):
        x = F.normalize(x, dim=-1)
        z = (a - a.mean(0)) / (a.std(0) + 1e-5)
        y = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        w = torch.softmax(x, -1)
        w = w / w.sum(-1, keepdim=True)
        d = torch.sqrt(((a - b) ** 2).sum(-1) + 1e-12)
        e = torch.linalg.vector_norm(a - b, dim=-1)
        return x, z, y, w, d, e


def masked_log(x):
    safe_x = torch.where(x > 0, x, torch.ones_like(x))
    return torch.where(x > 0, torch.log(safe_x), torch.zeros_like(x))


def data_weights(counts):
    # data preparation, no autograd: fine to divide by the total
    return counts / counts.sum()


def distances_numpy(a, b):
    import numpy as np

    return np.sqrt(np.sum((a - b) ** 2, axis=-1))
