"""Relative (componentwise) condition numbers of floatguard's ops: the ``cond`` in the float64
accuracy bound ``2 ulp * max(1, cond)``."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import references
from ._precision import _mp, _ratio, to_float64


# -- condition numbers ---------------------------------------------------------------------------
# Condition numbers need a couple of correct digits, not 60: the row-wise ones are
# evaluated in float64 (with plain NumPy, never floatguard), dividing by the reference
# value of the function so that a result near 0 does not cancel.
def _np_lse(v: np.ndarray, axis: int = -1) -> np.ndarray:
    """Plain float64 log-sum-exp (max shift) for condition numbers; ``-inf`` for empty sums."""
    with np.errstate(all="ignore"):
        m = np.max(v, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        return np.squeeze(m, axis) + np.log(np.sum(np.exp(v - m), axis=axis))


def _log_abs(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.abs(x))


def _row_ok(xs: np.ndarray) -> bool:
    return bool(xs.size) and not np.isnan(xs).any() and not (xs == math.inf).any() and bool((xs > -math.inf).any())


def _weighted_abs(xs: np.ndarray, lse: float) -> float:
    """``sum_i |x_i| p_i`` with ``p = e^{x - lse}`` (``-inf`` entries add 0)."""
    with np.errstate(all="ignore"):
        return float(np.exp(_np_lse(np.where(xs > -math.inf, xs + _log_abs(xs), -math.inf)) - lse))


def _div(num: Any, den: Any) -> Any:
    """``|num / den|``, ``inf`` for a zero ``den`` (``0`` when ``num`` is 0 too), NumPy-vectorised."""
    num, den = np.abs(np.asarray(num, dtype=np.float64)), np.abs(np.asarray(den, dtype=np.float64))
    with np.errstate(all="ignore"):
        out = np.where(den == 0, np.where(num == 0, 0.0, math.inf), num / np.where(den == 0, 1.0, den))
    return float(out) if out.ndim == 0 else out


def cond_logsumexp(x: Any) -> float:
    """``sum_i |x_i| p_i / |lse(x)|`` with ``p = softmax(x)`` (0 for rows that are not finite)."""
    xs = to_float64(x).ravel()
    if not _row_ok(xs):
        return 0.0
    lse = references.ref_logsumexp(xs)
    return _div(_weighted_abs(xs, float(lse)), float(lse))


def cond_logmeanexp(x: Any) -> float:
    """``sum_i |x_i| p_i / |logmeanexp(x)|``."""
    xs = to_float64(x).ravel()
    if not _row_ok(xs):
        return 0.0
    return _div(_weighted_abs(xs, float(references.ref_logsumexp(xs))), float(references.ref_logmeanexp(xs)))


def _softmax_conds(x: Any, log: bool) -> np.ndarray:
    xs = to_float64(x).ravel()
    if not _row_ok(xs):
        return np.zeros(xs.shape)
    lse = float(references.ref_logsumexp(xs))
    with np.errstate(all="ignore"):
        p = np.exp(xs - lse)
        ax = np.where(p > 0, np.abs(xs), 0.0)
    total = _weighted_abs(xs, lse)
    # sum_j |x_j| |delta_ij - p_j| = |x_i| (1 - p_i) + sum_{j != i} |x_j| p_j
    num = ax * (1 - p) + np.maximum(total - ax * p, 0.0)
    if not log:
        return num
    vals = np.array([float(v) for v in references.ref_log_softmax(xs)])
    return np.where(np.isfinite(vals), _div(num, vals), 0.0)


def cond_softmax(x: Any) -> np.ndarray:
    """Relative condition numbers of ``softmax(x)_i``: ``|x_i|(1 - p_i) + sum_{j != i} |x_j| p_j``."""
    return _softmax_conds(x, log=False)


def cond_log_softmax(x: Any) -> np.ndarray:
    """Relative condition numbers of ``log_softmax(x)_i``: the softmax one over ``|x_i - lse|``."""
    return _softmax_conds(x, log=True)


def cond_logcumsumexp(x: Any) -> np.ndarray:
    """Condition number of each prefix log-sum-exp (:func:`cond_logsumexp` of ``x[: i + 1]``)."""
    xs = to_float64(x).ravel()
    refs = np.array([float(v) for v in references.ref_logcumsumexp(xs)])
    with np.errstate(all="ignore"):
        log_num = np.logaddexp.accumulate(np.where(xs > -math.inf, xs + _log_abs(xs), -math.inf))
        out = _div(np.exp(log_num - refs), refs)
    return np.where(np.isfinite(refs), np.nan_to_num(out, nan=0.0), 0.0)


def cond_cross_entropy_row(logits_row: Any, target_class: int) -> float:
    """``sum_i |x_i| |p_i - [i == c]| / |lse - x_c|``."""
    xs = to_float64(logits_row).ravel()
    c = int(target_class)
    if not _row_ok(xs) or not math.isfinite(xs[c]):
        return 0.0
    lse = float(references.ref_logsumexp(xs))
    pc = math.exp(xs[c] - lse)
    num = max(_weighted_abs(xs, lse) - abs(xs[c]) * pc, 0.0) + abs(xs[c]) * (1 - pc)
    return _div(num, float(references.ref_cross_entropy_row(xs, c)))


def cond_log_prod(p: Any) -> float:
    """``n / |sum_i log p_i|`` (each ``d log p_i / d p_i * p_i = 1``)."""
    ps = to_float64(p).ravel()
    return _div(ps.size, float(references.ref_log_prod(ps)))


def cond_log_matmul_exp(a: Any, b: Any) -> np.ndarray:
    """Per entry: ``sum_k (|a_ik| + |b_kj|) w_k / |C_ij|`` with ``w`` the softmax of ``a_ik + b_kj``.

    (The ``a_ik + b_kj`` are rounded in floating point, so the bound counts
    both magnitudes.)
    """
    a64, b64 = to_float64(a), to_float64(b)
    c = np.vectorize(float, otypes=[np.float64])(references.ref_log_matmul_exp(a64, b64))
    with np.errstate(all="ignore"):
        t = a64[:, :, None] + b64[None, :, :]  # (n, k, m)
        mag = np.abs(a64)[:, :, None] + np.abs(b64)[None, :, :]
        log_num = _np_lse(np.where(t > -math.inf, t + np.log(mag), -math.inf), axis=1)
        out = _div(np.exp(log_num - c), c)
    return np.where(np.isfinite(c), np.nan_to_num(out, nan=0.0), 0.0)


def _cond_scalar(f: Callable[..., Any]) -> Callable[..., float]:
    cached = functools.lru_cache(maxsize=65536)(f)

    @functools.wraps(f)
    def wrapper(*args: Any) -> float:
        vals = tuple(float(a) for a in args)
        if not all(math.isfinite(v) for v in vals):
            return 0.0
        with _mp().workdps(30):
            return cached(*vals)

    return wrapper


@_cond_scalar
def cond_logaddexp(a: float, b: float) -> float:
    """``(|a| sigmoid(a - b) + |b| sigmoid(b - a)) / |logaddexp(a, b)|``."""
    mp = _mp()
    av, bv = mp.mpf(a), mp.mpf(b)
    sa = 1 / (1 + mp.exp(bv - av))
    return _ratio(abs(av) * sa + abs(bv) * (1 - sa), references.ref_logaddexp(a, b))


@_cond_scalar
def cond_logsubexp(a: float, b: float) -> float:
    """``(|a| / (1 - e^{b-a}) + |b| e^{b-a} / (1 - e^{b-a})) / |logsubexp(a, b)|``."""
    mp = _mp()
    if a <= b:
        return math.inf
    av, bv = mp.mpf(a), mp.mpf(b)
    den = -mp.expm1(bv - av)
    return _ratio((abs(av) + abs(bv) * mp.exp(bv - av)) / den, references.ref_logsubexp(a, b))


@_cond_scalar
def cond_log1mexp(x: float) -> float:
    """``|x e^x / (1 - e^x)| / |log1mexp(x)|``."""
    mp = _mp()
    if x >= 0:
        return math.inf
    xv = mp.mpf(x)
    return _ratio(xv / mp.expm1(-xv), references.ref_log1mexp(x))


@_cond_scalar
def cond_softplus(x: float) -> float:
    """``|x sigmoid(x) / softplus(x)|``."""
    return _ratio(_mp().mpf(x) * references.ref_sigmoid(x), references.ref_softplus(x))


@_cond_scalar
def cond_softplus_inverse(y: float) -> float:
    """``|y / (1 - e^{-y})| / |softplus_inverse(y)|``."""
    mp = _mp()
    if y <= 0:
        return math.inf
    yv = mp.mpf(y)
    return _ratio(yv / -mp.expm1(-yv), references.ref_softplus_inverse(y))


@_cond_scalar
def cond_sigmoid(x: float) -> float:
    """``|x (1 - sigmoid(x))|``."""
    return float(abs(_mp().mpf(x) * references.ref_sigmoid(-x)))


@_cond_scalar
def cond_log_sigmoid(x: float) -> float:
    """``|x sigmoid(-x) / log_sigmoid(x)|``."""
    return _ratio(_mp().mpf(x) * references.ref_sigmoid(-x), references.ref_log_sigmoid(x))


@_cond_scalar
def cond_xlogy(x: float, y: float) -> float:
    """``(|x log y| + |x|) / |x log y|`` (both arguments perturbed)."""
    mp = _mp()
    if x == 0:
        return 0.0
    f = references.ref_xlogy(x, y)
    return _ratio(abs(f) + abs(mp.mpf(x)), f)


@_cond_scalar
def cond_xlog1py(x: float, y: float) -> float:
    """``(|x log1p(y)| + |x y / (1 + y)|) / |x log1p(y)|``."""
    mp = _mp()
    if x == 0 or y <= -1:
        return 0.0
    f = references.ref_xlog1py(x, y)
    xv, yv = mp.mpf(x), mp.mpf(y)
    return _ratio(abs(f) + abs(xv * yv / (1 + yv)), f)


@_cond_scalar
def cond_bce_with_logits(x: float, y: float) -> float:
    """``(|x (sigmoid(x) - y)| + |x y| [0 < y < 1]) / |loss|``.

    The target term counts only for soft labels: ``y`` of exactly 0 or 1 is
    exact (its coefficient ``1 - y`` or ``y`` is 0 in any precision).
    """
    mp = _mp()
    xv, yv = mp.mpf(x), mp.mpf(y)
    num = abs(xv * (references.ref_sigmoid(x) - yv))
    if 0 < y < 1:
        num += abs(xv * yv)
    return _ratio(num, references.ref_bce_with_logits(x, y))
