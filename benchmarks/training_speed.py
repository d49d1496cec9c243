"""Training speed of floatguard beside the framework ops it replaces: one table of time ratios.

Each row times a floatguard op and the framework's op on the same tensors,
side by side in one process: forward plus backward at training sizes (an LM
head's cross-entropy over 32,000 classes, a classifier's, attention softmax,
...), the latency of one call on a 32×10 batch, both ops under
``torch.compile``, and JAX's ops under ``jax.jit`` (``jax.grad`` as a
``jax.vjp`` with a fixed cotangent). The ratio is floatguard's time over the
framework's, each the median of interleaved rounds (the two candidates
alternate, so a noisy machine treats them alike); the target is at most 1.0
for training work and 2.0 for the latency of one small call, where the fixed
cost of checking arguments is most of the time.

PyTorch runs on one thread unless ``--threads N``; OMP and XLA are set to one
thread before the libraries load, and each JAX child process is bound to one CPU
(XLA runs its reductions on a pool of one thread per CPU otherwise: jax.nn's and
floatguard's alike took two cores here before). JAX runs without ``jax_enable_x64`` (JAX's
default, how models are trained: all work in float32) and with it (floatguard's
accuracy contract: float32 inputs worked in float64), each in a child process,
as the setting is global to a process.

Run ``python benchmarks/training_speed.py`` (``--quick``: small sizes, few
rounds, no ``torch.compile``; ``--sections`` picks some of ``training latency
compile jax``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import _one_thread  # first: sets one thread before the array libraries load
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from _table import make_table, print_tables
from rich.table import Table

import floatguard as fg

jax.config.update("jax_enable_x64", True)

SECTIONS = ("training", "latency", "compile", "jax")
TARGET = {"training": 1.0, "latency": 2.0, "compile": 1.0, "jax": 1.0}
HEADERS = ["section", "op", "pass", "shape", "dtype", "framework op", "framework ms", "ratio", "target", "ok"]


@dataclass
class Pair:
    """One row: a floatguard callable and the framework's, each doing the same work once."""

    section: str
    op: str
    work: str  # "fwd+bwd" or "fwd"
    shape: str
    dtype: str
    peer: str
    fg: Callable[[], Any]
    framework: Callable[[], Any]


# -- timing ---------------------------------------------------------------------------
def _number(fn: Callable[[], Any], min_time: float) -> int:
    """Calls per measurement so that one measurement lasts at least ``min_time`` seconds."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time or n >= 10**5:
            return n
        n *= max(2, min(10, int(min_time / max(t, 1e-9)) + 1))


def interleaved_medians(fns: Sequence[Callable[[], Any]], rounds: int, min_time: float) -> list[float]:
    """Median seconds per call of each function over ``rounds`` rounds; each round runs every
    function once (in an order that alternates between rounds)."""
    for f in fns:  # warm up: compilation, caches, first allocations
        f()
    numbers = [_number(f, min_time) for f in fns]
    times: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            f, n = fns[i], numbers[i]
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            times[i].append((time.perf_counter() - t0) / n)
    return [statistics.median(t) for t in times]


# -- PyTorch --------------------------------------------------------------------------
TDTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _train_step(f: Callable[..., torch.Tensor], leaves: Sequence[torch.Tensor], g: torch.Tensor | None,
                *rest: Any) -> Callable[[], Any]:
    """Forward and backward of ``f(*leaves, *rest)`` (a scalar, or backward of the cotangent ``g``)."""

    def step() -> None:
        for t in leaves:
            t.grad = None
        out = f(*leaves, *rest)
        out.backward(g)

    return step


def _leaf(shape: tuple[int, ...], dtype: str, rng: np.random.Generator, scale: float = 4.0,
          shift: float = 0.0) -> torch.Tensor:
    x = torch.from_numpy(rng.standard_normal(shape) * scale + shift).to(TDTYPES[dtype])
    return x.requires_grad_(True)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape)


def _log1mexp_torch(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _torch_ops(quick: bool) -> list[tuple[str, str, Callable[..., Any], Callable[..., Any], str]]:
    """(op, kind, floatguard, framework, framework name); kind: 'ce', 'bce', 'row', 'unary', 'binary'."""
    return [
        ("cross_entropy", "ce", fg.cross_entropy, F.cross_entropy, "F.cross_entropy"),
        ("bce_with_logits", "bce", fg.binary_cross_entropy_with_logits,
         F.binary_cross_entropy_with_logits, "F.binary_cross_entropy_with_logits"),
        ("softmax", "row", lambda x: fg.softmax(x, dim=-1), lambda x: torch.softmax(x, dim=-1), "torch.softmax"),
        ("log_softmax", "row", lambda x: fg.log_softmax(x, dim=-1), lambda x: F.log_softmax(x, dim=-1),
         "F.log_softmax"),
        ("logsumexp", "lse", lambda x: fg.logsumexp(x, dim=-1), lambda x: torch.logsumexp(x, dim=-1),
         "torch.logsumexp"),
        ("softplus", "unary", fg.softplus, F.softplus, "F.softplus"),
        ("log_sigmoid", "unary", fg.log_sigmoid, F.logsigmoid, "F.logsigmoid"),
        ("logaddexp", "binary", fg.logaddexp, torch.logaddexp, "torch.logaddexp"),
        ("log1mexp", "neg", fg.log1mexp, _log1mexp_torch, "torch where/log/expm1/log1p"),
        # the cross-entropy's other arguments, each on the route a user's call takes
        ("cross_entropy, label_smoothing=0.1", "ce", lambda x, t: fg.cross_entropy(x, t, label_smoothing=0.1),
         lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), "F.cross_entropy(label_smoothing=0.1)"),
        ("cross_entropy, weight", "ce_weight", lambda x, t, w: fg.cross_entropy(x, t, weight=w),
         lambda x, t, w: F.cross_entropy(x, t, weight=w), "F.cross_entropy(weight=w)"),
        ("cross_entropy, probabilities", "ce_prob", fg.cross_entropy, F.cross_entropy, "F.cross_entropy"),
        ("cross_entropy, reduction='none'", "ce_none", lambda x, t: fg.cross_entropy(x, t, reduction="none"),
         lambda x, t: F.cross_entropy(x, t, reduction="none"), "F.cross_entropy(reduction='none')"),
        # the class axis in the middle: segmentation logits (N, C, H, W), a softmax over channels
        ("cross_entropy, dim=1", "ce_mid", lambda x, t: fg.cross_entropy(x, t, axis=1), F.cross_entropy,
         "F.cross_entropy"),
        ("softmax, dim=1", "row", lambda x: fg.softmax(x, dim=1), lambda x: torch.softmax(x, dim=1),
         "torch.softmax(dim=1)"),
        ("log_softmax, dim=1", "row", lambda x: fg.log_softmax(x, dim=1), lambda x: F.log_softmax(x, dim=1),
         "F.log_softmax(dim=1)"),
    ]


def _torch_pair(section: str, op: str, kind: str, fgf: Callable[..., Any], tf: Callable[..., Any], peer: str,
                shape: tuple[int, ...], dtype: str, backward: bool, seed: int = 0) -> Pair:
    """A pair of calls of ``fgf`` and ``tf`` on the same tensors (forward, or forward and backward)."""
    rng = np.random.default_rng(seed)
    rest: tuple[Any, ...] = ()
    if kind in ("ce", "ce_weight", "ce_none"):
        leaves = [_leaf(shape, dtype, rng)]
        rest = (torch.from_numpy(rng.integers(0, shape[-1], shape[:-1])),)
        if kind == "ce_weight":
            rest += (torch.from_numpy(rng.uniform(0.5, 1.5, shape[-1])).to(TDTYPES[dtype]),)
    elif kind == "ce_mid":  # class indices of the shape of the logits without their axis 1
        leaves = [_leaf(shape, dtype, rng)]
        rest = (torch.from_numpy(rng.integers(0, shape[1], (shape[0], *shape[2:]))),)
    elif kind == "ce_prob":  # soft labels (distillation, mixup): a softmax over the classes
        leaves = [_leaf(shape, dtype, rng)]
        rest = (torch.softmax(torch.from_numpy(rng.standard_normal(shape)), -1).to(TDTYPES[dtype]),)
    elif kind == "bce":
        leaves = [_leaf(shape, dtype, rng)]
        rest = (torch.from_numpy(rng.random(shape)).to(TDTYPES[dtype]),)
    elif kind == "binary":
        leaves = [_leaf(shape, dtype, rng), _leaf(shape, dtype, rng)]
    elif kind == "neg":  # log1mexp takes x < 0
        leaves = [(-torch.from_numpy(rng.exponential(1.0, shape) + 1e-3)).to(TDTYPES[dtype]).requires_grad_(True)]
    else:
        leaves = [_leaf(shape, dtype, rng)]
    out_shape = shape[:-1] if kind in ("lse", "ce_none") else shape
    g = None
    if kind not in ("ce", "bce", "ce_weight", "ce_prob", "ce_mid"):  # the losses return a scalar mean
        g = torch.from_numpy(rng.uniform(0.5, 1.5, out_shape)).to(TDTYPES[dtype])
    if backward:
        fg_call, t_call = _train_step(fgf, leaves, g, *rest), _train_step(tf, leaves, g, *rest)
    else:

        def fg_call() -> Any:
            with torch.no_grad():
                return fgf(*leaves, *rest)

        def t_call() -> Any:
            with torch.no_grad():
                return tf(*leaves, *rest)

    return Pair(section, op, "fwd+bwd" if backward else "fwd", _fmt_shape(shape), dtype, peer, fg_call, t_call)


def training_pairs(quick: bool) -> Iterator[Pair]:
    """Forward and backward at the sizes of training: LM head, classifier, attention, ..."""
    ops = {o[0]: o[1:] for o in _torch_ops(quick)}
    sizes: list[tuple[str, tuple[int, ...], tuple[str, ...]]] = [
        ("cross_entropy", (2048, 32000), ("float32", "bfloat16")),  # LM head, class indices
        ("cross_entropy", (256, 1000), ("float32", "bfloat16")),  # classifier
        ("softmax", (4, 8, 256, 256), ("float32", "bfloat16")),  # attention
        ("log_softmax", (1024, 2048), ("float32", "bfloat16")),
        ("logsumexp", (1024, 2048), ("float32",)),
        ("bce_with_logits", (4096, 1000), ("float32", "bfloat16")),
        ("softplus", (4096, 1024), ("float32",)),
        ("log_sigmoid", (4096, 1024), ("float32",)),
        ("logaddexp", (4096, 1024), ("float32",)),
        ("log1mexp", (4096, 1024), ("float32",)),
        ("cross_entropy, label_smoothing=0.1", (2048, 32000), ("float32", "bfloat16")),
        ("cross_entropy, label_smoothing=0.1", (256, 1000), ("float32", "bfloat16")),
        ("cross_entropy, weight", (256, 1000), ("float32", "bfloat16")),
        ("cross_entropy, probabilities", (256, 1000), ("float32", "bfloat16")),
        ("cross_entropy, reduction='none'", (256, 1000), ("float32", "bfloat16")),
        ("cross_entropy, dim=1", (8, 21, 128, 128), ("float32", "bfloat16")),  # segmentation (VOC's 21 classes)
        ("softmax, dim=1", (8, 21, 128, 128), ("float32", "bfloat16")),
        ("log_softmax, dim=1", (8, 21, 128, 128), ("float32", "bfloat16")),
    ]
    for op, shape, dtypes in sizes:
        if quick:
            shape = tuple(max(2, s // 32) for s in shape)
        for dtype in dtypes:
            yield _torch_pair("training", op, *ops[op], shape, dtype, backward=True)


def latency_pairs(quick: bool) -> Iterator[Pair]:
    """One call on a 32×10 batch, forward and forward plus backward."""
    for op, kind, fgf, tf, peer in _torch_ops(quick):
        if "dim=1" in op:  # on 32×10, dim=1 is the last axis: the rows above
            continue
        for backward in (False, True):
            yield _torch_pair("latency", op, kind, fgf, tf, peer, (32, 10), "float32", backward)


def compile_pairs(quick: bool) -> Iterator[Pair]:
    """Compiled floatguard against the compiled framework op, forward and backward."""
    ops = {o[0]: o[1:] for o in _torch_ops(quick)}
    sizes = [("softmax", (4, 8, 256, 256)), ("log_softmax", (1024, 2048)), ("cross_entropy", (2048, 32000)),
             ("cross_entropy, label_smoothing=0.1", (2048, 32000)), ("cross_entropy, label_smoothing=0.1", (256, 1000)),
             ("bce_with_logits", (4096, 1000)), ("softplus", (4096, 1024)), ("log_sigmoid", (4096, 1024)),
             ("logaddexp", (4096, 1024)), ("log1mexp", (4096, 1024)), ("logsumexp", (1024, 2048)),
             ("cross_entropy, dim=1", (8, 21, 128, 128)), ("softmax, dim=1", (8, 21, 128, 128)),
             ("log_softmax, dim=1", (8, 21, 128, 128))]
    for op, shape in sizes:
        if quick:
            shape = tuple(max(2, s // 16) for s in shape)
        kind, fgf, tf, peer = ops[op]
        cf = torch.compile(fgf, dynamic=False)
        ct = torch.compile(tf, dynamic=False)
        yield _torch_pair("compile", op, kind, cf, ct, f"torch.compile({peer})", shape, "float32", backward=True)


# -- JAX ------------------------------------------------------------------------------
def jax_pairs(quick: bool) -> Iterator[Pair]:
    """jax.jit: forward, and the forward with the backward of a fixed cotangent (``jax.vjp``), under the
    ``jax_enable_x64`` setting of this process (see :func:`jax_rows`)."""
    x64 = "x64 on" if jax.config.jax_enable_x64 else "x64 off"
    # an LM head's or classifier's logits, attention scores (batch, heads, queries, keys), a small batch
    shapes = [(64, 128)] if quick else [(4096, 2048), (4, 8, 256, 256), (32, 10)]
    peers = {"log_softmax": (jax.nn.log_softmax, "jax.nn.log_softmax"), "softmax": (jax.nn.softmax, "jax.nn.softmax"),
             "logsumexp": (jax.nn.logsumexp, "jax.nn.logsumexp")}
    rng = np.random.default_rng(0)
    for shape, (op, (peer, name)) in itertools.product(shapes, peers.items()):
        fgop = getattr(fg, op)
        for dtype in ("float32", "bfloat16"):
            x = jnp.asarray(rng.standard_normal(shape) * 4, dtype=getattr(jnp, dtype))
            g = jnp.asarray(rng.uniform(0.5, 1.5, shape[:-1] if op == "logsumexp" else shape),
                            dtype=getattr(jnp, dtype))
            for grad in (False, True):
                fns = []
                for f in (fgop, peer):
                    def one(v: Any, f: Any = f) -> Any:
                        return f(v, axis=-1)

                    if grad:
                        jf = jax.jit(lambda v, c, one=one: jax.vjp(one, v)[1](c)[0])
                        fns.append(lambda jf=jf, x=x, g=g: jf(x, g).block_until_ready())
                    else:
                        jf = jax.jit(one)
                        fns.append(lambda jf=jf, x=x: jf(x).block_until_ready())
                yield Pair("jax", f"{op} (jit)", "fwd+vjp" if grad else "fwd", _fmt_shape(shape),
                           f"{dtype}, {x64}", name, fns[0], fns[1])


def jax_rows(quick: bool, rounds: int, min_time: float) -> list[list[str]]:
    """The JAX rows without x64 (JAX's default, how models are trained: the headline) and with it.

    ``jax_enable_x64`` is global to a process, so each setting runs in a child process of its own.
    """
    rows = []
    for flag in ("off", "on"):
        cmd = [sys.executable, __file__, "--jax-child", flag, "--rounds", str(rounds), "--min-time", str(min_time)]
        out = subprocess.run(cmd + (["--quick"] if quick else []), check=True, capture_output=True, text=True)
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    return rows


# -- the table ------------------------------------------------------------------------
def measure(pairs: Iterator[Pair], rounds: int, min_time: float) -> list[list[str]]:
    """One row of the table per pair: median times, their ratio, the target and whether it is met."""
    rows = []
    for p in pairs:
        mine, theirs = interleaved_medians([p.fg, p.framework], rounds, min_time)
        ratio = mine / theirs
        target = TARGET[p.section]
        rows.append([p.section, p.op, p.work, p.shape, p.dtype, p.peer, f"{theirs * 1e3:.3g}", f"{ratio:.2f}",
                     f"≤ {target:.1f}", "ok" if ratio <= target else "FAIL"])
    return rows


def main(argv: Sequence[str] | None = None) -> list[Table]:
    """Time every row; print and return the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds, no torch.compile")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, quick 3)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=None,
                        help="which parts to run (default all; quick: all but compile)")
    parser.add_argument("--jax-child", choices=("on", "off"), help=argparse.SUPPRESS)  # see jax_rows
    parser.add_argument("--min-time", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 7)
    min_time = args.min_time or (0.0005 if args.quick else 0.05)
    if args.jax_child:  # one setting of jax_enable_x64: the rows as JSON, for jax_rows
        _one_thread.one_cpu()  # before the first JAX array: XLA's thread pool is made with its backend
        jax.config.update("jax_enable_x64", args.jax_child == "on")
        print(json.dumps(measure(jax_pairs(args.quick), rounds, min_time)))
        return []
    sections = args.sections or [s for s in SECTIONS if not (args.quick and s == "compile")]
    makers = {"training": training_pairs, "latency": latency_pairs, "compile": compile_pairs, "jax": jax_pairs}
    rows = []
    for s in sections:
        rows += jax_rows(args.quick, rounds, min_time) if s == "jax" else measure(makers[s](args.quick), rounds,
                                                                                     min_time)
    failed = sum(r[-1] == "FAIL" for r in rows)
    table = make_table(
        f"Training speed: floatguard / framework, {args.threads} thread(s){' (quick)' if args.quick else ''}",
        HEADERS,
        rows,
        caption=f"ratio: floatguard's time / the framework op's, medians of {rounds} interleaved rounds, one "
        "process; framework ms: the framework op's time per call. fwd+bwd: forward and backward (of the mean "
        "loss, or of a fixed cotangent); fwd+vjp: jax.vjp, jitted. JAX without jax_enable_x64 (its default) and "
        f"with it (float32 worked in float64). {len(rows) - failed}/{len(rows)} rows meet their target.",
        text_columns=6,
    )
    print_tables([table])
    return [table]


if __name__ == "__main__":
    main()
