"""softmax, log_softmax and logsumexp of PyTorch rows under ``torch.compile``: ``torch.library`` custom ops.

Dynamo cannot trace the forward passes of :mod:`._torch_softmax` (NumPy views, compiled kernels,
branches on values). As custom ops they enter the compiled graph whole and run the same code (the numba
kernels where eager runs them), with the same analytic backward: the fused backward kernel as a third
op (``floatguard::softmax_rows_grad``), torch ops under ``create_graph``; their fake versions give
Dynamo the output shapes.
"""

from __future__ import annotations

from typing import Any

import torch

from ._torch_revision import stamp
from ._torch_softmax import ALL_FINITE, lse_any, lse_backward, softmax_any, softmax_backward


@torch.library.custom_op("floatguard::logsumexp_rows", mutates_args=())
def logsumexp_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`._torch_softmax.LogSumExp` as a custom op: rows ``(R, n)`` to ``(R, 1)`` in the input dtype, and the
    float64 ``lse`` (R,) its backward reads (as eager's), by the same kernels as eager. Compiled, float32 1024×2048:
    0.98-1.10x the compiled ``torch.logsumexp``'s step since the float32 forward sums ``1 + s`` in one pass
    (:func:`._numba_torch._rest_lse`; 1.19-1.45x with a tie test per entry)."""
    lse = lse_any(x)
    return lse[:, None].to(x.dtype, copy=True), lse  # a copy for float64 too: outputs may not alias


@logsumexp_op.register_fake
def _(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty((x.shape[0], 1)), x.new_empty((x.shape[0],), dtype=torch.float64)


def _lse_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.save_for_backward(inputs[0], output[1])


def _lse_backward(ctx: Any, g: torch.Tensor, _g_lse: Any) -> torch.Tensor:
    x, lse = ctx.saved_tensors
    if torch.is_grad_enabled():  # double backward: differentiable torch ops
        return lse_backward(x, lse, g)
    return logsumexp_grad_op(x, lse, g)


logsumexp_op.register_autograd(_lse_backward, setup_context=_lse_setup)


@torch.library.custom_op("floatguard::logsumexp_rows_grad", mutates_args=())
def logsumexp_grad_op(x: torch.Tensor, lse: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The backward of :func:`logsumexp_op`, ``g exp(x - lse)`` in one kernel pass as eager's (it used to be
    the softmax op, a max and a scaling pass more, then a select and a product: 2.8x the compiled
    ``torch.logsumexp``'s step at 1024×2048). Not differentiable itself."""
    return lse_backward(x, lse, g)


@logsumexp_grad_op.register_fake
def _(x: torch.Tensor, lse: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("floatguard::softmax_rows", mutates_args=())
def softmax_op(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`._torch_softmax.Softmax` (or ``LogSoftmax`` with ``log``) as a custom op; also returns
    ``finite`` (R, 1). The same kernels as eager; the output is contiguous, as the fake one."""
    out, finite = softmax_any(x.contiguous(), log)
    if finite is ALL_FINITE:  # a custom op returns fresh tensors of the declared shape
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
        return softmax_backward(out, finite, g, ctx.log, graph=True), None
    return softmax_grad_op(out, finite, g.to(out.dtype), ctx.log), None


softmax_op.register_autograd(_softmax_backward, setup_context=_softmax_setup)


@torch.library.custom_op("floatguard::softmax_rows_grad", mutates_args=())
def softmax_grad_op(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor, log: bool) -> torch.Tensor:
    """The backward of :func:`softmax_op` (``p (g - sum(g p))``, or ``g - exp(o) sum(g)`` with ``log``):
    the fused kernel of eager's backward, opaque to Dynamo. Not differentiable itself."""
    return softmax_backward(out, finite, g, log)


@softmax_grad_op.register_fake
def _(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor, log: bool) -> torch.Tensor:
    return torch.empty(out.shape, dtype=out.dtype, device=out.device)


def logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """:func:`logsumexp_op`'s ``(R, 1)`` result, the call stamped with the ops' revision (:mod:`._torch_revision`)."""
    stamp(x)
    return logsumexp_op(x)[0]


def softmax_rows(x: torch.Tensor, log: bool) -> torch.Tensor:
    """:func:`softmax_op`'s result, the call stamped with the ops' revision (:mod:`._torch_revision`)."""
    stamp(x)
    return softmax_op(x, log)[0]
