"""``cross_entropy(..., z_loss=, softcap=)``: PaLM's z-loss and Gemma 2's logit soft-capping.

Every backend (the fused numba kernels behind CPU tensors, the same kernels as a custom op under
``torch.compile``, the array-API path on torch, NumPy and JAX) against a float64 reference written
here from torch's own ops (``tanh``, ``logsumexp``, ``F.cross_entropy``), values and gradients; the
low-precision dtypes in ulps of a float64 or mpmath reference; gradcheck; non-finite logits; bad
arguments; Hypothesis over logits spanning the float32 range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("numba")

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import floatguard as fg
import floatguard.testing as T
from floatguard.ops import losses

INF, NAN = math.inf, math.nan
RNG = np.random.default_rng(15)
R, C = 7, 11
FEATURES = [(1e-2, None), (0.0, 3.0), (3e-2, 2.5)]  # (z_loss, softcap)


@pytest.fixture(params=["fused", "generic"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fused kernels, and again with them switched off (the array-API path on torch tensors)."""
    if request.param == "generic":
        monkeypatch.setattr(losses, "_fast_torch", lambda *a: None)
        monkeypatch.setattr(losses, "_fast_plain", lambda *a: 0)
    return str(request.param)


class _Cap(torch.autograd.Function):
    """``c tanh(x / c)`` with the derivative ``1 / cosh^2(x / c)`` (torch's ``1 - tanh^2`` cancels to noise
    once ``tanh`` rounds to 1)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, c: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.c = c
        return c * torch.tanh(x / c)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return g / torch.cosh(x / ctx.c) ** 2, None


def reference(x: Any, t: Any, *, z_loss: float = 0.0, softcap: float | None = None, reduction: str = "mean",
              weight: Any = None, ignore_index: int = -100, label_smoothing: float = 0.0) -> Any:
    """The definition, in torch float64 ops: soft-cap, then cross-entropy plus ``z (logsumexp)^2`` per row
    (rows not ignored; not weighted; the mean over those rows)."""
    y = _Cap.apply(x, softcap) if softcap is not None else x
    ce = F.cross_entropy(y, t, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                         reduction=reduction)
    keep = (t != ignore_index) if not t.dtype.is_floating_point else torch.ones(x.shape[0], dtype=torch.bool)
    z = torch.where(keep, z_loss * torch.logsumexp(y, dim=-1) ** 2, 0.0)
    if reduction == "none":
        return ce + z
    return ce + (z.sum() / keep.sum() if reduction == "mean" else z.sum())


def _logits(shape: tuple[int, ...] = (R, C), scale: float = 4.0) -> torch.Tensor:
    x = torch.tensor(RNG.normal(size=shape) * scale, dtype=torch.float64)
    x[0] += 30.0  # a row far from log Z = 0, where the z-loss matters
    return x


def _targets(kind: str) -> torch.Tensor:
    if kind == "probs":
        return torch.softmax(torch.tensor(RNG.normal(size=(R, C))), -1)
    t = torch.tensor(RNG.integers(0, C, R))
    if kind == "ignore":
        t[[1, 4]] = -100
    return t


def _values_and_grads(x: torch.Tensor, t: torch.Tensor, reduction: str, rtol: float, **kw: Any) -> None:
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = fg.cross_entropy(xa, t, reduction=reduction, ignore_index=-100, **kw)
    want = reference(xb, t, reduction=reduction, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-14)
    g = torch.tensor(RNG.uniform(0.5, 1.5, size=tuple(want.shape)), dtype=want.dtype)
    (ga,) = torch.autograd.grad(got, xa, g)
    (gb,) = torch.autograd.grad(want, xb, g)
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=1e-14)


# -- float64 against the reference: every option, every reduction, both torch paths --------------------
@pytest.mark.parametrize("z_loss,softcap", FEATURES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "ignore", "probs"])
@pytest.mark.parametrize("options", ["plain", "weight", "smooth", "weight+smooth"])
def test_float64_matches_the_reference(path: str, z_loss: float, softcap: float | None, reduction: str, kind: str,
                                       options: str) -> None:
    kw: dict[str, Any] = {"z_loss": z_loss, "softcap": softcap}
    if "weight" in options:
        kw["weight"] = torch.tensor(RNG.uniform(0.2, 2.0, C))
    if "smooth" in options:
        kw["label_smoothing"] = 0.15
    _values_and_grads(_logits(), _targets(kind), reduction, 1e-12, **kw)


def test_z_loss_is_added_per_row_not_scaled_by_class_weight(path: str) -> None:
    """The documented choice (Liger's ``lse_square_scale``): the mean divides the cross-entropy by the sum
    of the target weights and the z-loss by the number of rows not ignored."""
    x = _logits((4, 5))
    t = torch.tensor([0, 1, -100, 3])
    w = torch.tensor([4.0, 0.5, 1.0, 2.0, 1.0], dtype=torch.float64)
    base = fg.cross_entropy(x, t, weight=w, ignore_index=-100)
    lse = torch.logsumexp(x, -1)
    want = base + 1e-3 * (lse[[0, 1, 3]] ** 2).mean()
    torch.testing.assert_close(fg.cross_entropy(x, t, weight=w, ignore_index=-100, z_loss=1e-3), want,
                               rtol=1e-13, atol=0)
    rows = fg.cross_entropy(x, t, weight=w, ignore_index=-100, z_loss=1e-3, reduction="none")
    torch.testing.assert_close(rows, torch.where(t != -100, F.cross_entropy(x, t, weight=w, reduction="none",
                                                                           ignore_index=-100) + 1e-3 * lse**2, 0.0),
                               rtol=1e-13, atol=0)


def test_features_off_equal_the_plain_loss(path: str) -> None:
    """``z_loss=0`` and ``softcap=None`` are the defaults: the same numbers as without them."""
    x, t = _logits(), _targets("ignore")
    assert torch.equal(fg.cross_entropy(x, t, z_loss=0.0, softcap=None, ignore_index=-100),
                       fg.cross_entropy(x, t, ignore_index=-100))


def test_class_axis_1_and_extra_dims(path: str) -> None:
    """``(N, C, d)`` logits with ``axis=1``: the z-loss and cap per position, as for rows."""
    x = torch.tensor(RNG.normal(size=(3, C, 4)) * 5)
    t = torch.tensor(RNG.integers(0, C, (3, 4)))
    got = fg.cross_entropy(x, t, axis=1, z_loss=0.01, softcap=5.0, reduction="none")
    want = reference(x.movedim(1, -1).reshape(-1, C), t.reshape(-1), z_loss=0.01, softcap=5.0, reduction="none")
    torch.testing.assert_close(got, want.reshape(3, 4), rtol=1e-12, atol=1e-14)


# -- low precision: one rounding of the float64 result ---------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("z_loss,softcap", FEATURES)
@pytest.mark.parametrize("kind", ["ignore", "probs"])
def test_low_precision_rows_and_gradients_within_an_ulp(path: str, dtype: torch.dtype, z_loss: float,
                                                        softcap: float | None, kind: str) -> None:
    """Half and single precision accumulate in float32 or better and round once: row losses and gradients
    within 1 ulp of the float64 reference of the same (rounded) inputs."""
    x = _logits(scale=6.0).to(dtype)
    t = _targets(kind)
    t = t.to(dtype) if kind == "probs" else t
    xl = x.clone().requires_grad_()
    got = fg.cross_entropy(xl, t, z_loss=z_loss, softcap=softcap, reduction="none", ignore_index=-100)
    xd = x.double().requires_grad_()
    want = reference(xd, t.double() if kind == "probs" else t, z_loss=z_loss, softcap=softcap, reduction="none")
    assert got.dtype == dtype
    assert T.max_ulp(got.detach(), want.detach().numpy(), dtype) <= 1.0
    g = torch.tensor(RNG.uniform(0.5, 1.5, R)).to(dtype)  # the same upstream numbers for both
    got.backward(g)
    want.backward(g.double())
    assert xl.grad is not None and xd.grad is not None and xl.grad.dtype == dtype
    # an ulp of the float64 gradient (subnormal spacing included), or of 2^-10 of the row's largest entry
    # where an entry is a near-cancellation
    ulps = T.ulp_error(xl.grad, xd.grad.numpy(), dtype)
    err = np.abs(xl.grad.double().numpy() - xd.grad.numpy())
    row_scale = 2**-10 * np.abs(xd.grad.numpy()).max(axis=-1, keepdims=True)
    eps = 2.0 ** -{torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[dtype]
    assert ((ulps <= 1.0) | (err <= eps * row_scale)).all()


# -- gradcheck, and the double backward ------------------------------------------------------------------
@pytest.mark.parametrize("z_loss,softcap", FEATURES)
@pytest.mark.parametrize("kind", ["ignore", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(path: str, z_loss: float, softcap: float | None, kind: str, reduction: str) -> None:
    x = _logits((5, 6), scale=2.0).requires_grad_()
    t = torch.softmax(torch.randn(5, 6, dtype=torch.float64), -1) if kind == "probs" else torch.tensor(
        [0, 5, -100, 2, 3])
    w = torch.tensor(RNG.uniform(0.5, 2.0, 6))

    def f(v: torch.Tensor) -> torch.Tensor:
        return fg.cross_entropy(v, t, weight=w, label_smoothing=0.1, reduction=reduction, z_loss=z_loss,
                                softcap=softcap, ignore_index=-100)

    assert gradcheck(f, (x,), eps=1e-6, atol=1e-8)
    assert gradgradcheck(f, (x,), eps=1e-6, atol=1e-7)


# -- torch.compile: the custom op takes the features ------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compile_uses_the_custom_op_with_eager_values_and_gradients(reduction: str) -> None:
    torch._dynamo.reset()

    def loss(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return fg.cross_entropy(x, t, ignore_index=-100, z_loss=1e-2, softcap=4.0, reduction=reduction)

    f = torch.compile(loss, fullgraph=True)
    x = _logits((6, 9)).float()
    t = torch.tensor([0, 8, 3, -100, 2, 1])
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = f(xc, t), loss(xe, t)
    assert torch.equal(got, want)
    torch.testing.assert_close(got.double(), reference(x.double(), t, z_loss=1e-2, softcap=4.0,
                                                       reduction=reduction), rtol=2e-7, atol=0)
    got.sum().backward()
    want.sum().backward()
    assert xc.grad is not None and xe.grad is not None and torch.equal(xc.grad, xe.grad)
    with pytest.raises(ValueError, match="'target'"):
        f(x, torch.tensor([0, 9, 3, -100, 2, 1]))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_custom_op_passes_opcheck_with_the_features() -> None:
    from floatguard.ops import _torch_losses

    x = _logits((6, 9)).requires_grad_()
    t = torch.tensor([0, 8, 3, -100, 2, 1])
    for reduction in ("mean", "none"):
        torch.library.opcheck(_torch_losses.cross_entropy_op, (x, t, -100, True, reduction, 1e-2, 3.0))
        torch.library.opcheck(_torch_losses.cross_entropy_op, (x.float(), t.clamp(0), 0, False, reduction, 0.0, 2.0))


# -- NumPy and JAX: the array-API path --------------------------------------------------------------------
@pytest.mark.parametrize("z_loss,softcap", FEATURES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_numpy_matches_the_reference(z_loss: float, softcap: float | None, reduction: str) -> None:
    x, t = _logits(), _targets("ignore")
    got = fg.cross_entropy(x.numpy(), t.numpy(), ignore_index=-100, z_loss=z_loss, softcap=softcap,
                           reduction=reduction)
    want = reference(x, t, z_loss=z_loss, softcap=softcap, reduction=reduction).numpy()
    assert isinstance(got, (np.ndarray, np.floating)) and got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("z_loss,softcap", FEATURES)
@pytest.mark.parametrize("kind", ["ignore", "probs"])
def test_jax_values_and_jax_grad_match_the_reference(z_loss: float, softcap: float | None, kind: str) -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, t = _logits(), _targets(kind)
    kw: dict[str, Any] = {"z_loss": z_loss, "softcap": softcap, "weight": torch.tensor(RNG.uniform(0.5, 2.0, C))}
    xt = x.clone().requires_grad_()
    want = reference(xt, t, **kw)
    (gw,) = torch.autograd.grad(want, xt)
    with jax.enable_x64(True):
        jkw = dict(kw, weight=jnp.asarray(kw["weight"].numpy()))
        if kind != "probs":
            jkw["ignore_index"] = -100
        jt = jnp.asarray(t.numpy())

        def f(v: Any) -> Any:
            return fg.cross_entropy(v, jt, **jkw)

        xj = jnp.asarray(x.numpy())
        np.testing.assert_allclose(np.asarray(f(xj)), want.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(jax.grad(f)(xj)), gw.numpy(), rtol=1e-11, atol=1e-15)
        jitted = jax.jit(lambda v, tt: fg.cross_entropy(v, tt, **jkw))  # target traced, not closed over
        np.testing.assert_allclose(np.asarray(jitted(xj, jt)), want.detach().numpy(), rtol=1e-12)
    with jax.enable_x64(False):  # float32 work, JAX's default
        x32 = jnp.asarray(x.numpy(), dtype=jnp.float32)
        jkw32 = dict(jkw, weight=jnp.asarray(kw["weight"].numpy(), dtype=jnp.float32))
        jt32 = jnp.asarray(t.numpy(), dtype=jnp.float32 if kind == "probs" else jnp.int32)
        got = fg.cross_entropy(x32, jt32, **jkw32)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), float(want.detach()), rtol=1e-5)


# -- non-finite logits -----------------------------------------------------------------------------------
def test_softcap_maps_infinite_logits_to_the_cap_with_zero_gradient(path: str) -> None:
    """``tanh(+-inf) = +-1``: an infinite logit is the cap (a finite row, a finite loss); its gradient is
    ``sech^2 = 0``; NaN propagates to its row's loss and gradient (as PyTorch's) and other rows are untouched."""
    x = _logits((4, 6), scale=2.0)
    x[0, 2] = INF
    x[1] = -INF
    x[2, [1, 4]] = torch.tensor([INF, -INF], dtype=torch.float64)
    x[3, 0] = NAN
    t = torch.tensor([2, 0, 3, 1])
    xa = x.clone().requires_grad_()
    got = fg.cross_entropy(xa, t, softcap=5.0, z_loss=1e-2, reduction="none")
    want = reference(x, t, softcap=5.0, z_loss=1e-2, reduction="none")
    assert torch.isfinite(got[:3]).all() and math.isnan(float(got[3]))
    torch.testing.assert_close(got[:3].detach(), want[:3], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[1].detach(), torch.tensor(math.log(6) + 1e-2 * (-5 + math.log(6)) ** 2,
                                                             dtype=torch.float64), rtol=1e-13, atol=0)
    got[:3].sum().backward()
    assert xa.grad is not None
    assert xa.grad[0, 2] == 0 and (xa.grad[1] == 0).all() and xa.grad[2, 1] == 0 and xa.grad[2, 4] == 0
    assert torch.isnan(xa.grad[3]).all()
    xb = x[:3].clone().requires_grad_()
    reference(xb, t[:3], softcap=5.0, z_loss=1e-2, reduction="none").sum().backward()
    torch.testing.assert_close(xa.grad[:3], xb.grad, rtol=1e-12, atol=1e-14)


def test_z_loss_on_rows_with_no_finite_max(path: str) -> None:
    """Without a cap, the z-loss ``z m^2 = +inf`` of a row whose max is not finite dominates: ``+inf`` for ``-inf``
    and ``+inf`` rows alike (also where the cross-entropy alone is the finite ``log k`` of a target among ``k``
    ``+inf`` entries), gradient 0; NaN for NaN, with a NaN gradient (also when the loss leaves that row out, as
    PyTorch's); other rows exact."""
    x = _logits((4, 5))
    x[0] = -INF
    x[1, 2] = INF
    x[2, 3] = NAN
    t = torch.tensor([0, 1, 2, 3])
    xa = x.clone().requires_grad_()
    got = fg.cross_entropy(xa, t, z_loss=1e-3, reduction="none")
    assert got[0] == INF and got[1] == INF and math.isnan(float(got[2]))
    assert fg.cross_entropy(x, t, reduction="none")[1] == INF  # without the z-loss: the limit, its class finite
    t2 = torch.tensor([0, 2, 2, 3])  # the target is the +inf entry: cross-entropy log 1 = 0, with the z-loss +inf
    assert fg.cross_entropy(x, t2, reduction="none")[1] == 0
    assert fg.cross_entropy(x, t2, z_loss=1e-3, reduction="none")[1] == INF
    torch.testing.assert_close(got[3].detach(), reference(x[3:], t[3:], z_loss=1e-3, reduction="none")[0],
                               rtol=1e-12, atol=0)
    got[[0, 1, 3]].sum().backward()
    assert xa.grad is not None and (xa.grad[:2] == 0).all() and torch.isnan(xa.grad[2]).all()
    assert torch.isfinite(xa.grad[[0, 1, *range(3, xa.shape[0])]]).all()
    assert fg.cross_entropy(x[:2], t[:2], z_loss=1e-3) == INF


# -- bad arguments ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [-1e-4, NAN, INF, -INF])
def test_bad_z_loss_raises_naming_it(value: float) -> None:
    x, t = _logits(), _targets("index")
    with pytest.raises(ValueError, match="'z_loss'"):
        fg.cross_entropy(x, t, z_loss=value)
    with pytest.raises(ValueError, match="'z_loss'"):
        fg.cross_entropy(x.numpy(), t.numpy(), z_loss=value)


@pytest.mark.parametrize("value", [0.0, -3.0, NAN, INF, -INF, 0])
def test_bad_softcap_raises_naming_it(value: float) -> None:
    x, t = _logits(), _targets("index")
    with pytest.raises(ValueError, match="'softcap'"):
        fg.cross_entropy(x, t, softcap=value)
    with pytest.raises(ValueError, match="'softcap'"):
        fg.cross_entropy(x.numpy(), t.numpy(), softcap=value)


@pytest.mark.parametrize("name", ["z_loss", "softcap"])
@pytest.mark.parametrize("value", ["1", True, [1.0]])
def test_non_numbers_raise_a_type_error_naming_the_argument(name: str, value: Any) -> None:
    with pytest.raises(TypeError, match=f"'{name}'"):
        fg.cross_entropy(_logits(), _targets("index"), **{name: value})


# -- Hypothesis: logits over the float32 range, against mpmath -------------------------------------------
def _mp_rows(x: np.ndarray, t: np.ndarray, z_loss: float, softcap: float | None) -> np.ndarray:
    """Exact row losses (mpf): soft-capped logits (rounded to float64, as the kernels hold them), then
    ``-log softmax(y)_c + z (log Z)^2``."""
    mp = pytest.importorskip("mpmath")
    out = []
    for row, c in zip(x.astype(np.float64), t, strict=True):
        if softcap is not None:
            with mp.workdps(40):
                row = np.array([float(softcap * mp.tanh(mp.mpf(float(v)) / softcap)) for v in row])
        with mp.workdps(60):
            lse = T.ref_logsumexp(row)
            out.append(T.ref_cross_entropy_row(row, int(c)) + z_loss * lse * lse)
    return np.array(out, dtype=object)


_row = st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False) | st.floats(-60, 60, width=32),
                min_size=C, max_size=C)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_row, min_size=1, max_size=4), z_loss=st.sampled_from([0.0, 1e-4, 0.5]),
       softcap=st.sampled_from([None, 1e-2, 30.0, 1e4]), data=st.data())
def test_wide_range_float32_rows_within_an_ulp_of_mpmath(rows: list[list[float]], z_loss: float,
                                                           softcap: float | None, data: st.DataObject) -> None:
    if z_loss == 0.0 and softcap is None:
        softcap = 30.0
    x = np.array(rows, dtype=np.float32)
    t = np.array(data.draw(st.lists(st.integers(0, C - 1), min_size=len(rows), max_size=len(rows))))
    exact = _mp_rows(x, t, z_loss, softcap)
    for forced in (False, True):  # the fused kernels, then the array-API path on the same tensors
        fast = losses._fast_torch
        if forced:
            losses._fast_torch = lambda *a: None
        try:
            got = fg.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), z_loss=z_loss, softcap=softcap,
                                   reduction="none")
        finally:
            losses._fast_torch = fast
        assert T.max_ulp(got, exact, "float32") <= 1.0, (forced, got, exact)
    got_np = fg.cross_entropy(x, t, z_loss=z_loss, softcap=softcap, reduction="none")
    assert T.max_ulp(got_np, exact, "float32") <= 1.0
