"""PyTorch CPU cross-entropy under ``torch.compile``: the latency route as ``torch.library`` custom ops.

Dynamo cannot trace the kernels (NumPy views, compiled code, a ValueError on values): as custom ops
they enter the graph whole, run eager's code and keep its checks; the fake versions give the shapes.
``floatguard::cross_entropy_rows`` takes the z-loss and soft-capping too (``softcap = 0``: none);
``floatguard::cross_entropy_features`` class weights, label smoothing and class probabilities (traced as
torch ops, they measured 7 to 11 times the compiled ``F.cross_entropy``'s time at 256×1000).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._torch_ce import (
    index_forward,
    kernel_input,
    loss_out,
    plain_backward,
    plain_forward,
    plain_grad_scale,
    plain_out,
    reduce_loss,
    rows_backward,
    rows_forward,
    weight64,
    z_rows,
)
from ._torch_revision import stamp
from ._torch_rows import EMPTY, empty_out, numpy_view, writes_gradient


@torch.library.custom_op("floatguard::cross_entropy_rows", mutates_args=())
def cross_entropy_op(x: torch.Tensor, target: torch.Tensor, ignore_index: int, has_ignore: bool,
                     reduction: str, z_loss: float = 0.0, softcap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`._torch_ce.cross_entropy_plain` as a custom op: the loss and the residuals ``(5, R)`` (float64); with
    ``z_loss`` or ``softcap`` (0: none) the general kernel's rows (:func:`_featured_forward`)."""
    x, target = x.contiguous(), target.contiguous()
    if z_loss or softcap:
        return _featured_forward(x, target, ignore_index if has_ignore else None, reduction, z_loss, softcap)
    res, total, count = plain_forward(x, target, ignore_index if has_ignore else None)
    return plain_out(x, res, total, count, reduction), torch.from_numpy(res)


def _featured_forward(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None, reduction: str,
                      z_loss: float, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The custom op with z-loss or soft-capping: :func:`._numba_losses.ce_index_forward` (no weight, no
    smoothing), its residuals in the layout of :func:`plain_forward` (row 0 the cross-entropy alone)."""
    loss, m, lg, coef, alive, _ = index_forward(numpy_view(x), target, EMPTY, ignore_index, 0.0, cap)
    res = np.stack([loss, m, lg, coef, alive])
    count = float(coef.sum())  # unweighted: 1 per row not ignored
    z = z_rows(z_loss, m, lg, alive, loss, None if ignore_index is None else target.numpy() != ignore_index)
    out = reduce_loss(loss, count, reduction, z, count)
    return torch.from_numpy(np.asarray(out)).to(x.dtype), torch.from_numpy(res)


@cross_entropy_op.register_fake
def _(x: torch.Tensor, target: torch.Tensor, ignore_index: int, has_ignore: bool,
      reduction: str, z_loss: float = 0.0, softcap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (x.shape[0],) if reduction == "none" else ()
    return x.new_empty(shape), x.new_empty((5, x.shape[0]), dtype=torch.float64)


@torch.library.custom_op("floatguard::cross_entropy_rows_backward", mutates_args=())
def cross_entropy_backward_op(x: torch.Tensor, target: torch.Tensor, res: torch.Tensor, g: torch.Tensor,
                              reduction: str, z_loss: float = 0.0, softcap: float = 0.0) -> torch.Tensor:
    """The gradient of :func:`cross_entropy_op` with respect to ``x`` (upstream ``g``)."""
    x, target = x.contiguous(), target.contiguous()
    rn = res.contiguous().numpy()
    count = float(rn[3].sum())
    if z_loss or softcap:  # rows in threads as eager's (rows_backward, plain_backward)
        return rows_backward(x, target, EMPTY, (rn[1], rn[2], rn[3], rn[4]), count, count, g, 0.0, reduction, z_loss,
                             softcap)
    gs, gn = plain_grad_scale(g, count, reduction)
    return plain_backward(x, target, rn, gs, gn)


@cross_entropy_backward_op.register_fake
def _(x: torch.Tensor, target: torch.Tensor, res: torch.Tensor, g: torch.Tensor, reduction: str, z_loss: float = 0.0,
      softcap: float = 0.0) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, as the real output


def _ce_op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.args = inputs[4:7]  # reduction, z_loss, softcap
    ctx.save_for_backward(inputs[0], inputs[1], output[1])


def _ce_op_backward(ctx: Any, g: torch.Tensor, _g_res: Any) -> tuple[Any, ...]:
    x, target, res = ctx.saved_tensors
    return cross_entropy_backward_op(x, target, res, g, *ctx.args), *([None] * 6)


cross_entropy_op.register_autograd(_ce_op_backward, setup_context=_ce_op_setup)


def cross_entropy_compiled(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None,
                           reduction: str, z_loss: float = 0.0, softcap: float = 0.0) -> torch.Tensor:
    """:func:`._torch_ce.cross_entropy_plain` under ``torch.compile``, with the z-loss and soft-capping
    (``softcap`` 0: none). A training step's loss of at most ``WRITTEN_MAX_BYTES`` without them takes
    :func:`cross_entropy_features_written_op` (no weight, no smoothing), as :func:`cross_entropy_features_compiled`
    (256×1000 float32: 1.17 -> ~0.95x the compiled ``F.cross_entropy``'s step)."""
    stamp(x)
    if not z_loss and not softcap and _written(x, reduction):
        return cross_entropy_features_written_op(x, target, None, 0 if ignore_index is None else ignore_index,
                                                 ignore_index is not None, 0.0, reduction)[0]
    return cross_entropy_op(x, target, 0 if ignore_index is None else ignore_index, ignore_index is not None,
                            reduction, float(z_loss), float(softcap))[0]


@torch.library.custom_op("floatguard::cross_entropy_features", mutates_args=())
def cross_entropy_features_op(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
                              has_ignore: bool, eps: float, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`._torch_ce.cross_entropy_features` as a custom op: the loss and the residuals ``(5, R)`` (float64:
    the row losses, ``m``, ``log1p(s)``, the row weights (``sum t' w`` for probabilities) and ``alive``)."""
    loss, m, lg, coef, alive, den, count, _, _, total = rows_forward(
        kernel_input(x), target.contiguous(), weight64(weight), ignore_index if has_ignore else None, eps,
        reduction, 0.0, False)
    out = loss_out(loss, den, reduction, None, count, x.dtype, total)
    return out, torch.from_numpy(np.stack([loss, m, lg, coef, alive]))


@cross_entropy_features_op.register_fake
def _(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int, has_ignore: bool,
      eps: float, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (x.shape[0],) if reduction == "none" else ()
    return x.new_empty(shape), x.new_empty((5, x.shape[0]), dtype=torch.float64)


def _features_backward_rows(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, res: torch.Tensor,
                            g: torch.Tensor, eps: float, reduction: str) -> torch.Tensor:
    """:func:`._torch_ce.rows_backward` (as :class:`._torch_ce._CrossEntropy`'s) for the residuals ``res``."""
    rn = res.contiguous().numpy()
    index = not target.dtype.is_floating_point
    tk = target.contiguous() if index else kernel_input(target)
    den = float(rn[3].sum()) if index else float(x.shape[0])  # a mean's: the target weights, or the rows
    out = rows_backward(kernel_input(x), tk, weight64(weight), (rn[1], rn[2], rn[3], rn[4]), den, den, g, eps,
                        reduction, 0.0, 0.0)
    return out.to(x.dtype)


@torch.library.custom_op("floatguard::cross_entropy_features_backward", mutates_args=())
def cross_entropy_features_backward_op(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                                       res: torch.Tensor, g: torch.Tensor, eps: float,
                                       reduction: str) -> torch.Tensor:
    """The gradient of :func:`cross_entropy_features_op` with respect to ``x`` (upstream ``g``)."""
    return _features_backward_rows(x, target, weight, res, g, eps, reduction)


@cross_entropy_features_backward_op.register_fake
def _(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, res: torch.Tensor, g: torch.Tensor,
      eps: float, reduction: str) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _features_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.args = (inputs[5], inputs[6])  # eps, reduction
    ctx.save_for_backward(inputs[0], inputs[1], inputs[2], output[1])


def _features_backward(ctx: Any, g: torch.Tensor, _g_res: Any) -> tuple[Any, ...]:
    x, target, weight, res = ctx.saved_tensors
    return cross_entropy_features_backward_op(x, target, weight, res, g, *ctx.args), *([None] * 6)


cross_entropy_features_op.register_autograd(_features_backward, setup_context=_features_setup)


@torch.library.custom_op("floatguard::cross_entropy_features_written", mutates_args=())
def cross_entropy_features_written_op(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                                      ignore_index: int, has_ignore: bool, eps: float,
                                      reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cross_entropy_features_op` of float32/bfloat16 logits, a mean or a sum: the loss and the gradient of
    ``loss.backward()`` (``g = 1``) its forward writes (:mod:`._numba_ce_fused`), as eager's training step."""
    loss, _, _, _, _, den, count, _, grad, total = rows_forward(
        kernel_input(x), target.contiguous(), weight64(weight), ignore_index if has_ignore else None, eps,
        reduction, 0.0, True)
    assert grad is not None
    return loss_out(loss, den, reduction, None, count, x.dtype, total), grad


@cross_entropy_features_written_op.register_fake
def _(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int, has_ignore: bool,
      eps: float, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(()), torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("floatguard::scale_written_gradient", mutates_args=())
def scale_written_gradient_op(grad: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g grad``: the backward of :func:`cross_entropy_features_written_op`, into NumPy's memory (a custom op: the
    product traced as ``aten::mul`` took 158 us at 256×1000 in a training step, its fresh 1 MB page-faulted; 34 us
    so). No derivative of its own: aot_autograd refuses a double backward anyway."""
    out = empty_out(grad)
    return torch.mul(grad, g, out=out)


@scale_written_gradient_op.register_fake
def _(grad: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(grad)


def _written_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.save_for_backward(output[1])


def _written_backward(ctx: Any, g: torch.Tensor, _g_grad: Any) -> tuple[Any, ...]:
    (grad,) = ctx.saved_tensors
    return scale_written_gradient_op(grad, g), *([None] * 6)


cross_entropy_features_written_op.register_autograd(_written_backward, setup_context=_written_setup)


def cross_entropy_features_compiled(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                                    ignore_index: int | None, eps: float, reduction: str) -> torch.Tensor:
    """:func:`._torch_ce.cross_entropy_features` under ``torch.compile``.

    A training step's loss (float32/bfloat16 logits that require grad, a mean or a sum) of at most
    ``WRITTEN_MAX_BYTES`` takes :func:`cross_entropy_features_written_op`, whose forward writes the gradient as
    eager's does; the backward is then ``g grad``, a new tensor (a custom op may not return its input), exact for
    ``g`` a power of two and within 1.5 ulp otherwise (eager computes it again for such ``g``: one rounding).
    256×1000 float32, label smoothing: 1.41 -> 0.9x the compiled ``F.cross_entropy``'s step. Larger logits
    recompute the gradient in the backward: the new tensor's page faults (a fresh mapping above malloc's
    threshold) cost more than the kernel (2048×32000: a copy 52 ms into NumPy's huge pages, 127 ms as a torch
    clone, against the backward kernel's 90)."""
    stamp(x)
    ign, has = (0 if ignore_index is None else ignore_index), ignore_index is not None
    if _written(x, reduction):
        return cross_entropy_features_written_op(x, target, weight, ign, has, float(eps), reduction)[0]
    return cross_entropy_features_op(x, target, weight, ign, has, float(eps), reduction)[0]


def _written(x: torch.Tensor, reduction: str) -> bool:
    """Whether a compiled call takes :func:`cross_entropy_features_written_op`: float32/bfloat16 logits of at most
    ``WRITTEN_MAX_BYTES`` that require grad, a mean or a sum (see :func:`cross_entropy_features_compiled`)."""
    return reduction != "none" and writes_gradient(x, x.requires_grad and torch.is_grad_enabled())
