"""The column kernels (:mod:`._torch_columns`) under ``torch.compile``: ``torch.library`` custom ops.

Dynamo cannot trace the kernels (NumPy views, compiled code, a fallback decided by the values), so, as the row
kernels' :mod:`._torch_custom_ops`, each op enters the compiled graph whole and runs the eager code: the column
kernels, or the row path where they decline (a position with no finite max, an index out of range: the row path's
semantics and errors). The forward returns what the backward reads, the backward is a custom op of its own; their
fake versions give Dynamo the shapes. Through the generic path instead, the compiled ``cross_entropy`` of
``8×21×128×128`` segmentation logits took 2.3x the compiled ``F.cross_entropy``'s step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import _torch_columns as C
from ._torch_revision import stamp

# -- softmax and log_softmax ---------------------------------------------------------------------------------


def _keep(x: torch.Tensor, axis: int) -> list[int]:
    return C.reduced_shape(x.shape, axis, True)


@torch.library.custom_op("floatguard::softmax_columns", mutates_args=())
def softmax_op(x: torch.Tensor, axis: int, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax (log_softmax) over ``axis`` and ``finite`` (the keepdims shape, bool): whether each position has a
    finite max (the backward's gradient is 0 where not)."""
    out = C.softmax_raw(x, axis, log)
    if out is not None:
        return out, torch.ones(_keep(x, axis), dtype=torch.bool)
    from ._torch_softmax import ALL_FINITE, softmax_any

    xm = x.detach().movedim(axis, -1).contiguous()
    rows, finite = softmax_any(xm.reshape(-1, xm.shape[-1]), log)
    out = rows.view(xm.shape).movedim(-1, axis).contiguous()
    if finite is ALL_FINITE:
        return out, torch.ones(_keep(x, axis), dtype=torch.bool)
    return out, finite.reshape(xm.shape[:-1]).unsqueeze(axis).contiguous()


@softmax_op.register_fake
def _(x: torch.Tensor, axis: int, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty(_keep(x, axis), dtype=torch.bool)


def _softmax_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.axis, ctx.log = inputs[1], inputs[2]
    ctx.save_for_backward(*output)


def _softmax_backward(ctx: Any, g: torch.Tensor, _g_finite: Any) -> tuple[Any, None, None]:
    out, finite = ctx.saved_tensors
    return softmax_grad_op(out, finite, g.to(out.dtype), ctx.axis, ctx.log), None, None


softmax_op.register_autograd(_softmax_backward, setup_context=_softmax_setup)


@torch.library.custom_op("floatguard::softmax_columns_grad", mutates_args=())
def softmax_grad_op(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor, axis: int, log: bool) -> torch.Tensor:
    """The backward of :func:`softmax_op`: the column kernel; 0 on positions with an infinite max, NaN on NaN ones
    (their output is NaN)."""
    if bool(finite.numpy().all()):  # NumPy's: torch's one-thread all() took 0.13 ms of 131,072 flags (8×21×128×128)
        return C.softmax_grad(out, g, axis, log)
    wd = torch.float64
    o, gw = out.to(wd), g.to(wd)
    if log:
        grad = gw - torch.exp(o) * gw.sum(dim=axis, keepdim=True)
    else:
        grad = o * (gw - (gw * o).sum(dim=axis, keepdim=True))
    return torch.where(finite | torch.isnan(out.narrow(axis, 0, 1)), grad, 0.0).to(out.dtype)


@softmax_grad_op.register_fake
def _(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor, axis: int, log: bool) -> torch.Tensor:
    return torch.empty(out.shape, dtype=out.dtype, device=out.device)


def softmax(x: torch.Tensor, axis: int, log: bool) -> torch.Tensor:
    stamp(x)
    return softmax_op(x, axis, log)[0]


# -- logsumexp --------------------------------------------------------------------------------------------------
@torch.library.custom_op("floatguard::logsumexp_columns", mutates_args=())
def logsumexp_op(x: torch.Tensor, axis: int) -> torch.Tensor:
    """float64 logsumexp over ``axis`` in the keepdims shape (the caller rounds it to the input dtype)."""
    lse = C.logsumexp_raw(x, axis)
    if lse is not None:
        return torch.from_numpy(lse).view(_keep(x, axis))
    from ._torch_softmax import lse_any

    xm = x.detach().movedim(axis, -1).contiguous()
    return lse_any(xm.reshape(-1, xm.shape[-1])).reshape(xm.shape[:-1]).unsqueeze(axis).contiguous()


@logsumexp_op.register_fake
def _(x: torch.Tensor, axis: int) -> torch.Tensor:
    return x.new_empty(_keep(x, axis), dtype=torch.float64)


def _lse_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.axis = inputs[1]
    ctx.save_for_backward(inputs[0], output)


def _lse_backward(ctx: Any, g: torch.Tensor) -> tuple[Any, None]:
    x, lse = ctx.saved_tensors
    return logsumexp_grad_op(x, lse, g, ctx.axis), None


logsumexp_op.register_autograd(_lse_backward, setup_context=_lse_setup)


@torch.library.custom_op("floatguard::logsumexp_columns_grad", mutates_args=())
def logsumexp_grad_op(x: torch.Tensor, lse: torch.Tensor, g: torch.Tensor, axis: int) -> torch.Tensor:
    """``g exp(x - lse)`` over ``axis``: the column kernel; 0 on positions whose ``lse`` is infinite, NaN where it
    is NaN."""
    if bool(np.isfinite(lse.detach().numpy()).all()):  # NumPy's (see softmax_grad_op)
        dims = C.columns(x, axis)
        assert dims is not None
        return C.logsumexp_grad(x, lse.reshape(dims[0], dims[2]).contiguous().numpy(), g, axis)
    fin = ~torch.isinf(lse)  # NaN positions go through: NaN
    p = torch.exp(x.to(torch.float64) - torch.where(fin, lse, 0.0))
    return torch.where(fin, g.to(torch.float64) * p, 0.0).to(x.dtype)


@logsumexp_grad_op.register_fake
def _(x: torch.Tensor, lse: torch.Tensor, g: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def logsumexp(x: torch.Tensor, axis: int, keepdims: bool) -> torch.Tensor:
    stamp(x)
    lse = logsumexp_op(x, axis).to(x.dtype)
    return lse if keepdims else lse.squeeze(axis)


# -- cross-entropy of class indices ------------------------------------------------------------------------------
@torch.library.custom_op("floatguard::cross_entropy_columns", mutates_args=())
def cross_entropy_op(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
                     has_ignore: bool, reduction: str, axis: int,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss (label smoothing ``eps``), the per-position statistics (5 or, with ``eps``, 6, O, I) and ``info = (den,
    status)``: status 0 when the column kernels answered, 1 when the row path did (its errors raised here); the
    backward reads them."""
    ign = ignore_index if has_ignore else None
    dims = C.columns(x, axis)
    assert dims is not None
    got = C.cross_entropy_raw(x, target, weight, ign, reduction, axis, eps)
    if got is not None:
        out, _, stats, den, _ = got
        return out, torch.from_numpy(stats), torch.tensor([den, 0.0], dtype=torch.float64)
    from .losses import cross_entropy

    with torch.no_grad():
        out = cross_entropy(x.detach(), target, axis=axis, weight=weight, reduction=reduction, ignore_index=ign,
                            label_smoothing=eps)
    return (out.clone(), torch.empty((6 if eps else 5, dims[0], dims[2]), dtype=torch.float64),
            torch.tensor([math.nan, 1.0], dtype=torch.float64))


@cross_entropy_op.register_fake
def _(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int, has_ignore: bool,
      reduction: str, axis: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shape = list(target.shape) if reduction == "none" else []
    no, ni = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    return (x.new_empty(shape), x.new_empty((6 if eps else 5, no, ni), dtype=torch.float64),
            x.new_empty((2,), dtype=torch.float64))


def _ce_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    x, target, weight, ignore_index, has_ignore, reduction, axis, eps = inputs
    ctx.args = (ignore_index, has_ignore, reduction, axis, eps)
    ctx.save_for_backward(x, target, weight, output[1], output[2])


def _ce_backward(ctx: Any, g: torch.Tensor, _g_stats: Any, _g_info: Any) -> tuple[Any, ...]:
    x, target, weight, stats, info = ctx.saved_tensors
    return (cross_entropy_grad_op(x, target, weight, stats, info, g, *ctx.args), *([None] * 7))


cross_entropy_op.register_autograd(_ce_backward, setup_context=_ce_setup)


@torch.library.custom_op("floatguard::cross_entropy_columns_grad", mutates_args=())
def cross_entropy_grad_op(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, stats: torch.Tensor,
                          info: torch.Tensor, g: torch.Tensor, ignore_index: int, has_ignore: bool, reduction: str,
                          axis: int, eps: float) -> torch.Tensor:
    """The backward of :func:`cross_entropy_op`: the column kernel; where the row path answered the forward, its
    gradient in float64 torch ops (``(1 - eps) w_t (softmax - onehot) + eps / C (W softmax - w)`` scaled as the
    reduction asks, 0 on positions with an infinite max, NaN on NaN positions not ignored, as the row path's). (No
    autograd here: a custom op runs below the autograd dispatch key.)"""
    den, status = (float(v) for v in info)
    dims = C.columns(x, axis)
    assert dims is not None
    if status == 0.0:
        t = target.detach().to(torch.int64).contiguous().numpy().reshape(dims[0], dims[2])
        w = np.empty(0) if weight is None else weight.detach().to(torch.float64).contiguous().numpy()
        return C.cross_entropy_grad(x, t, stats.numpy(), den, reduction, g, axis, w, eps)
    n_cls = x.shape[axis]
    x64 = x.detach().to(torch.float64)
    mx = x64.amax(dim=axis, keepdim=True)
    fin = torch.isfinite(mx)
    p = torch.softmax(torch.where(fin, x64, 0.0), dim=axis)
    tk = target.to(torch.int64)
    keep = (tk >= 0) & (tk < n_cls)
    if has_ignore:
        keep &= tk != ignore_index
    tc = tk.clamp(0, n_cls - 1)
    wc = torch.ones(n_cls, dtype=torch.float64) if weight is None else weight.to(torch.float64)
    wt = torch.where(keep, wc[tc], 0.0)
    gw = g.to(torch.float64)
    coef = torch.where(keep, gw / wt.sum() if reduction == "mean" else gw, 0.0)
    hot = torch.nn.functional.one_hot(tc, n_cls).movedim(-1, axis).to(torch.float64)
    grad = (p - hot) * ((1 - eps) * wt * coef).unsqueeze(axis)
    if eps:
        wb = wc.reshape([-1] + [1] * (x.ndim - axis - 1))
        grad = grad + (eps / n_cls * coef).unsqueeze(axis) * (wc.sum() * p - wb)
    nan = torch.isnan(mx) & keep.unsqueeze(axis)  # a NaN position's NaN loss: a NaN gradient
    return torch.where(fin, grad, torch.where(nan, math.nan, 0.0)).to(x.dtype).contiguous()


@cross_entropy_grad_op.register_fake
def _(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, stats: torch.Tensor, info: torch.Tensor,
      g: torch.Tensor, ignore_index: int, has_ignore: bool, reduction: str, axis: int, eps: float) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def cross_entropy(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int | None,
                  reduction: str, axis: int, eps: float = 0.0) -> torch.Tensor:
    stamp(x)
    return cross_entropy_op(x, target, weight, 0 if ignore_index is None else ignore_index,
                            ignore_index is not None, reduction, axis, float(eps))[0]


def usable(x: torch.Tensor, axis: int) -> bool:
    """Whether a call on ``x`` over ``axis`` (normalized) goes to these ops while Dynamo traces: the column kernels'
    conditions (:func:`._torch_columns.columns`) and numba present (a module constant: no guard that changes)."""
    from ._numba_bits import AVAILABLE

    return AVAILABLE and C.columns(x, axis) is not None

