"""PyTorch path of logsumexp, softmax and log_softmax: same formulas, native kernels, analytic backward.

Through the generic array-API code, PyTorch records a dozen ops (masks,
``where``, a gather of the max term) and autograd keeps all their temporaries:
15 to 40 times slower than ``torch.logsumexp`` (``benchmarks/ops_speed.py``).
Here each op is one ``torch.autograd.Function``: the forward runs the same
algorithm (float64, shift by the row max, max term taken out, ``log1p``,
division by ``1 + s``) on in-place native kernels, and the backward is the
analytic gradient, which is also what makes it 0, never NaN, on rows with no
finite entry. Backward formulas use only the saved input and output, in
differentiable torch ops, so double backward works.

On CPU tensors (float32, float64, bfloat16, float16) the forward and the backward
are numba kernels (:mod:`._numba_fast`, the ``fast`` extra) that read the tensors'
storage in place (bfloat16 and float16 as 16-bit integers, widened in registers),
compute in float64 and round once into the output: no float64 copy, one pass per
row for each backward. Only ``create_graph`` (double backward) takes the
differentiable torch ops. :func:`softmax_fast` and :func:`logsumexp_fast` are the
short path of a plain call (one tensor, last axis): a few microseconds of Python.
Other devices take :func:`device_softmax` / :func:`device_logsumexp` (torch ops,
float32 accumulation for 16-bit inputs, float64 for float64).

All functions take rows on the last axis and return results in the input dtype.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import _namespace as _ns
from ._core import blocks
from ._kernels import register

BLOCK = 1 << 18  # float64 elements per block: 2 MiB, reused for every block


def _sweep(x: torch.Tensor, out: torch.Tensor | None = None, log: bool = False) -> tuple[torch.Tensor, ...]:
    """Row max ``m``, ``finite`` and ``s = sum_{i != k} exp(x_i - m)`` of rows ``x`` (R, n), in float64.

    With ``out``, also writes softmax (``e / (1 + s)``) or log_softmax
    (``d - log1p(s)``) into it, in the same sweep when rows fit in a block.
    Works block by block in one reused float64 buffer: no full-size temporaries.
    """
    x = x.detach()
    r, n = x.shape
    mx, k = x.max(dim=-1)
    m = mx.to(torch.float64)
    finite = torch.isfinite(m)
    m0 = torch.where(finite, m, 0.0)
    s = torch.zeros(r, dtype=torch.float64, device=x.device)
    size = min(BLOCK, max(r * n, 1))
    buf = torch.empty(size, dtype=torch.float64, device=x.device)
    dbuf = torch.empty(size, dtype=torch.float64, device=x.device) if (out is not None and log) else buf
    one_sweep = n <= BLOCK
    for r0, r1, c0, c1 in blocks(r, n, BLOCK):
        rows, cols = r1 - r0, c1 - c0
        d = dbuf[: rows * cols].view(rows, cols)
        d.copy_(x[r0:r1, c0:c1]).sub_(m0[r0:r1, None])
        e = buf[: rows * cols].view(rows, cols)
        torch.exp(d, out=e)
        kk = k[r0:r1] - c0
        inside = (kk >= 0) & (kk < cols)
        rows_in = torch.nonzero(inside).squeeze(-1) if not one_sweep else torch.arange(rows, device=x.device)
        e[rows_in, kk[rows_in]] = 0.0
        part = e.sum(dim=-1)
        s[r0:r1] += part
        if out is not None and one_sweep:
            sb = torch.where(finite[r0:r1], part, 0.0)[:, None]
            if log:
                out[r0:r1].copy_(d.sub_(torch.log1p(sb)))
            else:
                e[rows_in, kk[rows_in]] = 1.0
                out[r0:r1].copy_(e.div_(1.0 + sb))  # BHH's division form, rounded once
    s = torch.where(finite, s, 0.0)
    if out is not None and not one_sweep:  # long rows: a second sweep writes the output
        log1p_s = torch.log1p(s)
        for r0, r1, c0, c1 in blocks(r, n, BLOCK):
            d = buf[: c1 - c0].view(1, -1)
            d.copy_(x[r0:r1, c0:c1]).sub_(m0[r0:r1, None])
            if log:
                out[r0:r1, c0:c1].copy_(d.sub_(log1p_s[r0:r1, None]))
            else:
                out[r0:r1, c0:c1].copy_(d.exp_().div_(1.0 + s[r0:r1, None]))
    return m, finite, s


_NUMPY_DTYPES = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}


def _compiled(x: torch.Tensor, out: torch.Tensor | None, log: bool = False) -> Any:
    """The same sweep through floatguard's compiled NumPy kernels, for CPU tensors, when available.

    Returns None when not applicable (no numba, a GPU tensor, bfloat16); else, with ``out``, whether
    some row has a non-finite max (``out`` filled), without ``out``, the float64 logsumexp per row.
    The tensors share memory with the NumPy views (``Tensor.numpy()``): no copy.
    """
    import numpy as np

    from . import _numpy_fast

    if x.device.type != "cpu" or x.dtype not in _NUMPY_DTYPES or x.shape[-1] == 0:
        return None
    if _numpy_fast._kernels_for(np.dtype(_NUMPY_DTYPES[x.dtype])) is None:
        return None
    xn = x.detach().contiguous().numpy()
    if out is None:
        return torch.from_numpy(_numpy_fast.logsumexp_rows(xn))
    return _numpy_fast.softmax_rows(xn, out.numpy(), log)


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised output like ``x``; on the CPU allocated by NumPy, which asks the kernel for
    huge pages (torch does not): first-touch page faults of a 32 MiB output cost torch ~10 ms.
    Small outputs (under 1 MiB) come from torch, which is quicker to call."""
    if x.numel() >= 1 << 17 and x.is_cpu and x.dtype in _NUMPY_DTYPES:
        import numpy as np

        return torch.from_numpy(np.empty(tuple(x.shape), dtype=_NUMPY_DTYPES[x.dtype]))
    return torch.empty_like(x)


def _limit(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Softmax of rows with a non-finite max: mass shared by +inf entries, 0 for -inf rows, NaN for NaN rows."""
    at_max = (x.to(torch.float64) == m).to(torch.float64)
    w = at_max / at_max.sum(dim=-1, keepdim=True).clamp_min(1.0)
    w = torch.where(m > 0, w, 0.0)
    return torch.where(torch.isnan(m), m, w)


def _sweep_rows(x: torch.Tensor, out: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``out`` (compiled kernels when available, else :func:`_sweep`); row max and ``finite``."""
    nonfinite = _compiled(x, out, log)
    if nonfinite is None:
        m, finite, _ = _sweep(x, out, log=log)
        return m, finite
    if not nonfinite:
        return x.new_zeros(x.shape[0], dtype=torch.float64), x.new_ones(x.shape[0], dtype=torch.bool)
    m = x.detach().max(dim=-1).values.to(torch.float64)
    return m, torch.isfinite(m)


def _lse_forward(x: torch.Tensor) -> torch.Tensor:
    """``m + log1p(s)`` per row, as a column ``(R, 1)`` in the input dtype."""
    lse = _compiled(x, None)
    if lse is None:
        m, finite, s = _sweep(x)
        lse = torch.where(finite, m + torch.log1p(s), m)
    return lse[:, None].to(x.dtype)


def _softmax_forward(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax (``e / (1 + s)``) or log_softmax (``d - log1p(s)``) of the rows, and ``finite`` ``(R, 1)``."""
    out = _empty_like(x)
    m, finite = _sweep_rows(x, out, log=log)
    if not bool(finite.all()):
        m, finite = m[:, None], finite[:, None]
        w = _limit(x, m)
        if log:
            lim = torch.where(w > 0, torch.log(w.clamp_min(1e-300)), -torch.inf)
            w = torch.where(torch.isnan(w), w, lim)
        out = torch.where(finite, out, w.to(x.dtype))
    return out, finite.reshape(-1, 1)


def _softmax_grad(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``p * (g - sum(g p))``, 0 on rows with no finite max."""
    wd = _grad_dtype(out)
    p = torch.where(finite, out.to(wd), 0.0)
    gw = g.to(wd)
    return (p * (gw - (gw * p).sum(dim=-1, keepdim=True))).to(out.dtype)


def _log_softmax_grad(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g - p sum(g)``, 0 on rows with no finite max."""
    wd = _grad_dtype(out)
    p = torch.where(finite, torch.exp(out.to(wd)), 0.0)
    gw = g.to(wd)
    grad = gw - p * gw.sum(dim=-1, keepdim=True)
    return torch.where(finite, grad, 0.0).to(out.dtype)


# -- numba kernels on the tensors' storage -----------------------------------------------
# bfloat16 and float16 go to the kernels as 16-bit integers (the dtype picks the conversion)
_STORAGE = {torch.float32: None, torch.float64: None, torch.bfloat16: torch.int16, torch.float16: torch.uint16}
_kern: Any = None  # the _numba_fast module, False without numba (or when it failed), None before the first look


def _kernels() -> Any:
    """:mod:`._numba_fast` when its kernels can run (imports numba once), else None."""
    global _kern
    if _kern is None:
        import numpy as np

        from . import _numpy_fast

        _kern = _numpy_fast._kernels_for(np.dtype(np.float32)) or False
    return _kern or None


_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}  # _numba_fast.STORAGE_CODES


def on_device(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the path of tensors off the CPU (:func:`device_softmax`, :func:`device_logsumexp`):
    not on the CPU, or any tensor while ``FLOATGUARD_FORCE_DEVICE_PATH`` is set (tests)."""
    return not x.is_cpu or _ns.FORCE_DEVICE_PATH


def _on_kernels(x: torch.Tensor) -> Any:
    """The kernels module when rows ``x`` can go to it (CPU, a kernel dtype, non-empty rows), else None."""
    if on_device(x) or x.dtype not in _CODE or x.shape[-1] == 0:
        return None
    return _kern or _kernels()


def _kernel_call(fn: Any, *args: Any) -> Any:
    """Run a kernel and return its result; None (and the kernels off, with a warning) if numba fails."""
    global _kern
    try:
        got = fn(*args)
    except Exception as exc:  # numba cannot compile here: the torch ops still can
        _kern = False
        import warnings

        warnings.warn(f"floatguard: numba kernels disabled, using torch ops ({exc!r})", RuntimeWarning, stacklevel=3)
        return None
    return True if got is None else got


def _fix_limits(x: torch.Tensor, out: torch.Tensor, finite: torch.Tensor, log: bool) -> torch.Tensor:
    """``out`` with the rows where ``finite`` (R, 1) is False replaced by their limits."""
    m = x.detach().max(dim=-1, keepdim=True).values.to(torch.float64)
    w = _limit(x, m)
    if log:
        lim = torch.where(w > 0, torch.log(w.clamp_min(1e-300)), -torch.inf)
        w = torch.where(torch.isnan(w), w, lim)
    return torch.where(finite, out, w.to(x.dtype))


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached and contiguous (itself when it already is: a few hundred ns less per call)."""
    if x.requires_grad:
        x = x.detach()
    return x if x.is_contiguous() else x.contiguous()


def _kernel_softmax(kern: Any, x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """softmax or log_softmax of rows ``x`` by the kernels, and ``finite`` (R, 1); None if they failed."""
    x = _plain(x)
    out = _empty_like(x)
    if x.dtype == torch.float64:  # float64: the table exp (the NumPy path's kernels, argmax by NumPy)
        bad = _compiled(x, out, log)
        if bad is None:
            return None
        finite = torch.isfinite(x.max(dim=-1, keepdim=True).values) if bad else None
    else:
        r, n = x.shape
        finite = torch.empty(r, dtype=torch.bool)
        ok = _kernel_call(kern.ptr_softmax_fwd, _CODE[x.dtype], x.data_ptr(), out.data_ptr(), finite.data_ptr(),
                          r, n, log)
        if ok is None:
            return None
        finite = None if ok else finite[:, None]
    if finite is None:
        return out, _ALL_FINITE
    return _fix_limits(x, out, finite, log), finite


_ALL_FINITE = torch.ones((1, 1), dtype=torch.bool)  # ``finite`` of rows that all have a finite max


def _kernel_softmax_grad(
    kern: Any, out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor, log: bool
) -> torch.Tensor:
    """The fused backward of softmax / log_softmax (one kernel pass per row)."""
    g = _plain(g if g.dtype == out.dtype else g.to(out.dtype))
    out = _plain(out)
    grad = _empty_like(out)
    fin = _plain(finite)  # (R, 1), or (1, 1) when every row is finite
    r, n = out.shape
    if _kernel_call(kern.ptr_softmax_bwd, _CODE[out.dtype], out.data_ptr(), g.data_ptr(), fin.data_ptr(), fin.numel(),
                    grad.data_ptr(), r, n, log) is None:
        return (_log_softmax_grad if log else _softmax_grad)(out, finite, g)
    return grad


# -- on other devices: torch ops, float32 accumulation for 16-bit inputs --------------------
def _device_stats(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``m``, ``d = x - m`` as ``(d, lo)`` (float32: ``d + lo`` exact, TwoSum), ``e = exp(d + lo)``,
    ``s = sum_{i != k} e_i`` and ``finite``, for rows ``x`` (R, n), in the compute dtype.

    The max-split of BHH: ``k = argmax``; the compute dtype is float32 for 16-bit and float32 inputs
    (float64 stays). ``x - m`` rounds in float32 when the two are far apart in magnitude, and the
    exp of a rounded ``d`` has a relative error ``|d| eps``: the TwoSum keeps the lost bits ``lo`` and
    ``exp(d + lo) = exp(d) (1 + lo)`` to a float32 rounding.
    """
    wd = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x.to(wd)
    m, k = xw.max(dim=-1, keepdim=True)
    finite = torch.isfinite(m)
    m0 = torch.where(finite, m, 0.0)
    d = xw - m0
    if wd == torch.float32:
        bb = d - xw
        lo = (xw - (d - bb)) - (m0 + bb)
        lo = torch.where(torch.isfinite(lo), lo, 0.0)  # -inf entries: d = -inf, nothing lost
    else:
        lo = torch.zeros_like(m0)
    e = torch.exp(d) * (1.0 + lo)
    s = e.scatter(-1, k, 0.0).sum(dim=-1, keepdim=True)
    return m, d, lo, e, torch.where(finite, s, 0.0), finite


def device_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``m + log1p(s)`` of rows ``x`` (R, n) as (R, 1) in the compute dtype (float32, or float64), torch ops."""
    m, _, _, _, s, finite = _device_stats(x.detach())
    return torch.where(finite, m + torch.log1p(s), m)


def device_softmax(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax (``e / (1 + s)``) or log_softmax (``d - log1p(s)``) of rows ``x`` with torch ops, and ``finite``."""
    _, d, lo, e, s, finite = _device_stats(x.detach())
    out = ((d - torch.log1p(s)) + lo) if log else (e / (1.0 + s))
    out = out.to(x.dtype)
    if not bool(finite.all()):
        out = _fix_limits(x, out, finite, log)
    return out, finite


def _grad_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 or not on_device(t) else torch.float32


# -- the autograd Functions -----------------------------------------------------------------
def _softmax_any(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax or log_softmax of rows ``x`` and ``finite`` (R, 1): kernels, device ops, or the torch sweep."""
    kern = _on_kernels(x)
    if kern is not None:
        got = _kernel_softmax(kern, x, log)
        if got is not None:
            return got
    if on_device(x):
        return device_softmax(x, log)
    return _softmax_forward(x, log)


def _lse_any(x: torch.Tensor) -> torch.Tensor:
    """float64 (CPU) or compute-dtype (other devices) logsumexp of rows ``x``, as (R,)."""
    kern = _on_kernels(x)
    if kern is not None:
        x = _plain(x)
        r, n = x.shape
        lse = torch.empty(r, dtype=torch.float64)
        if _kernel_call(kern.ptr_logsumexp_fwd, _CODE[x.dtype], x.data_ptr(), lse.data_ptr(), r, n):
            return lse
    if on_device(x):
        return device_logsumexp(x)[:, 0]
    return _lse_forward(x)[:, 0].to(torch.float64) if x.dtype != torch.float64 else _lse_forward(x)[:, 0]


def softmax_fast(x: torch.Tensor, axis: Any, log: bool) -> torch.Tensor | None:
    """``softmax(x, axis)`` (or ``log_softmax``) of a CPU tensor along its last axis, on the kernels
    with the least Python in between; None when that does not apply (the caller takes the full path)."""
    nd = x.ndim
    if nd == 0 or type(axis) is not int or (axis != -1 and axis != nd - 1) or x.layout is not torch.strided:
        return None
    if on_device(x) or x.dtype not in _STORAGE or _kern is False or x.numel() == 0 or torch.compiler.is_compiling():
        return None
    rows = x if nd == 2 else x.reshape(-1, x.shape[-1])
    if x.requires_grad and torch.is_grad_enabled():
        out = (LogSoftmax if log else Softmax).apply(rows)
    else:
        out = _softmax_any(rows, log)[0]
    return out if nd == 2 else out.view(x.shape)


def logsumexp_fast(x: torch.Tensor, axis: Any, keepdims: Any) -> torch.Tensor | None:
    """``logsumexp(x, axis, keepdims)`` of a CPU tensor along its last axis, as :func:`softmax_fast`."""
    nd = x.ndim
    if (nd == 0 or type(axis) is not int or (axis != -1 and axis != nd - 1) or type(keepdims) is not bool
            or x.layout is not torch.strided):
        return None
    if on_device(x) or x.dtype not in _STORAGE or _kern is False or x.numel() == 0 or torch.compiler.is_compiling():
        return None
    rows = x if nd == 2 else x.reshape(-1, x.shape[-1])
    if x.requires_grad and torch.is_grad_enabled():
        # the final shape made inside the Function: a view outside would add a node to the graph
        return LogSumExp.apply(rows, (*x.shape[:-1], 1) if keepdims else x.shape[:-1])
    lse = _lse_any(rows).to(x.dtype)
    return lse.view((*x.shape[:-1], 1) if keepdims else x.shape[:-1])


class LogSumExp(torch.autograd.Function):
    """``m + log1p(s)`` per row, as ``(R, 1)`` or in the given ``shape`` of ``R`` entries; gradient
    ``softmax(x)`` (0 on rows with no finite max)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, shape: Any = None) -> torch.Tensor:
        lse = _lse_any(x)
        ctx.save_for_backward(x, lse)  # the input (no copy) and R floats: what torch keeps
        out = lse.to(x.dtype)
        return out[:, None] if shape is None else out.view(shape)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, lse = ctx.saved_tensors
        kern = _on_kernels(x)
        if kern is not None and not torch.is_grad_enabled():
            xc = _plain(x)
            grad = _empty_like(xc)
            g64 = _plain(g.reshape(-1).to(torch.float64))
            r, n = xc.shape
            if _kernel_call(kern.ptr_logsumexp_bwd, _CODE[x.dtype], xc.data_ptr(), lse.data_ptr(), g64.data_ptr(),
                            grad.data_ptr(), r, n):
                return grad, None
        # double backward (create_graph), or no kernels: the softmax through Softmax, so that it is exact too
        p = torch.where(torch.isfinite(lse)[:, None], Softmax.apply(x), 0.0)
        return g.reshape(-1, 1) * p, None


def _softmax_function(log: bool) -> Any:
    """The autograd Function of softmax (``e / (1 + s)`` per row; gradient ``p * (g - sum(g p))``) or,
    with ``log``, of log_softmax (``d - log1p(s)``; gradient ``g - p sum(g)``)."""

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            out, finite = _softmax_any(x, log=log)
            ctx.save_for_backward(out, finite)
            return out

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            out, finite = ctx.saved_tensors
            kern = _on_kernels(out)
            if kern is not None and not torch.is_grad_enabled():
                return _kernel_softmax_grad(kern, out, finite, g, log=log)
            return (_log_softmax_grad if log else _softmax_grad)(out, finite, g)

    Function.__name__ = Function.__qualname__ = "LogSoftmax" if log else "Softmax"
    return Function


Softmax = _softmax_function(log=False)
LogSoftmax = _softmax_function(log=True)


# -- under torch.compile ------------------------------------------------------------------
# Dynamo cannot trace the forward passes above (NumPy views, compiled kernels, branches on
# values). As custom ops they enter the compiled graph whole and run the same code (the numba
# kernels where eager runs them), with the same analytic backward: the fused backward kernel as a
# third op (``floatguard::softmax_rows_grad``), torch ops under ``create_graph``; their fake
# versions give Dynamo the output shapes.


@torch.library.custom_op("floatguard::logsumexp_rows", mutates_args=())
def logsumexp_op(x: torch.Tensor) -> torch.Tensor:
    """:class:`LogSumExp` as a custom op: rows ``(R, n)`` to ``(R, 1)``, by the same kernels as eager."""
    return _lse_any(x)[:, None].to(x.dtype)


@logsumexp_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], 1))


def _lse_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0], output)


def _lse_backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    x, out = ctx.saved_tensors
    return g * torch.where(torch.isfinite(out), softmax_op(x, False)[0], 0.0)


logsumexp_op.register_autograd(_lse_backward, setup_context=_lse_setup)


@torch.library.custom_op("floatguard::softmax_rows", mutates_args=())
def softmax_op(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`Softmax` (or :class:`LogSoftmax` with ``log``) as a custom op; also returns ``finite``
    (R, 1). The same kernels as eager; the output is contiguous, as the fake one."""
    out, finite = _softmax_any(x.contiguous(), log)
    if finite is _ALL_FINITE:  # a custom op returns fresh tensors of the declared shape
        finite = torch.ones((x.shape[0], 1), dtype=torch.bool, device=x.device)
    return out, finite


@softmax_op.register_fake
def _(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, as the real output
    return out, torch.empty((x.shape[0], 1), dtype=torch.bool, device=x.device)


def _softmax_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.log = inputs[1]
    ctx.save_for_backward(*output)


def _softmax_backward(ctx: Any, g: torch.Tensor, _g_finite: Any) -> tuple[torch.Tensor, None]:
    out, finite = ctx.saved_tensors
    if torch.is_grad_enabled():  # double backward: differentiable torch ops
        return (_log_softmax_grad if ctx.log else _softmax_grad)(out, finite, g), None
    return softmax_grad_op(out, finite, g.to(out.dtype), ctx.log), None


softmax_op.register_autograd(_softmax_backward, setup_context=_softmax_setup)


@torch.library.custom_op("floatguard::softmax_rows_grad", mutates_args=())
def softmax_grad_op(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor, log: bool) -> torch.Tensor:
    """The backward of :func:`softmax_op` (``p (g - sum(g p))``, or ``g - exp(o) sum(g)`` with ``log``):
    the fused kernel of eager's backward, opaque to Dynamo. Not differentiable itself."""
    kern = _on_kernels(out)
    if kern is not None:
        return _kernel_softmax_grad(kern, out, finite, g, log)
    return (_log_softmax_grad if log else _softmax_grad)(out, finite, g)


@softmax_grad_op.register_fake
def _(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor, log: bool) -> torch.Tensor:
    return torch.empty(out.shape, dtype=out.dtype, device=out.device)


# -- the PyTorch kernels of the ops (see ._kernels) -----------------------------------------------
KERNEL_DTYPES = tuple(_STORAGE)  # float32, float64, bfloat16, float16: what the numba kernels read
register("logsumexp", "torch", stage="call", dtypes=KERNEL_DTYPES)(logsumexp_fast)


@register("softmax", "torch", stage="call", dtypes=KERNEL_DTYPES)
def _softmax_call(x: torch.Tensor, axis: Any) -> torch.Tensor | None:
    return softmax_fast(x, axis, log=False)


@register("log_softmax", "torch", stage="call", dtypes=KERNEL_DTYPES)
def _log_softmax_call(x: torch.Tensor, axis: Any) -> torch.Tensor | None:
    return softmax_fast(x, axis, log=True)


@register("logsumexp", "torch")
def _logsumexp_rows(rows: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` of rows (R, n) as (R, 1): :class:`LogSumExp`, a custom op under ``torch.compile``."""
    return logsumexp_op(rows.contiguous()) if torch.compiler.is_compiling() else LogSumExp.apply(rows)


def _has_values(x: torch.Tensor) -> bool:
    return not x.is_meta  # meta tensors (a shape, no values) take the generic path


def _softmax_rows(rows: torch.Tensor, log: bool) -> torch.Tensor:
    if torch.compiler.is_compiling():  # a custom op: the same code, opaque to Dynamo (contiguous rows in and out)
        return softmax_op(rows.contiguous(), log)[0]
    return (LogSoftmax if log else Softmax).apply(rows)


@register("softmax", "torch", predicate=_has_values)
def _softmax_kernel(rows: torch.Tensor) -> torch.Tensor:
    return _softmax_rows(rows, False)


@register("log_softmax", "torch", predicate=_has_values)
def _log_softmax_kernel(rows: torch.Tensor) -> torch.Tensor:
    return _softmax_rows(rows, True)


# elementwise ops: a lone CPU tensor goes straight to the fused kernels of ._torch_losses
@functools.cache
def _losses() -> Any:
    """:mod:`._torch_losses` when its numba kernels can run, else None (imported once)."""
    from . import _numba_losses

    if not _numba_losses.AVAILABLE:
        return None
    from . import _torch_losses

    return _torch_losses


def _fused_ok(x: torch.Tensor) -> bool:
    return (not on_device(x) and x.layout is torch.strided and not torch.compiler.is_compiling()
            and _losses() is not None)


def _unary(code: int) -> Any:
    def call(x: torch.Tensor) -> torch.Tensor | None:
        return _losses().unary(x, code) if _fused_ok(x) else None

    return call


register("softplus", "torch", stage="call", dtypes=KERNEL_DTYPES)(_unary(0))
register("log_sigmoid", "torch", stage="call", dtypes=KERNEL_DTYPES)(_unary(1))
register("log1mexp", "torch", stage="call", dtypes=KERNEL_DTYPES)(_unary(2))


@register("logaddexp", "torch", stage="call", dtypes=KERNEL_DTYPES)
def _logaddexp_call(a: torch.Tensor, b: Any) -> torch.Tensor | None:
    """Two CPU tensors of one shape and dtype: the fused logaddexp kernel."""
    if (type(b) is type(a) and b.dtype == a.dtype and b.shape == a.shape and b.device == a.device
            and b.layout == a.layout and _fused_ok(a)):
        return _losses().logaddexp(a, b)
    return None
