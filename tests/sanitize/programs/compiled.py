"""A torch.compile'd function and module under floatguard run (backend='eager' keeps it fast)."""

import torch
from torch import nn

f = torch.compile(lambda a: torch.exp(a) * 2, backend="eager")
m = torch.compile(nn.Sequential(nn.Linear(2, 2)), backend="eager")
print(m(torch.ones(1, 2)).shape)
print(f(torch.tensor([1000.0])))
