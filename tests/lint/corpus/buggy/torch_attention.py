# ruff: noqa
# Attention with masks: -1e9 overflows float16 under autocast, -inf NaNs fully padded rows.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def attention(query, key, value, mask=None):
    d_k = query.size(-1)
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e9)  # expect: FG401
    p_attn = F.softmax(scores, dim=-1)
    return torch.matmul(p_attn, value), p_attn


class PaddedAttention(nn.Module):
    def forward(self, q, k, v, key_padding_mask):
        scores = q @ k.transpose(-2, -1)
        scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))  # expect: FG402
        attn = torch.softmax(scores, dim=-1)
        return attn @ v


class Pooling(nn.Module):
    def forward(self, h, mask):
        logits = self.score(h).squeeze(-1)
        logits[~mask] = -1e10  # expect: FG401
        w = torch.where(mask, logits, -1e30)  # expect: FG401
        return (w.softmax(-1)[..., None] * h).sum(1)


def masked_mean_attention(scores, mask):
    scores.masked_fill_(~mask, float("-inf"))  # expect: FG402
    return F.softmax(scores, dim=-1)
