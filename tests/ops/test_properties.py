"""Property tests over the whole floating range: huge, tiny, subnormal, +-inf and NaN inputs.

Each property is a mathematical identity or bound that must survive rounding
(with a tolerance of a few ulp where the identity is not exact in floating point).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import floatguard as fg

DTYPES = [np.float32, np.float64]
SETTINGS = settings(max_examples=150, deadline=None)


def any_floats(dtype: Any) -> st.SearchStrategy[float]:
    """Every value of ``dtype``: huge, tiny, subnormal, +-0, +-inf and NaN."""
    width = 32 if dtype == np.float32 else 64
    return st.floats(width=width, allow_nan=True, allow_infinity=True, allow_subnormal=True)


def rows(dtype: Any, elements: st.SearchStrategy[float] | None = None) -> st.SearchStrategy[np.ndarray]:
    """2-d arrays (reduced along the last axis), rows of 1 to 12 entries."""
    shape = array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)
    return arrays(dtype, shape, elements=elements if elements is not None else any_floats(dtype))


def flat(dtype: Any, elements: st.SearchStrategy[float] | None = None) -> st.SearchStrategy[np.ndarray]:
    shape = array_shapes(min_dims=1, max_dims=1, min_side=1, max_side=24)
    return arrays(dtype, shape, elements=elements if elements is not None else any_floats(dtype))


def ulp(x: np.ndarray, dtype: Any) -> np.ndarray:
    """Spacing of ``dtype`` at ``|x|`` (as float64)."""
    with np.errstate(over="ignore", invalid="ignore"):  # spacing(inf) is NaN: callers compare infinities exactly
        return np.spacing(np.abs(np.asarray(x, dtype=dtype))).astype(np.float64)


def within(got: Any, want: Any, tol: Any) -> np.ndarray:
    """Elementwise: equal (infinities included) or within ``tol`` of each other."""
    g, w = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (g == w) | (np.abs(g - w) <= tol)


def eps(dtype: Any) -> float:
    return float(np.finfo(dtype).eps)


# --------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_softmax_is_a_distribution(dtype: Any, data: st.DataObject) -> None:
    x = data.draw(rows(dtype))
    p = fg.softmax(x)
    assert p.dtype == dtype and p.shape == x.shape
    has_nan = np.isnan(x).any(axis=1)
    m = np.max(np.where(np.isnan(x), -np.inf, x), axis=1)
    # NaN exactly on the rows that contain a NaN, and there everywhere
    assert np.array_equal(np.isnan(p).any(axis=1), has_nan)
    assert np.all(np.isnan(p[has_nan]))
    ok = p[~has_nan].astype(np.float64)
    assert np.all((ok >= 0.0) & (ok <= 1.0))
    total = ok.sum(axis=1)
    n = x.shape[1]
    finite_max = np.isfinite(m[~has_nan])
    assert np.all(np.abs(total[finite_max] - 1.0) <= 2 * n * eps(dtype)), total
    assert np.all(np.abs(total[m[~has_nan] == np.inf] - 1.0) <= n * eps(dtype))  # +inf entries share the mass
    assert np.all(total[m[~has_nan] == -np.inf] == 0.0)  # nothing left: zeros


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_log_softmax_is_non_positive_and_matches_softmax(dtype: Any, data: st.DataObject) -> None:
    x = data.draw(rows(dtype))
    ls = fg.log_softmax(x)
    assert ls.dtype == dtype
    has_nan = np.isnan(x).any(axis=1)
    assert np.array_equal(np.isnan(ls).any(axis=1), has_nan)
    assert np.all(ls[~has_nan] <= 0.0)
    # exp(log_softmax) is softmax, up to the rounding of each
    p = fg.softmax(x)[~has_nan].astype(np.float64)
    e = np.exp(ls[~has_nan].astype(np.float64))
    big = p > float(np.finfo(dtype).tiny)
    err = np.abs(e - p)[big] / p[big]
    bound = (np.abs(ls[~has_nan].astype(np.float64)) + 2.0)[big] * eps(dtype)
    assert np.all(err <= bound), (err, bound)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_logsumexp_is_between_max_and_max_plus_log_n(dtype: Any, data: st.DataObject) -> None:
    x = data.draw(rows(dtype))
    lse = fg.logsumexp(x, axis=1)
    assert lse.dtype == dtype and lse.shape == (x.shape[0],)
    has_nan = np.isnan(x).any(axis=1)
    assert np.array_equal(np.isnan(lse), has_nan)
    m = np.max(x[~has_nan], axis=1) if (~has_nan).any() else np.zeros(0, dtype)
    val = lse[~has_nan]
    assert np.all(val >= m)
    fin = np.isfinite(m)
    upper = m[fin].astype(np.float64) + np.log(x.shape[1])
    assert np.all(val[fin].astype(np.float64) <= upper + ulp(upper, dtype))
    assert np.array_equal(val[~fin], m[~fin])  # +inf and empty rows: the max itself
    # return_sign: 1 for a non-empty sum, 0 for an empty one, NaN for NaN rows
    _, sign = fg.logsumexp(x, axis=1, return_sign=True)
    assert np.array_equal(np.isnan(sign), has_nan)
    assert np.array_equal(sign[~has_nan], np.where(val == -np.inf, 0.0, 1.0).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_logsumexp_matches_softmax_normaliser_and_keepdims(dtype: Any, data: st.DataObject) -> None:
    x = data.draw(rows(dtype))
    keep = fg.logsumexp(x, axis=1, keepdims=True)
    assert keep.shape == (x.shape[0], 1)
    np.testing.assert_array_equal(keep[:, 0], fg.logsumexp(x, axis=1))
    np.testing.assert_array_equal(fg.logsumexp(x, axis=(0, 1)), fg.logsumexp(x.reshape(-1)))


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    data=st.data(),
    shift=st.floats(-50.0, 50.0),
)
def test_logsumexp_is_shift_equivariant(dtype: Any, data: st.DataObject, shift: float) -> None:
    moderate = st.one_of(st.floats(-300.0, 300.0, width=32 if dtype == np.float32 else 64), st.just(-np.inf))
    x = data.draw(rows(dtype, moderate))
    c = dtype(shift)
    xs = x + c  # exact or rounded: the comparison allows for the rounding of each entry
    lhs = fg.logsumexp(xs, axis=1).astype(np.float64)
    rhs = fg.logsumexp(x, axis=1).astype(np.float64) + float(c)
    bound = 4 * eps(dtype) * (np.abs(lhs) + np.abs(float(c)) + np.max(np.abs(np.where(np.isinf(x), 0, x)), axis=1) + 1)
    finite = np.isfinite(rhs)
    assert np.array_equal(np.isfinite(lhs), finite)
    assert np.all(np.abs(lhs[finite] - rhs[finite]) <= bound[finite]), (lhs, rhs)
    np.testing.assert_array_equal(lhs[~finite], rhs[~finite])


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_softmax_is_shift_invariant_for_exact_shifts(dtype: Any, data: st.DataObject) -> None:
    """Shifting by a power of two that keeps every entry exact does not change softmax at all."""
    ints = st.integers(-(2**20), 2**20).map(float)
    x = data.draw(rows(dtype, ints))
    np.testing.assert_array_equal(fg.softmax(x + dtype(1024.0)), fg.softmax(x))
    np.testing.assert_array_equal(fg.log_softmax(x - dtype(4096.0)), fg.log_softmax(x))


# --------------------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_softplus_bounds_and_symmetry(dtype: Any, data: st.DataObject) -> None:
    x = data.draw(flat(dtype))
    sp = fg.softplus(x)
    spn = fg.softplus(-x)
    assert sp.dtype == dtype
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(sp), nan)
    assert np.all(sp[~nan] >= np.maximum(x[~nan], 0))
    fin = np.isfinite(x)
    diff = sp[fin].astype(np.float64) - spn[fin].astype(np.float64)
    scale = np.maximum(ulp(sp[fin], dtype), ulp(spn[fin], dtype))
    assert np.all(np.abs(diff - x[fin].astype(np.float64)) <= 2 * scale), (x[fin], diff)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_log_sigmoid_is_minus_softplus_of_minus_x(dtype: Any, data: st.DataObject) -> None:
    x = data.draw(flat(dtype))
    ls = fg.log_sigmoid(x)
    ref = -fg.softplus(-x)
    assert ls.dtype == dtype
    assert np.array_equal(np.isnan(ls), np.isnan(x))
    ok = ~np.isnan(x)
    assert np.all(within(ls[ok], ref[ok], ulp(ref[ok], dtype)))
    assert np.all(ls[ok] <= 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_sigmoid_range_and_symmetry(dtype: Any, data: st.DataObject) -> None:
    x = data.draw(flat(dtype))
    s = fg.sigmoid(x)
    sn = fg.sigmoid(-x)
    assert s.dtype == dtype
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(s), nan)
    assert np.all((s[~nan] >= 0.0) & (s[~nan] <= 1.0))
    total = s[~nan].astype(np.float64) + sn[~nan].astype(np.float64)
    assert np.all(np.abs(total - 1.0) <= eps(dtype)), total
    # monotone
    order = np.argsort(x[~nan], kind="stable")
    assert np.all(np.diff(s[~nan][order]) >= 0)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_log1mexp_domain(dtype: Any, data: st.DataObject) -> None:
    x = data.draw(flat(dtype))
    y = fg.log1mexp(x)
    assert y.dtype == dtype
    neg = x <= 0  # False for NaN
    assert np.all(y[neg] <= 0.0)
    assert not np.any(np.isnan(y[neg]))
    assert np.all(np.isnan(y[~neg]))  # x > 0 (and NaN): no real log
    assert np.all(y[x == 0] == -np.inf)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_logaddexp_symmetric_and_bounded(dtype: Any, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 16))
    a = data.draw(arrays(dtype, n, elements=any_floats(dtype)))
    b = data.draw(arrays(dtype, n, elements=any_floats(dtype)))
    ab = fg.logaddexp(a, b)
    np.testing.assert_array_equal(ab, fg.logaddexp(b, a))
    ok = ~(np.isnan(a) | np.isnan(b))
    assert np.array_equal(np.isnan(ab), ~ok)
    m = np.maximum(a[ok], b[ok]).astype(np.float64)
    v = ab[ok].astype(np.float64)
    assert np.all(v >= m)
    upper = m + np.log(2.0)
    assert np.all(v[np.isfinite(m)] <= (upper + ulp(upper, dtype))[np.isfinite(m)])


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_logsubexp_inverts_logaddexp(dtype: Any, data: st.DataObject) -> None:
    """``logsubexp(logaddexp(a, b), b) = a`` where the subtraction is well-conditioned (a >= b + 1)."""
    width = 32 if dtype == np.float32 else 64
    n = data.draw(st.integers(1, 16))
    a = data.draw(arrays(dtype, n, elements=st.floats(-80.0, 80.0, width=width)))
    gap = data.draw(arrays(dtype, n, elements=st.floats(1.0, 60.0, width=width)))
    b = (a - gap).astype(dtype)
    back = fg.logsubexp(fg.logaddexp(a, b), b).astype(np.float64)
    c = np.abs(fg.logaddexp(a, b).astype(np.float64))
    # the rounding of logaddexp (half an ulp of |c|) is amplified by at most 1 / (1 - e^-1), and the
    # float64 contract allows errors of the order of ulp(b) e^(b-c) / (1 - e^(b-c)) (the condition in b)
    g64 = gap.astype(np.float64)
    bound = 3 * ulp(c, dtype) + 2 * ulp(a, dtype) + 4 * ulp(b, dtype) * np.exp(-g64) / -np.expm1(-g64)
    assert np.all(np.abs(back - a.astype(np.float64)) <= bound), (a, back)
    # b = -inf: exactly a
    np.testing.assert_array_equal(fg.logsubexp(a, np.full_like(a, -np.inf)), a)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_xlogy_zero_times_anything_but_nan_is_zero(dtype: Any, data: st.DataObject) -> None:
    y = data.draw(flat(dtype))
    out = fg.xlogy(np.zeros_like(y), y)
    out1p = fg.xlog1py(np.zeros_like(y), y)
    nan = np.isnan(y)
    assert np.all(np.isnan(out[nan])) and np.all(np.isnan(out1p[nan]))
    assert np.all(out[~nan] == 0.0) and np.all(out1p[~nan] == 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_safe_ops_never_nan_on_non_negative_input(dtype: Any, data: st.DataObject) -> None:
    nonneg = st.floats(0.0, None, width=32 if dtype == np.float32 else 64, allow_infinity=True, allow_subnormal=True)
    x = data.draw(flat(dtype, nonneg))
    for out in (fg.safe_log(x), fg.safe_sqrt(x), fg.safe_log(x, eps=1e-3)):
        assert out.dtype == dtype
        assert not np.any(np.isnan(out))
    assert np.all(np.isfinite(fg.safe_log(x)[np.isfinite(x)]))
    assert np.all(fg.safe_log(x) >= np.log(np.finfo(dtype).tiny).astype(dtype))
    # safe_sqrt never NaN on any non-NaN input (negative values round to 0)
    z = data.draw(flat(dtype))
    s = fg.safe_sqrt(z)
    assert np.array_equal(np.isnan(s), np.isnan(z))
    assert np.all(s[z <= 0] == 0.0)
    # safe_div: finite numerator over any non-NaN denominator is never NaN, and finite unless b is huge-free
    a = data.draw(arrays(dtype, z.shape, elements=st.floats(-1.0, 1.0, width=32 if dtype == np.float32 else 64)))
    q = fg.safe_div(a, z)
    assert np.array_equal(np.isnan(q), np.isnan(z))
    assert np.all(np.isfinite(q[~np.isnan(z)]))
