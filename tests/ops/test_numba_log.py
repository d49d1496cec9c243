"""The vectorizable float64 ``log1p`` of :mod:`floatguard.ops._numba_log` against mpmath."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("numba")
mpmath = pytest.importorskip("mpmath")

from floatguard.ops import _numba_log as L  # noqa: E402


def _ulp_errors(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    L.log1p_array(x, out)
    errs = []
    with mpmath.workprec(160):
        for xi, got in zip(x.tolist(), out.tolist(), strict=True):
            ref = mpmath.log1p(mpmath.mpf(xi))
            errs.append(float(abs(mpmath.mpf(got) - ref) / np.spacing(abs(float(ref)))))
    return np.array(errs)


def test_log1p_below_one_ulp_over_the_range() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([
        rng.uniform(0.0, 1.0, 3000),  # the softplus / logaddexp argument exp(-|x|)
        rng.uniform(-1.0, 0.0, 3000),
        -1.0 + 10.0 ** rng.uniform(-16, -0.3, 1000),  # near -1
        10.0 ** rng.uniform(-323, 308, 3000),  # subnormal to huge
        -(10.0 ** rng.uniform(-323, -1e-4, 2000)),
        np.exp(-rng.uniform(0.0, 745.0, 2000)),
        [5e-324, -5e-324, 2.0**-1022, 2.0**53, 2.0**54, 2.0**1023 * 1.999, math.sqrt(2) - 1, math.sqrt(0.5) - 1, 1.0],
    ])
    err = _ulp_errors(x)
    assert err.max() < 1.0, f"max {err.max():.3f} ulp at x = {x[err.argmax()]!r}"


def test_log1p_special_values() -> None:
    x = np.array([-1.0, -2.0, -np.inf, np.inf, np.nan, 0.0, -0.0])
    out = np.empty_like(x)
    L.log1p_array(x, out)
    assert out[0] == -np.inf and np.isnan(out[1]) and np.isnan(out[2]) and out[3] == np.inf and np.isnan(out[4])
    assert out[5] == 0.0 and not np.signbit(out[5]) and out[6] == 0.0 and np.signbit(out[6])


def test_log1p_unit_relative_error_far_below_float32() -> None:
    """The short ``log1p`` of softplus for float32/bfloat16 results (``e P(e)``, degree 12): relative ``< 2^-35``
    on ``[0, 1]``: 2^-11 of a float32 ulp (dense near 1, where the fit is weakest, subnormal and tiny arguments)."""
    rng = np.random.default_rng(5)
    x = np.concatenate([
        rng.uniform(0.0, 1.0, 3000),
        np.exp(-rng.uniform(0.0, 745.0, 3000)),
        2.0 ** -rng.uniform(40.0, 60.0, 500),  # 1 + e would lose most of e: e P(e) does not form it
        np.linspace(0.9, 1.0, 500),
        [5e-324, 2.0**-1022, 2.0**-53, 2.0**-52, math.sqrt(2) - 1, np.nextafter(math.sqrt(2) - 1, 0.0), 1.0],
    ])
    out = np.empty_like(x)
    L.log1p_unit_array(x, out)
    with mpmath.workprec(160):
        rel = [float(abs(mpmath.mpf(g) - mpmath.log1p(mpmath.mpf(v))) / mpmath.log1p(mpmath.mpf(v)))
               for v, g in zip(x.tolist(), out.tolist(), strict=True)]
    worst = int(np.argmax(rel))
    assert rel[worst] < 2.0**-35, f"relative {rel[worst]:.3g} at e = {x[worst]!r}"
    zero = np.empty(1)
    L.log1p_unit_array(np.zeros(1), zero)
    assert zero[0] == 0.0


def test_log1p_nonneg_relative_error() -> None:
    """The one-divide ``log1p`` of the middle-axis kernels' ``s >= 0``: relative ``< 2^-51`` from subnormals to
    ``2^1000``, dense where ``1 + s`` crosses the binades whose correction it approximates (1, sqrt(2), 2, 4)."""
    rng = np.random.default_rng(8)
    x = np.concatenate([
        rng.uniform(0.0, 3.0, 4000),
        np.exp(-rng.uniform(0.0, 745.0, 2000)),
        10.0 ** rng.uniform(-3, 300, 1000),
        np.linspace(0.40, 0.43, 500), np.linspace(0.97, 1.03, 500), np.linspace(2.9, 3.1, 500),
        [0.0, 5e-324, 2.0**-1022, 2.0**-53, 2.0**-52, math.sqrt(2) - 1, 1.0, 2.0**52, 2.0**53, 2.0**1000],
    ])
    out = np.empty_like(x)
    L.log1p_nonneg_array(x, out)
    assert out[x == 0.0][0] == 0.0
    with mpmath.workprec(160):
        rel = [float(abs(mpmath.mpf(g) - mpmath.log1p(mpmath.mpf(v))) / mpmath.log1p(mpmath.mpf(v))) if v else 0.0
               for v, g in zip(x.tolist(), out.tolist(), strict=True)]
    worst = int(np.argmax(rel))
    assert rel[worst] < 2.0**-51, f"relative {rel[worst]:.3g} at s = {x[worst]!r}"


def test_recip_unit_relative_error_and_nan() -> None:
    """The divide-free ``1 / d`` of the float32/bfloat16 sigmoid (``d = 1 + exp(-|x|)``): relative ``< 2^-36.5``
    on ``[1, 2]`` (a degree-3 guess and one order-4 step), the ends and the extrema of the guess's error
    included; NaN stays NaN. A guess of one degree less, or a Newton step in place of the order-4 one,
    fails here."""
    rng = np.random.default_rng(7)
    d = np.concatenate([
        rng.uniform(1.0, 2.0, 5000),
        np.linspace(1.0, 2.0, 2001),  # the equioscillation points of the guess lie on this grid to ~1e-3
        1.0 + 2.0 ** -rng.uniform(1.0, 60.0, 500),
        [1.0, np.nextafter(1.0, 2.0), np.nextafter(2.0, 1.0), 2.0, 1.5, math.sqrt(2.0)],
    ])
    out = np.empty_like(d)
    L.recip_unit_array(d, out)
    with mpmath.workprec(160):
        rel = [float(abs(mpmath.mpf(q) * mpmath.mpf(v) - 1)) for v, q in zip(d.tolist(), out.tolist(), strict=True)]
    worst = int(np.argmax(rel))
    assert rel[worst] < 2.0**-36.5, f"relative {rel[worst]:.3g} at d = {d[worst]!r}"
    nan = np.empty(1)
    L.recip_unit_array(np.array([np.nan]), nan)
    assert np.isnan(nan[0])
