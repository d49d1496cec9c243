# ruff: noqa
# Focal loss implementations from issue threads.
import torch
import torch.nn as nn
import torch.nn.functional as F


class FocalLoss(nn.Module):
    def __init__(self, alpha=0.25, gamma=2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, inputs, targets):
        p = torch.sigmoid(inputs)
        pt = p * targets + (1 - p) * (1 - targets)
        loss = -self.alpha * (1 - pt) ** self.gamma * torch.log(pt)  # expect: FG111
        return loss.mean()


def multiclass_focal(logits, target, gamma=2.0):
    probs = F.softmax(logits, dim=1)
    pt = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    return (-(1 - pt) ** gamma * torch.log(pt)).mean()  # expect: FG102
