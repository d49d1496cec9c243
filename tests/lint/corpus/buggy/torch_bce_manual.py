# ruff: noqa
# "My BCE loss becomes nan after a few epochs" -- a hand-written BCE on the output of a model
# whose forward ends in a sigmoid; the loss is defined in another function.
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.fc2 = nn.Linear(64, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        return self.sigmoid(self.fc2(x))


def bce_loss(pred, target):
    return -(target * torch.log(pred) + (1 - target) * torch.log(1 - pred)).mean()  # expect: FG111


def train(loader):
    model = Net()
    opt = torch.optim.Adam(model.parameters())
    for x, y in loader:
        out = model(x)
        loss = bce_loss(out, y)
        manual = -(y * torch.log(out)).mean()  # expect: FG111
        opt.zero_grad()
        (loss + manual).backward()
        opt.step()
