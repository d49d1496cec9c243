"""softmax, log_softmax and logsumexp of PyTorch rows as ``torch.autograd.Function``s: the kernels' route.

Each op is one ``torch.autograd.Function`` whose forward runs the algorithm of the other backends and
whose backward is the analytic gradient (0, never NaN, on rows with no finite entry or a ``+inf``; NaN on rows
holding a NaN, as PyTorch's). On CPU tensors
(float32, float64, bfloat16, float16) both are numba kernels (:mod:`._numba_fast`, the ``fast`` extra)
reading the tensors' storage in place; without them the torch ops of :mod:`._torch_sweep`; off the CPU
those of :mod:`._torch_device`. Under ``create_graph`` the backward is differentiable torch ops, so
double backward works. :func:`softmax_fast` and :func:`logsumexp_fast` are the short path of a plain
call (one tensor, last axis): a few microseconds of Python. Large calls (``PARALLEL_MIN`` entries and more)
split their rows over ``torch.get_num_threads()`` threads, forward and backward: on torch's own OpenMP team where
it is reachable (:func:`._torch_rows.openmp_team`, the callbacks of :mod:`._numba_team`), else on the losses'
thread pool (:func:`._torch_rows.run_rows`). A row is never split, so the bits do not depend on the thread count.
They ran on one thread, and with two threads the attention softmax step took 1.6-1.9x PyTorch's (0.8-1.2x now).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from . import _namespace as _ns
from . import _torch_columns as _columns
from ._torch_device import device_logsumexp, device_softmax, grad_dtype, on_device
from ._torch_rows import PARALLEL_MIN, openmp_team, run_rows, team_run
from ._torch_sweep import EMPTY_LIKE_MIN, compiled_sweep, empty_like, fix_limits, lse_forward, softmax_forward


def _formula_rows(out: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """The rows whose gradient is the formula's: those with a finite max, and NaN rows (their output is NaN, so is
    their gradient, as the kernels'); the others (``-inf``, ``+inf``) get 0."""
    if finite is ALL_FINITE:
        return finite
    return finite | torch.isnan(out[..., :1])


def _softmax_grad(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``p * (g - sum(g p))``; 0 on rows with an infinite max, NaN on NaN rows."""
    wd = grad_dtype(out)
    p = torch.where(_formula_rows(out, finite), out.to(wd), 0.0)
    gw = g.to(wd)
    return (p * (gw - (gw * p).sum(dim=-1, keepdim=True))).to(out.dtype)


def _log_softmax_grad(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g - p sum(g)``; 0 on rows with an infinite max, NaN on NaN rows."""
    wd = grad_dtype(out)
    keep = _formula_rows(out, finite)
    p = torch.where(keep, torch.exp(out.to(wd)), 0.0)
    gw = g.to(wd)
    grad = gw - p * gw.sum(dim=-1, keepdim=True)
    return torch.where(keep, grad, 0.0).to(out.dtype)


# -- numba kernels on the tensors' storage -----------------------------------------------
# bfloat16 and float16 go to the kernels as 16-bit integers (the dtype picks the conversion)
_STORAGE = {torch.float32: None, torch.float64: None, torch.bfloat16: torch.int16, torch.float16: torch.uint16}
KERNEL_DTYPES = tuple(_STORAGE)  # float32, float64, bfloat16, float16: what the numba kernels read
_kern: Any = None  # the _numba_fast module, False without numba (or when it failed), None before the first look


def _kernels() -> Any:
    """:mod:`._numba_fast` when its kernels can run (imports numba once), else None."""
    global _kern
    if _kern is None:
        import numpy as np

        from . import _numpy_fast

        _kern = _numpy_fast._kernels_for(np.dtype(np.float32)) or False
    return _kern or None


STORAGE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}  # _numba_fast.STORAGE_CODES


def _on_kernels(x: torch.Tensor) -> Any:
    """The kernels module when rows ``x`` can go to it (CPU, a kernel dtype, non-empty rows), else None."""
    if on_device(x) or x.dtype not in STORAGE_CODE or x.shape[-1] == 0:
        return None
    return _kern or _kernels()


def _kernels_failed(exc: Exception) -> None:
    """Turn the kernels off (with a warning) after numba failed: the torch ops still work."""
    global _kern
    _kern = False
    import warnings

    warnings.warn(f"floatguard: numba kernels disabled, using torch ops ({exc!r})", RuntimeWarning, stacklevel=4)


def _kernel_call(fn: Any, *args: Any) -> Any:
    """Run a kernel and return its result; None (and the kernels off, with a warning) if numba fails."""
    try:
        got = fn(*args)
    except Exception as exc:  # numba cannot compile here: the torch ops still can
        _kernels_failed(exc)
        return None
    return True if got is None else got


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached and contiguous (itself when it already is: a few hundred ns less per call)."""
    if x.requires_grad:
        x = x.detach()
    return x if x.is_contiguous() else x.contiguous()


def _kernel_softmax(kern: Any, x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """softmax or log_softmax of rows ``x`` by the kernels, and ``finite`` (R, 1); None if they failed. (Not detached:
    the kernel reads the storage, and the callers run without grad mode.)"""
    r, n = x.shape
    return _kernel_rows(kern, x if x.is_contiguous() else x.contiguous(), log, STORAGE_CODE[x.dtype], r, n)


def _kernel_rows(kern: Any, x: torch.Tensor, log: bool, code: int, r: int, n: int
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`_kernel_softmax` of contiguous rows ``x`` (r, n) of dtype ``code``. A small call's budget is a few
    microseconds: the kernel is called directly (its failure handled as :func:`_kernel_call`'s)."""
    out = torch.empty_like(x) if r * n < EMPTY_LIKE_MIN else empty_like(x)
    if code == 3:  # float64: the table exp (the NumPy path's kernels, argmax by NumPy)
        bad = compiled_sweep(x, out, log)
        if bad is None:
            return None
        if not bad:
            return out, ALL_FINITE
    else:
        flags = _FLAGS if r <= FLAG_ROWS else torch.empty(r, dtype=torch.bool)  # held until the kernel returns
        fa = _FLAGS_AT if r <= FLAG_ROWS else flags.data_ptr()
        try:
            if r * n >= PARALLEL_MIN and r > 1 and (threads := torch.get_num_threads()) > 1:  # large: rows in threads
                xa, oa, team = x.data_ptr(), out.data_ptr(), openmp_team()
                if team is not None:
                    ok = bool(team_run(team, "softmax_fwd", [code, xa, oa, fa, r, n, int(log), 1], r, threads)[9])
                else:
                    step = n * x.element_size()
                    ok = all(run_rows(lambda r0, r1: kern.ptr_softmax_fwd(code, xa + r0 * step, oa + r0 * step,
                                                                          fa + r0, r1 - r0, n, log), r, n))
            else:
                ok = kern.ptr_softmax_fwd(code, x.data_ptr(), out.data_ptr(), fa, r, n, log)
        except Exception as exc:  # numba cannot compile here: the torch ops still can
            _kernels_failed(exc)
            return None
        if ok:
            return out, ALL_FINITE
    # a row with no finite max (rare): its flag again from torch's max, which propagates NaN as the kernel's
    finite = torch.isfinite(x.max(dim=-1, keepdim=True).values)
    return fix_limits(x, out, finite, log), finite


# Module-level tensors are made with functorch and the dispatch modes off: this module is imported by the first torch
# call of an op, which may run under a torch.func transform or torch.export's fake tensor mode, where a new tensor
# would be a wrapper or a fake with no storage (and a data_ptr that raises): the import failed there (and under a
# transform the ops lost their kernels for the rest of the process).
with torch._C._DisableFuncTorch(), _disable_current_modes():
    ALL_FINITE = torch.ones((1, 1), dtype=torch.bool)  # ``finite`` of rows that all have a finite max
    # Where the forward kernel writes its per-row flags for up to 4096 rows: never read (a call with a row whose max
    # is not finite takes the flags from torch's max), so calls in several threads may share it. A new bool tensor
    # per call took 1.3 us of a 32×10 softmax's ~12 (AVX2 VM).
    FLAG_ROWS = 4096
    _FLAGS = torch.empty(FLAG_ROWS, dtype=torch.bool)
_FLAGS_AT = _FLAGS.data_ptr()


def _kernel_softmax_grad(
    kern: Any, out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor, log: bool
) -> torch.Tensor:
    """The fused backward of softmax / log_softmax (one kernel pass per row); the kernel reads the storage, so
    nothing is detached (a small call's budget, as :func:`_kernel_rows`)."""
    if g.dtype != out.dtype:
        g = g.to(out.dtype)
    if not g.is_contiguous():
        g = g.contiguous()
    if not out.is_contiguous():
        out = out.contiguous()
    if not finite.is_contiguous():  # (R, 1), or (1, 1) when every row is finite
        finite = finite.contiguous()
    r, n = out.shape
    grad = torch.empty_like(out) if r * n < EMPTY_LIKE_MIN else empty_like(out)
    try:
        if r * n >= PARALLEL_MIN and r > 1 and torch.get_num_threads() > 1:  # large: rows in threads
            _softmax_grad_threads(kern, out, g, finite, grad, log)
        else:
            kern.ptr_softmax_bwd(STORAGE_CODE[out.dtype], out.data_ptr(), g.data_ptr(), finite.data_ptr(),
                                 finite.numel(), grad.data_ptr(), r, n, log)
    except Exception as exc:  # numba cannot compile here: the torch ops still can
        _kernels_failed(exc)
        return (_log_softmax_grad if log else _softmax_grad)(out, finite, g)
    return grad


def _softmax_grad_threads(kern: Any, out: torch.Tensor, g: torch.Tensor, finite: torch.Tensor, grad: torch.Tensor,
                          log: bool) -> None:
    """The backward kernel of :func:`_kernel_softmax_grad` over chunks of rows in threads (``finite``: one flag per
    row, or one for all)."""
    r, n = out.shape
    code, oa, ga, fa, nf, gra = (STORAGE_CODE[out.dtype], out.data_ptr(), g.data_ptr(), finite.data_ptr(),
                                 finite.numel(), grad.data_ptr())
    team = openmp_team()
    if team is not None:
        team_run(team, "softmax_bwd", [code, oa, ga, fa, nf, gra, r, n, int(log)], r, torch.get_num_threads())
        return
    step = n * out.element_size()

    def part(r0: int, r1: int) -> None:
        kern.ptr_softmax_bwd(code, oa + r0 * step, ga + r0 * step, fa + (0 if nf == 1 else r0),
                             1 if nf == 1 else r1 - r0, gra + r0 * step, r1 - r0, n, log)

    run_rows(part, r, n)


def softmax_backward(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor, log: bool,
                     graph: bool = False) -> torch.Tensor:
    """The gradient of softmax (``p (g - sum(g p))``) or, with ``log``, of log_softmax
    (``g - exp(o) sum(g)``) from the output ``out`` and ``finite``: the fused kernel where it applies,
    differentiable torch ops with ``graph`` (``create_graph``) or without the kernels."""
    kern = None if graph else _on_kernels(out)
    if kern is not None:
        return _kernel_softmax_grad(kern, out, finite, g, log)
    return (_log_softmax_grad if log else _softmax_grad)(out, finite, g)


# -- the autograd Functions -----------------------------------------------------------------
def softmax_any(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax or log_softmax of rows ``x`` and ``finite`` (R, 1): kernels, device ops, or the torch sweep."""
    kern = _on_kernels(x)
    if kern is not None:
        got = _kernel_softmax(kern, x, log)
        if got is not None:
            return got
    if on_device(x):
        return device_softmax(x, log)
    return softmax_forward(x, log)


def lse_any(x: torch.Tensor) -> torch.Tensor:
    """float64 (CPU) or compute-dtype (other devices) logsumexp of rows ``x``, as (R,)."""
    kern = _on_kernels(x)
    if kern is not None:
        x = _plain(x)
        r, n = x.shape
        lse = torch.empty(r, dtype=torch.float64)
        code, xa, la = STORAGE_CODE[x.dtype], x.data_ptr(), lse.data_ptr()
        if r * n >= PARALLEL_MIN and r > 1 and (threads := torch.get_num_threads()) > 1:  # large: rows in threads
            team = openmp_team()
            if team is not None:
                team_run(team, "logsumexp_fwd", [code, xa, la, r, n], r, threads)
                return lse
            step = n * x.element_size()

            def part(r0: int, r1: int) -> None:
                kern.ptr_logsumexp_fwd(code, xa + r0 * step, la + 8 * r0, r1 - r0, n)

            if _kernel_call(run_rows, part, r, n):
                return lse
        elif _kernel_call(kern.ptr_logsumexp_fwd, code, xa, la, r, n):
            return lse
    if on_device(x):
        return device_logsumexp(x)[:, 0]
    return lse_forward(x)[:, 0].to(torch.float64) if x.dtype != torch.float64 else lse_forward(x)[:, 0]


def plain_call(x: torch.Tensor, axis: Any) -> bool:
    """Whether a call on ``x`` along ``axis`` is plain: the last axis of a non-empty strided CPU tensor."""
    nd = x.ndim
    if nd == 0 or type(axis) is not int or (axis != -1 and axis != nd - 1) or x.layout is not torch.strided:
        return False
    return not (on_device(x) or x.numel() == 0)


def _short_path(x: torch.Tensor, axis: Any) -> bool:
    """Whether a call on ``x`` along ``axis`` can take the short path: a plain call (:func:`plain_call`) on a
    kernel dtype, kernels not known to be missing, eager."""
    return (plain_call(x, axis) and x.dtype in _STORAGE and _kern is not False
            and not torch.compiler.is_compiling())


def softmax_fast(x: torch.Tensor, axis: Any, log: bool) -> torch.Tensor | None:
    """``softmax(x, axis)`` (or ``log_softmax``) of a CPU tensor along its last axis, on the kernels
    with the least Python in between; None when that does not apply (the caller takes the full path).

    :func:`_short_path` and :func:`softmax_any` inlined, each attribute read once: a 32×10 call spent 6 of its
    9 us in Python (AVX2 VM)."""
    # is_compiling first: while Dynamo traces, _kern (None until the first eager call) is not read, or its guard
    # failed once the kernels were loaded (a recompile of a compiled function whose first op was softmax)
    if (torch.compiler.is_compiling() or _kern is False or type(axis) is not int or x.layout is not torch.strided
            or not x.is_cpu or _ns.FORCE_DEVICE_PATH):
        return None
    kern = _kern
    if kern is None:
        kern = _kernels()
        if not kern:
            return None
    code = STORAGE_CODE.get(x.dtype)
    shape = x.shape
    nd = len(shape)
    if code is None or nd == 0:
        return None
    if axis != -1 and axis != nd - 1:  # a middle axis: the column kernels, on the tensor as it lies
        return _columns.softmax(x, axis + nd if axis < 0 else axis, log) if code != 3 else None
    n = shape[-1]
    r = shape[0] if nd == 2 else math.prod(shape[:-1])
    if r == 0 or n == 0:
        return None
    rows = x if nd == 2 else x.reshape(r, n)
    if x.requires_grad and torch.is_grad_enabled():
        out = (LogSoftmax if log else Softmax).apply(rows, code)
    else:
        got = _kernel_rows(kern, rows if rows.is_contiguous() else rows.contiguous(), log, code, r, n)
        out = softmax_forward(rows, log)[0] if got is None else got[0]
    return out if nd == 2 else out.view(shape)


def logsumexp_fast(x: torch.Tensor, axis: Any, keepdims: Any) -> torch.Tensor | None:
    """``logsumexp(x, axis, keepdims)`` of a CPU tensor along its last axis, as :func:`softmax_fast`."""
    if type(keepdims) is not bool:
        return None
    if not _short_path(x, axis):
        nd = x.ndim
        if (type(axis) is int and -nd <= axis < nd - 1 and x.dtype in _columns.CODES and _kern is not False
                and not torch.compiler.is_compiling() and not _ns.FORCE_DEVICE_PATH):
            return _columns.logsumexp(x, axis + nd if axis < 0 else axis, keepdims)
        return None
    nd = x.ndim
    rows = x if nd == 2 else x.reshape(-1, x.shape[-1])
    if x.requires_grad and torch.is_grad_enabled():
        # the final shape made inside the Function: a view outside would add a node to the graph
        return LogSumExp.apply(rows, (*x.shape[:-1], 1) if keepdims else x.shape[:-1])
    lse = lse_any(rows).to(x.dtype)
    return lse.view((*x.shape[:-1], 1) if keepdims else x.shape[:-1])


class LogSumExp(torch.autograd.Function):
    """``m + log1p(s)`` per row, as ``(R, 1)`` or in the given ``shape`` of ``R`` entries; gradient
    ``softmax(x)`` (0 on rows with no finite max)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, shape: Any = None) -> torch.Tensor:
        lse = lse_any(x)
        ctx.save_for_backward(x, lse)  # the input (no copy) and R floats: what torch keeps
        out = lse.to(x.dtype)
        return out[:, None] if shape is None else out.view(shape)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, lse = ctx.saved_tensors
        return lse_backward(x, lse, g), None


def lse_backward(x: torch.Tensor, lse: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The gradient ``g softmax(x)`` of :class:`LogSumExp` (0 on rows with an infinite max, NaN on NaN rows) from
    its float64 ``lse`` (R,): one kernel pass, ``g exp(x - lse)``; under ``create_graph`` (or without kernels)
    through :class:`Softmax`, differentiable and exact too."""
    kern = _on_kernels(x)
    if kern is not None and not torch.is_grad_enabled():
        xc = _plain(x)
        grad = empty_like(xc)
        g64 = _plain(g.reshape(-1).to(torch.float64))
        r, n = xc.shape
        code, xa, la, ga, gra = STORAGE_CODE[x.dtype], xc.data_ptr(), lse.data_ptr(), g64.data_ptr(), grad.data_ptr()
        if r * n >= PARALLEL_MIN and r > 1 and (threads := torch.get_num_threads()) > 1:  # large: rows in threads
            team = openmp_team()
            if team is not None:
                team_run(team, "logsumexp_bwd", [code, xa, la, ga, gra, r, n], r, threads)
                return grad
            step = n * xc.element_size()

            def part(r0: int, r1: int) -> None:
                kern.ptr_logsumexp_bwd(code, xa + r0 * step, la + 8 * r0, ga + 8 * r0, gra + r0 * step, r1 - r0, n)

            if _kernel_call(run_rows, part, r, n):
                return grad
        elif _kernel_call(kern.ptr_logsumexp_bwd, code, xa, la, ga, gra, r, n):
            return grad
    p = torch.where(torch.isinf(lse)[:, None], 0.0, Softmax.apply(x))  # NaN rows: NaN
    return g.reshape(-1, 1) * p


def _softmax_function(log: bool) -> Any:
    """The autograd Function of softmax (``e / (1 + s)`` per row; gradient ``p * (g - sum(g p))``) or,
    with ``log``, of log_softmax (``d - log1p(s)``; gradient ``g - p sum(g)``)."""

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, code: int = -1) -> torch.Tensor:
            if code >= 0:  # from softmax_fast: CPU rows of the storage dtype ``code``, the kernels loaded
                r, n = x.shape
                got = _kernel_rows(_kern, x if x.is_contiguous() else x.contiguous(), log, code, r, n)
                out, finite = softmax_forward(x, log) if got is None else got
            else:
                out, finite = softmax_any(x, log=log)
            ctx.save_for_backward(out)
            ctx.finite = finite  # a bool tensor of ours, no graph: an attribute (each saved tensor costs a small call)
            return out

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
            (out,) = ctx.saved_tensors
            return softmax_backward(out, ctx.finite, g, log, graph=torch.is_grad_enabled()), None

    Function.__name__ = Function.__qualname__ = "LogSoftmax" if log else "Softmax"
    return Function


Softmax = _softmax_function(log=False)
LogSoftmax = _softmax_function(log=True)
