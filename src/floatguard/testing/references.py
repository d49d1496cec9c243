"""mpmath references of floatguard's ops, evaluated on the exact values of the floating inputs
with at least :data:`~floatguard.testing.DPS` digits (more wherever a formula cancels)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._precision import _add, _check, _floats, _keep, _mp, _obj_array, _precise, to_float64


# -- log-sum-exp core ----------------------------------------------------------------------
def _lse_parts(xs: Sequence[Any]) -> tuple[Any, int, Any, list[Any], list[Any]]:
    """``(m, k, s, d, e)`` of a row with a finite max, at the current precision.

    ``m = x_k`` is the (first) max, ``d_i = x_i - m``, ``e_i = e^{d_i}`` and ``s``
    the sum of the ``e_i`` other than ``e_k = 1``; ``-inf`` entries give ``e_i = 0``.
    Cached for float rows (a softmax and its log-sum-exp share the exponentials).
    """
    mp = _mp()
    if isinstance(xs, tuple):
        return _lse_parts_cached(xs, mp.prec)
    return _lse_parts_uncached(xs)


def _lse_parts_uncached(xs: Sequence[Any]) -> tuple[Any, int, Any, list[Any], list[Any]]:
    mp = _mp()
    k = max(range(len(xs)), key=xs.__getitem__)
    m = mp.mpf(xs[k])
    exp = mp.exp
    if len(set(xs)) > len(xs) // 2:
        d = [mp.mpf(v) - m for v in xs]
        e = [exp(di) for di in d]
        s = mp.fsum(ei for i, ei in enumerate(e) if i != k)
        return m, k, s, d, e
    memo: dict[Any, tuple[Any, Any]] = {}  # low precisions repeat values: one exp per distinct value

    def parts(v: Any) -> tuple[Any, Any]:
        de = memo.get(v)
        if de is None:
            di = mp.mpf(v) - m
            de = memo[v] = (di, exp(di))
        return de

    d, e = map(list, zip(*map(parts, xs), strict=True))
    s = mp.fsum(ei for i, ei in enumerate(e) if i != k)
    return m, k, s, d, e


@functools.lru_cache(maxsize=8)
def _lse_parts_cached(xs: tuple[float, ...], prec: int) -> tuple[Any, int, Any, list[Any], list[Any]]:
    with _mp().workprec(prec):
        return _lse_parts_uncached(xs)


def _nonfinite_row(xs: Sequence[float]) -> str | None:
    """``"nan"``, ``"+inf"``, ``"empty"`` (all -inf / no entries) or None for an ordinary row."""
    if any(math.isnan(v) for v in xs):
        return "nan"
    if any(v == math.inf for v in xs):
        return "+inf"
    if not xs or all(v == -math.inf for v in xs):
        return "empty"
    return None


def _lse_row(xs: Sequence[Any], kind: str | None, *more: Any) -> Any:
    """``m + log1p(s)`` of a row (plus the terms ``more``, added exactly) at the current precision; for a
    row of :func:`_nonfinite_row` ``kind``, floatguard's contract: NaN, ``+inf``, or ``-inf`` when empty."""
    mp = _mp()
    if kind is not None:
        return {"nan": mp.nan, "+inf": mp.inf, "empty": mp.ninf}[kind]
    m, _, s, _, _ = _lse_parts(xs)
    return _add(m, mp.log1p(s), *more)


@functools.lru_cache(maxsize=256)
@_precise
def _lse(xs: tuple[float, ...]) -> Any:
    return _lse_row(xs, _nonfinite_row(xs))


@functools.lru_cache(maxsize=256)
@_precise
def _lse_weighted(xs: tuple[float, ...], bs: tuple[float, ...]) -> tuple[Any, int]:
    mp = _mp()
    pairs = [(x, b) for x, b in zip(xs, bs, strict=True) if b != 0]
    if any(math.isnan(x) or math.isnan(b) for x, b in pairs):
        return mp.nan, 0
    inf_w = [b for x, b in pairs if x == math.inf]
    if inf_w:
        total = mp.fsum(mp.mpf(b) for b in inf_w)
        return (mp.inf, int(mp.sign(total))) if total != 0 else (mp.nan, 0)
    pairs = [(x, b) for x, b in pairs if x != -math.inf]
    if not pairs:
        return mp.ninf, 0
    m = max(x for x, _ in pairs)
    terms = [mp.mpf(b) * mp.exp(mp.mpf(x) - m) for x, b in pairs]
    total = _check(mp.fsum(terms), max(abs(t) for t in terms))
    if total == 0:
        return mp.ninf, 0
    return _add(mp.mpf(m), mp.log(abs(total))), int(mp.sign(total))


def ref_logsumexp(x: Any, b: Any = None, *, where: Any = None, return_sign: bool = False) -> Any:
    """``log sum_i b_i e^{x_i}`` over all entries of ``x`` (an mpf), optionally masked by ``where``.

    Non-finite rows follow floatguard's contract: NaN propagates, a ``+inf``
    entry gives ``+inf``, a row of only ``-inf`` (or nothing) gives ``-inf``.
    With weights ``b``, entries with ``b == 0`` are left out; a negative sum
    gives NaN unless ``return_sign`` (then ``(value, sign)``).

    >>> float(ref_logsumexp([0.0, 0.0]))
    0.6931471805599453
    """
    x64 = to_float64(x)
    keep = _keep(where, x64.shape)
    xs = tuple(x64[keep].tolist())
    if b is None:
        val = _lse(xs)
        sign = 0 if val == -math.inf else (1 if not _mp().isnan(val) else 0)
        return (val, sign) if return_sign else val
    bs = tuple(np.broadcast_to(to_float64(b), x64.shape)[keep].tolist())
    val, sign = _lse_weighted(xs, bs)
    if return_sign:
        return val, sign
    return _mp().nan if sign < 0 else val


@functools.lru_cache(maxsize=128)
@_precise
def _softmax(xs: tuple[float, ...], log: bool) -> tuple[Any, ...]:
    mp = _mp()
    kind = _nonfinite_row(xs)
    if kind == "nan":
        return (mp.nan,) * len(xs)
    if kind == "empty":
        return ((mp.ninf if log else mp.zero),) * len(xs)
    if kind == "+inf":
        n_inf = sum(v == math.inf for v in xs)
        w = mp.mpf(1) / n_inf
        lw = -mp.log(n_inf)
        return tuple((lw if log else w) if v == math.inf else (mp.ninf if log else mp.zero) for v in xs)
    _, _, s, d, e = _lse_parts(xs)
    l1 = mp.log1p(s)
    if log:  # d_i - log1p(s): both terms <= 0, no cancellation
        return tuple(di - l1 for di in d)
    return tuple(ei / (1 + s) for ei in e)


def _masked_rowwise(x: Any, where: Any, log: bool) -> np.ndarray:
    x64 = to_float64(x)
    if x64.ndim != 1:
        raise ValueError("floatguard.testing: softmax references take a 1-D row")
    keep = _keep(where, x64.shape)
    mp = _mp()
    out = _obj_array([mp.ninf if log else mp.zero] * x64.size)
    idx = np.flatnonzero(keep)
    vals = _softmax(tuple(x64[idx].tolist()), log)
    for i, v in zip(idx.tolist(), vals, strict=True):
        out[i] = v
    return out


def ref_softmax(x: Any, *, where: Any = None) -> np.ndarray:
    """Softmax of a 1-D row as an object array of mpf; masked entries are 0.

    ``+inf`` entries share the mass equally; a row of only ``-inf`` gives zeros.
    """
    return _masked_rowwise(x, where, log=False)


def ref_log_softmax(x: Any, *, where: Any = None) -> np.ndarray:
    """Log-softmax of a 1-D row as an object array of mpf; masked entries are ``-inf``."""
    return _masked_rowwise(x, where, log=True)


@functools.lru_cache(maxsize=64)
@_precise
def _logcumsumexp(xs: tuple[float, ...]) -> tuple[Any, ...]:
    mp = _mp()
    out: list[Any] = []
    m = None  # running max (mpf), s = sum of e^{x_j - m} without the max term
    s = mp.zero
    bad = None
    for v in xs:
        if bad is None and math.isnan(v):
            bad = mp.nan
        elif bad is None and v == math.inf:
            bad = mp.inf
        if bad is not None:
            out.append(bad)
            continue
        if v == -math.inf:
            out.append(mp.ninf if m is None else out[-1])
            continue
        xv = mp.mpf(v)
        if m is None:
            m, s = xv, mp.zero
        elif xv <= m:
            s += mp.exp(xv - m)
        else:
            s = (1 + s) * mp.exp(m - xv)
            m = xv
        out.append(_add(m, mp.log1p(s)))
    return tuple(out)


def ref_logcumsumexp(x: Any) -> np.ndarray:
    """Running log-sum-exp of a 1-D array: object array of mpf (leading ``-inf`` give ``-inf``)."""
    return _obj_array(_logcumsumexp(_floats(x)))


@functools.lru_cache(maxsize=128)
@_precise
def _lme(xs: tuple[float, ...]) -> Any:
    return _lse_row(xs, _nonfinite_row(xs), -_mp().log(max(len(xs), 1)))


def ref_logmeanexp(x: Any) -> Any:
    """``log(mean(e^x))`` over all entries (an mpf)."""
    return _lme(_floats(x))


@functools.lru_cache(maxsize=128)
@_precise
def _ce_row(xs: tuple[float, ...], c: int) -> Any:
    mp = _mp()
    if _nonfinite_row(xs) is not None or not math.isfinite(xs[c]):
        return -_softmax(xs, True)[c]
    _, _, s, d, _ = _lse_parts(xs)
    return mp.log1p(s) - d[c]  # both terms >= 0


def ref_cross_entropy_row(logits_row: Any, target_class: int) -> Any:
    """``-log softmax(logits_row)[target_class] = lse(row) - row[c]`` (an mpf)."""
    return _ce_row(_floats(logits_row), int(target_class))


@functools.lru_cache(maxsize=128)
@_precise
def _log_prod(ps: tuple[float, ...]) -> Any:
    mp = _mp()
    if any(math.isnan(v) or v < 0 for v in ps):
        return mp.nan
    if any(v == 0 for v in ps):
        return mp.nan if any(v == math.inf for v in ps) else mp.ninf
    return _add(*(mp.log(mp.mpf(v)) for v in ps)) if ps else mp.zero


def ref_log_prod(p: Any) -> Any:
    """``sum_i log p_i`` over all entries (an mpf); a zero gives ``-inf``, a negative entry NaN."""
    return _log_prod(_floats(p))


def ref_log_matmul_exp(a: Any, b: Any) -> np.ndarray:
    """``C_ij = log sum_k e^{a_ik + b_kj}`` for 2-D ``a`` and ``b``: object array of mpf."""
    a64, b64 = to_float64(a), to_float64(b)
    if a64.ndim != 2 or b64.ndim != 2 or a64.shape[1] != b64.shape[0]:
        raise ValueError("floatguard.testing.ref_log_matmul_exp: need 2-D a (n, k) and b (k, m)")
    n, m = a64.shape[0], b64.shape[1]
    out = np.empty((n, m), dtype=object)
    for i in range(n):
        for j in range(m):
            out[i, j] = _lse_sum_pairs(tuple(a64[i].tolist()), tuple(b64[:, j].tolist()))
    return out


@functools.lru_cache(maxsize=4096)
@_precise
def _lse_sum_pairs(a: tuple[float, ...], b: tuple[float, ...]) -> Any:
    """``log sum_k e^{a_k + b_k}`` with the sums ``a_k + b_k`` exact."""
    mp = _mp()
    sums = [u + v for u, v in zip(a, b, strict=True)]  # floats: only to classify non-finite terms
    kind = _nonfinite_row(sums)
    if kind is not None:
        return _lse_row(sums, kind)
    return _lse_row([mp.mpf(u) + mp.mpf(v) for u, v, t in zip(a, b, sums, strict=True) if t != -math.inf], None)


# -- elementwise references (scalars in, mpf out) -----------------------------------------------
def _elementwise(f: Callable[..., Any]) -> Callable[..., Any]:
    """Cache an elementwise reference on its float arguments and run it at full precision."""
    cached = functools.lru_cache(maxsize=65536)(_precise(f))

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        return cached(*(float(a) for a in args))

    return wrapper


def _log1mexp_mp(x: Any) -> Any:
    """``log(1 - e^x)`` in mpmath for ``x <= 0`` (Mächler's split keeps tiny results exact)."""
    mp = _mp()
    if mp.isnan(x) or x > 0:
        return mp.nan
    if x == 0:
        return mp.ninf
    if x > -mp.log(2):
        return mp.log(-mp.expm1(x))
    return mp.log1p(-mp.exp(x))


@_elementwise
def ref_logaddexp(a: float, b: float) -> Any:
    """``log(e^a + e^b)`` (an mpf)."""
    mp = _mp()
    if math.isnan(a) or math.isnan(b):
        return mp.nan
    m, other = (a, b) if a >= b else (b, a)
    if math.isinf(m) or other == -math.inf:
        return mp.mpf(m)
    return _add(mp.mpf(m), mp.log1p(mp.exp(mp.mpf(other) - mp.mpf(m))))


@_elementwise
def ref_logsubexp(a: float, b: float) -> Any:
    """``log(e^a - e^b)`` (an mpf); ``a == b`` gives ``-inf``, ``a < b`` NaN."""
    mp = _mp()
    if math.isnan(a) or math.isnan(b) or a < b:
        return mp.nan
    if b == -math.inf:
        return mp.mpf(a)
    if a == b:
        return mp.ninf
    if math.isinf(a):
        return mp.inf
    return _add(mp.mpf(a), _log1mexp_mp(mp.mpf(b) - mp.mpf(a)))


@_elementwise
def ref_log1mexp(x: float) -> Any:
    """``log(1 - e^x)`` (an mpf); ``x > 0`` gives NaN."""
    return _log1mexp_mp(_mp().mpf(x))


@_elementwise
def ref_softplus(x: float) -> Any:
    """``log(1 + e^x)`` (an mpf)."""
    mp = _mp()
    xv = mp.mpf(x)
    if mp.isnan(xv) or mp.isinf(xv):
        return mp.nan if mp.isnan(xv) else (xv if xv > 0 else mp.zero)
    return max(xv, mp.zero) + mp.log1p(mp.exp(-abs(xv)))


@_elementwise
def ref_softplus_inverse(y: float) -> Any:
    """``log(e^y - 1)`` (an mpf); ``y < 0`` gives NaN, ``y = 0`` ``-inf``."""
    mp = _mp()
    yv = mp.mpf(y)
    if mp.isnan(yv) or yv < 0:
        return mp.nan
    if yv == 0:
        return mp.ninf
    if mp.isinf(yv):
        return yv
    return mp.log(mp.expm1(yv))


@_elementwise
def ref_sigmoid(x: float) -> Any:
    """``1 / (1 + e^{-x})`` (an mpf)."""
    mp = _mp()
    xv = mp.mpf(x)
    if mp.isnan(xv):
        return mp.nan
    if mp.isinf(xv):
        return mp.one if xv > 0 else mp.zero
    return 1 / (1 + mp.exp(-xv))


@_elementwise
def ref_log_sigmoid(x: float) -> Any:
    """``log(sigmoid(x)) = -log1p(e^{-x})`` (an mpf)."""
    mp = _mp()
    xv = mp.mpf(x)
    if mp.isnan(xv):
        return mp.nan
    if mp.isinf(xv):
        return mp.zero if xv > 0 else xv
    return -(max(-xv, mp.zero) + mp.log1p(mp.exp(-abs(xv))))


@_elementwise
def ref_xlogy(x: float, y: float) -> Any:
    """``x log y``, 0 where ``x == 0`` unless ``y`` is NaN (SciPy's convention)."""
    mp = _mp()
    if math.isnan(x) or math.isnan(y) or y < 0:
        return mp.nan
    if x == 0:
        return mp.zero
    return mp.mpf(x) * mp.log(mp.mpf(y))


@_elementwise
def ref_xlog1py(x: float, y: float) -> Any:
    """``x log1p(y)``, 0 where ``x == 0`` unless ``y`` is NaN (SciPy's convention)."""
    mp = _mp()
    if math.isnan(x) or math.isnan(y) or y < -1:
        return mp.nan
    if x == 0:
        return mp.zero
    return mp.mpf(x) * mp.log1p(mp.mpf(y))


@_elementwise
def ref_bce_with_logits(x: float, y: float) -> Any:
    """Binary cross-entropy from a logit: ``y softplus(-x) + (1 - y) softplus(x)``.

    A zero coefficient drops its term (even an infinite one).
    """
    mp = _mp()
    if math.isnan(x) or math.isnan(y):
        return mp.nan
    yv = mp.mpf(y)
    pos = mp.zero if y == 0 else yv * ref_softplus(-x)
    neg = mp.zero if y == 1 else (1 - yv) * ref_softplus(x)
    return _add(pos, neg)
