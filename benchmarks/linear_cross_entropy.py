"""linear_cross_entropy against the unfused LM head + cross-entropy and torchtune's chunked loss.

PyTorch on CPU, one thread, float32 and bfloat16, 4096 tokens × 512 hidden × 32,000 vocabulary
(issue 15 §2): forward+backward time (medians of interleaved rounds, side by side in one process;
ratios to ``F.cross_entropy(hidden @ weight.T, target)``) and peak extra memory (each variant once
in a fresh subprocess: its ``ru_maxrss`` after the call minus before it, with the inputs made).

* unfused: ``F.cross_entropy(hidden @ weight.T, target)`` (bfloat16 logits upcast to float32);
  in bfloat16 its three products are bfloat16 products, as floatguard's are;
* torchtune: ``CEWithChunkedOutputLoss``'s recipe: hidden split into 8 token chunks, each
  chunk's logits made and upcast to float32, ``F.cross_entropy(..., reduction="sum")`` per chunk;
* floatguard: ``fg.linear_cross_entropy(hidden, weight, target)``.

JAX (float32, under ``jit``): forward and value-and-grad of ``fg.linear_cross_entropy`` against
``-take(jax.nn.log_softmax(hidden @ weight.T), target).mean()``.

    python benchmarks/linear_cross_entropy.py [--tokens 4096] [--rounds 3] [--no-jax]
        [--only float32|bfloat16|jax ...]   (a subset of the three tables, to split a long run)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import _one_thread  # noqa: F401  (first: one thread before torch/jax load)
from _table import fmt_float, make_table, print_tables

HIDDEN, VOCAB = 512, 32_000
TORCHTUNE_CHUNKS = 8


def _torch_inputs(tokens: int, dtype_name: str) -> tuple[Any, Any, Any]:
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, HIDDEN, generator=g, dtype=dtype).mul_(0.5).requires_grad_()  # in place: no
    w = torch.randn(VOCAB, HIDDEN, generator=g, dtype=dtype).mul_(0.05).requires_grad_()  # temporary in the peak
    t = torch.randint(0, VOCAB, (tokens,), generator=g)
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
    return {"unfused F.cross_entropy": unfused, "torchtune chunked": torchtune, "floatguard": floatguard}


def _step(fn: Callable[[Any, Any, Any], Any], h: Any, w: Any, t: Any) -> float:
    loss = fn(h, w, t)
    loss.backward()
    h.grad = w.grad = None
    return float(loss.detach())


def _peak_child(name: str, tokens: int, dtype_name: str) -> None:
    """In a fresh process: the peak resident memory the variant adds over its inputs, in MiB."""
    import gc

    import torch

    fn = _variants()[name]  # imports (floatguard, numba) before the baseline
    h, w, t = _torch_inputs(tokens, dtype_name)
    _ = torch.ones(8, 8) @ torch.ones(8, 8)  # load the BLAS before the baseline
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _step(fn, h, w, t)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mib": (after - before) / 1024}))


def _peak(name: str, tokens: int, dtype_name: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--peak-child", name, "--tokens", str(tokens),
                          "--dtype", dtype_name], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["mib"])


def torch_table(tokens: int, rounds: int, dtype_name: str) -> Any:
    import torch

    torch.set_num_threads(1)
    h, w, t = _torch_inputs(tokens, dtype_name)
    fns = _variants()
    for fn in fns.values():  # warm up (and check the losses agree)
        _step(fn, h, w, t)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            _step(fn, h, w, t)
            times[k].append(time.perf_counter() - t0)
    peaks = {k: _peak(k, tokens, dtype_name) for k in fns}
    base_t = statistics.median(times["unfused F.cross_entropy"])
    base_m = peaks["unfused F.cross_entropy"]
    rows = [[k, fmt_float(statistics.median(v) / base_t), fmt_float(statistics.median(v), 3),
             f"{peaks[k]:.0f}", fmt_float(peaks[k] / base_m if base_m > 0 else float("nan"))] for k, v in times.items()]
    return make_table(
        f"PyTorch CPU, {dtype_name}, {tokens} tokens x {HIDDEN} hidden x {VOCAB} vocabulary, forward+backward",
        ["variant", "time / unfused", "time (s)", "peak extra (MiB)", "memory / unfused"], rows,
        caption=f"medians of {rounds} interleaved rounds, one thread; peak extra memory: ru_maxrss delta of "
                "one call in a fresh process",
    )


def jax_table(tokens: int, rounds: int) -> Any:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import floatguard as fg

    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(tokens, HIDDEN)) * 0.5, jnp.float32)
    w = jnp.asarray(rng.normal(size=(VOCAB, HIDDEN)) * 0.05, jnp.float32)
    t = jnp.asarray(rng.integers(0, VOCAB, tokens))

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
            rows.append([name, what, fmt_float(med / base), fmt_float(med, 3)])
    return make_table(
        f"JAX CPU (jit), float32, {tokens} tokens x {HIDDEN} hidden x {VOCAB} vocabulary",
        ["variant", "call", "time / unfused", "time (s)"], rows, text_columns=2,
        caption=f"medians of {rounds} interleaved rounds, one thread",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-jax", action="store_true")
    p.add_argument("--only", nargs="+", choices=("float32", "bfloat16", "jax"), default=None,
                   help="run only these tables")
    p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    p.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peak_child is not None:
        _peak_child(a.peak_child, a.tokens, a.dtype)
        return
    only = a.only or ["float32", "bfloat16"] + ([] if a.no_jax else ["jax"])
    tables = [torch_table(a.tokens, a.rounds, d) for d in ("float32", "bfloat16") if d in only]
    if "jax" in only:
        tables.append(jax_table(a.tokens, a.rounds))
    print_tables(tables)


if __name__ == "__main__":
    main()
