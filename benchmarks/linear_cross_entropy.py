"""linear_cross_entropy against the unfused LM head + cross-entropy and torchtune's chunked loss.

PyTorch on CPU, one thread, float32 and bfloat16, 4096 tokens × 512 hidden × 32,000 vocabulary
(issue 15 §2): forward+backward time (medians of interleaved rounds, side by side in one process;
ratios to ``F.cross_entropy(hidden @ weight.T, target)``) and peak extra memory: each variant once
in a fresh subprocess, warmed up on tiny inputs, then, with its inputs made, the resident-set
high-water mark reset to the current RSS (``echo 5 > /proc/self/clear_refs``) and the peak of one
forward+backward read as ``VmHWM - VmRSS`` from ``/proc/self/status`` (Linux; elsewhere "n/a").
``ru_maxrss`` cannot be used: Linux keeps it across ``exec``, so a child starts with its parent's
peak (gigabytes after the timing rounds) and any smaller peak of its own reads as 0.

* unfused: ``F.cross_entropy(hidden @ weight.T, target)`` (bfloat16 logits upcast to float32);
  in bfloat16 its three products are bfloat16 products, as floatguard's are;
* torchtune: ``CEWithChunkedOutputLoss``'s recipe: hidden split into 8 token chunks, each
  chunk's logits made and upcast to float32, ``F.cross_entropy(..., reduction="sum")`` per chunk;
* floatguard: ``fg.linear_cross_entropy(hidden, weight, target)``.

JAX (float32, under ``jit``): forward and value-and-grad of ``fg.linear_cross_entropy`` against
``-take(jax.nn.log_softmax(hidden @ weight.T), target).mean()``.

    python benchmarks/linear_cross_entropy.py [--tokens 4096] [--hidden 512] [--vocab 32000]
        [--rounds 3] [--no-jax] [--only float32|bfloat16|jax ...]   (a subset of the three tables)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _one_thread  # first: one thread before torch/jax load
from _table import fmt_float, make_table, print_tables

HIDDEN, VOCAB = 512, 32_000
TORCHTUNE_CHUNKS = 8
UNFUSED = "unfused F.cross_entropy"
TIME_TARGET, MEMORY_TARGET = 1.2, 1 / 8  # issue 15 §2: fwd+bwd within 1.2x, peak memory at most 1/8
LOSS_RTOL = {"float32": 1e-5, "bfloat16": 1e-2}  # the variants' losses agree (bf16: logits rounded)
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _torch_inputs(tokens: int, hidden: int, vocab: int, dtype_name: str) -> tuple[Any, Any, Any]:
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g, dtype=dtype).mul_(0.5).requires_grad_()  # in place: no
    w = torch.randn(vocab, hidden, generator=g, dtype=dtype).mul_(0.05).requires_grad_()  # temporary in the peak
    t = torch.randint(0, vocab, (tokens,), generator=g)
    return h, w, t


def _variants() -> dict[str, Callable[[Any, Any, Any], Any]]:
    import torch
    import torch.nn.functional as F

    import floatguard as fg

    def unfused(h: Any, w: Any, t: Any) -> Any:
        return F.cross_entropy((h @ w.T).float(), t)

    def torchtune(h: Any, w: Any, t: Any) -> Any:
        total = sum(F.cross_entropy((hc @ w.T).float(), tc, reduction="sum")
                    for hc, tc in zip(h.chunk(TORCHTUNE_CHUNKS), t.chunk(TORCHTUNE_CHUNKS), strict=True))
        return total / (t != -100).sum()

    def floatguard(h: Any, w: Any, t: Any) -> Any:
        return fg.linear_cross_entropy(h, w, t)

    del torch
    return {UNFUSED: unfused, "torchtune chunked": torchtune, "floatguard": floatguard}


def _step(fn: Callable[[Any, Any, Any], Any], h: Any, w: Any, t: Any) -> float:
    loss = fn(h, w, t)
    loss.backward()
    h.grad = w.grad = None
    return float(loss.detach())


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in {_STATUS}")


def _reset_peak() -> int | None:
    """Reset the resident-set high-water mark to the current RSS; that RSS in KiB, or None where the
    kernel offers no reset (not Linux, or ``/proc`` read-only)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def _peak_child(name: str, tokens: int, hidden: int, vocab: int, dtype_name: str) -> None:
    """In a fresh process: the peak resident memory one forward+backward adds over its inputs, in MiB
    (``null`` where it cannot be measured)."""
    import gc

    fn = _variants()[name]
    _step(fn, *_torch_inputs(16, hidden, 64, dtype_name))  # lazy imports, kernels, autograd: not in the peak
    h, w, t = _torch_inputs(tokens, hidden, vocab, dtype_name)
    gc.collect()
    base = _reset_peak()
    _step(fn, h, w, t)
    mib = None if base is None else (_status_kib("VmHWM") - base) / 1024
    print(json.dumps({"mib": mib}))


def _peak(name: str, tokens: int, hidden: int, vocab: int, dtype_name: str) -> float | None:
    out = subprocess.run([sys.executable, __file__, "--peak-child", name, "--tokens", str(tokens),
                          "--hidden", str(hidden), "--vocab", str(vocab), "--dtype", dtype_name],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the memory child of {name!r} ({dtype_name}) failed:\n{out.stderr}")
    mib = json.loads(out.stdout.strip().splitlines()[-1])["mib"]
    return None if mib is None else float(mib)


def _ok(value: float, target: float) -> str:
    return "ok" if value <= target else "FAIL"


def torch_table(tokens: int, hidden: int, vocab: int, rounds: int, dtype_name: str) -> Any:
    import torch

    torch.set_num_threads(1)
    peaks = {k: _peak(k, tokens, hidden, vocab, dtype_name) for k in _variants()}  # before the big parent heap
    h, w, t = _torch_inputs(tokens, hidden, vocab, dtype_name)
    fns = _variants()
    losses = {k: _step(fn, h, w, t) for k, fn in fns.items()}  # warm up, and check the losses agree
    for k, loss in losses.items():
        if abs(loss - losses[UNFUSED]) > LOSS_RTOL[dtype_name] * abs(losses[UNFUSED]):
            raise AssertionError(f"{k}: loss {loss!r} differs from {UNFUSED}'s {losses[UNFUSED]!r}")
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            _step(fn, h, w, t)
            times[k].append(time.perf_counter() - t0)
    base_t = statistics.median(times[UNFUSED])
    base_m = peaks[UNFUSED]
    rows = []
    for k, v in times.items():
        rt = statistics.median(v) / base_t
        m = peaks[k]
        rm = m / base_m if m is not None and base_m else float("nan")
        fg_row = k == "floatguard"
        rows.append([k, fmt_float(rt), fmt_float(statistics.median(v), 3),
                     "n/a" if m is None else f"{m:.0f}", fmt_float(rm),
                     f"≤ {TIME_TARGET:g} / ≤ {MEMORY_TARGET:.3g}" if fg_row else "",
                     f"{_ok(rt, TIME_TARGET)} / {_ok(rm, MEMORY_TARGET)}" if fg_row else ""])
    return make_table(
        f"PyTorch CPU, {dtype_name}, {tokens} tokens x {hidden} hidden x {vocab} vocabulary, forward+backward",
        ["variant", "time / unfused", "time (s)", "peak extra (MiB)", "memory / unfused", "target (time / memory)",
         "ok"], rows,
        caption=f"medians of {rounds} interleaved rounds, one thread; peak extra memory: VmHWM - VmRSS of one "
                "call in a fresh process, high-water mark reset after the inputs are made (clear_refs 5)",
    )


def jax_table(tokens: int, hidden: int, vocab: int, rounds: int) -> Any:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import floatguard as fg

    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(tokens, hidden)) * 0.5, jnp.float32)
    w = jnp.asarray(rng.normal(size=(vocab, hidden)) * 0.05, jnp.float32)
    t = jnp.asarray(rng.integers(0, vocab, tokens))

    def unfused(h: Any, w: Any) -> Any:
        return -jnp.take_along_axis(jax.nn.log_softmax(h @ w.T), t[:, None], axis=1).mean()

    def fused(h: Any, w: Any) -> Any:
        return fg.linear_cross_entropy(h, w, t)

    fns = {}
    for name, f in (("unfused jax.nn", unfused), ("floatguard", fused)):
        fns[(name, "forward")] = jax.jit(f)
        fns[(name, "value_and_grad")] = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    for f in fns.values():
        jax.block_until_ready(f(h, w))
    times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(h, w))
            times[k].append(time.perf_counter() - t0)
    rows = []
    for what in ("forward", "value_and_grad"):
        base = statistics.median(times[("unfused jax.nn", what)])
        for name in ("unfused jax.nn", "floatguard"):
            med = statistics.median(times[(name, what)])
            fg_row = name == "floatguard"
            rows.append([name, what, fmt_float(med / base), fmt_float(med, 3), "≤ 1" if fg_row else "",
                         _ok(med / base, 1.0) if fg_row else ""])
    return make_table(
        f"JAX CPU (jit), float32, {tokens} tokens x {hidden} hidden x {vocab} vocabulary",
        ["variant", "call", "time / unfused", "time (s)", "target", "ok"], rows, text_columns=2,
        caption=f"medians of {rounds} interleaved rounds, one thread",
    )


def main(argv: Sequence[str] | None = None) -> list[Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=HIDDEN)
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-jax", action="store_true")
    p.add_argument("--only", nargs="+", choices=("float32", "bfloat16", "jax"), default=None,
                   help="run only these tables")
    p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    p.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.peak_child is not None:
        _peak_child(a.peak_child, a.tokens, a.hidden, a.vocab, a.dtype)
        return []
    only = a.only or ["float32", "bfloat16"] + ([] if a.no_jax else ["jax"])
    tables = [torch_table(a.tokens, a.hidden, a.vocab, a.rounds, d) for d in ("float32", "bfloat16") if d in only]
    if "jax" in only:
        tables.append(jax_table(a.tokens, a.hidden, a.vocab, a.rounds))
    print_tables(tables)
    return tables


if __name__ == "__main__":
    _one_thread.one_cpu()  # XLA: one thread (see _one_thread); not on import, as the tests import this module
    main()
