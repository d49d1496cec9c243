"""Speed of floatguard's logsumexp, softmax and log_softmax beside NumPy, SciPy, PyTorch and JAX.

Everything runs in one process on one thread (OMP_NUM_THREADS=1 and XLA's
single-thread flags are set before the libraries load, ``torch.set_num_threads(1)``,
threadpoolctl when installed). Times are the minimum over several rounds, the
candidates interleaved within each round so that a noisy machine treats them
alike, and are reported as multiples of one ``np.sum`` pass over the same array.
Each peer is compared with floatguard on the same kind of array: NumPy for the
naive formula and SciPy, tensors for PyTorch, jitted functions for JAX.

Run ``python benchmarks/ops_speed.py`` (``--quick`` uses 10^5 and 256×128 arrays).
"""

from __future__ import annotations

import argparse
import contextlib
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import _one_thread  # first: one thread before torch/jax load
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special as sps
import torch
from _table import make_table, print_tables
from rich.table import Table

import floatguard as fg

jax.config.update("jax_enable_x64", True)
torch.set_num_threads(1)

OPS = ("logsumexp", "softmax", "log_softmax")


@dataclass
class Candidate:
    """A timed callable; ``peer_of`` names the floatguard candidate it is compared with."""

    name: str
    fn: Callable[[], Any]
    fg_name: str | None = None  # for a peer: the floatguard candidate on the same kind of array


def _naive(op: str, axis: int) -> Callable[[np.ndarray], np.ndarray]:
    if op == "logsumexp":
        return lambda x: np.log(np.sum(np.exp(x), axis=axis))
    if op == "softmax":

        def softmax(x: np.ndarray) -> np.ndarray:
            e = np.exp(x)
            return e / np.sum(e, axis=axis, keepdims=True)

        return softmax
    return lambda x: x - np.log(np.sum(np.exp(x), axis=axis, keepdims=True))


def candidates(x: np.ndarray) -> dict[str, list[Candidate]]:
    """For each op, the peers and the floatguard versions on ``x`` (reduce along the last axis)."""
    t = torch.from_numpy(x)
    j = jnp.asarray(x)
    axis = -1
    peers_np = {"logsumexp": sps.logsumexp, "softmax": sps.softmax, "log_softmax": sps.log_softmax}
    peers_torch = {"logsumexp": torch.logsumexp, "softmax": torch.softmax, "log_softmax": torch.log_softmax}
    peers_jax = {"logsumexp": jax.nn.logsumexp, "softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax}
    out: dict[str, list[Candidate]] = {}
    for op in OPS:
        fg_op = getattr(fg, op)
        naive = _naive(op, axis)
        sp = peers_np[op]
        tp = peers_torch[op]
        jp = jax.jit(lambda a, f=peers_jax[op]: f(a, axis=axis))
        jf = jax.jit(lambda a, f=fg_op: f(a, axis=axis))
        jp(j).block_until_ready()  # compile outside the timing
        jf(j).block_until_ready()
        out[op] = [
            Candidate("floatguard (NumPy)", lambda f=fg_op: f(x, axis=axis)),
            Candidate("floatguard (torch)", lambda f=fg_op: f(t, axis=axis)),
            Candidate("floatguard (JAX, jit)", lambda f=jf: f(j).block_until_ready()),
            Candidate("naive NumPy", lambda f=naive: f(x), "floatguard (NumPy)"),
            Candidate("scipy.special", lambda f=sp: f(x, axis=axis), "floatguard (NumPy)"),
            Candidate("torch", lambda f=tp: f(t, dim=axis), "floatguard (torch)"),
            Candidate("jax.nn (jit)", lambda f=jp: f(j).block_until_ready(), "floatguard (JAX, jit)"),
        ]
    return out


def _number(fn: Callable[[], Any], min_time: float) -> int:
    """Calls per measurement so that one measurement lasts at least ``min_time`` seconds."""
    n = 1
    while True:
        t = timeit.timeit(fn, number=n)
        if t >= min_time or n >= 10**6:
            return n
        n *= max(2, min(10, int(min_time / max(t, 1e-9)) + 1))


def time_round_robin(fns: dict[str, Callable[[], Any]], repeats: int, min_time: float) -> dict[str, float]:
    """Minimum seconds per call of each function, interleaving the functions in ``repeats`` rounds."""
    numbers = {k: _number(f, min_time) for k, f in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for k, f in fns.items():
            best[k] = min(best[k], timeit.timeit(f, number=numbers[k]) / numbers[k])
    return best


def bench(shape: tuple[int, ...], dtype: Any, repeats: int, min_time: float, seed: int = 0) -> Table:
    """One table: every op and peer on a random normal array of ``shape`` and ``dtype``."""
    x = (np.random.default_rng(seed).standard_normal(shape) * 4).astype(dtype)
    cands = candidates(x)
    fns: dict[str, Callable[[], Any]] = {"np.sum": lambda: np.sum(x)}
    for op, cs in cands.items():
        for c in cs:
            fns[f"{op}|{c.name}"] = c.fn
    best = time_round_robin(fns, repeats, min_time)
    unit = best["np.sum"]
    rows = []
    for op, cs in cands.items():
        for c in cs:
            if c.fg_name is None:
                continue
            peer = best[f"{op}|{c.name}"]
            mine = best[f"{op}|{c.fg_name}"]
            rows.append([op, c.name, f"{peer / unit:.1f}", f"{mine / unit:.1f}", f"{mine / peer:.2f}"])
    dims = "×".join(str(s) for s in shape)
    what = "one vector" if len(shape) == 1 else f"{shape[0]} rows, reduce the last axis"
    return make_table(
        f"Speed, {dims} {np.dtype(dtype).name} ({what}), 1 thread; times in np.sum passes",
        ["op", "peer", "peer (× np.sum)", "floatguard (× np.sum)", "floatguard / peer"],
        rows,
        caption=f"unit: one np.sum pass = {unit * 1e3:.3g} ms; min of {repeats} interleaved rounds. floatguard runs"
        " on the peer's kind of array: NumPy beside naive/SciPy, tensors beside torch, jitted beside jax.nn.",
        text_columns=2,
    )


def main(argv: Sequence[str] | None = None) -> list[Table]:
    """Time every op on the vector and the row batch, float32 and float64; print and return the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small arrays (10^5 and 256×128), few repeats")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5, quick 2)")
    args = parser.parse_args(argv)
    shapes = [(10**5,), (256, 128)] if args.quick else [(10**7,), (4096, 2048)]
    repeats = args.repeats or (2 if args.quick else 5)
    min_time = 0.002 if args.quick else 0.05
    ctx: Any = contextlib.nullcontext()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        ctx = threadpool_limits(1)
    with ctx:
        tables = [bench(s, d, repeats, min_time) for s in shapes for d in (np.float32, np.float64)]
    print_tables(tables)
    return tables


if __name__ == "__main__":
    _one_thread.one_cpu()  # XLA: one thread (see _one_thread); not on import, as the tests import this module
    main()
