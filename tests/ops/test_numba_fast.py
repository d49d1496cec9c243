"""The compiled kernels (numba, the ``fast`` extra) of logsumexp, softmax and log_softmax.

* the float64 ``exp`` kernel against mpmath on a dense grid of ``[-750, 0]``;
* the compiled path against the NumPy path (at most 1 ulp apart for float16 and
  float32, identical in most entries) and both against mpmath, on random and
  adversarial rows;
* the NumPy path when numba is missing, disabled, or fails to compile;
* importing floatguard does not import numba.

Tests that need numba are skipped when the ``fast`` extra is not installed (the
``dev`` extra installs it); the fallback tests always run.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import mpmath
import numpy as np
import pytest

import floatguard as fg
import floatguard.ops
from floatguard import testing as T
from floatguard.ops import _numba_fast, _numpy_fast

needs_numba = pytest.mark.skipif(not _numba_fast.AVAILABLE, reason="numba (the `fast` extra) is not installed")

INF = math.inf
LN2 = math.log(2.0)
RNG = np.random.default_rng(20250611)

OPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "logsumexp": lambda x: fg.logsumexp(x, axis=-1),
    "softmax": lambda x: fg.softmax(x, axis=-1),
    "log_softmax": lambda x: fg.log_softmax(x, axis=-1),
}
ROW_REFS: dict[str, Callable[[np.ndarray], Any]] = {
    "logsumexp": T.ref_logsumexp,
    "softmax": T.ref_softmax,
    "log_softmax": T.ref_log_softmax,
}
ROW_CONDS: dict[str, Callable[[np.ndarray], Any]] = {
    "logsumexp": T.cond_logsumexp,
    "softmax": T.cond_softmax,
    "log_softmax": T.cond_log_softmax,
}


def _rows(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64)


def _random_rows() -> np.ndarray:
    x = RNG.standard_normal((23, 300)) * 4
    x[1, 127], x[2, 128], x[3, 129], x[4, 0], x[5, -1] = 40.0, 40.0, 40.0, 40.0, 40.0  # max at block edges
    x[6, 200:] = -INF
    return x


# Rows as float64 values; each dtype sees them rounded. Lengths are chosen to end blocks
# of 128 entries anywhere (the vectorized loops' tails).
CASES: dict[str, np.ndarray] = {
    "random": _random_rows(),
    "dominant_30x50": _rows([0.0] + [-30.0] * 50),
    "dominant_20x1000": _rows([0.0] + [-20.0] * 1000),
    "ties_and_edges": _rows(
        [1.0, 1.0, 1.0, 0.5], [0.0, -1.0, -2.0, 3.0], [3.0, -1.0, -2.0, 0.0], [2.0, 2.0, -INF, 2.0]
    ),
    "neg_inf_entries": _rows(
        [-INF, 0.0, 1.0, -INF, 2.5], [-INF, -INF, -INF, -INF, -INF], [-INF, -INF, 7.0, -INF, -INF]
    ),
    "pos_inf_and_nan": _rows([1.0, INF, 0.0, INF, -INF], [-INF, 2.0, INF, 5.0, 1.0], [1.0, np.nan, 0.0, 2.0, 3.0]),
    "huge": _rows([1e4, 1e4 - 1, 1e4 - 0.5], [-1e4, -1e4 + 1, -1e4 - 3]),
    # results below the smallest normal number of float16 (e^-12), float32 (e^-100) and float64 (e^-720)
    "subnormal_results": _rows(
        [0.0, -12.0, -16.0, -17.5], [0.0, -100.0, -103.0, -104.5], [0.0, -720.0, -740.0, -745.0]
    ),
    "lse_near_zero": _rows([-LN2, -LN2], [-LN2 + 2.0**-40, -LN2 - 2.0**-40], [-1.0, math.log1p(-math.exp(-1.0))]),
    "single_entry": _rows([3.0], [-INF], [0.0]),
}
DTYPES = ["float16", "float32", "float64"]


def _ulps_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` in ulps of their dtype at the larger of the two; 0 where equal (NaN = NaN), NaN on a mismatch."""
    equal = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        big = np.maximum(np.abs(a), np.abs(b))
        d = np.abs(a.astype(np.float64) - b.astype(np.float64)) / np.spacing(big).astype(np.float64)
    return np.where(equal, 0.0, d)


def _both_paths(op: str, x: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    """``op`` on ``x`` with the compiled kernels (when installed) and with the NumPy path."""
    fast = OPS[op](x)
    if _numba_fast.AVAILABLE and x.dtype in _numpy_fast.NUMBA_DTYPES:
        assert _numpy_fast.kernels is _numba_fast, "the compiled kernels were not used"
    with monkeypatch.context() as m:
        m.setattr(_numpy_fast, "kernels", False)
        slow = OPS[op](x)
    return fast, slow


def _check_reference(op: str, x: np.ndarray, got: np.ndarray, dtype: str) -> None:
    x64 = x.astype(np.float64)
    for i, row in enumerate(x64):
        err = np.asarray(T.ulp_error(got[i], ROW_REFS[op](row), dtype), dtype=np.float64)
        if dtype == "float64":
            with np.errstate(over="ignore"):
                bound = 2 * np.fmax(1.0, np.asarray(ROW_CONDS[op](row), dtype=np.float64))
        else:
            bound = np.ones_like(err)
        assert np.all(err <= bound), f"{op} row {i} {dtype}: {float(np.max(err)):.3g} ulp (row {row[:6]}...)"


# -- the exp kernel ---------------------------------------------------------------------------
@needs_numba
def test_exp_kernel_against_mpmath() -> None:
    """0.51 ulp (glibc's bound; 0.505 measured) on normal results, 0.75 ulp of 2^-1074 on subnormal ones."""
    d = np.concatenate(
        [
            -np.linspace(0.0, 750.0, 30_001),
            -RNG.uniform(0.0, 1.0, 4000),
            -RNG.uniform(0.0, 2.0**-20, 500),
            -RNG.uniform(708.0, 745.2, 2000),  # subnormal results
            -(LN2 / 256) * np.arange(1, 400),  # reduced-range edges
            [-0.0, -5e-324, -1e-300, -2.0**-54, -745.13, -745.14, -746.0, -800.0, -1e308, -INF],
        ]
    )
    out = np.empty_like(d)
    _numba_fast.exp_nonpositive(d, out)
    with mpmath.workdps(40):
        exact = np.array([mpmath.exp(mpmath.mpf(v)) if v != -INF else mpmath.mpf(0) for v in d.tolist()], dtype=object)
    err = np.asarray(T.ulp_error(out, exact, "float64"), dtype=np.float64)
    normal = exact >= mpmath.mpf(2) ** -1022
    assert float(err[normal].max()) <= 0.51
    assert float(err[~normal].max()) <= 0.75
    with mpmath.workdps(40):
        rel = max(abs(mpmath.mpf(o) / e - 1) for o, e in zip(out[normal].tolist(), exact[normal], strict=True))
    assert rel <= 0.51 * 2.0**-52  # max relative error 1.13e-16 (0.505 ulp measured, 1.12e-16)
    assert np.all(out[d == 0] == 1.0)  # d = 0 is exactly 1: the max term
    assert np.all(out[d <= -745.14] == 0.0)  # below 2^-1075: rounds to 0 (and -inf gives 0)
    assert np.all(out[(d < 0) & (d > -2.0**-54)] == 1.0)
    assert np.all(np.diff(out[: 30_001]) <= 0)  # monotone on the grid


# -- compiled path against the NumPy path and mpmath ---------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("case", list(CASES))
def test_paths_agree_and_are_accurate(case: str, op: str, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x = CASES[case].astype(dtype)  # every finite value fits float16
    fast, slow = _both_paths(op, x, monkeypatch)
    assert fast.dtype == x.dtype
    apart = _ulps_apart(fast, slow)
    if dtype != "float64":  # float64 results of different summation orders may differ by more, within the bound
        assert np.all(apart <= 1), f"paths {float(np.nanmax(apart))} ulp apart"
    _check_reference(op, x, fast, dtype)
    _check_reference(op, x, slow, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_row(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """10^5 terms: the two-pass softmax of long rows, block sums; checked at 3000 entries against mpmath."""
    x = (RNG.standard_normal((1, 100_000)) * 10).astype(dtype)
    x[0, 54_321] = np.float64(x.max()) + 3  # one large term
    x64 = x.astype(np.float64)[0]
    with mpmath.workdps(T.DPS):
        lse = T.ref_logsumexp(x64)
        idx = np.unique(np.concatenate([RNG.integers(0, x64.size, 3000), [54_321, int(np.argmin(x64))]]))
        refs = {
            "logsumexp": lse,
            "softmax": np.array([mpmath.exp(mpmath.mpf(float(v)) - lse) for v in x64[idx]], dtype=object),
            "log_softmax": np.array([mpmath.mpf(float(v)) - lse for v in x64[idx]], dtype=object),
        }
    bounds = dict.fromkeys(OPS, 1.0)
    if dtype == "float64":  # 2 ulp times the condition number (x_i - m rounds: cond ~ |x_i| for softmax)
        cond = T.cond_softmax(x64)[idx]
        log_sm = np.array([abs(float(v)) for v in refs["log_softmax"]])
        bounds = {
            "logsumexp": 2 * max(1.0, T.cond_logsumexp(x64)),
            "softmax": 2 * np.fmax(1.0, cond),
            "log_softmax": 2 * np.fmax(1.0, cond / log_sm),
        }
    for op in OPS:
        fast, slow = _both_paths(op, x, monkeypatch)
        if op != "logsumexp":
            fast, slow = fast[0, idx], slow[0, idx]
        if dtype != "float64":
            assert np.all(_ulps_apart(fast, slow) <= 1), op
        for got in (fast, slow):
            err = np.asarray(T.ulp_error(got, refs[op], dtype), dtype=np.float64)
            assert np.all(err <= bounds[op]), f"{op} {dtype}: {float(np.max(err))} ulp"


@needs_numba
def test_identical_to_numpy_path_mostly(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32: the compiled path differs from the NumPy path only where float64 lands at a float32 tie."""
    x = (RNG.standard_normal((512, 257)) * 6).astype(np.float32)
    for op in OPS:
        fast, slow = _both_paths(op, x, monkeypatch)
        assert float(np.mean(fast == slow)) >= 0.999, op


@needs_numba
def test_other_axes_and_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    x = (RNG.standard_normal((7, 33, 5)) * 3).astype(np.float32)
    for op, f in [("logsumexp", fg.logsumexp), ("softmax", fg.softmax), ("log_softmax", fg.log_softmax)]:
        fast = f(x[:, ::2], axis=1)
        with monkeypatch.context() as m:
            m.setattr(_numpy_fast, "kernels", False)
            slow = f(x[:, ::2], axis=1)
        assert np.all(_ulps_apart(fast, slow) <= 1), op


# -- fallbacks --------------------------------------------------------------------------------
def _raise(*args: Any) -> None:
    raise AssertionError("the compiled kernels must not be called")


def test_numpy_fallback_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """``kernels = False`` (what a missing numba gives): the NumPy path, within 1 ulp of mpmath."""
    monkeypatch.setattr(_numpy_fast, "kernels", False)
    monkeypatch.setattr(_numba_fast, "rest_sums", _raise)
    monkeypatch.setattr(_numba_fast, "softmax_rows", _raise)
    for case in ("random", "dominant_30x50", "pos_inf_and_nan", "subnormal_results", "lse_near_zero"):
        x = CASES[case].astype(np.float32)
        for op in OPS:
            _check_reference(op, x, OPS[op](x), "float32")


@pytest.mark.parametrize("how", ["not installed", "broken"])
def test_numba_missing(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without numba (``AVAILABLE`` False) the NumPy path, silently; a numba that fails to import warns once."""
    monkeypatch.setattr(_numpy_fast, "kernels", None)
    if how == "not installed":
        monkeypatch.setattr(_numba_fast, "AVAILABLE", False)
    else:  # `from . import _numba_fast` raises ImportError
        monkeypatch.delattr(floatguard.ops, "_numba_fast")
        monkeypatch.setitem(sys.modules, "floatguard.ops._numba_fast", None)
    monkeypatch.setattr(_numba_fast, "rest_sums", _raise)
    monkeypatch.setattr(_numba_fast, "softmax_rows", _raise)
    x = CASES["random"].astype(np.float32)[:3]
    if how == "broken":
        with pytest.warns(RuntimeWarning, match="numba kernels disabled"):
            fg.logsumexp(x, axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for op in OPS:
            _check_reference(op, x, OPS[op](x), "float32")
    assert _numpy_fast.kernels is False


def test_compile_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that raises (numba unable to compile here) warns once and the NumPy path takes over."""

    class Broken:
        AVAILABLE = True

        @staticmethod
        def rest_sums(*args: Any) -> None:
            raise RuntimeError("no LLVM here")

        softmax_rows = rest_sums

    monkeypatch.setattr(_numpy_fast, "kernels", Broken)
    x = CASES["dominant_30x50"].astype(np.float32)
    with pytest.warns(RuntimeWarning, match="numba kernels disabled"):
        got = fg.softmax(x)
    assert _numpy_fast.kernels is False
    _check_reference("softmax", x, got, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the kernels are off for good
        _check_reference("logsumexp", x, fg.logsumexp(x, axis=-1), "float32")


def test_import_does_not_load_numba() -> None:
    code = "import sys, floatguard; assert 'numba' not in sys.modules, 'numba imported by floatguard'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
