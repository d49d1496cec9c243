"""Compile the fused CPU kernels into numba's on-disk cache ahead of their first call.

``python -m floatguard.ops.precompile`` (or :func:`precompile`): numba compiles each
kernel for each signature (dtype, layout) on its first call, 10 to 25 seconds in all
on a new machine, and caches it beside the package, where every later process loads it
in milliseconds. A container image or a CI job can pay that once, in a step of its own
or beside other work (``make test`` runs it while ``mypy`` checks the types, so that
the test workers find the kernels in the cache instead of each compiling them).

It calls the ops themselves, on small NumPy arrays and PyTorch tensors (where torch is
installed) in the dtypes people compute in, forward and backward: the signatures a
program meets are those it compiles. Without numba there is nothing to compile and it
returns 0.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import elementwise as E
from . import losses as L
from . import reductions as R

__all__ = ["precompile"]

# a small call (one thread, the tensors read in place) and one large enough for the row chunks over threads and the
# kernels on NumPy views; compiling is the cost, not running
SHAPES = ((6, 11), (96, 1000))


def _signatures() -> int:
    """How many (kernel, signature) pairs numba holds for floatguard's kernel modules."""
    import numba.core.registry

    count = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith("floatguard.ops._numba"):
            continue
        for obj in vars(mod).values():
            if isinstance(obj, numba.core.registry.CPUDispatcher):
                count += len(obj.signatures)
    return count


class _Data(NamedTuple):
    """The arguments of one step of the matrix: logits ``x``, class indices ``t``, probabilities ``p``, values in
    ``[0, 1)`` ``y`` and class weights ``w``."""

    x: Any
    t: Any
    p: Any
    y: Any
    w: Any


_Call = Callable[[Any, _Data], Any]  # (the logits, or a view of them; the rest) -> the op's result

# the calls of both libraries (PyTorch's without and with a backward pass): reductions, elementwise ops, losses
REDUCTION_CALLS: tuple[_Call, ...] = (
    lambda x, d: R.logsumexp(x, axis=-1),
    lambda x, d: R.softmax(x, axis=-1),
    lambda x, d: R.log_softmax(x, axis=-1),
)
ELEMENTWISE_CALLS: tuple[_Call, ...] = (
    lambda x, d: E.log_sigmoid(x),
    lambda x, d: E.sigmoid(x),
    lambda x, d: E.softplus(x),
    lambda x, d: E.log1mexp(-abs(x) - 0.125),
    lambda x, d: E.logaddexp(x, d.y),
)
LOSS_CALLS: tuple[_Call, ...] = (
    *(lambda x, d, r=r: L.cross_entropy(x, d.t, reduction=r) for r in ("mean", "sum", "none")),
    *(lambda x, d, r=r: L.cross_entropy(x, d.p, reduction=r) for r in ("mean", "sum", "none")),
    *(lambda x, d, r=r: L.binary_cross_entropy_with_logits(x, d.y, reduction=r) for r in ("mean", "sum", "none")),
    lambda x, d: L.cross_entropy(x, d.t, label_smoothing=0.1),
    lambda x, d: L.cross_entropy(x, d.t, weight=d.w),
    lambda x, d: L.cross_entropy(x, d.t, ignore_index=0),
    lambda x, d: L.cross_entropy(x, d.t, z_loss=1e-4),
    lambda x, d: L.cross_entropy(x, d.p, softcap=30.0),
)
CALLS = REDUCTION_CALLS + ELEMENTWISE_CALLS + LOSS_CALLS

# NumPy's besides: a vector, every axis, weights b, and the ops that run on NumPy kernels alone
NUMPY_CALLS: tuple[_Call, ...] = (
    *CALLS,
    lambda x, d: R.logsumexp(x[0]),
    lambda x, d: R.logsumexp(x),
    lambda x, d: R.logsumexp(x, axis=-1, b=d.y),
    lambda x, d: R.logmeanexp(x, axis=-1),
    lambda x, d: R.logcumsumexp(x, axis=-1),
    lambda x, d: E.softplus_inverse(abs(x) + 0.125),
    lambda x, d: E.logsubexp(abs(x) + 1, -d.y),
    lambda x, d: E.xlogy(x, d.y),
    lambda x, d: E.xlog1py(x, d.y),
)


def _run_numpy() -> None:
    """The NumPy calls in float16, float32 and float64, on contiguous arrays and on strided views."""
    rng = np.random.default_rng(0)
    for dtype, (rows, cols), strided in itertools.product((np.float16, np.float32, np.float64), SHAPES, (False, True)):
        x = (rng.standard_normal((rows, 2 * cols if strided else cols)) * 3).astype(dtype)
        x = x[:, ::2] if strided else x  # a view with a stride: numba's other array layout
        d = _Data(x, rng.integers(0, cols, rows), rng.dirichlet(np.ones(cols), rows).astype(dtype),
                  rng.random((rows, cols)).astype(dtype), np.linspace(0.5, 1.5, cols).astype(dtype))
        for call in NUMPY_CALLS:
            call(x, d)


def _cols(x: Any) -> Any:
    """The first ``2k`` columns of rows ``x`` as ``(rows, 2, k)``: a class axis in the middle (the column kernels)."""
    k = x.shape[1] // 2
    return x[:, : 2 * k].reshape(-1, 2, k)


# PyTorch's besides: reductions and the cross-entropy along a middle axis (``dim=1`` of ``(N, C, H, W)``), compiled
# first: their kernels take ~50 s cold, and the test suite reaches them within its first minute
COLUMN_CALLS: tuple[_Call, ...] = (
    lambda x, d: R.softmax(_cols(x), axis=1),
    lambda x, d: R.log_softmax(_cols(x), axis=1),
    lambda x, d: R.logsumexp(_cols(x), axis=1),
    lambda x, d: L.cross_entropy(_cols(x), d.t[:, None].expand(-1, x.shape[1] // 2) % 2, axis=1),
    lambda x, d: L.cross_entropy(_cols(x), _cols(d.p), axis=1),
)


def _run_torch(torch: Any, calls: tuple[_Call, ...]) -> None:
    """The PyTorch ``calls`` in float32, bfloat16, float16 and float64, without and with a backward pass."""
    gen = torch.Generator().manual_seed(0)
    for dtype, (rows, cols) in itertools.product((torch.float32, torch.bfloat16, torch.float16, torch.float64), SHAPES):
        x0 = torch.randn(rows, cols, generator=gen, dtype=torch.float64).mul_(3)
        p = torch.softmax(torch.randn(rows, cols, generator=gen, dtype=torch.float64), -1)
        d = _Data(x0.to(dtype), torch.randint(0, cols, (rows,), generator=gen), p.to(dtype),
                  torch.rand(rows, cols, generator=gen, dtype=torch.float64).to(dtype),
                  torch.linspace(0.5, 1.5, cols, dtype=dtype))
        for call, grad in itertools.product(calls, (False, True)):
            x = x0.to(dtype, copy=True).requires_grad_(grad)
            out = call(x, d)
            if grad:
                out.sum().backward()


def precompile(*, verbose: bool = False, part: int | None = None) -> int:
    """Compile the kernels the ops call on NumPy arrays and PyTorch tensors into numba's cache.

    ``part``: 0 or 1, about half of the work (numba compiles on one core: two processes, one for each part, take
    about half the time; 0: the middle-axis calls, NumPy's and the elementwise ops, 1: the reductions and the losses
    on PyTorch rows: 100 and 71 s cold, side by side, on the AVX2 VM). Returns how many kernel signatures were
    compiled or loaded (0 without numba).
    """
    if importlib.util.find_spec("numba") is None:
        return 0
    start = time.perf_counter()
    torch: Any = None
    if importlib.util.find_spec("torch") is not None:
        torch = importlib.import_module("torch")
    if part != 1:
        if torch is not None:
            _run_torch(torch, COLUMN_CALLS)
            from . import _numba_team_columns  # noqa: F401  (their callbacks for torch's OpenMP team)
        _run_numpy()
    if torch is not None:
        _run_torch(torch, CALLS if part is None else ELEMENTWISE_CALLS if part == 0 else REDUCTION_CALLS + LOSS_CALLS)
        if part != 1:
            from . import _numba_team_elementwise  # noqa: F401  (the elementwise ops' and the BCE's callbacks)
        if part != 0:  # the callbacks large threaded calls hand to torch's OpenMP team (compiled on import)
            from . import _numba_team, _numba_team_ce  # noqa: F401
    count = _signatures()
    if verbose:
        print(f"floatguard: {count} kernel signatures compiled or loaded from the cache "
              f"in {time.perf_counter() - start:.1f} s")
    return count


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m floatguard.ops.precompile", description=__doc__.splitlines()[0])
    parser.add_argument("--part", type=int, choices=(0, 1), help="half of the work, for two processes")
    precompile(verbose=True, part=parser.parse_args().part)
