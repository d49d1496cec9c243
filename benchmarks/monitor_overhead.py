"""Cost of the training-health monitor: a training step with and without it, side by side.

Each model is trained three times in one process, from the same initial weights and
on the same batches: plain, under ``Monitor`` (default: statistics every step,
activations and update ratios every 10th), and under ``Monitor(detailed=True)``
(everything, every step); both monitors write their JSONL log. The three run
interleaved, ``--steps`` steps at a time (a multiple of the sampling period, so each
round holds its share of sampled steps), for ``--rounds`` rounds, so that a noisy
machine slows them alike; a mode's time is the fastest of its rounds (the least
disturbed by other work, as ``timeit`` does), and the overhead is its ratio to
plain. Targets (issue 4): default <= 1.03, detailed <= 1.15.

On CPU the benchmark runs on one thread (the timing noise of two threads on a shared
machine exceeds the effect measured); on a GPU it synchronizes after every round.

The transformer of ``nn.TransformerEncoderLayer`` takes PyTorch's fused attention (the
probe measures q and k norms); the causal LM writes its attention by hand, so the probe
reads every softmax input (largest logit over all of it; entropy on a fixed sample of
rows) and the LM head's (tokens x 1000) logits (max |logit| over all of them; top-two
gap and log Z on a fixed sample of rows, ``transformer_stats.row_sample``) on sampled
steps.

Run ``python benchmarks/monitor_overhead.py`` (``--quick`` is a smoke test: small
models, few steps; its ratios are not meaningful; ``--only`` picks workloads).
"""


from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import copy
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _table import make_table, print_tables
from rich.table import Table
from torch import nn

from floatguard.monitor import Monitor

TARGETS = {"default": 1.03, "detailed": 1.15}


@dataclass
class Workload:
    name: str
    model: nn.Module
    make_opt: Callable[[nn.Module], torch.optim.Optimizer]
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mlp(quick: bool, dev: torch.device) -> Workload:
    w, bs = (128, 32) if quick else (1024, 256)
    model = nn.Sequential(nn.Linear(256, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                          nn.Linear(w, 10)).to(dev)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(bs, 256, generator=g).to(dev), torch.randint(0, 10, (bs,), generator=g).to(dev))
               for _ in range(8)]
    return Workload(f"MLP 4x{w}, batch {bs}, Adam", model, lambda m: torch.optim.Adam(m.parameters(), 1e-3),
                    batches, F.cross_entropy)


def _cnn(quick: bool, dev: torch.device) -> Workload:
    c, bs = (8, 8) if quick else (32, 64)
    model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4 * c, 10)).to(dev)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(bs, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (bs,), generator=g).to(dev))
               for _ in range(8)]
    return Workload(f"CNN 3 conv ({c}-{4 * c} ch), 32x32, batch {bs}, SGD", model,
                    lambda m: torch.optim.SGD(m.parameters(), 0.01, momentum=0.9), batches, F.cross_entropy)


def _transformer(quick: bool, dev: torch.device) -> Workload:
    d, seq, bs, layers = (32, 16, 4, 1) if quick else (128, 64, 32, 2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(1000, d)
            layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(d, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(x)).mean(1))

    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 1000, (bs, seq), generator=g).to(dev),
                torch.randint(0, 10, (bs,), generator=g).to(dev)) for _ in range(8)]
    return Workload(f"Transformer {layers}x d{d}, seq {seq}, batch {bs}, AdamW", Net().to(dev),
                    lambda m: torch.optim.AdamW(m.parameters(), 1e-3), batches, F.cross_entropy)


def _attention_lm(quick: bool, dev: torch.device) -> Workload:
    """A causal LM with hand-written attention: the monitor's probe sees each softmax input (issue 15's statistics)."""
    d, seq, bs, layers, heads, vocab = (32, 16, 4, 1, 2, 64) if quick else (128, 64, 32, 2, 4, 1000)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
            a = q @ k.transpose(-2, -1) / (d // heads) ** 0.5
            a = a.masked_fill(torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            return self.proj((torch.softmax(a, dim=-1) @ v).transpose(1, 2).reshape(b, t, d))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2, self.attn = nn.LayerNorm(d), nn.LayerNorm(d), Attention()
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.pos = nn.Embedding(vocab, d), nn.Parameter(0.02 * torch.randn(seq, d))
            self.blocks = nn.ModuleList([Block() for _ in range(layers)])
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x) + self.pos
            for blk in self.blocks:
                h = blk(h)
            return self.head(self.ln(h)).reshape(-1, vocab)

    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(8):
        tok = torch.randint(0, vocab, (bs, seq + 1), generator=g)
        batches.append((tok[:, :-1].to(dev), tok[:, 1:].reshape(-1).to(dev)))
    return Workload(f"Causal LM, hand-written attention, {layers}x d{d}, seq {seq}, batch {bs}, vocab {vocab}, "
                    "AdamW", Net().to(dev), lambda m: torch.optim.AdamW(m.parameters(), 1e-3), batches,
                    F.cross_entropy)


WORKLOADS = {"mlp": _mlp, "cnn": _cnn, "transformer": _transformer, "attention_lm": _attention_lm}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


class Runner:
    """One copy of a workload's model, trained plain or under a monitor."""

    def __init__(self, wl: Workload, mode: str, logdir: str) -> None:
        self.wl = wl
        self.model = copy.deepcopy(wl.model)
        self.opt = wl.make_opt(self.model)
        self.mon = None
        if mode != "plain":
            path = os.path.join(logdir, f"{mode}.jsonl")
            self.mon = Monitor(self.model, self.opt, log=path, detailed=mode == "detailed", live=False)
        self.i = 0

    def run(self, steps: int) -> None:
        for _ in range(steps):
            x, y = self.wl.batches[self.i % len(self.wl.batches)]
            self.i += 1
            self.opt.zero_grad(set_to_none=True)
            loss = self.wl.loss(self.model(x), y)
            loss.backward()
            if self.mon is not None:
                self.mon.step(loss)
            self.opt.step()


def measure(wl: Workload, steps: int, rounds: int, dev: torch.device) -> dict[str, float]:
    """Seconds per step of each mode (fastest round), the modes interleaved round by round."""
    modes = ("plain", "default", "detailed")
    times: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as logdir:
        runners = {m: Runner(wl, m, logdir) for m in modes}
        for r in runners.values():  # warm-up: allocator, first-step hooks, the first sampled step
            r.run(min(steps, 10))
        _sync(dev)
        for k in range(rounds):
            order = modes if k % 2 == 0 else modes[::-1]
            for m in order:
                t0 = time.perf_counter()
                runners[m].run(steps)
                _sync(dev)
                times[m].append((time.perf_counter() - t0) / steps)
        for r in runners.values():
            if r.mon is not None:
                r.mon.close()
    return {m: min(v) for m, v in times.items()}


def main(argv: Sequence[str] | None = None) -> list[Table]:
    """Measure and print the table; returns it (one row per model)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models and few steps (a smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (a multiple of 10)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per mode")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", choices=tuple(WORKLOADS), default=None, help="run only these workloads")
    args = parser.parse_args(argv)
    steps = args.steps or (10 if args.quick else 40)
    rounds = args.rounds or (2 if args.quick else 9)
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for name, make in WORKLOADS.items():
        if args.only and name not in args.only:
            continue
        wl = make(args.quick, dev)
        t = measure(wl, steps, rounds, dev)
        rd, rt = t["default"] / t["plain"], t["detailed"] / t["plain"]
        rows.append([wl.name, f"{t['plain'] * 1e3:.2f}", f"{t['default'] * 1e3:.2f}", f"{rd:.3f}",
                     f"{t['detailed'] * 1e3:.2f}", f"{rt:.3f}"])
    where = str(dev) if dev.type != "cpu" else "CPU, 1 thread"
    table = make_table(
        f"Monitor overhead per training step ({where}; fastest of {rounds} interleaved rounds of {steps} steps)",
        ["workload", "plain ms", "default ms", "default ratio", "detailed ms", "detailed ratio"], rows,
        caption=f"targets: default <= {TARGETS['default']}, detailed <= {TARGETS['detailed']}"
        + (" (--quick: ratios not meaningful)" if args.quick else ""))
    print_tables([table])
    return [table]


if __name__ == "__main__":
    main()
