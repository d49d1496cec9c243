r"""PyTorch CPU binary cross-entropy from logits: ``torch.autograd.Function``s over the numba kernels.

.. math:: \ell = w \, (p_w \, y \, \mathrm{softplus}(-x) + (1 - y) \, \mathrm{softplus}(x))

elementwise, reduced; one compiled pass forward (:func:`._numba_losses.bce_forward`) and one backward,
rows split over threads. ``weight`` and ``pos_weight`` broadcast to ``x``. :func:`bce_plain` is the
case without weights with fewer steps (the latency route). The loss and gradient functions
(:func:`bce_values`, :func:`bce_grad`, :func:`bce_plain_written`) serve the autograd Functions here and the
custom ops of :mod:`._torch_elementwise_compile` (``torch.compile``) alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _numba_losses as K
from ._numba_elementwise import bce_forward_grad
from ._torch_rows import (
    PARALLEL_MIN,
    VIEW_CODE,
    empty_out,
    kernel_input,
    numpy_view,
    pairs_sum,
    reduced_scalar,
    run_rows,
    team_chunks,
    team_for,
    team_run,
    writes_gradient,
    written_gradient,
)

_FWD, _FWD_GRAD, _BWD = 0, 1, 2  # the kinds of :func:`._numba_team_elementwise.team_bce`
_NONE = np.empty((0, 0))  # an absent array of _rows_run


def _rows_run(fn: Any, kind: int, xn: np.ndarray, yn: np.ndarray, wn: np.ndarray = _NONE, pn: np.ndarray = _NONE,
              out: np.ndarray = _NONE, g: np.ndarray = _NONE, grad: np.ndarray = _NONE, f: float = 0.0) -> float:
    """``fn(r0, r1)`` over the rows of ``xn`` and ``yn`` (the kernels' views, ``(R, n)``), or the same work (``kind``)
    on torch's OpenMP team (:func:`._numba_team_elementwise.team_bce`) where large calls split over threads run there:
    the sum of the chunks' compensated sums by :func:`._torch_rows.pairs_sum` (one chunk's rounding, whatever the
    chunks; ``+inf`` where a loss is). ``wn``, ``pn`` coefficients of 0, 1 or ``R`` rows, ``out`` the stored elements,
    ``g`` the upstream gradient, ``grad`` the gradient written, ``f`` the ``gs`` or ``div`` of the kernel."""
    rows, n = xn.shape
    if yn.dtype != xn.dtype or (on := team_for(rows * n, rows)) is None:
        return pairs_sum(v for pair in run_rows(fn, rows, n) if pair is not None for v in pair)
    outs = np.empty((team_chunks(rows, on[1]), 2))
    team_run(on[0], "bce", [VIEW_CODE[xn.dtype.char], kind, xn.ctypes.data, yn.ctypes.data, wn.ctypes.data,
                            wn.shape[0], pn.ctypes.data, pn.shape[0], out.ctypes.data, int(out.size > 0),
                            g.ctypes.data, g.shape[0] if g.size > 1 else 1, grad.ctypes.data, n, rows,
                            outs.ctypes.data, float(f)], rows, on[1])
    return pairs_sum(outs.reshape(-1).tolist())


def per_class(a: torch.Tensor | None, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` broadcast to ``shape`` as float64 rows ``(R, C)``, or ``(1, C)`` if it varies along the last axis only."""
    if a is None:
        return np.empty((0, 0))
    a = a.detach().to(torch.float64)
    n = shape[-1] if shape else 1
    if a.ndim <= 1 or all(s == 1 for s in a.shape[:-1]):
        return a.reshape(-1).expand(n).reshape(1, n).contiguous().numpy()
    return a.broadcast_to(shape).reshape(-1, n).contiguous().numpy()


class _BCE(torch.autograd.Function):
    """``w (pw y softplus(-x) + (1 - y) softplus(x))`` elementwise, reduced; gradient with respect to ``x`` only."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, pos_weight: torch.Tensor | None,
        reduction: str,
    ) -> torch.Tensor:
        shape = tuple(x.shape)
        n = shape[-1] if shape else 1
        xk, yk = kernel_input(x).reshape(-1, n), kernel_input(y).reshape(-1, n)
        wn, pn = per_class(weight, shape), per_class(pos_weight, shape)
        rows = xk.shape[0]
        store = reduction == "none"
        out = np.empty((rows, n) if store else (0, 0))
        xn, yn = numpy_view(xk), numpy_view(yk)

        def fwd(r0: int, r1: int) -> tuple[float, float]:
            return K.bce_forward(xn[r0:r1], yn[r0:r1], wn if wn.shape[0] <= 1 else wn[r0:r1],
                                 pn if pn.shape[0] <= 1 else pn[r0:r1], out[r0:r1] if store else out, store)

        total = _rows_run(fwd, _FWD, xn, yn, wn, pn, out)
        if ctx is not None:  # None: called for the values alone (bce_plain)
            ctx.save_for_backward(x, y)
            ctx.res = (wn, pn, reduction, rows * n)
            ctx.weights = (weight, pos_weight)
        if store:
            return torch.from_numpy(out).reshape(shape).to(x.dtype)
        return reduced_scalar(total, rows * n, reduction, x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, y = ctx.saved_tensors
        wn, pn, reduction, count = ctx.res
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            w, pw = ctx.weights
            return bce_grad_graph(x, y, w, pw, g, reduction), None, None, None, None
        return bce_grad(x, y, wn, pn, g, reduction, count), None, None, None, None


def bce_grad_graph(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, pw: torch.Tensor | None,
                   g: torch.Tensor, reduction: str) -> torch.Tensor:
    """The gradient of the loss with respect to ``x`` under ``create_graph``: differentiable torch ops."""
    from .elementwise import sigmoid

    pos = y * sigmoid(-x) * (1 if pw is None else pw)
    grad = (sigmoid(x) * (1 - y) - pos) * (1 if w is None else w)
    grad = grad * g  # exact for g = 1 (loss.backward): then one rounding for the mean, not two
    return (grad / x.numel() if reduction == "mean" else grad).to(x.dtype)


def bce_grad(x: torch.Tensor, y: torch.Tensor, wn: np.ndarray, pn: np.ndarray, g: torch.Tensor, reduction: str,
             count: int) -> torch.Tensor:
    """The gradient of the loss with respect to ``x`` for the upstream ``g``: the backward kernel (``wn``, ``pn``
    from :func:`per_class`; ``count`` the elements), a new tensor."""
    shape = tuple(x.shape)
    n = shape[-1] if shape else 1
    xk, yk = kernel_input(x).reshape(-1, n), kernel_input(y).reshape(-1, n)
    if reduction == "none":
        gn = g.detach().to(torch.float64).reshape(-1, n).contiguous().numpy()
    else:
        gn = np.array([[float(g)]])
    div = float(count) if reduction == "mean" else 1.0  # divided in the kernel: g / N carried as a pair
    out = empty_out(xk)
    xn, yn, on = numpy_view(xk), numpy_view(yk), numpy_view(out)

    def bwd(r0: int, r1: int) -> None:
        K.bce_backward(xn[r0:r1], yn[r0:r1], wn if wn.shape[0] <= 1 else wn[r0:r1],
                       pn if pn.shape[0] <= 1 else pn[r0:r1], gn if gn.size == 1 else gn[r0:r1], on[r0:r1],
                       div)

    _rows_run(bwd, _BWD, xn, yn, wn, pn, g=gn, grad=on, f=div)
    return out.reshape(shape).to(x.dtype)


def binary_cross_entropy_with_logits(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
                                     pos_weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Elementwise BCE from logits ``x`` and targets ``y`` (same shape), ``reduction`` applied."""
    return _BCE.apply(x, y, weight, pos_weight, reduction)


def bce_values(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, pos_weight: torch.Tensor | None,
               reduction: str) -> torch.Tensor:
    """The loss of :func:`binary_cross_entropy_with_logits` alone (no autograd): a new tensor."""
    result: torch.Tensor = _BCE.forward(None, x, y, weight, pos_weight, reduction)
    return result


_NO_WEIGHT = np.empty((0, 0))


def bce_plain(x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    """:func:`binary_cross_entropy_with_logits` of contiguous float32/float64/bfloat16 ``x`` and ``y`` of one
    shape and dtype, without weights; no ``autograd.Function`` when no gradient is recorded."""
    if x.requires_grad and torch.is_grad_enabled():
        return _BCEPlain.apply(x, y, reduction)
    return _bce_plain_values(x, y, reduction)


def _bce_plain_values(x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    shape = tuple(x.shape)
    n = shape[-1] if shape else 1
    xn, yn = numpy_view(x).reshape(-1, n), numpy_view(y).reshape(-1, n)
    rows = xn.shape[0]
    if reduction == "none" or rows * n >= PARALLEL_MIN:
        return _BCE.forward(None, x, y, None, None, reduction)
    total = pairs_sum(K.bce_forward(xn, yn, _NO_WEIGHT, _NO_WEIGHT, _NO_WEIGHT, False))
    return reduced_scalar(total, rows * n, reduction, x.dtype)


class _BCEPlain(torch.autograd.Function):
    """:class:`_BCE` without weights, with fewer steps (the latency route).

    A mean or a sum of float32/bfloat16 elements is the backward of a training step
    (``loss.backward()``, ``g = 1``): the forward writes that gradient with the loss
    (:func:`._numba_elementwise.bce_forward_grad`), the backward hands it over when ``g`` is 1 (once).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        ctx.reduction = reduction
        ctx.grad = None
        if reduction != "none" and writes_gradient(x, ctx.needs_input_grad[0]):  # not in evaluation, not above 16 MiB
            loss, ctx.grad = bce_plain_written(x, y, reduction)
            return loss
        return _bce_plain_values(x, y, reduction)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, y = ctx.saved_tensors
        reduction = ctx.reduction
        ready = written_gradient(ctx.grad, g)  # the forward's gradient, when it is the one for this g
        ctx.grad = None
        if ready is not None:
            return ready, None, None
        count = x.numel()
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            return bce_grad_graph(x, y, None, None, g, reduction), None, None
        if reduction == "none" or count >= PARALLEL_MIN:
            return bce_grad(x, y, _NO_WEIGHT, _NO_WEIGHT, g, reduction, count), None, None
        n = x.shape[-1] if x.ndim else 1
        gv = float(g)
        out = empty_out(x)
        K.bce_backward(numpy_view(x).reshape(-1, n), numpy_view(y).reshape(-1, n), _NO_WEIGHT, _NO_WEIGHT,
                       np.array([[gv]]), numpy_view(out).reshape(-1, n), float(count) if reduction == "mean" else 1.0)
        return out, None, None


def bce_plain_written(x: torch.Tensor, y: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss (a mean or a sum) of contiguous ``x``, ``y`` without weights, and the gradient of
    ``loss.backward()`` (``g = 1``) that :func:`._numba_elementwise.bce_forward_grad` writes with it."""
    count = x.numel()
    n = x.shape[-1] if x.ndim else 1
    grad = empty_out(x)
    xn, yn, gn = (numpy_view(a).reshape(-1, n) for a in (x, y, grad))
    gs = 1.0 / count if reduction == "mean" else 1.0

    def fwd(r0: int, r1: int) -> tuple[float, float]:
        return bce_forward_grad(xn[r0:r1], yn[r0:r1], gs, gn[r0:r1])

    total = _rows_run(fwd, _FWD_GRAD, xn, yn, grad=gn, f=gs)
    return reduced_scalar(total, count, reduction, x.dtype), grad
