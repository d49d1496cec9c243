"""The losses inside ``torch.autocast``: PyTorch's own losses run in float32 there (their ``fp32`` policy); so do
floatguard's drop-ins, so that a bfloat16 model's loss is a float32 number as with ``F.cross_entropy``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import floatguard as fg

F = torch.nn.functional
N, C = 12, 7
TARGET = torch.arange(N) % C
WEIGHT = torch.linspace(0.5, 2.0, C)
PROBS = torch.softmax(torch.linspace(-3, 3, N * C).reshape(N, C), -1).to(torch.bfloat16)  # a bfloat16 soft target
LABELS = (torch.arange(N * C).reshape(N, C) % 3 == 0).float()

# name -> (floatguard's loss, PyTorch's) of the logits
LOSSES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "cross_entropy": (lambda z: fg.cross_entropy(z, TARGET), lambda z: F.cross_entropy(z, TARGET)),
    "cross_entropy_weight_smoothing": (
        lambda z: fg.cross_entropy(z, TARGET, weight=WEIGHT, label_smoothing=0.1, reduction="sum"),
        lambda z: F.cross_entropy(z, TARGET, weight=WEIGHT, label_smoothing=0.1, reduction="sum")),
    "cross_entropy_probs": (lambda z: fg.cross_entropy(z, PROBS), lambda z: F.cross_entropy(z, PROBS)),
    "cross_entropy_none": (lambda z: fg.cross_entropy(z, TARGET, reduction="none"),
                           lambda z: F.cross_entropy(z, TARGET, reduction="none")),
    "cross_entropy_zloss": (lambda z: fg.cross_entropy(z, TARGET, z_loss=1e-3), None),
    "bce": (lambda z: fg.binary_cross_entropy_with_logits(z, LABELS),
            lambda z: F.binary_cross_entropy_with_logits(z, LABELS)),
    "bce_pos_weight": (lambda z: fg.binary_cross_entropy_with_logits(z, LABELS, pos_weight=WEIGHT, reduction="sum"),
                       lambda z: F.binary_cross_entropy_with_logits(z, LABELS, pos_weight=WEIGHT, reduction="sum")),
}


def _step(loss: Callable[[Any], Any], autocast: bool) -> tuple[Any, Any]:
    """A linear layer's training step on a fixed batch: the loss and the layer's weight gradient."""
    layer = torch.nn.Linear(5, C)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-2, 2, 5 * C).reshape(C, 5))
        layer.bias.copy_(torch.linspace(-1, 1, C))
    x = torch.linspace(-1.5, 1.5, N * 5).reshape(N, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = loss(layer(x))
    out.sum().backward()
    return out.detach(), layer.weight.grad


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_loss_under_autocast_is_float32_as_pytorchs(name: str) -> None:
    mine, theirs = LOSSES[name]
    value, grad = _step(mine, autocast=True)
    assert value.dtype == torch.float32
    # the bfloat16 logits widened to float32, then the float32 loss: exactly the loss of the widened logits
    layer_out = torch.nn.Linear(5, C)
    with torch.no_grad():
        layer_out.weight.copy_(torch.linspace(-2, 2, 5 * C).reshape(C, 5))
        layer_out.bias.copy_(torch.linspace(-1, 1, C))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = layer_out(torch.linspace(-1.5, 1.5, N * 5).reshape(N, 5))
        widened = mine(logits.float())
    torch.testing.assert_close(value, widened, rtol=0, atol=0)
    if theirs is not None:
        ref_value, ref_grad = _step(theirs, autocast=True)
        assert ref_value.dtype == value.dtype
        torch.testing.assert_close(value, ref_value, rtol=2e-6, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_outside_autocast_a_bfloat16_loss_stays_bfloat16() -> None:
    logits = torch.linspace(-3, 3, N * C).reshape(N, C).to(torch.bfloat16)
    assert fg.cross_entropy(logits, TARGET).dtype == torch.bfloat16
    assert fg.binary_cross_entropy_with_logits(logits, LABELS.to(torch.bfloat16)).dtype == torch.bfloat16


def test_float64_logits_stay_float64_under_autocast() -> None:
    """Autocast's float32 policy leaves float64 arguments alone (PyTorch's rule)."""
    logits = torch.linspace(-3, 3, N * C, dtype=torch.float64).reshape(N, C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fg.cross_entropy(logits, TARGET).dtype == torch.float64 == F.cross_entropy(logits, TARGET).dtype


class _PassThrough(torch.overrides.TorchFunctionMode):
    """A mode that sees every torch call and changes nothing (as the monitor's probe does)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


def test_autocast_and_torch_func_apply_under_a_torch_function_mode() -> None:
    """A ``TorchFunctionMode`` (the monitor's probe) does not hide autocast or a ``torch.func`` transform from the
    losses: BCE, which takes no part in the override protocol, checked them only when no mode was active."""
    logits = torch.linspace(-3, 3, N * C).reshape(N, C)
    with _PassThrough(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fg.binary_cross_entropy_with_logits(logits.bfloat16(), LABELS).dtype == torch.float32
        assert fg.cross_entropy(logits.bfloat16(), TARGET).dtype == torch.float32
    for loss in (lambda v: fg.binary_cross_entropy_with_logits(v, LABELS), lambda v: fg.cross_entropy(v, TARGET)):
        with _PassThrough():
            got = torch.func.grad(loss)(logits)
        leaf = logits.clone().requires_grad_(True)
        loss(leaf).backward()
        torch.testing.assert_close(got, leaf.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_under_autocast_is_linear_then_a_float32_loss(reduction: str) -> None:
    """An autocast LM: a bfloat16 ``hidden`` and the float32 ``lm_head.weight``. PyTorch runs
    ``F.cross_entropy(lm_head(hidden), target)`` with the linear layer in bfloat16 and the loss in float32; the
    fused op casts as the linear layer does and returns the float32 loss (it was a dtype ``TypeError``), without
    rounding it to bfloat16 first."""
    body, head = torch.nn.Linear(8, 16), torch.nn.Linear(16, 40, bias=True)
    with torch.no_grad():
        for p in (*body.parameters(), *head.parameters()):
            p.copy_(torch.linspace(-0.5, 0.5, p.numel()).reshape(p.shape).flip(-1) * (2 + p.ndim))
    x = torch.linspace(-2, 2, 24 * 8).reshape(24, 8)
    target = torch.arange(24) * 7 % 40
    grads = []
    for fused in (True, False):
        head.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = body(x)
            if fused:
                loss = fg.linear_cross_entropy(hidden, head.weight, target, bias=head.bias, reduction=reduction)
            else:
                loss = F.cross_entropy(head(hidden), target, reduction=reduction)
        assert loss.dtype == torch.float32
        loss.sum().backward()
        grads.append((loss.detach(), head.weight.grad.clone()))
        if fused:
            with torch.no_grad():  # the same bfloat16 operands outside autocast: the loss rounded to bfloat16
                plain = fg.linear_cross_entropy(hidden.detach(), head.weight.bfloat16(), target,
                                                bias=head.bias.bfloat16(), reduction=reduction)
            assert plain.dtype == torch.bfloat16 and torch.equal(loss.detach().bfloat16(), plain)
    (mine, mine_grad), (theirs, theirs_grad) = grads
    # PyTorch rounds the logits to bfloat16 before its float32 loss; the fused op keeps them in float32
    torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(mine_grad, theirs_grad, rtol=5e-2, atol=2e-2)
