"""softmax, log_softmax, logsumexp and cross_entropy of torch CPU tensors along a middle axis (``dim=1`` of
``(N, C, H, W)``): the column kernels (:mod:`floatguard.ops._torch_columns`) against the row path on the same
values moved to the last axis, float64 references, PyTorch's semantics, and their fallbacks."""

from __future__ import annotations

import math
from typing import Any

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import floatguard as fg
from floatguard.ops import _torch_columns

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [((3, 5, 7, 9), 1), ((2, 21, 300), 1), ((4, 3, 2, 6, 5), 2), ((2, 150, 40), -2), ((5, 2, 130), 1)]


def mantissa_ulps(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> float:
    """Largest distance of ``got`` from ``want`` (float64) in ulps of ``dtype`` at ``want``'s binade."""
    nmant = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[dtype]
    g, w = got.detach().double(), want.detach().double()
    e = torch.floor(torch.log2(torch.clamp(w.abs(), min=torch.finfo(dtype).tiny)))
    d = torch.where(g == w, 0.0, (g - w).abs() / 2.0 ** (e - nmant))
    return float(d.max())


def data(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.asarray(rng.standard_normal(shape) * scale)).to(dtype)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the column ops that answered (not None) during the test."""
    seen: list[str] = []
    for name in ("softmax", "logsumexp", "cross_entropy", "cross_entropy_probs"):
        orig = getattr(_torch_columns, name)

        def wrapped(*a: Any, _orig: Any = orig, _name: str = name, **k: Any) -> Any:
            out = _orig(*a, **k)
            if out is not None:
                seen.append(_name)
            return out

        monkeypatch.setattr(_torch_columns, name, wrapped)
    return seen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_forward_within_an_ulp_of_float64(op: str, shape: tuple[int, ...], axis: int, dtype: torch.dtype,
                                          spy: list[str]) -> None:
    x = data(shape, dtype)
    x[(0,) * x.ndim] = -float("inf")  # an entry at -inf in a row with a finite max
    got = getattr(fg, op)(x, axis=axis)
    want = getattr(torch, op)(x.double(), axis)
    assert got.dtype == dtype and got.shape == want.shape
    assert mantissa_ulps(got, want, dtype) <= 1.0
    assert spy == ["logsumexp" if op == "logsumexp" else "softmax"]


@pytest.mark.parametrize("n_cls", [21, 2])  # 2: the two-class kernels (one exp per position)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_matches_the_row_path(op: str, dtype: torch.dtype, n_cls: int, spy: list[str]) -> None:
    """The same values through the row kernels (the axis moved last): the same results but for rare last-bit
    differences (the row kernels sum some rows with the max term inside)."""
    x = data((4, n_cls, 33, 10), dtype, seed=1)
    got = getattr(fg, op)(x, axis=1)
    rows = getattr(fg, op)(x.movedim(1, -1).contiguous(), axis=-1)
    want = rows if op == "logsumexp" else rows.movedim(-1, 1)
    assert spy == ["logsumexp" if op == "logsumexp" else "softmax"]
    diff = got.double() != want.double()
    assert float(diff.double().mean()) < 0.01
    assert mantissa_ulps(got, want.double(), dtype) <= 1.0


@pytest.mark.parametrize("n_cls", [7, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_gradients_match_float64(op: str, dtype: torch.dtype, n_cls: int, spy: list[str]) -> None:
    x = data((3, n_cls, 5, 11), dtype, seed=2).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out = getattr(fg, op)(x, axis=1)
    g = data(tuple(out.shape), torch.float64, seed=3, scale=1.0)
    out.backward(g.to(dtype))
    getattr(torch, op)(x64, 1).backward(g.to(dtype).double())
    assert spy
    assert x.grad is not None and x.grad.dtype == dtype and x.grad.is_contiguous()
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=tol, atol=tol * float(x64.grad.abs().max()))


@pytest.mark.parametrize("n_cls", [9, 2])
def test_float32_backward_within_its_condition_bound(n_cls: int) -> None:
    """softmax's ``p (g - sum(g p))`` and log_softmax's ``g - exp(o) sum(g)`` from the float32 output: the sums in
    float64, the entries in float32 lanes, as the row kernels: within the gradients' bound, 2 ulp times
    ``max(1, kappa)``, ``kappa`` the condition number of the subtraction, of the float64 formula."""
    x = data((2, n_cls, 400), torch.float32, seed=4).requires_grad_()
    g = data((2, n_cls, 400), torch.float32, seed=5, scale=1.0)
    for op in ("softmax", "log_softmax"):
        x.grad = None
        out = getattr(fg, op)(x, axis=1)
        out.backward(g)
        o, g64 = out.detach().double(), g.double()
        if op == "softmax":
            dot = (g64 * o).sum(1, keepdim=True)
            want = o * (g64 - dot)
            kappa = (g64.abs() + dot.abs()) / (g64 - dot).abs()
        else:
            total = g64.sum(1, keepdim=True)
            want = g64 - torch.exp(o) * total
            kappa = (g64.abs() + torch.exp(o) * total.abs()) / want.abs()
        assert x.grad is not None
        e = torch.floor(torch.log2(want.abs().clamp(min=2.0**-149)))
        err = (x.grad.double() - want).abs() / 2.0 ** torch.clamp(e - 23, min=-149)
        assert bool((err <= 2 * torch.clamp(kappa, min=1.0)).all())
        if n_cls > 2 or op == "log_softmax":  # two classes: softmax's g - sum(g p) cancels (median kappa 4.6)
            assert float(err.median()) <= 0.5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_cls", [6, 2])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_confident_rows_and_ties(op: str, n_cls: int, dtype: torch.dtype) -> None:
    """Positions with a tiny rest sum (log1p needs it to the last bit), ties at the max, and a logsumexp near 0
    (``m < 0`` cancels ``log1p(s)``). In bfloat16 the log_softmax of the max entry, -1e-17 here, is within its
    range: the 16-bit kernels gave 0 (an ``s`` below 2^-53 lost beside a 1)."""
    x = torch.full((2, n_cls, 50), -40.0)
    x[:, 0] = 0.0  # s = (C - 1) exp(-40): log_softmax of the max entry -1e-17, not 0
    x[1, 1, :25] = 0.0  # two entries tied at the max
    near_zero = [-0.6931, -0.6932, -5.0, -7.0, -9.0, -11.0] if n_cls == 6 else [-0.25, -1.5]
    x[0, :, 40:] = torch.tensor(near_zero)[:, None]  # logsumexp ~ 0
    x = x.to(dtype)
    got = getattr(fg, op)(x, axis=1)
    assert got.dtype == dtype
    assert mantissa_ulps(got, _mpmath(op, x), dtype) <= 1.0
    if op == "log_softmax" and dtype != torch.float16:  # float16 has no -1e-17: -0
        assert bool((got[0, 0, :40] < 0).all())


@pytest.mark.parametrize("op", ["log_softmax", "logsumexp", "cross_entropy"])
def test_a_position_does_not_depend_on_its_block(op: str, spy: list[str]) -> None:
    """Confident positions are summed again one at a time where few are in a block, the whole block at once where
    many are: either way a position gives the same bits, whatever positions share its block (here, shuffled), and
    the confident ones stay within an ulp of mpmath."""
    rng = np.random.default_rng(7)
    n = 6000
    x = torch.from_numpy(rng.standard_normal((1, 3, n)) * 2).float()
    many = rng.random(n) < np.where(np.arange(n) < n // 2, 0.6, 0.01)  # dense in the first half, sparse after
    x[0, 0, torch.from_numpy(many)] = 30.0  # s ~ 2 exp(-30): log1p(s) needs s to its last bits
    x[0, 1, :3] = 30.0  # and ties at the max
    t = torch.from_numpy(rng.integers(0, 3, (1, n)))
    perm = torch.from_numpy(rng.permutation(n))

    def run(v: torch.Tensor, tv: torch.Tensor) -> torch.Tensor:
        if op == "cross_entropy":
            return fg.cross_entropy(v, tv, axis=1, reduction="none")
        return getattr(fg, op)(v, axis=1)

    got = run(x, t)
    shuffled = run(x[..., perm].contiguous(), t[..., perm].contiguous())
    assert torch.equal(shuffled, got[..., perm])
    assert spy and set(spy) == {"cross_entropy" if op == "cross_entropy" else "softmax" if op != "logsumexp"
                                else "logsumexp"}
    if op != "cross_entropy":
        few = torch.from_numpy(np.flatnonzero(many)[-20:])  # confident positions of the sparse half
        assert mantissa_ulps(got[..., few], _mpmath(op, x[..., few]), torch.float32) <= 1.0


def _mpmath(op: str, x: torch.Tensor) -> torch.Tensor:
    """``op`` over axis 1 of a float32 (O, C, I) tensor, in mpmath (60 digits), as float64."""
    mpmath.mp.dps = 60
    a = x.double().numpy()
    n_out, n_cls, n_in = a.shape
    out = np.empty((n_out, n_in) if op == "logsumexp" else a.shape)
    for o in range(n_out):
        for j in range(n_in):
            lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in a[o, :, j]))
            if op == "logsumexp":
                out[o, j] = float(lse)
            for c in range(n_cls if op != "logsumexp" else 0):
                ls = mpmath.mpf(float(a[o, c, j])) - lse
                out[o, c, j] = float(ls if op == "log_softmax" else mpmath.exp(ls))
    return torch.from_numpy(out)


@pytest.mark.parametrize("n_cls", [5, 2])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), "all -inf"])
def test_positions_with_no_finite_max_take_the_row_path(op: str, bad: Any, n_cls: int, spy: list[str]) -> None:
    x = data((2, n_cls, 300), torch.float32, seed=6).requires_grad_()
    with torch.no_grad():
        if bad == "all -inf":
            x[1, :, 7] = -float("inf")
        else:
            x[1, n_cls // 2, 7] = bad
    got = getattr(fg, op)(x, axis=1)
    want = getattr(fg, op)(x.detach().movedim(1, -1).contiguous(), axis=-1)
    want = want if op == "logsumexp" else want.movedim(-1, 1)
    assert spy == []
    torch.testing.assert_close(got.detach(), want, equal_nan=True, rtol=0, atol=0)
    got.sum().backward() if op != "softmax" else (got * torch.arange(float(n_cls))[:, None]).sum().backward()
    assert x.grad is not None
    if bad != bad:  # a NaN row: NaN gradient, as its value (and PyTorch's)
        assert torch.isnan(x.grad[1, :, 7]).all()
    else:  # -inf and +inf rows: their limits, gradient 0
        assert torch.all(x.grad[1, :, 7] == 0)
    keep = torch.ones_like(x.grad, dtype=torch.bool)
    keep[1, :, 7] = False
    assert torch.isfinite(x.grad[keep]).all()


def test_double_backward() -> None:
    for op in ("softmax", "log_softmax", "logsumexp"):
        x = data((2, 4, 6), torch.float32, seed=7).requires_grad_()
        x64 = x.detach().double().requires_grad_()
        (gx,) = torch.autograd.grad((getattr(fg, op)(x, axis=1) ** 2).sum(), x, create_graph=True)
        (gx64,) = torch.autograd.grad((getattr(torch, op)(x64, 1) ** 2).sum(), x64, create_graph=True)
        v = data(tuple(x.shape), torch.float64, seed=16, scale=1.0)  # not a plain sum: softmax's sums to 1
        (hx,) = torch.autograd.grad((gx * v.float()).sum(), x)
        (hx64,) = torch.autograd.grad((gx64 * v).sum(), x64)
        torch.testing.assert_close(hx.double(), hx64, rtol=1e-4, atol=1e-5)


def test_non_contiguous_input_and_keepdims() -> None:
    x = data((4, 30, 6, 5), torch.float32, seed=8).permute(0, 3, 1, 2)  # (4, 5, 30, 6), axis 2 strided
    torch.testing.assert_close(fg.softmax(x, axis=2), torch.softmax(x.double(), 2).float())
    got = fg.logsumexp(x, axis=1, keepdims=True)
    assert got.shape == (4, 1, 30, 6)
    torch.testing.assert_close(got, torch.logsumexp(x.double(), 1, keepdim=True).float())


def test_channels_last_takes_the_row_path(spy: list[str]) -> None:
    """A ``channels_last`` tensor has its class axis innermost: moved last it is rows with no copy, and the gradient
    comes back in the input's layout."""
    x = data((2, 5, 6, 7), torch.float32, seed=27).to(memory_format=torch.channels_last).requires_grad_()
    t = torch.from_numpy(np.random.default_rng(28).integers(0, 5, (2, 6, 7)))
    out = fg.log_softmax(x, dim=1)
    loss = fg.cross_entropy(x, t, axis=1)
    assert spy == []
    torch.testing.assert_close(out, torch.log_softmax(x.detach().double(), 1).float())
    loss.backward()
    assert x.grad is not None and x.grad.is_contiguous(memory_format=torch.channels_last)


# -- cross-entropy ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, 255, 3])  # 3: a class of the range, ignored
@pytest.mark.parametrize(("n_cls", "eps"), [(2, 0.0), (2, 0.1), (3, 0.0), (21, 0.0), (40, 0.0), (21, 0.1), (40, 0.2)])
def test_cross_entropy_matches_pytorch_in_float64(n_cls: int, eps: float, dtype: torch.dtype, reduction: str,
                                                  weighted: bool, ignore: int | None, spy: list[str]) -> None:
    """The target's entries by vector passes (<= 32 classes) or per position; with label smoothing ``eps``."""
    x = data((3, n_cls, 17, 13), dtype, seed=9).requires_grad_()
    t = torch.from_numpy(np.random.default_rng(10).integers(0, n_cls, (3, 17, 13)))
    if ignore is not None:
        t[0, :5] = ignore
    w = torch.from_numpy(np.random.default_rng(11).random(n_cls) + 0.5).float() if weighted else None
    kw: dict[str, Any] = {} if ignore is None else {"ignore_index": ignore}
    loss = fg.cross_entropy(x, t, axis=1, weight=w, reduction=reduction, label_smoothing=eps, **kw)
    x64 = x.detach().double().requires_grad_()
    want = F.cross_entropy(x64, t, weight=None if w is None else w.double(), reduction=reduction,
                           ignore_index=-100 if ignore is None else ignore, label_smoothing=eps)
    assert spy == ["cross_entropy"]
    assert loss.dtype == dtype and loss.shape == want.shape
    assert mantissa_ulps(loss, want, dtype) <= 1.0
    g = torch.rand(want.shape, dtype=torch.float64) + 0.5 if reduction == "none" else torch.tensor(0.75)
    loss.backward(g.to(dtype))
    want.backward(g.to(dtype).double())
    assert x.grad is not None and x.grad.dtype == dtype
    if dtype == torch.float32 and eps == 0.0:
        assert mantissa_ulps(x.grad, x64.grad, dtype) <= 2.0 or torch.allclose(x.grad.double(), x64.grad, atol=1e-12)
    elif dtype == torch.float32:  # smoothing: the gradient's terms can cancel (its condition number)
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-6, atol=1e-7 * float(x64.grad.abs().max()))
    else:
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-2, atol=1e-2 * float(x64.grad.abs().max()))
    if ignore is not None:
        assert torch.all(x.grad.movedim(1, -1)[t == ignore] == 0)


def test_cross_entropy_confident_target_gradient() -> None:
    """At a target that holds the max with ``p`` near 1, ``p - 1 = -s / (1 + s)``: relative, not absolute."""
    x = torch.full((2, 4, 8), -30.0)
    x[:, 2] = 0.0
    x.requires_grad_()
    t = torch.full((2, 8), 2)
    fg.cross_entropy(x, t, axis=1, reduction="sum").backward()
    s = 3 * math.exp(-30.0)  # (PyTorch's float64 p - 1 is off by 2^-11 relative here: it rounds p first)
    want = torch.full((2, 4, 8), math.exp(-30.0) / (1 + s), dtype=torch.float64)
    want[:, 2] = -s / (1 + s)
    assert x.grad is not None
    assert mantissa_ulps(x.grad, want, torch.float32) <= 1.0
    loss = fg.cross_entropy(x.detach(), t, axis=1, reduction="none")
    assert mantissa_ulps(loss, torch.full((2, 8), math.log1p(s), dtype=torch.float64), torch.float32) <= 1.0


@pytest.mark.parametrize("n_cls", [3, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cross_entropy_of_a_confident_target_is_not_rounded_to_zero(n_cls: int, dtype: torch.dtype,
                                                                   spy: list[str]) -> None:
    """Logits 36, -19 (and -20): the loss of the max class is log1p(s), 1.8e-24, which bfloat16 holds; the 16-bit
    column kernels summed ``1 + s`` and gave 0. As the row path."""
    x = torch.tensor([36.0, -19.0, -20.0][:n_cls])[None, :, None].expand(2, n_cls, 5).contiguous().to(dtype)
    t = torch.zeros(2, 5, dtype=torch.long)
    got = fg.cross_entropy(x, t, axis=1, reduction="none")
    rows = fg.cross_entropy(x.movedim(1, -1).reshape(-1, n_cls), t.reshape(-1), reduction="none").view(2, 5)
    assert spy == ["cross_entropy"]
    assert torch.equal(got, rows) and bool((got > 0).all())
    want = float(mpmath.log1p(mpmath.fsum(mpmath.exp(v - 36) for v in [-19, -20][: n_cls - 1])))
    assert abs(float(got[0, 0]) - want) <= 2.0 ** -7 * want


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("n_cls", [2, 3, 6])
def test_an_ignored_position_with_a_neg_inf_logit_adds_nothing(n_cls: int, eps: float, spy: list[str]) -> None:
    """An ignored position's loss is 0 even where the class its index reads (clamped into range, or class 0 of two)
    holds -inf: the loss was ``0 * inf``, NaN, and so was the mean (PyTorch's and the row path's: 0)."""
    x = data((2, n_cls, 6), torch.float32, seed=13)
    x[0, 0, 1] = x[0, n_cls - 1, 1] = -float("inf")
    x[0, n_cls // 2, 1] = 1.0  # the position's max stays finite
    t = torch.from_numpy(np.random.default_rng(14).integers(0, n_cls, (2, 6)))
    t[0, 1] = 255
    got = fg.cross_entropy(x, t, axis=1, ignore_index=255, reduction="none", label_smoothing=eps)
    want = F.cross_entropy(x.double(), t, ignore_index=255, reduction="none", label_smoothing=eps)
    assert spy == ["cross_entropy"]
    assert got[0, 1] == 0.0
    assert mantissa_ulps(got, want, torch.float32) <= 1.0
    mean = fg.cross_entropy(x, t, axis=1, ignore_index=255, label_smoothing=eps)
    assert torch.isfinite(mean)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 1, 128), (4, 3, 300)], ids=str)
def test_cross_entropy_mean_over_no_entry_is_nan_with_gradient_zero(shape: tuple[int, ...], dtype: torch.dtype,
                                                                    eps: float) -> None:
    """A mean over no entry (every position ignored, or every target class of weight 0) is NaN, as PyTorch's, and its
    backward gives 0, as the row path's (the column kernels' backward divided by the weight sum 0: ZeroDivisionError,
    found by a fuzzing run)."""
    t = torch.full((shape[0], *shape[2:]), -100)
    zero_w = torch.zeros(shape[1], dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    for kw, target in (({"ignore_index": -100}, t), ({"weight": zero_w}, torch.zeros_like(t))):
        x = data(shape, dtype).requires_grad_()
        loss = fg.cross_entropy(x, target, axis=1, label_smoothing=eps, **kw)
        assert torch.isnan(loss)
        loss.backward()
        rows = x.detach().movedim(1, -1).reshape(-1, shape[1]).clone().requires_grad_()
        fg.cross_entropy(rows, target.reshape(-1), label_smoothing=eps, **kw).backward()
        assert x.grad is not None and rows.grad is not None
        assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(rows.grad, torch.zeros_like(rows))
    assert torch.isnan(F.cross_entropy(x.detach(), t))


@pytest.mark.parametrize("n_cls", [3, 2])
def test_cross_entropy_bad_index_raises_naming_target(n_cls: int, spy: list[str]) -> None:
    x = data((2, n_cls, 5), torch.float32)
    t = torch.zeros((2, 5), dtype=torch.int64)
    t[1, 3] = 7
    with pytest.raises(ValueError, match="target"):
        fg.cross_entropy(x, t, axis=1)
    assert spy == []


@pytest.mark.parametrize("n_cls", [3, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_cross_entropy_non_finite_position_takes_the_row_path(n_cls: int, bad: float, spy: list[str]) -> None:
    x = data((2, n_cls, 5), torch.float32)
    x[0, 1, 2] = bad
    t = torch.zeros((2, 5), dtype=torch.int64)
    loss = fg.cross_entropy(x, t, axis=1, reduction="none")
    assert spy == []
    rows = fg.cross_entropy(x.movedim(1, -1).reshape(-1, n_cls), t.reshape(-1), reduction="none").view(2, 5)
    torch.testing.assert_close(loss, rows, equal_nan=True, rtol=0, atol=0)
    assert not torch.isfinite(loss[0, 2]) and torch.isfinite(loss[1]).all()


def test_cross_entropy_double_backward() -> None:
    x = data((2, 5, 6), torch.float32, seed=12).requires_grad_()
    t = torch.from_numpy(np.random.default_rng(13).integers(0, 5, (2, 6)))
    x64 = x.detach().double().requires_grad_()
    (gx,) = torch.autograd.grad(fg.cross_entropy(x, t, axis=1, label_smoothing=0.1), x, create_graph=True)
    (gx64,) = torch.autograd.grad(F.cross_entropy(x64, t, label_smoothing=0.1), x64, create_graph=True)
    (hx,) = torch.autograd.grad((gx**2).sum(), x)
    (hx64,) = torch.autograd.grad((gx64**2).sum(), x64)
    torch.testing.assert_close(hx.double(), hx64, rtol=1e-4, atol=1e-7)


# ranges of the outer axis (16: four a thread and more); of the positions within each (6, and one image)
@pytest.mark.parametrize("pool", [False, True], ids=["team", "pool"])
@pytest.mark.parametrize(("batch", "hole"), [(16, False), (16, True), (6, False), (1, False)])
def test_threads_split_the_work(batch: int, hole: bool, pool: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With several threads the kernels run on disjoint parts of the positions (on torch's OpenMP team, and on the
    thread pool, the fallback where the team is not available): the same results, forward and backward; also where a
    position with no finite max (``hole``) sends the call to the row path."""
    if pool:
        from floatguard.ops import _torch_rows

        monkeypatch.setattr(_torch_rows, "_team", False)
    x = data((batch, 21, 64, 64), torch.float32, seed=14)
    if hole:
        x[11, :, 5, 7] = -math.inf
    t = torch.from_numpy(np.random.default_rng(15).integers(0, 21, (batch, 64, 64)))
    w = torch.from_numpy(np.random.default_rng(16).uniform(0.5, 2.0, 21))
    p = torch.softmax(data((batch, 21, 64, 64), torch.float32, seed=17), 1)

    def run() -> list[torch.Tensor]:
        xr = x.clone().requires_grad_()
        outs = [fg.softmax(xr, axis=1), fg.log_softmax(xr, axis=1), fg.logsumexp(xr, axis=1),
                fg.cross_entropy(xr, t, axis=1, reduction="none"),
                fg.cross_entropy(xr, t, axis=1, weight=w, label_smoothing=0.1, ignore_index=3),
                fg.cross_entropy(xr, p, axis=1, label_smoothing=0.05, reduction="sum")]
        sum((o * (i + 1)).sum() for i, o in enumerate(outs)).backward()
        assert xr.grad is not None
        return [o.detach() for o in outs] + [xr.grad]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        many = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)


# -- torch.compile: custom ops ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_ops_match_eager(dtype: torch.dtype) -> None:
    """Under ``torch.compile(fullgraph=True)`` the middle-axis ops are the column kernels' custom ops: the eager
    values and gradients, no graph break."""
    torch._dynamo.reset()
    x = data((2, 6, 5, 7), dtype, seed=17)
    t = torch.from_numpy(np.random.default_rng(18).integers(0, 6, (2, 5, 7)))
    w = torch.linspace(0.5, 1.5, 6)

    def f(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (fg.softmax(v, dim=1), fg.log_softmax(v, axis=-3), fg.logsumexp(v, axis=1),
                fg.logsumexp(v, axis=1, keepdims=True), fg.cross_entropy(v, t, axis=1),
                fg.cross_entropy(v, t, axis=1, weight=w, ignore_index=2, reduction="none"),
                fg.cross_entropy(v, t, axis=1, weight=w, label_smoothing=0.1))

    def loss(outs: tuple[torch.Tensor, ...], g: list[torch.Tensor]) -> torch.Tensor:
        return sum(((o.float() * gi).sum() for o, gi in zip(outs, g, strict=True)), torch.tensor(0.0))

    xe = x.clone().requires_grad_()
    eager = f(xe)
    g = [data(tuple(o.shape), torch.float32, seed=19 + i, scale=1.0) for i, o in enumerate(eager)]
    loss(eager, g).backward()
    xc = x.clone().requires_grad_()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(xc)
    loss(compiled, g).backward()
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    assert xc.grad is not None and xe.grad is not None
    torch.testing.assert_close(xc.grad, xe.grad)


def test_compiled_ops_fall_back_to_the_row_path() -> None:
    """Positions with no finite max and bad indices inside the compiled custom ops: the row path's values, zero
    gradients on those positions, its error naming ``target``."""
    torch._dynamo.reset()
    x = data((2, 4, 9), torch.float32, seed=20)
    x[1, :, 3] = -float("inf")
    x[0, 2, 5] = float("inf")
    t = torch.from_numpy(np.random.default_rng(21).integers(0, 4, (2, 9)))

    def f(v: torch.Tensor, tt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (fg.softmax(v, dim=1), fg.logsumexp(v, axis=1), fg.cross_entropy(v, tt, axis=1, reduction="none"),
                fg.cross_entropy(v, tt, axis=1, reduction="none", label_smoothing=0.2))

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    xc = x.clone().requires_grad_()
    outs = cf(xc, t)
    want = f(x, t)
    for a, b in zip(outs, want, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
    sum((o.nan_to_num(0.0, 0.0, 0.0)).sum() for o in outs).backward()
    xe = x.clone().requires_grad_()
    sum((o.nan_to_num(0.0, 0.0, 0.0)).sum() for o in f(xe, t)).backward()
    assert xc.grad is not None and torch.isfinite(xc.grad).all()
    assert torch.all(xc.grad[1, :, 3] == 0) and torch.all(xc.grad[0, :, 5] == 0)
    torch.testing.assert_close(xc.grad, xe.grad)
    bad = t.clone()
    bad[0, 0] = 11
    with pytest.raises(ValueError, match="target"):
        cf(x, bad)


# -- cross-entropy of class probabilities ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("weighted", "eps"), [(False, 0.0), (True, 0.0), (False, 0.1), (True, 0.2)])
def test_cross_entropy_probabilities_match_pytorch_in_float64(dtype: torch.dtype, reduction: str, weighted: bool,
                                                              eps: float, spy: list[str]) -> None:
    n_cls = 7
    x = data((3, n_cls, 11, 5), dtype, seed=22).requires_grad_()
    y = torch.softmax(data((3, n_cls, 11, 5), torch.float64, seed=23), 1).to(dtype)
    y[0, :, 0, 0] = 0.0
    y[0, 3, 0, 0] = 1.0  # a one-hot row: zero probabilities beside a -inf logit add nothing (with eps, +inf)
    with torch.no_grad():
        x[0, 5, 0, 0] = -float("inf") if eps == 0.0 else x[0, 5, 0, 0]
    w = torch.from_numpy(np.random.default_rng(24).random(n_cls) + 0.5).float() if weighted else None
    loss = fg.cross_entropy(x, y, axis=1, weight=w, reduction=reduction, label_smoothing=eps)
    x64 = x.detach().double().requires_grad_()
    want = F.cross_entropy(x64.nan_to_num(neginf=-1e300), y.double(), weight=None if w is None else w.double(),
                           reduction=reduction, label_smoothing=eps)
    assert spy == ["cross_entropy_probs"]
    assert loss.dtype == dtype and loss.shape == want.shape
    assert mantissa_ulps(loss, want, dtype) <= 1.0
    g = torch.rand(want.shape, dtype=torch.float64) + 0.5 if reduction == "none" else torch.tensor(1.25)
    loss.backward(g.to(dtype))
    want.backward(g.to(dtype).double())
    assert x.grad is not None and x.grad.dtype == dtype
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=tol, atol=tol * float(x64.grad.abs().max()))


def test_cross_entropy_probabilities_double_backward() -> None:
    x = data((2, 5, 6), torch.float32, seed=25).requires_grad_()
    y = torch.softmax(data((2, 5, 6), torch.float32, seed=26), 1)
    x64 = x.detach().double().requires_grad_()
    (gx,) = torch.autograd.grad(fg.cross_entropy(x, y, axis=1, label_smoothing=0.1), x, create_graph=True)
    (gx64,) = torch.autograd.grad(F.cross_entropy(x64, y.double(), label_smoothing=0.1), x64, create_graph=True)
    (hx,) = torch.autograd.grad((gx**2).sum(), x)
    (hx64,) = torch.autograd.grad((gx64**2).sum(), x64)
    torch.testing.assert_close(hx.double(), hx64, rtol=1e-4, atol=1e-7)
