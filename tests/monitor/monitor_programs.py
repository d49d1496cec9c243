"""Small training programs with known problems (and healthy ones), for the monitor's tests.

Each program builds a model and synthetic data from a fixed seed, trains a few
hundred tiny steps under a :class:`~floatguard.monitor.Monitor` with default
settings, and returns the closed monitor. ``PROGRAMS`` lists them with the findings
they must produce (``expect``) and the ones that may come along as consequences
(``allow``); a finding outside both is a false alarm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from floatguard.monitor import Monitor

D, C = 20, 10  # input features, classes


@dataclass
class Program:
    name: str
    problem: str
    run: Callable[..., Monitor]
    expect: frozenset[str] = field(default_factory=frozenset)
    allow: frozenset[str] = field(default_factory=frozenset)


def _data(seed: int, n: int = 512, classes: int = C, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    teacher = torch.randn(d, classes, generator=g)
    y = (x @ teacher).argmax(1)
    return x, y


def _regression(seed: int, n: int = 512, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g) / math.sqrt(d)
    return x, torch.sin(2 * (x @ w)) + 0.5 * (x @ w)


def _batches(x: torch.Tensor, y: torch.Tensor, bs: int, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    while True:
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0] - bs + 1, bs):
            idx = perm[i:i + bs]
            yield x[idx], y[idx]


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int = 200,
    bs: int = 32,
    seed: int = 0,
    log: Any = None,
    scaler: Any = None,
    autocast: torch.dtype | None = None,
    corrupt: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    monitor: dict[str, Any] | None = None,
) -> Monitor:
    """The loop of the issue's example; ``corrupt(step, x)`` may alter a batch."""
    mon = Monitor(model, opt, log=log, scaler=scaler, live=False, **(monitor or {}))
    it = _batches(*data, bs, seed)
    for step in range(steps):
        xb, yb = next(it)
        if corrupt is not None:
            xb = corrupt(step, xb)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            out = model(xb)
            loss = loss_fn(out, yb)
        if scaler is not None:
            scaler.scale(loss).backward()
            mon.step(loss)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            mon.step(loss)
            opt.step()
    mon.close()
    return mon


def mlp(widths: list[int], act: Callable[[], nn.Module], last_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    if last_act is not None:
        layers.append(last_act)
    return nn.Sequential(*layers)


# -- programs with a known problem --------------------------------------------------------------
def deep_sigmoid(log: Any = None) -> Monitor:
    """Ten sigmoid layers: the gradient vanishes and the loss stays at ln 10."""
    torch.manual_seed(0)
    model = mlp([D] + [32] * 10 + [C], nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return train(model, opt, _data(0), F.cross_entropy, steps=220, log=log)


def dead_relu_bias(log: Any = None) -> Monitor:
    """A bias initialised at -10 kills every ReLU unit of the first layer."""
    torch.manual_seed(1)
    model = mlp([D, 64, 64, C], nn.ReLU)
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, _data(1), F.cross_entropy, steps=150, log=log)


def exploding_lr(log: Any = None) -> Monitor:
    """Regression with SGD at lr=1: the loss and the gradients blow up."""
    torch.manual_seed(2)
    model = mlp([D, 64, 64, 1], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    return train(model, opt, _regression(2), F.mse_loss, steps=60, log=log)


def saturated_tanh(log: Any = None) -> Monitor:
    """tanh layers initialised with std 3: nearly every unit sits at ±1."""
    torch.manual_seed(3)
    model = mlp([D, 64, 64, C], nn.Tanh)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return train(model, opt, _data(3), F.cross_entropy, steps=120, log=log)


def nan_sample(log: Any = None) -> Monitor:
    """A NaN feature in one sample at step 30 poisons the weights."""
    torch.manual_seed(4)
    model = mlp([D, 64, 64, C], nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def corrupt(step: int, x: torch.Tensor) -> torch.Tensor:
        if step == 30:
            x = x.clone()
            x[3, 5] = math.nan
        return x

    return train(model, opt, _data(4), F.cross_entropy, steps=60, corrupt=corrupt, log=log)


def double_softmax(log: Any = None) -> Monitor:
    """The model ends in a softmax and cross_entropy applies another."""
    torch.manual_seed(5)
    model = mlp([D, 64, 64, C], nn.ReLU, last_act=nn.Softmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, _data(5), F.cross_entropy, steps=60, log=log)


def fp16_overflow(log: Any = None) -> Monitor:
    """float16 autocast with a GradScaler on raw inputs of scale 1e5: the first layer overflows every step."""
    torch.manual_seed(6)
    model = mlp([D, 64, 64, C], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _data(6)
    return train(model, opt, (x * 1e5, y), F.cross_entropy, steps=40, scaler=scaler, autocast=torch.float16, log=log)


def gradient_underflow(log: Any = None) -> Monitor:
    """float16 autocast without loss scaling; a loss weighted by 1e-5 underflows in backward."""
    torch.manual_seed(7)
    model = mlp([D, 64, 64, 1], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e3)

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out.float(), y) * 1e-5

    return train(model, opt, _regression(7), loss_fn, steps=60, autocast=torch.float16, log=log)


def overconfident(log: Any = None) -> Monitor:
    """Logits multiplied by 1000 (a temperature bug)."""
    torch.manual_seed(8)
    base = mlp([D, 64, C], nn.ReLU)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = base

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) * 1000.0

    model = Scaled()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    return train(model, opt, _data(8), F.cross_entropy, steps=60, log=log)


def lr_too_small(log: Any = None) -> Monitor:
    """Regression with lr = 1e-8: nothing moves."""
    torch.manual_seed(9)
    model = mlp([D, 64, 64, 1], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-8)
    return train(model, opt, _regression(9), F.mse_loss, steps=130, log=log)


def oscillating(log: Any = None) -> Monitor:
    """Full-batch SGD at lr=0.6: the loss falls, jumps 20x, falls again, over and over."""
    torch.manual_seed(2)
    model = mlp([D, 64, 64, 1], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.6)
    return train(model, opt, _regression(2, n=256), F.mse_loss, steps=120, bs=256, log=log)


def where_nan_grad(log: Any = None) -> Monitor:
    """torch.where(h > 0, sqrt(h), 0): the forward is finite, the backward NaN."""
    torch.manual_seed(11)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(D, 64)
            self.fc2 = nn.Linear(64, C)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            h = torch.where(h > 0, torch.sqrt(h), torch.zeros_like(h))
            return self.fc2(h)

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return train(model, opt, _data(11), F.cross_entropy, steps=30, log=log)


def deep_relu_bad_init(log: Any = None) -> Monitor:
    """Twelve ReLU layers with weights 2.5x too large: the gradient grows through depth."""
    torch.manual_seed(12)
    model = mlp([D] + [64] * 12 + [C], nn.ReLU)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 2.5 * math.sqrt(2 / m.in_features))
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    return train(model, opt, _data(12), F.cross_entropy, steps=30, log=log)


def log_of_softmax(log: Any = None) -> Monitor:
    """nll_loss(log(softmax(z))) with growing logits: softmax underflows to 0, log(0) = -inf."""
    torch.manual_seed(13)
    model = mlp([D, 64, C], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(torch.log(torch.softmax(out * 30, dim=1)), y)

    return train(model, opt, _data(13), loss_fn, steps=60, log=log)


def not_in_optimizer(log: Any = None) -> Monitor:
    """The optimizer was built from another copy of the model: the trained one never moves."""
    torch.manual_seed(14)
    model = mlp([D, 64, 64, 1], nn.ReLU)
    other = mlp([D, 64, 64, 1], nn.ReLU)
    opt = torch.optim.Adam(other.parameters(), lr=1e-3)
    return train(model, opt, _regression(14), F.mse_loss, steps=130, log=log)


def sgd_lr_high(log: Any = None) -> Monitor:
    """SGD at lr = 2 rewrites a fifth of the weights' norm every step."""
    torch.manual_seed(15)
    model = mlp([D, 64, 64, C], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    return train(model, opt, _data(15), F.cross_entropy, steps=100, log=log)


# -- healthy programs ----------------------------------------------------------------------------
def healthy_mlp_adam(log: Any = None) -> Monitor:
    torch.manual_seed(20)
    model = mlp([D, 64, 64, C], nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, _data(20), F.cross_entropy, steps=300, log=log)


def healthy_cnn_sgd(log: Any = None) -> Monitor:
    torch.manual_seed(21)
    g = torch.Generator().manual_seed(21)
    x = torch.randn(512, 1, 12, 12, generator=g)
    y = (x[:, 0, :6, :6].mean((1, 2)) > x[:, 0, 6:, 6:].mean((1, 2))).long()
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, (x, y), F.cross_entropy, steps=200, log=log)


def healthy_tanh_regression(log: Any = None) -> Monitor:
    torch.manual_seed(22)
    model = mlp([D, 64, 64, 1], nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return train(model, opt, _regression(22), F.mse_loss, steps=250, log=log)


def healthy_amp_scaler(log: Any = None) -> Monitor:
    torch.manual_seed(23)
    model = mlp([D, 64, 64, C], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    return train(model, opt, _data(23), F.cross_entropy, steps=200, scaler=scaler, autocast=torch.float16, log=log)


def healthy_small_batch(log: Any = None) -> Monitor:
    torch.manual_seed(24)
    model = mlp([D, 64, C], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return train(model, opt, _data(24), F.cross_entropy, steps=400, bs=8, log=log)


def healthy_residual_ln(log: Any = None) -> Monitor:
    """Eight pre-norm residual GELU blocks and a sigmoid output under BCE (a confident output is fine)."""
    torch.manual_seed(25)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(32)
            self.fc = nn.Linear(32, 32)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h + self.fc(F.gelu(self.norm(h)))

    model = nn.Sequential(nn.Linear(D, 32), *[Block() for _ in range(8)], nn.Linear(32, 1), nn.Sigmoid())
    x, y = _data(25, classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def loss_fn(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(p.squeeze(1), t.float())

    return train(model, opt, (x, y), loss_fn, steps=250, log=log)


def healthy_converged(log: Any = None) -> Monitor:
    """Separable data trained until the loss is ~0 (convergence is not a stall or a vanishing gradient)."""
    torch.manual_seed(26)
    x, y = _data(26, n=128, classes=2)
    model = mlp([D, 32, 2], nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return train(model, opt, (x, y), F.cross_entropy, steps=400, bs=128, log=log)


def _p(run: Callable[..., Monitor], expect: set[str], allow: set[str] | None = None) -> Program:
    return Program(run.__name__, ((run.__doc__ or "healthy").strip().splitlines() or [""])[0], run, frozenset(expect),
                   frozenset(allow or ()))


PROGRAMS: list[Program] = [
    _p(deep_sigmoid, {"stuck_at_chance", "vanishing_gradient"}, {"saturated_units", "update_ratio"}),
    _p(dead_relu_bias, {"dead_units"}, {"stuck_at_chance", "stalled_loss", "vanishing_gradient", "update_ratio"}),
    _p(exploding_lr, {"diverging_loss", "exploding_gradient"},
       {"nonfinite_loss", "nonfinite_gradient", "update_ratio", "oscillating_loss"}),
    _p(saturated_tanh, {"saturated_units"}, {"stalled_loss", "overconfident_logits"}),
    _p(nan_sample, {"nonfinite_loss"}, {"nonfinite_gradient"}),
    _p(double_softmax, {"stalled_loss"}, {"stuck_at_chance"}),
    _p(fp16_overflow, {"fp16_overflow"}, {"nonfinite_loss"}),
    _p(gradient_underflow, {"gradient_underflow"}, {"stalled_loss", "update_ratio", "vanishing_gradient"}),
    _p(overconfident, {"overconfident_logits"},
       {"oscillating_loss", "diverging_loss", "exploding_gradient", "update_ratio", "stalled_loss"}),
    _p(lr_too_small, {"stalled_loss", "update_ratio"}),
    _p(oscillating, {"oscillating_loss"}, {"dead_units"}),
    _p(where_nan_grad, {"nonfinite_gradient"}, {"nonfinite_loss"}),
    _p(deep_relu_bad_init, {"exploding_gradient"}, {"overconfident_logits"}),
    _p(log_of_softmax, {"nonfinite_loss"}, {"nonfinite_gradient", "overconfident_logits"}),
    _p(not_in_optimizer, {"update_ratio", "stalled_loss"}),
    _p(sgd_lr_high, {"update_ratio"}, {"oscillating_loss", "overconfident_logits", "exploding_gradient",
                                         "dead_units", "diverging_loss", "stalled_loss", "stuck_at_chance"}),
]

HEALTHY: list[Program] = [
    _p(healthy_mlp_adam, set()),
    _p(healthy_cnn_sgd, set()),
    _p(healthy_tanh_regression, set()),
    _p(healthy_amp_scaler, set()),
    _p(healthy_small_batch, set()),
    _p(healthy_residual_ln, set()),
    _p(healthy_converged, set()),
]
