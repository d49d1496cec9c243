"""Cost of the runtime sanitizer per training step, beside ``torch.autograd.detect_anomaly``.

Three CPU training steps (forward, backward, Adam): an MLP, a CNN with batch norm and a
small Transformer encoder with dropout. Each is timed plain, under
``floatguard.guard`` (step level: one fused check of the gradients per step, the loss,
the RNG states), under ``floatguard.detect(level="op")`` (every op's outputs checked in
forward, except inside torch's own modules, which are checked at their outputs and
replayed op by op when one goes bad; in backward, each autograd node's gradients checked
by a hook, a bad node replayed op by op), under ``detect(exact=True)`` (every op
as it runs) and under ``torch.autograd.detect_anomaly(check_nan=True)``
(NaN checks of backward outputs only, and a stack trace stored per op), all in one
process on one thread. Times are CPU time of the calling thread per step (robust to
other load on the machine). Each round runs every candidate for a block of steps, in a
rotated order; a candidate's ratio in a round is its median step over the plain median of
the same round, and the table gives the median of those ratios over ``--rounds`` rounds
with their interquartile range.

Run ``python benchmarks/sanitize_overhead.py`` (``--quick``: small models, one round).
"""


from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from _table import make_table, print_tables
from rich.table import Table
from torch import nn

import floatguard.sanitize as fgs

torch.set_num_threads(1)


@dataclass
class Workload:
    """A model, a batch and its loss; ``step()`` is one training step."""

    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.loss_fn = nn.CrossEntropyLoss()

    def step(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class Encoder(nn.Module):
    """Embedding, a Transformer encoder (pre-built PyTorch layers, dropout 0.1) and a classifier head."""

    def __init__(self, vocab: int, d: int, heads: int, ff: int, layers: int, classes: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(tokens)).mean(1))


def workloads(quick: bool = False) -> list[Workload]:
    """The MLP, the CNN and the Transformer encoder (smaller under ``quick``)."""
    torch.manual_seed(0)
    h, b = (64, 8) if quick else (512, 64)
    mlp = nn.Sequential(nn.Linear(256, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))
    c, side, bc = (4, 8, 4) if quick else (16, 32, 32)
    cnn = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, 10))
    d, seq, bt = (32, 8, 2) if quick else (128, 32, 16)
    enc = Encoder(1000, d, 4, 2 * d, 2, 10)
    return [
        Workload("MLP", mlp, torch.randn(b, 256), torch.randint(0, 10, (b,))),
        Workload("CNN", cnn, torch.randn(bc, 3, side, side), torch.randint(0, 10, (bc,))),
        Workload("Transformer encoder", enc, torch.randint(0, 1000, (bt, seq)), torch.randint(0, 10, (bt,))),
    ]


@dataclass
class Config:
    """How a step is run: a context around the timed steps and a wrapper of the step."""

    name: str
    context: Callable[[], Any]
    wrap: Callable[[Callable[[], Any]], Callable[[], Any]] = lambda f: f


def _anomaly() -> Any:
    return torch.autograd.detect_anomaly(check_nan=True)


CONFIGS = [
    Config("plain", contextlib.nullcontext),
    Config("floatguard guard (step)", contextlib.nullcontext, lambda f: fgs.guard(f, quiet=True)),
    Config("floatguard detect (op)", lambda: fgs.detect("op", quiet=True, numpy=False, torch=True)),
    Config("floatguard detect (op, exact)", lambda: fgs.detect("op", quiet=True, numpy=False, torch=True, exact=True)),
    Config("torch detect_anomaly", _anomaly),
]


def _time(step: Callable[[], Any], config: Config, steps: int) -> tuple[list[float], list[Any]]:
    """CPU seconds of each of ``steps`` steps (after one warm-up step) and the findings of this run."""
    wrapped = config.wrap(step)
    times = []
    with config.context() as ctx:
        wrapped()
        for _ in range(steps):
            t0 = time.thread_time()
            wrapped()
            times.append(time.thread_time() - t0)
    events = list(getattr(ctx, "events", []) or getattr(wrapped, "report", fgs.Report()).events)
    return times, events


def measure(w: Workload, rounds: int, steps: int) -> tuple[dict[str, list[float]], float, int]:
    """Per-round ratios to the plain step, the plain step time, and the number of findings (must be 0).

    Each round runs every config for a block of ``steps`` steps, in a rotated order;
    a config's ratio in a round is its median step over the plain median *of the same
    round*, so a machine that speeds up or slows down between rounds cancels out.
    """
    ratios: dict[str, list[float]] = {c.name: [] for c in CONFIGS}
    plain: list[float] = []
    findings = 0
    for r in range(rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[: r % len(CONFIGS)]
        block: dict[str, float] = {}
        for c in order:
            dt, events = _time(w.step, c, steps)
            block[c.name] = statistics.median(dt)
            findings += len(events)
        base = block[CONFIGS[0].name]
        plain.append(base)
        for name, t in block.items():
            ratios[name].append(t / base)
    return ratios, statistics.median(plain), findings


def _ratio(rs: list[float]) -> str:
    """Median ratio and, over several rounds, the interquartile range of the per-round ratios."""
    if len(rs) < 4:
        return f"{statistics.median(rs):.2f}x"
    q1, _, q3 = statistics.quantiles(rs, n=4)
    return f"{statistics.median(rs):.2f}x ({q1:.2f}–{q3:.2f})"


def _count_checked(w: Workload) -> int:
    """How many op outputs ``detect(level="op")`` checks in one step."""
    from floatguard.sanitize._core import Session
    from floatguard.sanitize._torch_ctx import TorchContext

    ctx = TorchContext(Session("record", quiet=True), "op")
    with ctx:
        w.step()
    return ctx.mode.checked if ctx.mode is not None else 0


def main(argv: Sequence[str] | None = None) -> Table:
    """Measure and print the table; returns it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models, one round of two steps (a smoke test)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15; --quick 1)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per config and round (default: 6 to 40, ~60 ms of plain steps; --quick 2)")
    ap.add_argument("--models", default=None, help="comma-separated subset of: mlp, cnn, transformer")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 15)
    warnings.filterwarnings("ignore", message=".*[Aa]nomaly.*")
    rows = []
    chosen = workloads(args.quick)
    if args.models:
        wanted = {m.strip().lower() for m in args.models.split(",")}
        known = {w.name.split()[0].lower() for w in chosen}
        if not wanted <= known:
            ap.error(f"--models: expected names from {sorted(known)}, got {sorted(wanted - known)}")
        chosen = [w for w in chosen if w.name.split()[0].lower() in wanted]
    for w in chosen:
        w.step()  # warm up, and time the plain step to size the blocks: at least ~60 ms of plain steps each
        t0 = time.thread_time()
        w.step()
        n = args.steps or (2 if args.quick else max(6, min(40, round(0.06 / max(time.thread_time() - t0, 1e-4)))))
        ratios, base, findings = measure(w, rounds, n)
        checked = _count_checked(w)
        rows.append([w.name, f"{w.n_params:,}", f"{base * 1e3:.2f}",
                     *[_ratio(ratios[c.name]) for c in CONFIGS[1:]], str(checked), str(findings)])
    headers = ["model", "params", "plain ms/step", *[c.name for c in CONFIGS[1:]], "outputs checked/step",
               "findings"]
    table = make_table("Sanitizer overhead per CPU training step (ratio to the plain step; 1 thread)", headers, rows,
                       caption=f"torch {torch.__version__}; CPU time of the calling thread per step; per round, "
                       f"the median step of each config over the plain median of the same round; median "
                       f"(interquartile range) over {rounds} rounds; 'findings' must be 0 on these healthy models",
                       text_columns=1)
    print_tables([table])
    return table


if __name__ == "__main__":
    main()
