"""floatguard's reductions as drop-ins for scipy.special (and torch / jax.scipy where they agree).

One test per silent wrong answer or crash found in issues 10 and 14, then Hypothesis over
shapes, tuple axes, ``b`` and dtypes against ``scipy.special``. The peers' own test suites
run in tests/peer/.
"""

from __future__ import annotations

import math
import warnings

import hypothesis.extra.numpy as hnp
import mpmath
import numpy as np
import pytest
import scipy.special as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import floatguard as fg


def test_float64_b_with_float32_x_gives_float64() -> None:
    # was rounded to float32: the result dtype is the promotion of x and b, as in SciPy
    x = np.array([0.0, 1e-8], dtype=np.float32)
    b = np.array([1.0, 1.0 + 1e-12])
    got = fg.logsumexp(x, b=b)
    assert isinstance(got, np.float64)
    with mpmath.workdps(50):
        want = float(mpmath.log(mpmath.exp(mpmath.mpf(float(x[0]))) + mpmath.mpf(float(b[1]))
                                * mpmath.exp(mpmath.mpf(float(x[1])))))
    assert got == pytest.approx(want, rel=1e-15)
    assert got == pytest.approx(sp.logsumexp(x, b=b), rel=1e-15)


def test_complex_b_gives_the_complex_log() -> None:
    # was NaN
    x = np.array([1.0, 2.0, 0.5])
    b = np.array([1j, -2.0, 0.5 + 0.5j])
    got = fg.logsumexp(x, b=b)
    want = np.log(np.sum(b * np.exp(x)))
    assert isinstance(got, np.complex128)
    assert got == pytest.approx(want, rel=1e-15)
    val, sign = fg.logsumexp(x, b=b, return_sign=True)
    assert val == pytest.approx(want.real, rel=1e-15) and sign == pytest.approx(np.exp(1j * want.imag), rel=1e-15)
    assert np.real(val).dtype == np.float64


@pytest.mark.parametrize("axis", [None, 0])
def test_empty_input_with_b_is_minus_inf(axis: int | None) -> None:
    # was an internal TypeError
    got = fg.logsumexp(np.zeros((0, 3)), b=np.ones(3), axis=axis)
    want = -np.inf if axis is None else np.full(3, -np.inf)
    np.testing.assert_array_equal(got, want)
    assert fg.logsumexp(np.zeros(0), b=np.ones(0)) == sp.logsumexp(np.zeros(0), b=np.ones(0)) == -np.inf
    # an empty sum has sign 0 (SciPy says -1 here, but 0 for a row of -inf: floatguard says 0 for both)
    assert fg.logsumexp(np.zeros(0), b=np.ones(0), return_sign=True) == (-np.inf, 0.0)


@pytest.mark.parametrize("axis", [0, -1, None])
def test_zero_d_input_with_axis_0_is_its_value(axis: int | None) -> None:
    # was "axes don't match array"
    got = fg.logsumexp(np.float32(3.5), axis=axis)
    assert isinstance(got, np.float32) and got == 3.5 == sp.logsumexp(np.float32(3.5), axis=axis)
    assert fg.logmeanexp(2.0, axis=axis) == 2.0
    t = fg.logsumexp(torch.tensor(3.5, dtype=torch.float64), dim=0, keepdim=True)
    assert t.shape == torch.logsumexp(torch.tensor(3.5), 0, keepdim=True).shape == () and float(t) == 3.5
    assert fg.logsumexp(np.float64(1.0), axis=0, keepdims=True).shape == sp.logsumexp(1.0, 0, keepdims=True).shape


@pytest.mark.parametrize("op", [fg.logsumexp, fg.logmeanexp, fg.softmax, fg.log_softmax])
def test_where_as_a_python_list(op: object) -> None:
    # was AttributeError
    x = np.array([0.5, 100.0, -1.0])
    got = op(x, where=[True, False, True])  # type: ignore[operator]
    want = op(x, where=np.array([True, False, True]))  # type: ignore[operator]
    np.testing.assert_array_equal(got, want)
    kept = op(x[[0, 2]])  # type: ignore[operator]
    np.testing.assert_allclose(np.asarray(got)[[0, 2]] if np.ndim(got) else got, kept, rtol=1e-15)


def test_logmeanexp_of_nothing_is_nan_like_np_mean() -> None:
    # was -inf; the mean of no entries is NaN, with np.mean's warning
    with pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        assert np.isnan(np.mean(np.zeros(0)))
    with pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        assert np.isnan(fg.logmeanexp(np.zeros(0)))
    with pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        got = fg.logmeanexp(np.zeros((2, 3)), axis=1, where=np.array([[True, False, True], [False] * 3]))
    assert got[0] == 0.0 and np.isnan(got[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fg.logmeanexp(np.full(3, -np.inf)) == -np.inf  # a mean of zeros: log 0, no warning
    assert torch.isnan(fg.logmeanexp(torch.zeros(0)))


def test_logmeanexp_where_matches_the_masked_mean() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6))
    w = rng.integers(0, 2, size=(4, 6)).astype(bool) | np.eye(4, 6, dtype=bool)
    got = fg.logmeanexp(x, axis=1, where=w)
    want = [math.log(math.fsum(math.exp(v) for v in row[m]) / m.sum()) for row, m in zip(x, w, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-14)


@pytest.mark.parametrize("batch", [(), (3,)])
def test_log_matmul_exp_with_inner_dimension_0_is_minus_inf(batch: tuple[int, ...]) -> None:
    # raised from max() of an empty axis
    got = fg.log_matmul_exp(np.zeros((*batch, 2, 0)), np.zeros((0, 4)))
    np.testing.assert_array_equal(got, np.full((*batch, 2, 4), -np.inf))
    assert torch.equal(fg.log_matmul_exp(torch.zeros(2, 0), torch.zeros(0, 4)), torch.full((2, 4), -math.inf))


def test_integers_and_bools_are_promoted_like_scipy_and_torch() -> None:
    # NumPy: to float64, as SciPy (which refuses bool in softmax: there compare with the float cast)
    for x in (np.arange(4), np.arange(4, dtype=np.int32), np.array([True, False, True])):
        for name in ("logsumexp", "softmax", "log_softmax"):
            got = getattr(fg, name)(x, axis=-1)
            want = getattr(sp, name)(x.astype(np.float64), axis=-1)
            assert np.asarray(got).dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=1e-15)
    assert fg.logsumexp(np.arange(3)) == sp.logsumexp(np.arange(3))
    # torch: to the default dtype, as torch.logsumexp
    got = fg.logsumexp(torch.arange(3), dim=0)
    assert got.dtype == torch.logsumexp(torch.arange(3), 0).dtype == torch.get_default_dtype()
    assert float(got) == pytest.approx(float(torch.logsumexp(torch.arange(3), 0)), rel=1e-6)


def test_b_broadcasts_with_more_dimensions_than_x() -> None:
    x, b = np.arange(6.0).reshape(2, 3), np.linspace(0.5, 2, 24).reshape(4, 2, 3)
    np.testing.assert_allclose(fg.logsumexp(x, b=b), sp.logsumexp(x, b=b), rtol=1e-15)
    np.testing.assert_allclose(fg.logsumexp(x, axis=(0, 2), b=b), sp.logsumexp(x, axis=(0, 2), b=b), rtol=1e-15)


def test_zero_d_results_are_numpy_scalars() -> None:
    for got, want in [(fg.logsumexp([1.0, 2.0]), sp.logsumexp([1.0, 2.0])),
                      (fg.logsumexp(np.ones(3, np.float32)), sp.logsumexp(np.ones(3, np.float32))),
                      (fg.softmax(1000), sp.softmax(1000)), (fg.log_softmax(1.0), sp.log_softmax(1.0)),
                      (fg.logsumexp([1.0, 2.0], b=[1, -1], return_sign=True)[1],
                       sp.logsumexp([1.0, 2.0], b=[1, -1], return_sign=True)[1])]:
        assert type(got) is type(want) and got == pytest.approx(want, rel=1e-15)


def test_complex_inputs_keep_digits_of_a_small_imaginary_part() -> None:
    # SciPy gh-21709: the imaginary part of log(e^0 + e^{i eps}) is eps/2 to full relative precision
    z = np.array([0.0, 2.2204460492503132e-17j])
    got = fg.logsumexp(z)
    assert got.real == pytest.approx(math.log(2), rel=1e-16) and got.imag == pytest.approx(1.1102230246251566e-17,
                                                                                             rel=1e-15)
    zt = torch.tensor([1 + 1j, 2 - 1j, -2 + 3j], dtype=torch.complex128)
    assert torch.allclose(fg.logsumexp(zt), torch.logsumexp(zt, 0), rtol=1e-15)
    np.testing.assert_allclose(fg.softmax(zt).numpy(), sp.softmax(zt.numpy()), rtol=1e-14)
    np.testing.assert_allclose(np.exp(fg.log_softmax(zt).numpy()), sp.softmax(zt.numpy()), rtol=1e-14)
    # logaddexp: the same phase convention, with an overflowing naive sum
    a, b = np.array([800 + 2j]), np.array([799.5 - 3j])
    want = 800 + np.log(np.exp(2j) + np.exp(-0.5 - 3j))
    np.testing.assert_allclose(fg.logaddexp(a, b), want, rtol=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_complex_softmax_of_a_dominant_entry_keeps_its_tiny_imaginary_part(backend: str) -> None:
    """The dominant entry of a complex softmax is ``1 / (1 + q)``, ``q`` the others' sum relative to it: its imaginary
    part ``-Im q`` (here 9.5e-26) to the last digits, as every other component, against mpmath. It came out 0 (the
    sum with the max term inside, a unit complex number, rounded ``q`` away), a normwise error below an ulp but the
    whole of that component."""
    z = np.array([-215.34930914 + 1.31224631j, -12.12656053 - 1.09410606j, 295.44996069 + 0.40044759j,
                  140.29427395 - 0.4298957j, 238.02146104 - 0.5826894j])
    mpmath.mp.dps = 50
    zs = [mpmath.mpc(complex(v)) for v in z]
    lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in zs))
    want = np.array([complex(mpmath.exp(v - lse)) for v in zs])
    if backend == "torch":
        got = fg.softmax(torch.tensor(z)).numpy()
    elif backend == "jax":
        import jax  # the dev extra installs it: a missing JAX fails the test, not skips it
        with jax.enable_x64(True):
            got = np.asarray(fg.softmax(jax.numpy.asarray(z)))
    else:
        got = fg.softmax(z)
    eps = np.finfo(np.float64).eps
    for part in (np.real, np.imag):  # the dominant entry, component by component
        assert abs(part(got[2]) - part(want[2])) <= 2 * eps * abs(part(want[2])), (part.__name__, got[2], want[2])
    kappa = np.maximum(1.0, np.array([float(abs(v - lse)) for v in zs]))  # the condition of exp(z_i - lse)
    assert np.all(np.abs(got - want) <= 2 * eps * kappa * np.abs(want)), (got, want)


def _on(backend: str, f, *arrays: np.ndarray) -> np.ndarray:
    """``f`` of ``arrays`` as the backend's arrays (JAX under x64), back as NumPy."""
    if backend == "torch":
        return np.asarray(f(*(torch.tensor(a) for a in arrays)))
    if backend == "jax":
        import jax  # the dev extra installs it: a missing JAX fails the test, not skips it
        with jax.enable_x64(True):
            return np.asarray(f(*(jax.numpy.asarray(a) for a in arrays)))
    return np.asarray(f(*arrays))


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_complex_terms_that_cancel_keep_the_real_part_within_its_condition(backend: str) -> None:
    """``e^{z_0} + e^{z_1}`` with ``z_1 = z_0 + i pi + d``: the terms cancel to ``|d|`` of each, and ``log|1 + q|``
    (``q = -e^d``) must come from ``1 + Re q`` (exact) and ``Im q``, not from ``|1 + q|^2 - 1``, about -1 with the
    error of an ulp of 1. ``logsumexp``, ``logaddexp`` and ``log_softmax`` against mpmath: the real part within
    4 eps times its condition ``sum_i |e^{z_i}| |z_i| / |sum_i e^{z_i}|`` (the old code: 0.18 off, ~1e4 times it)."""
    eps = np.finfo(np.float64).eps
    mpmath.mp.dps = 60
    for z0 in (158.97493332 + 235.26029766j, -40.5 + 0.25j, 3.0 - 2.0j):
        for d in (1e-3 + 2e-3j, 8.4e-10 - 1.24e-8j, -3e-13 + 1e-14j):
            z = np.array([z0, z0 + 1j * np.pi + d])
            zs = [mpmath.mpc(complex(v)) for v in z]
            total = mpmath.fsum(mpmath.exp(v) for v in zs)
            want = complex(mpmath.log(total))
            cond = float(mpmath.fsum(abs(mpmath.exp(v)) * abs(v) for v in zs) / abs(total)) + abs(want.real)
            got = [complex(_on(backend, lambda a: fg.logsumexp(a), z)),
                   complex(_on(backend, fg.logaddexp, z[:1], z[1:])[0]),
                   complex(z[0] - _on(backend, lambda a: fg.log_softmax(a), z)[0])]
            for g in got:
                assert abs(g.real - want.real) <= 4 * eps * cond, (z, d, g, want, cond)


def test_softmax_axis_none_and_tuples_normalize_over_all_those_axes() -> None:
    x = np.arange(24.0).reshape(2, 3, 4) / 5
    for axis in [None, (0, 2), (2, 0), (1,), -1]:
        np.testing.assert_allclose(fg.softmax(x, axis=axis), sp.softmax(x, axis=axis), rtol=1e-14)
        np.testing.assert_allclose(fg.log_softmax(x, axis=axis), sp.log_softmax(x, axis=axis), rtol=1e-14)


# -- Hypothesis: shapes, tuple axes, b and dtypes against scipy.special ----------------------------
@st.composite
def _case(draw: st.DrawFn) -> tuple[np.ndarray, object, np.ndarray | None, bool]:
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.complex128]))
    elems = st.floats(-30, 30, width=32) if dtype != np.int64 else st.integers(-30, 30)
    x = draw(hnp.arrays(dtype, shape, elements=elems))
    ndim = len(shape)
    axis = draw(st.one_of(st.none(), st.sets(st.integers(0, max(ndim, 1) - 1), min_size=1).map(tuple)))
    b = None
    if draw(st.booleans()):
        b = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.25, 4)))
    return x, axis, b, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(_case())
def test_logsumexp_matches_scipy(case: tuple[np.ndarray, object, np.ndarray | None, bool]) -> None:
    x, axis, b, keepdims = case
    got = fg.logsumexp(x, axis=axis, b=b, keepdims=keepdims)
    want = sp.logsumexp(x, axis=axis, b=b, keepdims=keepdims)
    assert type(got) is type(want) or (isinstance(got, np.ndarray) and isinstance(want, np.ndarray))
    assert np.asarray(got).dtype == np.asarray(want).dtype and np.shape(got) == np.shape(want)
    tol = 1e-5 if np.asarray(want).dtype in (np.float32, np.complex64) else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@settings(max_examples=100, deadline=None)
@given(_case())
def test_softmax_matches_scipy(case: tuple[np.ndarray, object, np.ndarray | None, bool]) -> None:
    x, axis, _, _ = case
    if x.ndim == 0 and axis is not None:  # SciPy raises for an axis of a 0-d input; floatguard (and torch): one entry
        assert fg.softmax(x, axis=axis) == 1.0 and fg.log_softmax(x, axis=axis) == 0.0
        return
    for name in ("softmax", "log_softmax"):
        got, want = getattr(fg, name)(x, axis=axis), getattr(sp, name)(x, axis=axis)
        assert np.asarray(got).dtype == np.asarray(want).dtype and np.shape(got) == np.shape(want)
        tol = 1e-5 if np.asarray(want).dtype in (np.float32, np.complex64) else 1e-12
        if name == "log_softmax" and np.iscomplexobj(x):  # equal up to the branch of the log: compare exp
            got, want = np.exp(got), np.exp(want)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("log", [False, True])
def test_meta_tensors_give_meta_results_like_torch(log: bool) -> None:
    # softmax, cross_entropy and log_matmul_exp called .item() on meta tensors; torch's own ops work there
    x = torch.empty(5, 4, dtype=torch.float64, device="meta")
    sm = fg.log_softmax if log else fg.softmax
    for axis in (-1, 0):
        got, want = sm(x, axis=axis), (torch.log_softmax if log else torch.softmax)(x, axis)
        assert got.is_meta and got.shape == want.shape and got.dtype == want.dtype
    target = torch.zeros(5, dtype=torch.long, device="meta")
    for kw in ({}, {"label_smoothing": 0.1}, {"reduction": "none"}, {"ignore_index": 0}):
        got = fg.cross_entropy(x, target, **kw)
        want = torch.nn.functional.cross_entropy(x, target, **kw)
        assert got.is_meta and got.shape == want.shape and got.dtype == want.dtype
    got = fg.log_matmul_exp(x, torch.empty(4, 3, dtype=torch.float64, device="meta"))
    assert got.is_meta and got.shape == (5, 3) and got.dtype == torch.float64


def test_log_prod_of_a_0d_input_with_axis_0_is_its_log() -> None:
    # raised numpy's AxisError; torch.sum takes axis 0 of a 0-d tensor
    assert fg.log_prod(np.float32(0.5), axis=0) == np.log(np.float32(0.5))
    got = fg.log_prod(torch.tensor(0.25, dtype=torch.float64), dim=-1, keepdim=True)
    assert got.shape == torch.sum(torch.tensor(0.25).log(), -1, keepdim=True).shape == ()
    assert float(got) == math.log(0.25)


@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_bce_of_empty_tensors_matches_torch(shape: tuple[int, ...]) -> None:
    # the fused kernels' reshape(-1, 0) raised
    x = torch.zeros(shape)
    for reduction in ("mean", "sum", "none"):
        got = fg.binary_cross_entropy_with_logits(x, x, reduction=reduction)
        want = torch.nn.functional.binary_cross_entropy_with_logits(x, x, reduction=reduction)
        assert got.shape == want.shape and torch.equal(got.isnan(), want.isnan())
        assert torch.allclose(got.nan_to_num(), want.nan_to_num())
        got = fg.binary_cross_entropy_with_logits(x, x, reduction=reduction, pos_weight=torch.ones(shape[-1:]))
        assert got.shape == want.shape


_WIDE_LONGDOUBLE = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant


def _ld_ulps(got: np.ndarray, want: list[mpmath.mpf]) -> float:
    """The worst error of ``got`` (longdouble) against ``want`` in units of the longdouble spacing of each value."""
    worst = 0.0
    for g, w in zip(np.ravel(got), want, strict=True):
        spacing = np.spacing(abs(np.longdouble(mpmath.nstr(w, 40))))
        diff = mpmath.mpf(np.format_float_scientific(g, precision=30)) - w
        worst = max(worst, float(abs(diff) / mpmath.mpf(np.format_float_scientific(spacing, precision=30))))
    return worst


@pytest.mark.skipif(not _WIDE_LONGDOUBLE, reason="this platform's long double is float64 (nothing wider to keep)")
def test_longdouble_is_computed_in_long_double() -> None:
    """SciPy computes a ``longdouble`` input in long double; floatguard computed it in float64 and returned the
    float64 answer in the long double dtype (2^11 ulps off, and an ``exp(-1005)`` term flushed to 0)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 9)) * 8).astype(np.longdouble)
    x[0, 0], x[1, :4] = 1000.0, 0.25  # a dominant entry; ties at the max
    with mpmath.workdps(500):  # the max entry's log_softmax is -1.5e-433: v - log Z needs ~450 digits
        rows = [[mpmath.mpf(np.format_float_scientific(v, precision=30)) for v in r] for r in x]
        lse = [mpmath.log(mpmath.fsum(mpmath.exp(v) for v in r)) for r in rows]
        flat = [v for r in rows for v in r]
        other = [v for r in rows[::-1] for v in r]
        cases = {
            "logsumexp": (fg.logsumexp(x, axis=-1), lse),
            "log_softmax": (fg.log_softmax(x, axis=-1), [v - m for r, m in zip(rows, lse, strict=True) for v in r]),
            "softmax": (fg.softmax(x[1:], axis=-1), [mpmath.exp(v - m) for r, m in zip(rows[1:], lse[1:],
                                                                                         strict=True) for v in r]),
            "softplus": (fg.softplus(x[1:]), [mpmath.log1p(mpmath.exp(v)) for v in flat[9:]]),
            "log_sigmoid": (fg.log_sigmoid(x[1:]), [-mpmath.log1p(mpmath.exp(-v)) for v in flat[9:]]),
            "logaddexp": (fg.logaddexp(x[1:], x[::-1][:-1]), [mpmath.log(mpmath.exp(a) + mpmath.exp(b))
                                                             for a, b in zip(flat[9:], other[:27], strict=True)]),
        }
        # the reductions within 4 ulp; softmax and the elementwise ops within 2 ulp times a bound of their condition
        # number (|x_i - log Z| for softmax, |x| for exp-like tails: NumPy's long double exp and log1p are not
        # correctly rounded); float64 work was off by 2^11 ulp
        kappa = max(float(abs(v - m)) for r, m in zip(rows[1:], lse[1:], strict=True) for v in r)
        for name, (got, want) in cases.items():
            assert got.dtype == np.longdouble, name
            assert _ld_ulps(got, want) <= (4.0 if name in ("logsumexp", "log_softmax") else 2 * kappa), name
    tiny = np.array([0.0, -1005.0], dtype=np.longdouble)
    assert fg.softmax(tiny)[1] > 0 and fg.softmax(tiny)[1] == sp.softmax(tiny)[1]
    assert fg.logsumexp(x, axis=-1) == pytest.approx(sp.logsumexp(x, axis=-1), rel=float(2 * np.finfo(
        np.longdouble).eps))
