"""A plain PyTorch training script with a bug, and nothing of floatguard in it.

Run it under the monitor without changing a line::

    floatguard run --monitor examples/monitor_unmodified.py

or from Python: ``floatguard.monitor.attach_global()`` then run the script. The first
layer's bias starts at -10, so every ReLU after it is dead: the monitor reports
``dead_units`` at layer 1 (and the consequences: the loss stuck at ln 10, no gradient
reaching layer 0).
"""

from __future__ import annotations

import torch
from torch import nn


def main(steps: int = 150) -> float:
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 10)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[0].bias.fill_(-10.0)  # the bug
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    loss = torch.zeros(())
    for step in range(steps):
        idx = torch.randint(0, 512, (32,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    return loss.item()


if __name__ == "__main__":
    print(f"final loss {main():.3f}")
