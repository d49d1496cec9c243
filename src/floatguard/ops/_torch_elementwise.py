"""softplus, log_sigmoid, log1mexp and logaddexp of PyTorch CPU tensors through the numba kernels.

One compiled pass forward and one backward (:mod:`._numba_elementwise`); small contiguous float32 and
float64 tensors go by raw pointers (the latency route), others through NumPy views split over threads.
Under ``create_graph`` the backward is differentiable torch ops. Reached from the kernel table
(:mod:`._torch_fast` registers them). The values and gradients are plain functions (:func:`unary_values`,
:func:`unary_grad`, ...) that the autograd Functions here and the custom ops of
:mod:`._torch_elementwise_compile` (``torch.compile``) both call.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _numba_losses as K
from ._numba_elementwise import FLAT_BLOCK
from ._torch_rows import (
    PARALLEL_MIN,
    VIEW_CODE,
    empty_out,
    grad_input,
    kernel_input,
    numpy_view,
    run_rows,
    team_for,
    team_run,
)

SOFTPLUS, LOG_SIGMOID, LOG1MEXP = 0, 1, 2
_UNARY, _UNARY_GRAD, _LAE, _LAE_GRAD = 0, 1, 2, 3  # the kinds of :func:`._numba_team_elementwise.team_flat`


def _flat_run(fn: Any, kind: int, op: int, x: torch.Tensor, b: torch.Tensor | None, g: torch.Tensor | None,
              out: torch.Tensor, out2: torch.Tensor | None = None) -> None:
    """``fn(r0, r1)`` over the flat elements of the contiguous kernel inputs, or the same work (``kind``, ``op``) on
    torch's OpenMP team (:func:`._numba_team_elementwise.team_flat`) where large calls split over threads run
    there; ``g`` a gradient of one entry or of every element. Chunks hold whole blocks of ``FLAT_BLOCK`` elements, as
    the kernels' float32 lanes decide per block: the bits do not depend on the thread count."""
    size = x.numel()
    blocks = -(-size // FLAT_BLOCK)
    if (on := team_for(size, blocks)) is None:
        run_rows(lambda b0, b1: fn(b0 * FLAT_BLOCK, min(b1 * FLAT_BLOCK, size)), blocks, FLAT_BLOCK)
        return
    team_run(on[0], "flat", [VIEW_CODE[numpy_view(x).dtype.char], kind, op, x.data_ptr(),
                             0 if b is None else b.data_ptr(), 0 if g is None else g.data_ptr(), out.data_ptr(),
                             0 if out2 is None else out2.data_ptr(), size, 0 if g is None else g.numel()],
             blocks, on[1])


_F64 = {torch.float32: False, torch.float64: True}  # the ``f64`` argument of the ``ptr_*`` kernels


def unary_values(x: torch.Tensor, op: int) -> torch.Tensor:
    """softplus, log_sigmoid or log1mexp (``op``) of ``x`` by the forward kernels: a new tensor."""
    f64 = _F64.get(x.dtype)
    if f64 is not None and x.numel() < PARALLEL_MIN and x.is_contiguous():  # latency: the shortest route
        out = torch.empty_like(x)
        K.ptr_unary(f64, x.data_ptr(), 0, out.data_ptr(), x.numel(), op, False)
        return out
    xk = kernel_input(x)
    out = empty_out(xk)
    xn, on = numpy_view(xk).reshape(-1), numpy_view(out).reshape(-1)
    _flat_run(lambda r0, r1: K.unary_forward(xn[r0:r1], on[r0:r1], op), _UNARY, op, xk, None, None, out)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def unary_grad_graph(x: torch.Tensor, g: torch.Tensor, op: int) -> torch.Tensor:
    """The gradient of :func:`unary_values` under ``create_graph``: differentiable torch ops."""
    from .elementwise import sigmoid

    if op == LOG1MEXP:
        xd = x.to(torch.float64)
        d = torch.where(xd > 0, torch.nan, -1.0 / (torch.expm1(-xd) + 0.0))
    else:
        d = sigmoid(x if op == SOFTPLUS else -x)
    return (g * d).to(x.dtype)


def unary_grad(x: torch.Tensor, g: torch.Tensor, op: int) -> torch.Tensor:
    """The gradient of :func:`unary_values` for the upstream ``g``: the backward kernels, a new tensor."""
    f64 = _F64.get(x.dtype)
    if f64 is not None and x.numel() < PARALLEL_MIN and x.is_contiguous():  # latency: the shortest route
        if g.dtype != x.dtype or g.shape != x.shape or not g.is_contiguous():
            g = grad_input(g, x.dtype).expand(x.shape).contiguous()
        out = torch.empty_like(x)
        K.ptr_unary(f64, x.data_ptr(), g.data_ptr(), out.data_ptr(), x.numel(), op, True)
        return out
    xk = kernel_input(x)
    gk = grad_input(g, xk.dtype)
    out = empty_out(xk)
    xn, gn, on = numpy_view(xk).reshape(-1), numpy_view(gk).reshape(-1), numpy_view(out).reshape(-1)
    _flat_run(lambda r0, r1: K.unary_backward(xn[r0:r1], gn if gn.size == 1 else gn[r0:r1], on[r0:r1], op),
              _UNARY_GRAD, op, xk, None, gk, out)
    return out.to(x.dtype)


class _Unary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, op: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.op = op
        return unary_values(x, op)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, None]:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            return unary_grad_graph(x, g, ctx.op), None
        return unary_grad(x, g, ctx.op), None


def unary(x: torch.Tensor, op: int) -> torch.Tensor:
    """softplus, log_sigmoid or log1mexp of a CPU tensor (``op``), through the compiled kernels."""
    if x.requires_grad and torch.is_grad_enabled():
        return _Unary.apply(x, op)
    return unary_values(x, op)


def logaddexp_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``logaddexp`` of ``a`` and ``b`` (one shape and dtype) by the forward kernel: a new tensor."""
    f64 = _F64.get(a.dtype)
    if f64 is not None and a.numel() < PARALLEL_MIN and a.is_contiguous() and b.is_contiguous():  # latency
        out = torch.empty_like(a)
        K.ptr_logaddexp(f64, a.data_ptr(), b.data_ptr(), out.data_ptr(), a.numel())
        return out
    ak, bk = kernel_input(a), kernel_input(b)
    out = empty_out(ak)
    an, bn, on = numpy_view(ak).reshape(-1), numpy_view(bk).reshape(-1), numpy_view(out).reshape(-1)
    _flat_run(lambda r0, r1: K.logaddexp_forward(an[r0:r1], bn[r0:r1], on[r0:r1]), _LAE, 0, ak, bk, None, out)
    return out if out.dtype == a.dtype else out.to(a.dtype)


def logaddexp_grad_graph(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of :func:`logaddexp_values` under ``create_graph``: differentiable torch ops, the kernel's limits
    where ``a - b`` has no value (both ``-inf``: 0 and 0; both ``+inf``: 1 to ``a``, 0 to ``b``, as the kernel takes
    ``a`` for the larger; it gave NaN and NaN)."""
    from .elementwise import sigmoid

    same = (a == b) & torch.isinf(a)
    d = torch.where(same, 0.0, a - b)
    sa = torch.where(same, (a > 0).to(d.dtype), sigmoid(d))
    sb = torch.where(same, 0.0, sigmoid(-d))
    return (g * sa).to(a.dtype), (g * sb).to(b.dtype)


def logaddexp_grad(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of :func:`logaddexp_values` for the upstream ``g``: the backward kernel, two new tensors."""
    ak, bk = kernel_input(a), kernel_input(b)
    gk = grad_input(g, ak.dtype)
    ga, gb = empty_out(ak), empty_out(ak)
    an, bn, gn = numpy_view(ak).reshape(-1), numpy_view(bk).reshape(-1), numpy_view(gk).reshape(-1)
    gan, gbn = numpy_view(ga).reshape(-1), numpy_view(gb).reshape(-1)
    _flat_run(lambda r0, r1: K.logaddexp_backward(an[r0:r1], bn[r0:r1], gn if gn.size == 1 else gn[r0:r1],
                                                      gan[r0:r1], gbn[r0:r1]),
              _LAE_GRAD, 0, ak, bk, gk, ga, gb)
    return ga.to(a.dtype), gb.to(b.dtype)


class _LogAddExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return logaddexp_values(a, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            return logaddexp_grad_graph(a, b, g)
        return logaddexp_grad(a, b, g)


def logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``logaddexp`` of two CPU tensors of one shape and dtype, through the compiled kernels."""
    if (a.requires_grad or b.requires_grad) and torch.is_grad_enabled():
        return _LogAddExp.apply(a, b)
    return logaddexp_values(a, b)
