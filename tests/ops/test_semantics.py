"""Documented semantics of the ops: non-finite values, empty reductions, axes, and agreement with references.

References are SciPy, PyTorch and NumPy on inputs where those are accurate
(moderate, well-conditioned); the accuracy of hard inputs is tested elsewhere
against mpmath.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import mpmath as mp
import numpy as np
import pytest
import scipy.special as sps
import torch
import torch.nn.functional as F

import floatguard as fg

INF = math.inf
NAN = math.nan
LN2 = math.log(2.0)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_same(actual: Any, expected: Any) -> None:
    """Equal values, NaN where NaN, infinities with their sign."""
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))


# --------------------------------------------------------------------------------------
# logsumexp / softmax / log_softmax: -inf, +inf, NaN, empty
# --------------------------------------------------------------------------------------
def test_neg_inf_entries_are_log_zero() -> None:
    x = np.array([[1.0, -INF, 2.0], [-INF, -INF, 0.5]])
    assert_same(fg.logsumexp(x, axis=1), [np.logaddexp(1.0, 2.0), 0.5])
    p = fg.softmax(x)
    assert_same(p[:, 1], [0.0, 0.0])
    assert_same(p[1], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(p[0, [0, 2]], sps.softmax([1.0, 2.0]), rtol=1e-15)
    ls = fg.log_softmax(x)
    assert_same(ls[:, 1], [-INF, -INF])
    assert_same(ls[1], [-INF, -INF, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_neg_inf_row_is_an_empty_sum(dtype: type) -> None:
    x = np.array([[-INF, -INF, -INF], [0.0, 1.0, 2.0]], dtype=dtype)
    lse = fg.logsumexp(x, axis=1)
    assert lse[0] == -INF and np.isfinite(lse[1])
    assert_same(fg.softmax(x)[0], np.zeros(3, dtype))
    assert_same(fg.log_softmax(x)[0], np.full(3, -INF, dtype))
    assert fg.logmeanexp(x, axis=1)[0] == -INF
    _, sign = fg.logsumexp(x, axis=1, return_sign=True)
    assert_same(sign, np.array([0.0, 1.0], dtype))


def test_fully_masked_row_is_an_empty_sum() -> None:
    x = rng().normal(size=(3, 4))
    mask = np.ones((3, 4), dtype=bool)
    mask[1] = False
    assert fg.logsumexp(x, axis=1, where=mask)[1] == -INF
    assert_same(fg.softmax(x, where=mask)[1], np.zeros(4))
    assert_same(fg.log_softmax(x, where=mask)[1], np.full(4, -INF))


def test_where_equals_dropping_the_masked_entries() -> None:
    x = rng(1).normal(size=(5, 7)) * 3
    mask = rng(2).random((5, 7)) < 0.6
    mask[:, 0] = True
    lse = fg.logsumexp(x, axis=1, where=mask)
    p = fg.softmax(x, axis=1, where=mask)
    ls = fg.log_softmax(x, axis=1, where=mask)
    for i in range(5):
        kept = x[i, mask[i]]
        np.testing.assert_allclose(lse[i], sps.logsumexp(kept), rtol=1e-14)
        np.testing.assert_allclose(p[i, mask[i]], sps.softmax(kept), rtol=1e-14)
        np.testing.assert_allclose(ls[i, mask[i]], sps.log_softmax(kept), rtol=1e-13, atol=1e-15)
        assert np.all(p[i, ~mask[i]] == 0.0)
        assert np.all(ls[i, ~mask[i]] == -INF)


def test_where_broadcasts_and_masks_nan_and_inf() -> None:
    x = np.array([[1.0, NAN, INF], [2.0, NAN, INF]])
    mask = np.array([True, False, False])  # broadcast over rows
    assert_same(fg.logsumexp(x, axis=1, where=mask), [1.0, 2.0])
    assert_same(fg.softmax(x, where=mask), [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert np.isnan(fg.logsumexp(x, where=True))


def test_pos_inf_gives_the_limit() -> None:
    assert fg.logsumexp(np.array([1.0, INF, 3.0])) == INF
    assert fg.logsumexp(np.array([-INF, INF])) == INF
    assert_same(fg.softmax(np.array([1.0, INF, 3.0])), [0.0, 1.0, 0.0])
    assert_same(fg.log_softmax(np.array([1.0, INF, 3.0])), [-INF, 0.0, -INF])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_softmax_two_pos_inf_share_mass(dtype: type) -> None:
    x = np.array([INF, 1.0, INF, -INF], dtype=dtype)
    p = fg.softmax(x)
    assert p.dtype == dtype
    assert_same(p, np.array([0.5, 0.0, 0.5, 0.0], dtype))
    ls = fg.log_softmax(x)
    assert_same(ls, np.array([-LN2, -INF, -LN2, -INF], dtype))
    assert_same(fg.softmax(np.full(4, INF, dtype)), np.full(4, 0.25, dtype))


def test_nan_in_a_row_makes_the_whole_row_nan() -> None:
    x = np.array([[1.0, NAN, 2.0], [1.0, 2.0, 3.0], [-INF, NAN, INF], [NAN, -INF, -INF]])
    lse = fg.logsumexp(x, axis=1)
    p = fg.softmax(x)
    ls = fg.log_softmax(x)
    for row in (0, 2, 3):
        assert np.isnan(lse[row])
        assert np.all(np.isnan(p[row])), p[row]
        assert np.all(np.isnan(ls[row])), ls[row]
    assert np.all(np.isfinite(p[1])) and np.isfinite(lse[1])
    assert np.isnan(fg.logmeanexp(x, axis=1)[0])
    # the sign of a NaN sum is NaN (as in SciPy), with and without b
    assert_same(fg.logsumexp(x, axis=1, return_sign=True)[1], [NAN, 1.0, NAN, NAN])
    assert_same(fg.logsumexp(x, axis=1, b=np.ones(3), return_sign=True)[1], [NAN, 1.0, NAN, NAN])


def test_nan_in_axis0_softmax_only_touches_its_column() -> None:
    x = np.array([[1.0, 2.0], [NAN, 3.0]])
    p = fg.softmax(x, axis=0)
    assert np.all(np.isnan(p[:, 0]))
    np.testing.assert_allclose(p[:, 1], sps.softmax([2.0, 3.0]), rtol=1e-15)


EMPTY_CASES: list[tuple[str, Callable[[], Any], Any]] = [
    ("logsumexp-all", lambda: fg.logsumexp(np.zeros(0)), -INF),
    ("logsumexp-sign", lambda: fg.logsumexp(np.zeros(0), return_sign=True)[1], 0.0),
    ("logsumexp-rows", lambda: fg.logsumexp(np.zeros((3, 0)), axis=1), np.full(3, -INF)),
    ("logsumexp-no-rows", lambda: fg.logsumexp(np.zeros((0, 3)), axis=1), np.zeros(0)),
    ("logsumexp-axis0", lambda: fg.logsumexp(np.zeros((0, 3)), axis=0), np.full(3, -INF)),
    ("logsumexp-float32", lambda: fg.logsumexp(np.zeros(0, dtype=np.float32)), np.float32(-INF)),
    ("logsumexp-torch", lambda: fg.logsumexp(torch.zeros(2, 0), axis=1).numpy(), np.full(2, -INF, dtype=np.float32)),
    ("softmax", lambda: fg.softmax(np.zeros((2, 0))), np.zeros((2, 0))),
    ("log_softmax", lambda: fg.log_softmax(np.zeros((0, 4))), np.zeros((0, 4))),
    ("logcumsumexp", lambda: fg.logcumsumexp(np.zeros(0)), np.zeros(0)),
    ("log_prod", lambda: fg.log_prod(np.zeros(0)), 0.0),  # the empty product is 1
    ("log_prod-rows", lambda: fg.log_prod(np.zeros((2, 0)), axis=1), np.zeros(2)),
]


@pytest.mark.parametrize(("call", "want"), [c[1:] for c in EMPTY_CASES], ids=[c[0] for c in EMPTY_CASES])
def test_empty_reductions(call: Callable[[], Any], want: Any) -> None:
    got = call()
    assert np.shape(got) == np.shape(want)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    assert_same(got, want)


def test_b_zero_drops_the_entry_even_at_pos_inf() -> None:
    x = np.array([INF, 1.0, NAN])
    assert fg.logsumexp(x, b=np.array([0.0, 1.0, 0.0])) == 1.0
    assert fg.logsumexp(x[:2], b=np.array([-1.0, 1.0]), return_sign=True) == (INF, -1.0)
    assert_same(fg.logsumexp(np.array([1.0, 1.0]), b=np.array([1.0, -1.0]), return_sign=True), (-INF, 0.0))
    assert np.isnan(fg.logsumexp(np.array([1.0, 2.0]), b=np.array([1.0, -1.0])))  # negative sum, no sign: NaN


# --------------------------------------------------------------------------------------
# logsumexp vs SciPy: axes, keepdims, b, return_sign
# --------------------------------------------------------------------------------------
AXES = [None, 0, 1, 2, -1, (0, 2), (1, 2), (0, 1, 2), (2, 0), ()]


@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_matches_scipy_axes(axis: Any, keepdims: bool) -> None:
    x = rng(3).normal(size=(3, 4, 5)) * 4 + 3
    got = fg.logsumexp(x, axis=axis, keepdims=keepdims)
    want = sps.logsumexp(x, axis=axis, keepdims=keepdims)
    assert np.shape(got) == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    got_m = fg.logmeanexp(x, axis=axis, keepdims=keepdims)
    n = x.size // np.size(want)
    np.testing.assert_allclose(got_m, want - math.log(n), rtol=1e-13, atol=0)
    got_p = fg.log_prod(np.exp(-np.abs(x)), axis=axis, keepdims=keepdims)
    want_p = np.sum(-np.abs(x), axis=axis, keepdims=keepdims)
    assert np.shape(got_p) == np.shape(want_p)
    np.testing.assert_allclose(got_p, want_p, rtol=1e-13)


@pytest.mark.parametrize("axis", [None, 1, (0, 2), -1], ids=str)
@pytest.mark.parametrize("b_shape", [(3, 4, 5), (4, 5), (1, 1, 5), ()], ids=str)
def test_logsumexp_b_matches_scipy(axis: Any, b_shape: tuple[int, ...]) -> None:
    g = rng(4)
    x = g.normal(size=(3, 4, 5)) + 3
    # positive weights dominate the negative ones: well-conditioned sums
    b = g.uniform(0.5, 2.0, size=b_shape) * np.where(g.random(b_shape) < 0.3, -0.2, 1.0)
    got = fg.logsumexp(x, axis=axis, b=b)
    want = sps.logsumexp(x, axis=axis, b=b)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    for bb in (b, -b):  # negative sums: value and sign
        got_v, got_s = fg.logsumexp(x, axis=axis, b=bb, return_sign=True, keepdims=True)
        want_v, want_s = sps.logsumexp(x, axis=axis, b=bb, return_sign=True, keepdims=True)
        np.testing.assert_allclose(got_v, want_v, rtol=1e-13)
        assert_same(got_s, want_s)
    if np.all(-b < 0):
        assert np.all(np.isnan(fg.logsumexp(x, axis=axis, b=-b)))


def test_logsumexp_b_with_max_weight_zero_or_negative() -> None:
    x = np.array([[5.0, 1.0, 2.0], [5.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    b = np.array([[0.0, 1.0, 2.0], [-1.0, 3.0, 2.0], [1.0, -2.0, 0.5]])
    got_v, got_s = fg.logsumexp(x, axis=1, b=b, return_sign=True)
    want_v, want_s = sps.logsumexp(x, axis=1, b=b, return_sign=True)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-13)
    assert_same(got_s, want_s)


def test_return_sign_without_b() -> None:
    x = rng(5).normal(size=(2, 3))
    v, s = fg.logsumexp(x, axis=1, return_sign=True)
    assert_same(s, [1.0, 1.0])
    np.testing.assert_allclose(v, sps.logsumexp(x, axis=1), rtol=1e-14)


# --------------------------------------------------------------------------------------
# softmax / log_softmax / logcumsumexp vs references
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_matches_scipy(axis: int) -> None:
    x = rng(6).normal(size=(3, 4, 5)) * 5
    np.testing.assert_allclose(fg.softmax(x, axis=axis), sps.softmax(x, axis=axis), rtol=1e-13)
    # SciPy's log(sum) loses relative accuracy next to 0 (floatguard's log1p does not): absolute tolerance there
    np.testing.assert_allclose(fg.log_softmax(x, axis=axis), sps.log_softmax(x, axis=axis), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(np.sum(fg.softmax(x, axis=axis), axis=axis), 1.0, rtol=4e-16 * 5)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_logcumsumexp_matches_numpy(axis: int) -> None:
    x = rng(7).normal(size=(6, 8)) * 3
    want = np.log(np.cumsum(np.exp(x), axis=axis))
    np.testing.assert_allclose(fg.logcumsumexp(x, axis=axis), want, rtol=1e-13)
    x32 = x.astype(np.float32)
    got32 = fg.logcumsumexp(x32, axis=axis)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, np.log(np.cumsum(np.exp(x32.astype(np.float64)), axis=axis)), rtol=1.2e-7)


def test_logcumsumexp_non_finite() -> None:
    assert_same(fg.logcumsumexp(np.array([-INF, -INF, 1.0, -INF])), [-INF, -INF, 1.0, 1.0])
    assert_same(fg.logcumsumexp(np.array([1.0, INF, 2.0])), [1.0, INF, INF])
    out = fg.logcumsumexp(np.array([1.0, 2.0, NAN, 3.0]))
    np.testing.assert_allclose(out[:2], np.log(np.cumsum(np.exp([1.0, 2.0]))), rtol=1e-15)
    assert np.all(np.isnan(out[2:]))
    big = fg.logcumsumexp(np.array([1000.0, 1000.0]))
    np.testing.assert_allclose(big, [1000.0, 1000.0 + LN2], rtol=1e-15)


def test_logcumsumexp_scalar() -> None:
    assert fg.logcumsumexp(np.float64(2.5)) == 2.5


# --------------------------------------------------------------------------------------
# elementwise special values
# --------------------------------------------------------------------------------------
ELEMENTWISE_SPECIALS: list[tuple[str, Callable[..., Any], tuple[float, ...], Any]] = [
    ("logaddexp -inf -inf", fg.logaddexp, (-INF, -INF), -INF),
    ("logaddexp inf 1", fg.logaddexp, (INF, 1.0), INF),
    ("logaddexp inf inf", fg.logaddexp, (INF, INF), INF),
    ("logaddexp -inf 3", fg.logaddexp, (-INF, 3.0), 3.0),
    ("logaddexp nan 1", fg.logaddexp, (NAN, 1.0), NAN),
    ("logaddexp 1 nan", fg.logaddexp, (1.0, NAN), NAN),
    ("logaddexp nan -inf", fg.logaddexp, (NAN, -INF), NAN),
    ("logaddexp nan inf", fg.logaddexp, (NAN, INF), NAN),
    ("logaddexp equal", fg.logaddexp, (7.0, 7.0), 7.0 + LN2),
    ("logsubexp equal", fg.logsubexp, (1.0, 1.0), -INF),
    ("logsubexp b=-inf", fg.logsubexp, (2.0, -INF), 2.0),
    ("logsubexp a<b", fg.logsubexp, (1.0, 2.0), NAN),
    ("logsubexp inf 1", fg.logsubexp, (INF, 1.0), INF),
    ("logsubexp -inf -inf", fg.logsubexp, (-INF, -INF), -INF),
    ("logsubexp nan", fg.logsubexp, (NAN, 1.0), NAN),
    ("log1mexp 0", fg.log1mexp, (0.0,), -INF),
    ("log1mexp -0", fg.log1mexp, (-0.0,), -INF),
    ("log1mexp -inf", fg.log1mexp, (-INF,), 0.0),
    ("log1mexp >0", fg.log1mexp, (1e-30,), NAN),
    ("log1mexp inf", fg.log1mexp, (INF,), NAN),
    ("log1mexp nan", fg.log1mexp, (NAN,), NAN),
    ("softplus inf", fg.softplus, (INF,), INF),
    ("softplus -inf", fg.softplus, (-INF,), 0.0),
    ("softplus 0", fg.softplus, (0.0,), LN2),
    ("softplus nan", fg.softplus, (NAN,), NAN),
    ("softplus_inverse 0", fg.softplus_inverse, (0.0,), -INF),
    ("softplus_inverse inf", fg.softplus_inverse, (INF,), INF),
    ("softplus_inverse <0", fg.softplus_inverse, (-1.0,), NAN),
    ("sigmoid inf", fg.sigmoid, (INF,), 1.0),
    ("sigmoid -inf", fg.sigmoid, (-INF,), 0.0),
    ("sigmoid 0", fg.sigmoid, (0.0,), 0.5),
    ("sigmoid nan", fg.sigmoid, (NAN,), NAN),
    ("log_sigmoid inf", fg.log_sigmoid, (INF,), 0.0),
    ("log_sigmoid -inf", fg.log_sigmoid, (-INF,), -INF),
    ("log_sigmoid 0", fg.log_sigmoid, (0.0,), -LN2),
    ("log_sigmoid nan", fg.log_sigmoid, (NAN,), NAN),
    ("xlogy 0 0", fg.xlogy, (0.0, 0.0), 0.0),
    ("xlogy 0 nan", fg.xlogy, (0.0, NAN), NAN),
    ("xlogy 0 inf", fg.xlogy, (0.0, INF), 0.0),
    ("xlogy 1 0", fg.xlogy, (1.0, 0.0), -INF),
    ("xlogy nan 1", fg.xlogy, (NAN, 1.0), NAN),
    ("xlogy 2 e", fg.xlogy, (2.0, math.e), 2.0),
    ("xlog1py 0 -1", fg.xlog1py, (0.0, -1.0), 0.0),
    ("xlog1py 0 nan", fg.xlog1py, (0.0, NAN), NAN),
    ("xlog1py 1 -1", fg.xlog1py, (1.0, -1.0), -INF),
    ("xlog1py 3 0", fg.xlog1py, (3.0, 0.0), 0.0),
    ("safe_log 0", fg.safe_log, (0.0,), lambda dt: math.log(np.finfo(dt).smallest_normal)),
    ("safe_log -1", fg.safe_log, (-1.0,), NAN),
    ("safe_log nan", fg.safe_log, (NAN,), NAN),
    ("safe_log inf", fg.safe_log, (INF,), INF),
    ("safe_sqrt 0", fg.safe_sqrt, (0.0,), 0.0),
    ("safe_sqrt -1e-20", fg.safe_sqrt, (-1e-20,), 0.0),
    ("safe_sqrt nan", fg.safe_sqrt, (NAN,), NAN),
    ("safe_sqrt inf", fg.safe_sqrt, (INF,), INF),
    ("safe_div 1 0", fg.safe_div, (1.0, 0.0), lambda dt: 1.0 / np.finfo(dt).eps),
    ("safe_div 1 -0", fg.safe_div, (1.0, -0.0), lambda dt: 1.0 / np.finfo(dt).eps),  # -0 is guarded as +eps
    ("safe_div 1 -tiny", fg.safe_div, (1.0, -1e-30), lambda dt: -1.0 / np.finfo(dt).eps),
    ("safe_div 0 0", fg.safe_div, (0.0, 0.0), 0.0),
    ("safe_div 6 3", fg.safe_div, (6.0, 3.0), 2.0),
    ("safe_div nan", fg.safe_div, (NAN, 0.0), NAN),
]


@pytest.mark.parametrize(
    ("op", "args", "want"), [c[1:] for c in ELEMENTWISE_SPECIALS], ids=[c[0] for c in ELEMENTWISE_SPECIALS]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_special_values(op: Callable[..., Any], args: tuple[float, ...], want: Any, dtype: type) -> None:
    arrays = [np.asarray(a, dtype=dtype) for a in args]
    if callable(want):
        want = want(dtype)
    got = op(*arrays)
    assert got.dtype == dtype
    if math.isnan(want) or math.isinf(want) or want == 0.0:
        assert_same(got, np.asarray(want, dtype))
    else:
        np.testing.assert_allclose(got, np.asarray(want, dtype), rtol=np.finfo(dtype).eps)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_outside_the_domain_values_and_gradients_are_nan(backend: str) -> None:
    """``log1mexp(x > 0)``, ``logsubexp(a < b)`` and ``safe_log(x < 0)`` have no real value: NaN, and NaN gradients on
    every backend (a finite gradient beside a NaN loss lets an optimizer, or a gradient scaler that checks the
    gradients, take the step).
    JAX's ``log1mexp`` and both backends' ``logsubexp`` gave the slope of ``log|.|`` there (``log1mexp'(0.5) = 2.54``);
    the compiled torch kernels already gave NaN. Inside the domain, and at its edges, the gradients stay finite."""
    if backend == "jax":
        import jax  # the dev extra installs it: a missing JAX fails the test, not skips it
        jnp = jax.numpy

        def grads(f: Callable[..., Any], *args: float) -> list[float]:
            with jax.enable_x64(True):
                arrays = [jnp.asarray([v], dtype=jnp.float64) for v in args]
                g = jax.grad(lambda *v: jnp.sum(f(*v)), argnums=tuple(range(len(args))))(*arrays)
                return [float(v[0]) for v in g]
    else:

        def grads(f: Callable[..., Any], *args: float) -> list[float]:
            ts = [torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in args]
            return [float(v) for v in torch.autograd.grad(f(*ts).sum(), ts)]

    assert all(math.isnan(v) for v in grads(fg.log1mexp, 0.5))
    assert all(math.isnan(v) for v in grads(fg.logsubexp, 1.0, 2.0))
    assert all(math.isnan(v) for v in grads(fg.logsubexp, 1.0, 710.0))
    assert grads(fg.log1mexp, -0.5) == pytest.approx([-1 / math.expm1(0.5)], rel=1e-15)
    assert grads(fg.logsubexp, 2.0, 1.0) == pytest.approx([1 / -math.expm1(-1.0), -1 / math.expm1(1.0)], rel=1e-15)
    assert grads(fg.logsubexp, 1.0, -INF) == [1.0, 0.0]
    assert grads(fg.log1mexp, 0.0) == [-INF]
    # safe_log of a negative number (a domain error, not clipped) and safe_sqrt of NaN: NaN, with a NaN gradient (a
    # constant NaN had gradient 0; safe_sqrt passed NaN through as x itself, gradient 1)
    assert all(math.isnan(v) for v in grads(fg.safe_log, -1.0))
    assert all(math.isnan(v) for v in grads(fg.safe_sqrt, NAN))
    assert grads(fg.safe_log, 0.0) == [0.0] and grads(fg.safe_log, 2.0) == [0.5]
    assert grads(fg.safe_sqrt, -1.0) == [0.0] and grads(fg.safe_sqrt, 4.0) == [0.25]


def test_xlogy_matches_scipy_including_zeros() -> None:
    x = np.array([0.0, 0.0, 0.0, 1.5, -2.0, 0.0, 3.0])
    y = np.array([0.0, 2.0, NAN, 0.0, 4.0, INF, 0.5])
    assert_same(fg.xlogy(x, y), sps.xlogy(x, y))
    y1 = np.array([-1.0, 2.0, NAN, -1.0, 4.0, INF, -0.5])
    assert_same(fg.xlog1py(x, y1), sps.xlog1py(x, y1))


def test_elementwise_nan_propagates_elementwise_only() -> None:
    x = np.array([1.0, NAN, -3.0])
    for op in (fg.softplus, fg.sigmoid, fg.log_sigmoid, fg.safe_sqrt):
        out = op(x)
        assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2]])), op.__name__
    out = fg.logaddexp(x, np.array([NAN, 0.0, 1.0]))
    assert np.isnan(out[0]) and np.isnan(out[1]) and np.isfinite(out[2])


def test_elementwise_match_references_on_moderate_inputs() -> None:
    x = rng(8).normal(size=200) * 10
    y = rng(9).normal(size=200) * 10
    np.testing.assert_allclose(fg.logaddexp(x, y), np.logaddexp(x, y), rtol=1e-15)
    hi, lo = np.maximum(x, y) + 1, np.minimum(x, y)
    np.testing.assert_allclose(fg.logsubexp(hi, lo), np.log(np.exp(hi) - np.exp(lo)), rtol=1e-12)
    np.testing.assert_allclose(fg.sigmoid(x), sps.expit(x), rtol=1e-15)
    np.testing.assert_allclose(fg.log_sigmoid(x), sps.log_expit(x), rtol=1e-14)
    np.testing.assert_allclose(fg.softplus(x), np.logaddexp(0.0, x), rtol=1e-14)
    z = -np.abs(x) - 0.01
    mp.mp.dps = 40
    want = [float(mp.log(-mp.expm1(mp.mpf(float(v))))) for v in z]
    np.testing.assert_allclose(fg.log1mexp(z), want, rtol=1e-15)
    sp = np.abs(x) + 0.01
    np.testing.assert_allclose(fg.softplus(fg.softplus_inverse(sp)), sp, rtol=1e-13)


# --------------------------------------------------------------------------------------
# losses vs PyTorch
# --------------------------------------------------------------------------------------
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _f64(v: Any) -> Any:
    return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v


def compare_loss(fg_fn: Callable[..., Any], torch_fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
    """floatguard on ``args`` against PyTorch on the same values in float64.

    The float32 reference is PyTorch in float64: PyTorch's own float32 losses lose
    relative accuracy on small per-element values (``max(x, 0) - x y + ...`` cancels).
    """
    dtype = args[0].dtype
    got = fg_fn(*args, **kw)
    want = torch_fn(*map(_f64, args), **{k: _f64(v) for k, v in kw.items()})
    assert isinstance(got, torch.Tensor) and got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=TOL[dtype], atol=0)
    if dtype == torch.float32:  # and PyTorch's own float32 result, up to its rounding errors
        same = torch_fn(*args, **kw)
        torch.testing.assert_close(got, same, rtol=1e-5, atol=1e-6 * float(same.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_class_indices_vs_torch(dtype: torch.dtype, reduction: str, smoothing: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(16, 7, generator=g) * 3).to(dtype)
    target = torch.randint(0, 7, (16,), generator=g)
    compare_loss(fg.cross_entropy, F.cross_entropy, logits, target, reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_cross_entropy_ignore_index_vs_torch(dtype: torch.dtype, reduction: str, smoothing: float) -> None:
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(20, 5, generator=g) * 2).to(dtype)
    target = torch.randint(0, 5, (20,), generator=g)
    target[::3] = -100
    target[1] = 2
    kw = {"reduction": reduction, "label_smoothing": smoothing}
    compare_loss(fg.cross_entropy, F.cross_entropy, logits, target, ignore_index=-100, **kw)
    # an ignore_index inside [0, C) ignores that class
    compare_loss(fg.cross_entropy, F.cross_entropy, logits, target.clamp(min=0), ignore_index=3, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_probability_targets_vs_torch(dtype: torch.dtype, reduction: str, smoothing: float) -> None:
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(12, 6, generator=g) * 3).to(dtype)
    target = torch.softmax(torch.randn(12, 6, generator=g), dim=-1).to(dtype)
    target[0] = 0.0
    target[0, 2] = 1.0  # a one-hot row: its zeros must contribute exactly 0
    compare_loss(fg.cross_entropy, F.cross_entropy, logits, target, reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_axis1_on_nc_d_inputs(dtype: torch.dtype, reduction: str) -> None:
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, 5, 3, 2, generator=g) * 2).to(dtype)
    target = torch.randint(0, 5, (4, 3, 2), generator=g)
    target[0, 0, 0] = -100
    kw = {"reduction": reduction, "ignore_index": -100, "label_smoothing": 0.05}
    compare_loss(partial(fg.cross_entropy, axis=1), F.cross_entropy, logits, target, **kw)
    probs = torch.softmax(torch.randn(4, 5, 3, 2, generator=g), dim=1).to(dtype)
    compare_loss(partial(fg.cross_entropy, axis=1), F.cross_entropy, logits, probs, reduction=reduction)


def test_cross_entropy_numpy_vs_torch_and_neg_inf_logits() -> None:
    g = rng(10)
    logits = g.normal(size=(8, 4))
    target = g.integers(0, 4, size=8)
    want = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(target)).item()
    got = fg.cross_entropy(logits, target)
    assert isinstance(got, np.ndarray | np.floating) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-13)
    # a masked (-inf) non-target class changes nothing about the finite loss of the others
    masked = logits.copy()
    masked[:, 3] = -INF
    t = np.minimum(target, 2)
    np.testing.assert_allclose(
        fg.cross_entropy(masked, t, reduction="none"), fg.cross_entropy(logits[:, :3], t, reduction="none"), rtol=1e-14
    )
    assert fg.cross_entropy(masked, np.full(8, 3), reduction="none").tolist() == [INF] * 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighting", ["none", "weight", "pos_weight", "both"])
def test_bce_vs_torch(dtype: torch.dtype, reduction: str, weighting: str) -> None:
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(10, 3, generator=g) * 4).to(dtype)
    y = torch.rand(10, 3, generator=g).to(dtype)
    y[0] = 0.0
    y[1] = 1.0
    kw: dict[str, Any] = {}
    if weighting in ("weight", "both"):
        kw["weight"] = torch.rand(10, 1, generator=g).to(dtype) + 0.5
    if weighting in ("pos_weight", "both"):
        kw["pos_weight"] = torch.rand(3, generator=g).to(dtype) * 3
    bce = fg.binary_cross_entropy_with_logits
    compare_loss(bce, F.binary_cross_entropy_with_logits, x, y, reduction=reduction, **kw)


def test_bce_extreme_logits() -> None:
    x = np.array([INF, -INF, INF, -INF, 30.0, -800.0])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    loss = fg.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert_same(loss[:4], [0.0, 0.0, INF, INF])
    np.testing.assert_allclose(loss[4], np.log1p(np.exp(-30.0)), rtol=1e-15)
    assert loss[5] == 0.0
    assert np.isnan(fg.binary_cross_entropy_with_logits(np.array([NAN]), np.array([1.0]), reduction="none")[0])


# --------------------------------------------------------------------------------------
# log_matmul_exp and log_prod
# --------------------------------------------------------------------------------------
def brute_log_matmul_exp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return sps.logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)


def test_log_matmul_exp_adversarial_pairing() -> None:
    a = np.array([[0.0, -1000.0]])
    b = np.array([[-1000.0], [0.0]])
    got = fg.log_matmul_exp(a, b)
    assert got.shape == (1, 1)
    np.testing.assert_allclose(got[0, 0], -1000.0 + LN2, rtol=1e-15)
    got32 = fg.log_matmul_exp(a.astype(np.float32), b.astype(np.float32))
    assert got32.dtype == np.float32
    assert got32[0, 0] == np.float32(-1000.0 + LN2)


@pytest.mark.parametrize("scale", [1.0, 30.0, 400.0])
def test_log_matmul_exp_vs_brute_force(scale: float) -> None:
    g = rng(11)
    a = g.normal(size=(5, 6)) * scale
    b = g.normal(size=(6, 4)) * scale
    np.testing.assert_allclose(fg.log_matmul_exp(a, b), brute_log_matmul_exp(a, b), rtol=1e-13)


def test_log_matmul_exp_batched_broadcast() -> None:
    g = rng(12)
    a = g.normal(size=(2, 1, 3, 4)) * 5
    b = g.normal(size=(5, 4, 2)) * 5
    got = fg.log_matmul_exp(a, b)
    assert got.shape == (2, 5, 3, 2)
    ab, bb = np.broadcast_to(a, (2, 5, 3, 4)), np.broadcast_to(b, (2, 5, 4, 2))
    want = brute_log_matmul_exp(ab, bb)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    tg = fg.log_matmul_exp(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(tg.numpy(), want, rtol=1e-13)


def test_log_matmul_exp_non_finite() -> None:
    a = np.array([[-INF, -INF], [0.0, 1.0], [INF, 0.0], [NAN, 0.0]])
    b = np.array([[0.0, -INF], [2.0, -INF]])
    got = fg.log_matmul_exp(a, b)
    assert_same(got[0], [-INF, -INF])
    np.testing.assert_allclose(got[1, 0], np.logaddexp(0.0, 3.0), rtol=1e-15)
    assert_same(got[1:, 1], [-INF, NAN, NAN])  # column of b all -inf (and inf + -inf is NaN)
    assert got[2, 0] == INF
    assert np.isnan(got[3, 0])


def test_log_prod_zeros_and_underflow() -> None:
    assert fg.log_prod(np.array([0.5, 0.0, 0.25])) == -INF
    assert np.isnan(fg.log_prod(np.array([0.5, -0.1])))
    out = fg.log_prod(np.array([[0.5, 0.0], [NAN, 0.0]]), axis=1)
    assert out[0] == -INF and np.isnan(out[1])
    p = np.full(600, 0.3)
    assert np.prod(p) < np.finfo(np.float64).smallest_normal  # naive product is subnormal
    np.testing.assert_allclose(fg.log_prod(p), math.fsum(np.log(p)), rtol=1e-14)
    np.testing.assert_allclose(fg.log_prod(p), 600 * math.log(0.3), rtol=1e-13)
    p32 = np.full(700, 0.3, dtype=np.float32)
    assert np.prod(p32) == 0.0
    got = fg.log_prod(p32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, 700 * math.log(float(np.float32(0.3))), rtol=1.2e-7)


# --------------------------------------------------------------------------------------
# dtype and shape preservation
# --------------------------------------------------------------------------------------
SHAPE_CASES: list[tuple[str, Callable[[np.ndarray], Any], Callable[[tuple[int, ...]], tuple[int, ...]]]] = [
    ("logsumexp", lambda x: fg.logsumexp(x, axis=1), lambda s: (s[0], s[2])),
    ("logsumexp-none", lambda x: fg.logsumexp(x), lambda s: ()),
    ("logsumexp-keep", lambda x: fg.logsumexp(x, axis=(0, 2), keepdims=True), lambda s: (1, s[1], 1)),
    ("logmeanexp", lambda x: fg.logmeanexp(x, axis=-1), lambda s: s[:2]),
    ("softmax", lambda x: fg.softmax(x, axis=1), lambda s: s),
    ("log_softmax", lambda x: fg.log_softmax(x, axis=0), lambda s: s),
    ("logcumsumexp", lambda x: fg.logcumsumexp(x, axis=1), lambda s: s),
    ("log_prod", lambda x: fg.log_prod(np.exp(-np.abs(x)), axis=(0, 1)), lambda s: (s[2],)),
    ("logaddexp", lambda x: fg.logaddexp(x, x[:1]), lambda s: s),
    ("logsubexp", lambda x: fg.logsubexp(x + 1, x), lambda s: s),
    ("log1mexp", lambda x: fg.log1mexp(-np.abs(x)), lambda s: s),
    ("softplus", fg.softplus, lambda s: s),
    ("softplus_inverse", lambda x: fg.softplus_inverse(np.abs(x)), lambda s: s),
    ("sigmoid", fg.sigmoid, lambda s: s),
    ("log_sigmoid", fg.log_sigmoid, lambda s: s),
    ("xlogy", lambda x: fg.xlogy(x, np.abs(x)), lambda s: s),
    ("xlog1py", lambda x: fg.xlog1py(x, np.abs(x)), lambda s: s),
    ("safe_log", lambda x: fg.safe_log(np.abs(x)), lambda s: s),
    ("safe_sqrt", fg.safe_sqrt, lambda s: s),
    ("safe_div", lambda x: fg.safe_div(x, x[:, :1]), lambda s: s),
    ("bce-none", lambda x: fg.binary_cross_entropy_with_logits(x, fg.sigmoid(x), reduction="none"), lambda s: s),
    ("bce-mean", lambda x: fg.binary_cross_entropy_with_logits(x, fg.sigmoid(x)), lambda s: ()),
    ("ce-none", lambda x: fg.cross_entropy(x, np.zeros((2, 4), dtype=np.int64), axis=1, reduction="none"),
     lambda s: (s[0], s[2])),
    ("ce-sum", lambda x: fg.cross_entropy(x, fg.softmax(x), reduction="sum"), lambda s: ()),
    ("log_matmul_exp", lambda x: fg.log_matmul_exp(x, np.swapaxes(x, 1, 2)), lambda s: (s[0], s[1], s[1])),
]


@pytest.mark.parametrize(("op", "shape_of"), [c[1:] for c in SHAPE_CASES], ids=[c[0] for c in SHAPE_CASES])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_and_shape_preserved(op: Callable[[np.ndarray], Any], shape_of: Any, dtype: type) -> None:
    x = (rng(13).normal(size=(2, 3, 4)) * 2).astype(dtype)
    out = op(x)
    assert out.dtype == dtype
    assert np.shape(out) == shape_of(x.shape)
    assert not np.any(np.isnan(out))


def test_mixed_precision_elementwise_promotes() -> None:
    out = fg.logaddexp(np.ones(3, dtype=np.float32), np.ones(3, dtype=np.float64))
    assert out.dtype == np.float64
    out = fg.logaddexp(np.ones(3, dtype=np.float32), 2.0)
    assert out.dtype == np.float32


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_dtype_casts_the_input_first_as_pytorch(op: str) -> None:
    """``dtype=`` (PyTorch's: ``F.softmax(scores, dim=-1, dtype=torch.float32)`` in attention code) casts the input
    before the op: the result is the op of the cast input, bit for bit, and the gradient reaches a bfloat16 input
    through the cast, as PyTorch's."""
    f, ref = getattr(fg, op), getattr(F, op)
    x = torch.tensor(rng(5).normal(size=(6, 9)) * 4, dtype=torch.float32).bfloat16()
    got = f(x, dim=-1, dtype=torch.float32)
    assert got.dtype == torch.float32
    assert torch.equal(got, f(x.float(), dim=-1))
    torch.testing.assert_close(got, ref(x, dim=-1, dtype=torch.float32), rtol=2e-6, atol=1e-6)
    leaf, leaf_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    weights = torch.linspace(0.5, 1.5, 54).reshape(6, 9)
    (f(leaf, dim=-1, dtype=torch.float32) * weights).sum().backward()
    (ref(leaf_ref, dim=-1, dtype=torch.float32) * weights).sum().backward()
    assert leaf.grad is not None and leaf.grad.dtype == torch.bfloat16
    torch.testing.assert_close(leaf.grad, leaf_ref.grad)
    ints = np.array([[1, 2, 3], [0, 0, 5]])
    assert np.array_equal(f(ints, dtype=np.float32), f(ints.astype(np.float32)))
    for bad in (torch.int64, "float32", np.float32):
        with pytest.raises(TypeError, match="argument 'dtype'"):
            f(x, dtype=bad)
    with pytest.raises(TypeError, match="argument 'dtype'"):
        f(ints, dtype=np.int32)
