"""softplus, log_sigmoid, log1mexp, logaddexp and binary cross-entropy under ``torch.compile``: custom ops.

Dynamo cannot trace the numba kernels of :mod:`._torch_elementwise` and :mod:`._torch_bce` (NumPy views,
compiled code), so the ops used to fall back to the generic array-API code, traced as a dozen float64 torch
ops: forward and backward at 4096×1024 float32 took 7.5 (log1mexp) to 14 (logaddexp) times the compiled
framework op, binary cross-entropy at 4096×1000 25 times. As ``torch.library`` custom ops they enter the
graph whole and run eager's kernels, forward and backward (the backward a second op; differentiable torch
ops under ``create_graph``), so they give eager's values and gradients bit for bit (BCE's written gradient:
below); the fake versions give the shapes. Elementwise ops take the flattened tensor (one contiguous
layout whatever the input's strides) and return a new one: a custom op may not return or alias its input.
Measured (one thread, ``benchmarks/training_speed.py``, three runs): softplus and log_sigmoid 0.77-0.90x the
compiled framework op, BCE 0.94-1.02x; logaddexp and log1mexp above 1 (1.28-1.42x and 1.05-1.37x with their
float64 backward kernels; 1.18-1.26x and 0.87-1.23x with the float32 lanes' backward, whose kernels take 4.9 and 2.6 ms
at 4096×1024), held by their forward kernels, float64 registers for a value within half an ulp and a sliver (10-11 ms;
the compiled torch step 12 ms).

Binary cross-entropy without weights of float32/bfloat16 logits that require grad, a mean or a sum, takes
:func:`bce_written_op`, whose forward writes the gradient of ``loss.backward()`` as eager's does
(:class:`._torch_bce._BCEPlain`); the backward is ``g grad`` into NumPy's memory
(:func:`._torch_ce_compile.scale_written_gradient_op`): exact for ``g`` a power of two, within 1.5 ulp
otherwise (eager computes it again for such ``g``: one rounding). At 4096×1000 float32 the compiled step took
9.6 ms so, 11.2 ms with the loss alone forward and the backward kernel (the compiled
``F.binary_cross_entropy_with_logits``: 9.7 ms); the written gradient was faster from 256×1000 (0.78 against
0.96 ms) to 16384×4096 (213 against 246 ms), so no size threshold. Imported only while compiling
(:mod:`._torch_fast`, :mod:`.losses`).
"""

from __future__ import annotations

from typing import Any

import torch

from ._torch_bce import bce_grad, bce_grad_graph, bce_plain_written, bce_values, per_class
from ._torch_ce_compile import scale_written_gradient_op
from ._torch_elementwise import (
    logaddexp_grad,
    logaddexp_grad_graph,
    logaddexp_values,
    unary_grad,
    unary_grad_graph,
    unary_values,
)
from ._torch_revision import stamp
from ._torch_rows import FUSED_GRAD


def _like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, as the real outputs


# -- softplus, log_sigmoid, log1mexp ----------------------------------------------------------------------
@torch.library.custom_op("floatguard::unary", mutates_args=())
def unary_op(x: torch.Tensor, op: int) -> torch.Tensor:
    """:func:`._torch_elementwise.unary_values` (``op``: 0 softplus, 1 log_sigmoid, 2 log1mexp) as a custom op."""
    return unary_values(x, op)


@unary_op.register_fake
def _(x: torch.Tensor, op: int) -> torch.Tensor:
    return _like(x)


@torch.library.custom_op("floatguard::unary_backward", mutates_args=())
def unary_backward_op(x: torch.Tensor, g: torch.Tensor, op: int) -> torch.Tensor:
    """The gradient of :func:`unary_op` for the upstream ``g``: eager's backward kernels. Not differentiable."""
    return unary_grad(x, g, op)


@unary_backward_op.register_fake
def _(x: torch.Tensor, g: torch.Tensor, op: int) -> torch.Tensor:
    return _like(x)


def _unary_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.op = inputs[1]
    ctx.save_for_backward(inputs[0])


def _unary_backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
    (x,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # double backward: differentiable torch ops
        return unary_grad_graph(x, g, ctx.op), None
    return unary_backward_op(x, g, ctx.op), None


unary_op.register_autograd(_unary_backward, setup_context=_unary_setup)


def unary(x: torch.Tensor, op: int) -> torch.Tensor:
    """:func:`._torch_elementwise.unary` under ``torch.compile``."""
    stamp(x)
    return unary_op(x.reshape(-1), op).reshape(x.shape)


# -- logaddexp --------------------------------------------------------------------------------------------
@torch.library.custom_op("floatguard::logaddexp", mutates_args=())
def logaddexp_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`._torch_elementwise.logaddexp_values` as a custom op (``a``, ``b`` of one shape and dtype)."""
    return logaddexp_values(a, b)


@logaddexp_op.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _like(a)


@torch.library.custom_op("floatguard::logaddexp_backward", mutates_args=())
def logaddexp_backward_op(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of :func:`logaddexp_op` for the upstream ``g``: eager's backward kernel. Not differentiable."""
    return logaddexp_grad(a, b, g)


@logaddexp_backward_op.register_fake
def _(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _like(a), _like(b)


def _lae_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0], inputs[1])


def _lae_backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = ctx.saved_tensors
    if torch.is_grad_enabled():  # double backward: differentiable torch ops
        return logaddexp_grad_graph(a, b, g)
    return logaddexp_backward_op(a, b, g)


logaddexp_op.register_autograd(_lae_backward, setup_context=_lae_setup)


def logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`._torch_elementwise.logaddexp` under ``torch.compile``."""
    stamp(a)
    return logaddexp_op(a.reshape(-1), b.reshape(-1)).reshape(a.shape)


# -- binary cross-entropy ---------------------------------------------------------------------------------
@torch.library.custom_op("floatguard::bce", mutates_args=())
def bce_op(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, pos_weight: torch.Tensor | None,
           reduction: str) -> torch.Tensor:
    """:func:`._torch_bce.bce_values` as a custom op: eager's forward kernel."""
    return bce_values(x, y, weight, pos_weight, reduction)


@bce_op.register_fake
def _(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, pos_weight: torch.Tensor | None,
      reduction: str) -> torch.Tensor:
    return x.new_empty(x.shape if reduction == "none" else ())


@torch.library.custom_op("floatguard::bce_backward", mutates_args=())
def bce_backward_op(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, pos_weight: torch.Tensor | None,
                    g: torch.Tensor, reduction: str) -> torch.Tensor:
    """The gradient of :func:`bce_op` with respect to ``x`` (upstream ``g``): eager's backward kernel."""
    shape = tuple(x.shape)
    return bce_grad(x, y, per_class(weight, shape), per_class(pos_weight, shape), g, reduction, x.numel())


@bce_backward_op.register_fake
def _(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, pos_weight: torch.Tensor | None,
      g: torch.Tensor, reduction: str) -> torch.Tensor:
    return _like(x)


def _bce_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.reduction = inputs[4]
    ctx.save_for_backward(*inputs[:4])


def _bce_backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
    x, y, weight, pos_weight = ctx.saved_tensors
    if torch.is_grad_enabled():  # double backward: differentiable torch ops
        return bce_grad_graph(x, y, weight, pos_weight, g, ctx.reduction), None, None, None, None
    return bce_backward_op(x, y, weight, pos_weight, g, ctx.reduction), None, None, None, None


bce_op.register_autograd(_bce_backward, setup_context=_bce_setup)


@torch.library.custom_op("floatguard::bce_written", mutates_args=())
def bce_written_op(x: torch.Tensor, y: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bce_op` of float32/bfloat16 ``x`` and ``y`` (one dtype), no weights, a mean or a sum: the loss and
    the gradient of ``loss.backward()`` (``g = 1``) its forward writes (:func:`._torch_bce.bce_plain_written`)."""
    return bce_plain_written(x.contiguous(), y.contiguous(), reduction)


@bce_written_op.register_fake
def _(x: torch.Tensor, y: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(()), _like(x)


def _written_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.save_for_backward(inputs[0], inputs[1], output[1])
    ctx.reduction = inputs[2]


def _written_backward(ctx: Any, g: torch.Tensor, _g_grad: Any) -> tuple[Any, None, None]:
    x, y, grad = ctx.saved_tensors
    if torch.is_grad_enabled():  # double backward: differentiable torch ops
        return bce_grad_graph(x, y, None, None, g, ctx.reduction), None, None
    return scale_written_gradient_op(grad, g), None, None


bce_written_op.register_autograd(_written_backward, setup_context=_written_setup)

def bce(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, pos_weight: torch.Tensor | None,
        reduction: str) -> torch.Tensor:
    """:func:`.losses.binary_cross_entropy_with_logits` under ``torch.compile``: a training step's loss
    (:func:`bce_written_op`), else :func:`bce_op`."""
    stamp(x)
    if (weight is None and pos_weight is None and reduction != "none" and x.dtype in FUSED_GRAD and y.dtype is x.dtype
            and x.requires_grad and torch.is_grad_enabled()):
        return bce_written_op(x, y, reduction)[0]
    return bce_op(x, y, weight, pos_weight, reduction)
