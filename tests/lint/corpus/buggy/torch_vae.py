# ruff: noqa
# VAE: std from logvar, and a Gaussian likelihood computed by hand.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def reparameterize(self, mu, logvar):
        std = torch.sqrt(torch.exp(logvar))  # expect: FG113
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))


def importance_weighted_bound(log_w):
    return torch.log(torch.mean(torch.exp(log_w), dim=0))  # expect: FG101


def posterior_std(logvar):
    return torch.exp(logvar) ** 0.5  # expect: FG113
