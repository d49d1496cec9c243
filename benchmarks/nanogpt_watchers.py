"""What each floatguard watcher costs on a nanoGPT-style character model, beside ``detect_anomaly``.

The model of issue 13: a decoder-only character Transformer (4 layers, 4 heads, d=128,
block 128, batch 16, vocabulary 65; pre-LayerNorm blocks, causal self-attention written
out with a ``-inf`` mask and softmax, GELU MLP, AdamW), one thread on the CPU. One
training step (forward, cross-entropy, backward, AdamW) is timed plain, under
``floatguard.guard`` (step level), ``floatguard.detect()`` (op level, forward and
backward; torch's own modules checked at their outputs), ``detect(exact=True)`` (every op as it
runs), ``torch.autograd.detect_anomaly(check_nan=True)`` and ``floatguard.monitor.Monitor``.
Times are CPU time of the calling thread; each round runs every watcher for a block of
steps in a rotated order, a watcher's ratio in a round is its median step over the plain
median of the same round, and the table gives the median ratio over the rounds (with the
interquartile range from 4 rounds on).

It also checks that no watcher changes the numerics: from the same initial state, the
loss trajectory of ``--check-steps`` steps under each watcher must equal the plain one
bit for bit, and the final parameters must be ``torch.equal``.

Run ``python benchmarks/nanogpt_watchers.py`` (``--quick``: a 1-layer d=32 model, one round).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import contextlib
import copy
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from _table import make_table, print_tables
from rich.table import Table
from torch import nn

import floatguard.sanitize as fgs
from floatguard.monitor import Monitor

torch.set_num_threads(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, block: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.register_buffer("mask", torch.full((block, block), float("-inf")).triu(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads) + self.mask[:t, :t]
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, block: int) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), CausalSelfAttention(d, heads, block)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CharGPT(nn.Module):
    def __init__(self, vocab: int = 65, d: int = 128, heads: int = 4, layers: int = 4, block: int = 128) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList([Block(d, heads, block) for _ in range(layers)])
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


class Run:
    """A model, its optimizer and a fixed stream of batches; ``step()`` is one training step."""

    def __init__(self, model: nn.Module, batch: int, block: int, vocab: int, monitor: bool = False) -> None:
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
        g = torch.Generator().manual_seed(1)
        self.data = [torch.randint(0, vocab, (batch, block + 1), generator=g) for _ in range(4)]
        self.i = 0
        self.mon = Monitor(model, self.opt, num_classes=vocab, live=False) if monitor else None

    def step(self) -> torch.Tensor:
        xy = self.data[self.i % len(self.data)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(xy[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), xy[:, 1:].flatten())
        loss.backward()
        if self.mon is not None:
            self.mon.step(loss)
        self.opt.step()
        return loss.detach()


WATCHERS: list[tuple[str, Callable[[], Any], bool, bool]] = [
    # (name, context, guard the step, monitor)
    ("plain", contextlib.nullcontext, False, False),
    ("guard(train_step)", contextlib.nullcontext, True, False),
    ("detect() op level", lambda: fgs.detect("op", quiet=True, numpy=False, torch=True), False, False),
    ("detect(exact=True)", lambda: fgs.detect("op", quiet=True, numpy=False, torch=True, exact=True), False, False),
    ("torch.autograd.detect_anomaly()", lambda: torch.autograd.detect_anomaly(check_nan=True), False, False),
    ("Monitor(...)", contextlib.nullcontext, False, True),
]


def _run(model: nn.Module, cfg: tuple[str, Callable[[], Any], bool, bool], steps: int, size: dict[str, int],
         timed: bool = True) -> tuple[list[float], list[float], nn.Module]:
    """Step times (CPU seconds), losses, and the trained model of ``steps`` steps under one watcher."""
    _, context, guarded, monitored = cfg
    run = Run(model, size["batch"], size["block"], size["vocab"], monitor=monitored)
    step = fgs.guard(run.step, quiet=True) if guarded else run.step
    times, losses = [], []
    with context():
        for _ in range(steps):
            t0 = time.thread_time()
            loss = step()
            times.append(time.thread_time() - t0)
            losses.append(float(loss))
    if run.mon is not None:
        assert not run.mon.findings, f"the monitor reported {run.mon.findings}"
        run.mon.close()
    return times, losses, run.model


def measure(size: dict[str, int], rounds: int, steps: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    base = CharGPT(size["vocab"], size["d"], size["heads"], size["layers"], size["block"])
    ratios: dict[str, list[float]] = {c[0]: [] for c in WATCHERS}
    for r in range(rounds):
        order = WATCHERS[r % len(WATCHERS):] + WATCHERS[: r % len(WATCHERS)]
        block: dict[str, float] = {}
        for cfg in order:
            times, _, _ = _run(copy.deepcopy(base), cfg, steps + 1, size)
            block[cfg[0]] = statistics.median(times[1:])  # the first step warms up
        for name, t in block.items():
            ratios[name].append(t / block["plain"])
    return ratios


def same_numerics(size: dict[str, int], steps: int) -> dict[str, bool]:
    """Whether each watcher leaves the loss trajectory and the final parameters bit-identical."""
    torch.manual_seed(0)
    base = CharGPT(size["vocab"], size["d"], size["heads"], size["layers"], size["block"])
    _, ref_losses, ref = _run(copy.deepcopy(base), WATCHERS[0], steps, size)
    out = {}
    for cfg in WATCHERS[1:]:
        _, losses, model = _run(copy.deepcopy(base), cfg, steps, size)
        out[cfg[0]] = losses == ref_losses and all(
            torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters(), strict=True))
    return out


def _ratio(rs: list[float]) -> str:
    if len(rs) < 4:
        return f"{statistics.median(rs):.3f}"
    q1, _, q3 = statistics.quantiles(rs, n=4)
    return f"{statistics.median(rs):.3f} ({q1:.3f}–{q3:.3f})"


def main(argv: Sequence[str] | None = None) -> Table:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 1-layer d=32 block-32 model, one round of 2 steps")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; --quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per watcher and round (default 4)")
    ap.add_argument("--check-steps", type=int, default=None,
                    help="steps of the bit-identity check (default 100; --quick 3; 0 skips it)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*[Aa]nomaly.*")
    logging.getLogger("floatguard.monitor").setLevel(logging.WARNING)  # no end-of-run summaries in the table
    size = (dict(vocab=65, d=32, heads=4, layers=1, block=32, batch=4) if args.quick
            else dict(vocab=65, d=128, heads=4, layers=4, block=128, batch=16))
    rounds = args.rounds or (1 if args.quick else 7)
    steps = args.steps or (2 if args.quick else 4)
    check = args.check_steps if args.check_steps is not None else (3 if args.quick else 100)
    ratios = measure(size, rounds, steps)
    same = same_numerics(size, check) if check else {}
    rows = [(name, _ratio(ratios[name]), "" if name == "plain" else ("yes" if same.get(name) else
                                                                      "-" if not same else "NO"))
            for name, *_ in WATCHERS]
    desc = ", ".join(f"{k}={v}" for k, v in size.items())
    table = make_table(f"Watcher cost on a nanoGPT-style character model ({desc}; CPU, 1 thread)",
                       ["watcher", "step time / plain", f"bit-identical over {check} steps"], rows,
                       caption=f"median over {rounds} interleaved rounds of {steps} steps (CPU time of the "
                       "thread); the interquartile range in parentheses from 4 rounds on")
    print_tables([table])
    return table


if __name__ == "__main__":
    main()
