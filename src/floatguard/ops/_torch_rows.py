"""Between PyTorch tensors and the numba kernels of the fused losses: NumPy views, row chunks, threads.

The kernels (:mod:`._numba_losses`) take NumPy arrays: :func:`numpy_view` gives one without a copy
(bfloat16 as its int16 bits; float16 goes through a float32 copy, :func:`kernel_input`). Large calls split their
rows over ``torch.get_num_threads()`` threads on torch's own OpenMP team (:func:`openmp_team`, :func:`team_for`,
:func:`team_run`: the C callbacks of the ``_numba_team*`` modules), the way torch's own loops run: no thread to wake,
and no second set of threads beside torch's spinning workers. Where that team is not reachable (not Linux, another
OpenMP runtime, a forked child) :func:`run_rows` runs the same kernels in a pool of Python threads (they release the
GIL). A forked child drops both.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch

from . import _numba_losses as K

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
PARALLEL_MIN = 1 << 16  # elements below which one thread does it all
EMPTY = np.empty(0)
FUSED_GRAD = (torch.float32, torch.bfloat16)  # the dtypes whose forward writes the gradient of g = 1
# Logits up to this size take the forward that writes the gradient: the written gradient is a residual beside the
# logits the backward keeps, so above it the backward computes the gradient again and the residuals stay what torch
# keeps, one tensor of the logits' size (2048×32000 float32 held 500 MiB from the forward to the backward, torch 250)
WRITTEN_MAX_BYTES = 1 << 24
_pool: ThreadPoolExecutor | None = None
_team: Any = None  # (GOMP_parallel, callbacks) once looked up (openmp_team); False where it cannot be used


def _forget_pool() -> None:
    """In a forked child: drop the parent's pool, whose threads did not survive the fork (its ``submit`` queued work
    that no thread ran, and the call waited forever); the child makes its own on its first threaded call. Nor does
    the child use torch's OpenMP team (:func:`openmp_team`): libgomp's team did not survive either, and a parallel
    region in the child waits for it forever (torch's own ops too: a two-thread ``torch.add`` hangs there)."""
    global _pool, _team
    _pool = None
    _team = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def openmp_team() -> Any:
    """``(run, callbacks)``: ``run(callback, data, k)`` calls ``GOMP_parallel`` of the OpenMP runtime PyTorch loaded,
    which runs the C ``callback(data)`` on ``k`` threads of torch's own team (the caller among them), and the
    callbacks of :mod:`._numba_team`; None where that is not available (not Linux, torch built with another
    OpenMP, numba missing), and the caller then uses the thread pool of :func:`run_rows`."""
    global _team
    if _team is None:
        _team = _find_team() or False
    return _team or None


def _find_team() -> Any:
    import ctypes

    try:
        with open("/proc/self/maps") as f:  # the libgomp torch loaded (its own copy, RTLD_LOCAL: not in dlsym(NULL))
            paths = sorted({ln.split()[-1] for ln in f if ln.rstrip().endswith("libgomp.so.1")})
        if len(paths) != 1:  # none, or two runtimes (numba's OpenMP layer beside torch's): not guessed between
            return None
        lib = ctypes.CDLL(paths[0], mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        addr = ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value
        if not addr:
            return None
        run = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint)(addr)
        from ._numba_team import CALLBACKS  # compiles the callbacks (cached)
        from ._numba_team_ce import CALLBACKS as CE_CALLBACKS
        from ._numba_team_columns import CALLBACKS as COLUMN_CALLBACKS
        from ._numba_team_elementwise import CALLBACKS as ELEMENTWISE_CALLBACKS
    except Exception:  # no such library or symbol, or numba failed: the thread pool then
        return None
    callbacks = CALLBACKS | CE_CALLBACKS | COLUMN_CALLBACKS | ELEMENTWISE_CALLBACKS
    if not (CALLBACKS and CE_CALLBACKS and COLUMN_CALLBACKS and ELEMENTWISE_CALLBACKS):
        return None
    return (lambda cb, data, k: run(cb, data.ctypes.data, k, 0)), callbacks


VIEW_CODE = {"f": 0, "h": 1, "d": 3}  # the storage code of the kernels' NumPy views: float32, bfloat16 bits, float64


def team_for(work: int, rows: int) -> tuple[Any, int] | None:
    """``(team, threads)`` where ``rows`` rows (or elements) holding ``work`` entries in all are split over threads on
    torch's OpenMP team (:func:`openmp_team`); None where one thread does it all (fewer than ``PARALLEL_MIN``
    entries, one row, one thread) or the team is not available (the caller's thread pool then)."""
    if rows < 2 or work < PARALLEL_MIN or (threads := torch.get_num_threads()) <= 1:
        return None
    team = openmp_team()
    return None if team is None else (team, threads)


def team_chunks(rows: int, threads: int) -> int:
    """The number of chunks :func:`team_run` cuts ``rows`` rows into: four a thread, for balance."""
    return min(rows, 4 * threads)


def team_run(team: Any, kind: str, args: list[Any], rows: int, threads: int) -> np.ndarray:
    """The callback ``kind`` (of the ``_numba_team*`` modules) over
    ``rows`` rows on ``threads`` threads of torch's OpenMP team (:func:`openmp_team`), its ``data`` ``[0, chunks,
    *args]`` (int64; a Python float stored as its float64 bits); returns ``data`` (some callbacks write a flag in it).
    :func:`team_chunks` chunks; a row is never split."""
    run, callbacks = team
    data = np.array([0, team_chunks(rows, threads), *(0 if isinstance(v, float) else v for v in args)],
                    dtype=np.int64)
    floats = data.view(np.float64)
    for j, v in enumerate(args):
        if isinstance(v, float):
            floats[2 + j] = v
    run(callbacks[kind], data, threads)
    return data


def usable(x: torch.Tensor) -> bool:
    """True when the compiled kernels can take ``x`` (numba present, CPU, a supported dtype)."""
    return K.AVAILABLE and x.device.type == "cpu" and x.dtype in DTYPES


def numpy_view(x: torch.Tensor) -> np.ndarray:
    """A NumPy view of a contiguous float32/float64/bfloat16 tensor (bfloat16 as its int16 bits)."""
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy()
    return x.numpy()


def kernel_input(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.dtype == torch.float16:
        x = x.float()
    return x.contiguous()


def grad_input(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The upstream gradient as a contiguous tensor of ``dtype``; one entry when it is an expanded scalar
    (``out.sum().backward()``), which the kernels broadcast (no (N,) copy of one number)."""
    g = g.detach()
    if g.numel() > 1 and all(st == 0 for st in g.stride()):
        g = g.reshape(-1)[:1]
    g = kernel_input(g)
    return g if g.dtype == dtype else g.to(dtype)


def _chunks(rows: int, cols: int) -> list[tuple[int, int]]:
    threads = torch.get_num_threads()
    if threads <= 1 or rows * cols < PARALLEL_MIN or rows < 2:
        return [(0, rows)]
    k = min(threads, rows)
    bounds = [rows * i // k for i in range(k + 1)]
    return list(itertools.pairwise(bounds))


def run_rows(fn: Any, rows: int, cols: int) -> list[Any]:
    """``fn(r0, r1)`` over row chunks, in threads when the work is large enough: the first chunk in the calling
    thread, the others in the pool (which then has one thread fewer than ``torch.get_num_threads()``, as torch's
    own parallel loops count the caller). Returns once every chunk is done, also when one raised."""
    global _pool
    parts = _chunks(rows, cols)
    if len(parts) == 1:
        return [fn(0, rows)]
    if _pool is None or _pool._max_workers < len(parts) - 1:
        _pool = ThreadPoolExecutor(max_workers=len(parts) - 1, thread_name_prefix="floatguard")
    rest = [_pool.submit(fn, *p) for p in parts[1:]]
    try:
        first = fn(*parts[0])
    finally:
        wait(rest)  # the other chunks still write into the caller's tensors
    return [first, *(f.result() for f in rest)]


def fsum_ieee(values: Iterable[float]) -> float:
    """``math.fsum`` of ``values`` (the chunks' sums of a loss: one rounding whatever the chunks), with IEEE
    arithmetic's answer where ``fsum`` raises instead: NaN for ``inf - inf``, ``+-inf`` for an overflow."""
    vals = list(values)
    try:
        return math.fsum(vals)
    except (ValueError, OverflowError):
        return sum(vals)


def pairs_sum(values: Iterable[float]) -> float:
    """The sum of compensated pairs ``(total, comp, total, comp, ...)`` (the BCE kernels', one a chunk) by
    :func:`fsum_ieee`; a pair whose ``total`` is not finite counts its ``total`` alone (an infinite loss makes ``comp``
    NaN, ``inf - inf``: the sum was NaN where it is ``+inf``)."""
    vals = list(values)
    for j in range(0, len(vals) - 1, 2):
        if not math.isfinite(vals[j]):
            vals[j + 1] = 0.0
    return fsum_ieee(vals)


def bad_target(func: str, target: torch.Tensor, row: int, n_cls: int) -> ValueError:
    return ValueError(
        f"floatguard.{func}: argument 'target' has class indices outside [0, {n_cls}) "
        f"(e.g. {int(target.reshape(-1)[row])}); set ignore_index for padding entries"
    )


def empty_out(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised output like ``x`` (float32/float64 allocated by NumPy, which asks for huge pages)."""
    if x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.empty(tuple(x.shape), dtype=np.float32 if x.dtype == torch.float32 else np.float64))
    return torch.empty(x.shape, dtype=x.dtype)



def from_float64(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor of ``dtype`` from the float64 array ``a``, each entry rounded once: NumPy's ``astype`` for
    float32 (1.5 us against ``Tensor.to``'s 4.3 on 32 entries, a small call's budget), a copy for float64."""
    if dtype == torch.float32:
        return torch.from_numpy(a.astype(np.float32))
    if dtype == torch.float64:
        return torch.from_numpy(a.copy())
    return torch.from_numpy(a).to(dtype)


def scalar(val: float, dtype: torch.dtype) -> torch.Tensor:
    """A 0-d tensor of ``val`` rounded once to ``dtype``, the cheapest way (``torch.tensor`` costs ~2 us)."""
    if dtype == torch.float32:
        return torch.from_numpy(np.array(val, np.float32))
    if dtype == torch.float64:
        return torch.from_numpy(np.array(val))
    return torch.full((), val, dtype=torch.float64).to(dtype)


def reduced_scalar(total: float, count: float, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """The loss ``total`` reduced: itself for ``"sum"``, else its mean over ``count`` (NaN over none)."""
    return scalar(total if reduction == "sum" else (total / count if count else math.nan), dtype)


def writes_gradient(x: torch.Tensor, needs_grad: bool) -> bool:
    """Whether a loss forward of the logits ``x`` also writes the gradient of ``loss.backward()``: float32/bfloat16
    logits that require it (``needs_grad``), of at most ``WRITTEN_MAX_BYTES`` (see there)."""
    return needs_grad and x.dtype in FUSED_GRAD and x.numel() * x.element_size() <= WRITTEN_MAX_BYTES


def written_gradient(ready: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor | None:
    """The gradient a forward wrote for ``g = 1`` (``ready``), for the upstream gradient ``g`` of a scalar loss,
    or None when it must be computed again (``create_graph``, or a ``g`` the scaling would round).

    A power of two (``1``; a loss scale ``2^k``; ``1 / 2^k`` of gradient accumulation; their negatives) only moves
    exponents, so ``g * ready`` is what the kernel writes for that ``g`` (a result in the subnormal range rounds
    once more there: within an ulp).
    """
    if ready is None or torch.is_grad_enabled():
        return None
    gv = float(g)
    if gv == 1.0:
        return ready
    if math.isfinite(gv) and abs(math.frexp(gv)[0]) == 0.5:
        return ready.mul_(gv)
    return None
