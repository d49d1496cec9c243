"""A training script whose loss turns into inf/NaN after a few steps — and the one-line fix.

The loss is written the textbook way, ``-log(softmax(logits))[target]``. With a large
learning rate the logits grow until softmax underflows to exactly 0 for the target
class, the log of that 0 is -inf and the gradients become NaN.

    python examples/nan_training.py                  # prints the loss, then nan
    floatguard run examples/nan_training.py          # names the op, the line, the fix
    python examples/nan_training.py --stable         # floatguard.cross_entropy: stays finite
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import floatguard as fg


class Classifier(nn.Module):
    def __init__(self, d_in: int = 20, hidden: int = 64, classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def naive_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)  # underflows to 0 once the logits spread by > 104
    return -torch.log(probs).gather(1, target[:, None]).mean()


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=10.0)
    ap.add_argument("--stable", action="store_true", help="use floatguard.cross_entropy")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    x = torch.randn(256, 20)
    target = (x[:, :5].argmax(1) + torch.randint(0, 2, (256,))) % 5  # noisy labels: logits keep growing
    loss_fn = fg.cross_entropy if args.stable else naive_cross_entropy
    loss = torch.tensor(0.0)
    for step in range(args.steps):
        opt.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        if step % 10 == 0 or not torch.isfinite(loss):
            print(f"step {step:3d}  loss {loss.item():.4f}")
        if not torch.isfinite(loss):
            break
    return float(loss.detach())


if __name__ == "__main__":
    main()
