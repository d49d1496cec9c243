# ruff: noqa
# Training in half precision with eps constants that float16 cannot represent.
import torch

model = torch.nn.Linear(10, 1).cuda().half()


def dice_loss(pred, target):
    inter = (pred * target).sum()
    return 1 - 2 * inter / (pred.sum() + target.sum() + 1e-8)  # expect: FG403


def log_loss(p):
    return -torch.log(p + 1e-10).mean()  # expect: FG403


def one_minus(p):
    return torch.log(1e-10 + 1 - p)  # expect: FG403


def tiny_eps(x):
    return torch.sqrt(x + 1e-50)  # expect: FG403
