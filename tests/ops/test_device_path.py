"""The path of torch tensors off the CPU (CUDA, XPU, MPS), tested on the CPU.

Tensors not on the CPU cannot use the numba kernels: ``cross_entropy`` takes a
``torch.autograd.Function`` composed of torch ops in float32 (float64 for float64
inputs) with the max split (:func:`floatguard.ops._torch_losses.cross_entropy_device`),
and ``softmax`` / ``log_softmax`` / ``logsumexp`` take ``device_softmax`` /
``device_logsumexp`` of :mod:`floatguard.ops._torch_device`. ``FLOATGUARD_FORCE_DEVICE_PATH``
(here the module flag it sets) sends CPU tensors down that path, so that it is checked
for equality with the CPU kernels (float64: to rounding; float32 and 16-bit: against the
float64 result in ulps), by ``gradcheck`` and ``gradgradcheck`` in float64, and for its
errors. Its speed on a GPU is not measured here.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import floatguard as fg
from floatguard.ops import _namespace, _torch_losses, _torch_softmax
from floatguard.testing import ulp_error

INF = math.inf
C = 13


@pytest.fixture
def device_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_namespace, "FORCE_DEVICE_PATH", True)
    yield


def _data(dtype: torch.dtype = torch.float64, rows: int = 9) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(rows, C, dtype=torch.float64, generator=g) * 6
    x[0] = -30.0
    x[0, 4] = 12.0  # a confident row: loss ~ 12 exp(-42), lost by log(1 + s)
    x[1, :3] = x[1].max() + 2  # a tie at the max
    t = torch.randint(0, C, (rows,), generator=g)
    t[0], t[5] = 4, -1
    probs = torch.softmax(torch.randn(rows, C, dtype=torch.float64, generator=g) * 2, dim=1)
    probs[2, 5] = 0.0
    w = torch.rand(C, dtype=torch.float64, generator=g) + 0.5
    return x.to(dtype), t, probs.to(dtype), w.to(dtype)


FEATURES: list[dict[str, Any]] = [
    {},
    {"label_smoothing": 0.1},
    {"weight": True},
    {"weight": True, "label_smoothing": 0.2},
    {"z_loss": 1e-2},
    {"softcap": 4.0},
    {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 6.0},
]
FIDS = ["plain", "smooth", "weight", "weight-smooth", "zloss", "softcap", "all"]


def _kwargs(feat: dict[str, Any], w: torch.Tensor, index: bool) -> dict[str, Any]:
    kw = {k: v for k, v in feat.items() if k != "weight"}
    if feat.get("weight"):
        kw["weight"] = w
    if index:
        kw["ignore_index"] = -1
    return kw


def _node(fn: Any) -> str:
    """The name of the autograd node under the views of ``fn`` (a reshape of the rows' losses)."""
    while type(fn).__name__ in ("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"):
        fn = fn.next_functions[0][0]
    return type(fn).__name__


def _loss_and_grad(x: torch.Tensor, t: torch.Tensor, reduction: str, kw: dict[str, Any],
                   force: bool) -> tuple[torch.Tensor, torch.Tensor, Any]:
    old = _namespace.FORCE_DEVICE_PATH
    _namespace.FORCE_DEVICE_PATH = force
    try:
        xg = x.clone().requires_grad_()
        out = fg.cross_entropy(xg, t, reduction=reduction, **kw)
        seed = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
        (grad,) = torch.autograd.grad((out * seed).sum(), xg)
    finally:
        _namespace.FORCE_DEVICE_PATH = old
    return out.detach(), grad, out.grad_fn


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("index", [True, False], ids=["indices", "probs"])
@pytest.mark.parametrize("feat", FEATURES, ids=FIDS)
def test_cross_entropy_float64_equals_the_cpu_kernel(feat: dict[str, Any], index: bool, reduction: str) -> None:
    """float64 rows, with non-finite rows (all -inf, a +inf, a NaN) and an ignored entry: the device
    composition gives the CPU kernel's losses and gradients to rounding."""
    x, t, probs, w = _data()
    x[6] = -INF
    x[7, 2] = INF
    x[8, 1] = math.nan
    target = t if index else probs
    kw = _kwargs(feat, w, index)
    want, gwant, fn_cpu = _loss_and_grad(x, target, reduction, kw, force=False)
    got, ggot, fn_dev = _loss_and_grad(x, target, reduction, kw, force=True)
    assert _node(fn_dev) == "_CrossEntropyDeviceBackward"
    assert _node(fn_cpu) != _node(fn_dev)  # the CPU kernel answered the reference
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0.0, equal_nan=True)
    torch.testing.assert_close(ggot, gwant, rtol=1e-12, atol=1e-300, equal_nan=True)
    dead = [6] if "softcap" in feat else [6, 7]  # capped, a +inf is cap: that row is finite
    assert bool((ggot[dead] == 0).all())  # rows with an infinite max: gradient 0, never NaN
    assert bool(torch.isnan(ggot[8]).all())  # the NaN row: NaN, as its loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("index", [True, False], ids=["indices", "probs"])
@pytest.mark.parametrize("feat", FEATURES, ids=FIDS)
def test_cross_entropy_low_precision_against_float64(feat: dict[str, Any], index: bool, dtype: torch.dtype) -> None:
    """float32 math: a float32 row loss within a few ulp of the float64 loss of the same inputs; bfloat16 and
    float16 rounded once from it (within 1.5 ulp); the gradient within float32 rounding of float64's."""
    x, t, probs, w = _data(dtype, rows=40)
    kw = _kwargs(feat, w, index)
    ref_kw = {**kw, "weight": w.double()} if "weight" in kw else kw
    want, gwant, _ = _loss_and_grad(x.double(), t if index else probs.double(), "none", ref_kw, force=False)
    got, ggot, _ = _loss_and_grad(x, t if index else probs, "none", kw, force=True)
    assert got.dtype == dtype and ggot.dtype == dtype
    ulps = ulp_error(got.double().numpy(), want.numpy(), dtype)
    assert float(np.max(ulps)) <= (8.0 if dtype == torch.float32 else 1.5)
    if dtype == torch.float32:
        scale = float(gwant.abs().max())
        torch.testing.assert_close(ggot.double(), gwant, rtol=1e-5, atol=1e-6 * scale)


def test_confident_row_keeps_its_small_loss(device_path: None) -> None:
    """log1p of the rest: logits [0, -30] and class 0 give 9.36e-14 in float32, where log(sum(exp)) gives 0."""
    x = torch.tensor([[0.0, -30.0]])
    got = fg.cross_entropy(x, torch.tensor([0]), reduction="none")
    assert float(got[0]) == pytest.approx(math.log1p(math.exp(-30.0)), rel=2e-7)
    assert float(F.cross_entropy(x, torch.tensor([0]), reduction="none")[0]) == 0.0


@pytest.mark.parametrize("index", [True, False], ids=["indices", "probs"])
@pytest.mark.parametrize("feat", FEATURES, ids=FIDS)
def test_cross_entropy_gradcheck(feat: dict[str, Any], index: bool, device_path: None) -> None:
    """First and second derivatives of the device composition (float64), every feature."""
    x, t, probs, w = _data(rows=6)
    x = x / 3
    kw = _kwargs(feat, w, index)
    target = t if index else probs
    for reduction in ("mean", "none"):
        def f(v: torch.Tensor, reduction: str = reduction) -> torch.Tensor:
            return fg.cross_entropy(v, target, reduction=reduction, **kw)

        xg = x.clone().requires_grad_()
        assert _node(f(xg).grad_fn) == "_CrossEntropyDeviceBackward"
        assert torch.autograd.gradcheck(f, (xg,))
        assert torch.autograd.gradgradcheck(f, (xg,))


def test_cross_entropy_class_axis_and_shapes(device_path: None) -> None:
    """(N, C, d) logits with axis=1 (PyTorch's layout), against F.cross_entropy in float64."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, C, 3, dtype=torch.float64, generator=g)
    t = torch.randint(0, C, (4, 3), generator=g)
    t[1, 2] = -100
    got = fg.cross_entropy(x, t, axis=1, ignore_index=-100, label_smoothing=0.05, reduction="none")
    want = F.cross_entropy(x, t, ignore_index=-100, label_smoothing=0.05, reduction="none")
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)


def test_cross_entropy_bad_target_names_the_argument(device_path: None) -> None:
    x, t, _, _ = _data()
    t = t.clone()
    t[3] = C
    with pytest.raises(ValueError, match=rf"'target' has class indices outside \[0, {C}\) \(e.g. {C}\)"):
        fg.cross_entropy(x, t, ignore_index=-1)
    t[3] = -1  # an ignored entry is not checked
    assert torch.isfinite(fg.cross_entropy(x, t, ignore_index=-1))


def test_cross_entropy_rows_torch_is_the_device_composition() -> None:
    x, t, _, _ = _data(torch.float32)
    got = _torch_losses.cross_entropy_rows_torch(x, t, -1, "sum")
    want = _torch_losses.cross_entropy_device(x, t, None, -1, 0.0, "sum")
    assert torch.equal(got, want)


# -- softmax, log_softmax, logsumexp ----------------------------------------------------------------
def _rows(dtype: torch.dtype) -> torch.Tensor:
    x, _, _, _ = _data(torch.float64, rows=12)
    x[6] = -INF
    x[7, 2] = INF
    x[8, 1] = math.nan
    x[9] = torch.linspace(-1e4, 0, C, dtype=torch.float64)
    return x.to(dtype)


OPS = {
    "softmax": lambda v: fg.softmax(v),
    "log_softmax": lambda v: fg.log_softmax(v),
    "logsumexp": lambda v: fg.logsumexp(v, axis=-1),
}


@pytest.mark.parametrize("op", list(OPS))
def test_reductions_take_the_device_functions(op: str, device_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain calls, 3-d inputs and calls recording a gradient all reach ``device_softmax`` / ``device_logsumexp``."""
    seen: list[str] = []
    for name in ("device_softmax", "device_logsumexp"):
        real = getattr(_torch_softmax, name)  # the names its dispatch looks up

        def spy(*a: Any, _real: Any = real, _name: str = name) -> Any:
            seen.append(_name)
            return _real(*a)

        monkeypatch.setattr(_torch_softmax, name, spy)
    x = _rows(torch.float32)
    OPS[op](x)
    OPS[op](x.reshape(3, 4, C))
    OPS[op](x.clone().requires_grad_())
    assert len(seen) == 3 and set(seen) == {"device_logsumexp" if op == "logsumexp" else "device_softmax"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_reductions_match_the_cpu_kernels(op: str, dtype: torch.dtype) -> None:
    """Values (non-finite rows included) and gradients against the CPU kernels on the float64 input:
    float64 to rounding, float32 within a few ulp, 16-bit rounded once from float32 math."""
    x = _rows(dtype)
    fin = torch.isfinite(x.double()).all(dim=1)
    want = OPS[op](x.double()).detach()
    xg = x.clone().requires_grad_()
    _namespace.FORCE_DEVICE_PATH = True
    try:
        out = OPS[op](xg)
        got = out.detach()
        seed = torch.linspace(0.5, 1.5, got.numel(), dtype=got.dtype).reshape(got.shape)
        (ggot,) = torch.autograd.grad(torch.where(torch.isnan(out), 0.0, out * seed).sum(), xg)
    finally:
        _namespace.FORCE_DEVICE_PATH = False
    assert got.dtype == dtype
    finite_out = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.equal(got[torch.isinf(want)].double(),
                                                                              want[torch.isinf(want)])
    ulps = ulp_error(got.double().numpy()[finite_out.numpy()], want.numpy()[finite_out.numpy()], dtype)
    budget = {torch.float64: 2.0, torch.float32: 4.0}.get(dtype, 1.5)
    assert float(np.max(ulps)) <= budget
    xw = x.double().requires_grad_()
    out = OPS[op](xw)
    (gwant,) = torch.autograd.grad(torch.where(torch.isnan(out), 0.0, out * seed.double()).sum(), xw)
    nan_row = torch.isnan(x).any(dim=1)
    assert bool((ggot[~fin & ~nan_row] == 0).all())  # rows with an infinite max: gradient 0
    assert bool(torch.isnan(ggot[nan_row]).all())  # a NaN row: NaN, as its value (and PyTorch's), masked or not
    if dtype in (torch.float64, torch.float32):  # float32 math: g - sum(g p) cancels, to float32 eps of the scale
        atol = 1e-12 * float(gwant[fin].abs().max()) if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(ggot[fin].double(), gwant[fin], rtol=1e-12 if dtype == torch.float64 else 1e-5,
                                   atol=atol)


@pytest.mark.parametrize("op", list(OPS))
def test_reductions_gradcheck(op: str, device_path: None) -> None:
    x = _rows(torch.float64)[:6].clone().requires_grad_()
    assert torch.autograd.gradcheck(OPS[op], (x,))
    assert torch.autograd.gradgradcheck(OPS[op], (x,))


def test_environment_variable_sets_the_flag() -> None:
    code = "from floatguard.ops import _namespace as n; print(n.FORCE_DEVICE_PATH)"
    env = {**os.environ, "FLOATGUARD_FORCE_DEVICE_PATH": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    env["FLOATGUARD_FORCE_DEVICE_PATH"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_cpu_path() -> None:  # pragma: no cover - run where a GPU is lent
    """On a real GPU: the composition is taken and agrees with the float64 CPU result (loss and gradient)."""
    x, t, _, w = _data(torch.float32, rows=64)
    for kw in ({"ignore_index": -1}, {"ignore_index": -1, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0}):
        want, gwant, _ = _loss_and_grad(x.double(), t, "none", {**kw, "weight": w.double()}, force=False)
        xc = x.cuda().requires_grad_()
        got = fg.cross_entropy(xc, t.cuda(), reduction="none", weight=w.cuda(), **kw)
        assert _node(got.grad_fn) == "_CrossEntropyDeviceBackward"
        seed = torch.linspace(0.5, 1.5, got.numel(), dtype=got.dtype, device="cuda")
        (grad,) = torch.autograd.grad((got * seed).sum(), xc)
        assert float(np.max(ulp_error(got.detach().cpu().double().numpy(), want.numpy(), torch.float32))) <= 8.0
        torch.testing.assert_close(grad.cpu().double(), gwant, rtol=1e-5, atol=1e-6)
