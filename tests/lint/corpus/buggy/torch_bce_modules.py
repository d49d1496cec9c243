# ruff: noqa
# Sigmoid in the model and BCELoss in the training loop; softmax in the model and CrossEntropyLoss.
import torch
import torch.nn as nn
import torch.nn.functional as F


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())

    def forward(self, x):
        return self.net(x)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(784, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.hidden(x))
        return F.softmax(self.out(x), dim=1)


def run(x, y, labels, z):
    criterion = nn.BCELoss()
    model = Classifier()
    out = model(x)
    loss = criterion(out, y)  # expect: FG301
    ce = nn.CrossEntropyLoss()
    mlp = MLP()
    loss2 = ce(mlp(x), labels)  # expect: FG302
    loss3 = F.binary_cross_entropy(torch.sigmoid(z), y)  # expect: FG301
    loss4 = F.cross_entropy(F.softmax(z, dim=1), labels)  # expect: FG302
    return loss + loss2 + loss3 + loss4
