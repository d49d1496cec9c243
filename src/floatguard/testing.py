"""Test support: errors in ulps and high-precision references (like ``numpy.testing``).

The references evaluate each op in mpmath with at least :data:`DPS` decimal
digits on the *exact* values of the floating inputs (every float is converted
with ``mpmath.mpf(float(v))``, which is exact), so they are the true values of
the functions at those inputs. Wherever a formula could cancel, the reference
is recomputed with more digits until the result keeps at least :data:`DPS`
significant digits of its own.

:func:`ulp_error` measures a computed result against a reference in units of
the last place of the target dtype, and the ``cond_*`` functions give the
relative (componentwise) condition numbers that the float64 accuracy bound
``2 ulp * max(1, cond)`` refers to.

mpmath is a development dependency, imported on first use::

    pip install 'floatguard[dev]'
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DPS",
    "cond_bce_with_logits",
    "cond_cross_entropy_row",
    "cond_elementwise",
    "cond_log1mexp",
    "cond_log_matmul_exp",
    "cond_log_prod",
    "cond_log_sigmoid",
    "cond_log_softmax",
    "cond_logaddexp",
    "cond_logcumsumexp",
    "cond_logmeanexp",
    "cond_logsubexp",
    "cond_logsumexp",
    "cond_sigmoid",
    "cond_softmax",
    "cond_softplus",
    "cond_softplus_inverse",
    "cond_xlog1py",
    "cond_xlogy",
    "dtype_info",
    "max_ulp",
    "ref_bce_with_logits",
    "ref_cross_entropy_row",
    "ref_log1mexp",
    "ref_log_matmul_exp",
    "ref_log_prod",
    "ref_log_sigmoid",
    "ref_log_softmax",
    "ref_logaddexp",
    "ref_logcumsumexp",
    "ref_logmeanexp",
    "ref_logsubexp",
    "ref_logsumexp",
    "ref_sigmoid",
    "ref_softmax",
    "ref_softplus",
    "ref_softplus_inverse",
    "ref_xlog1py",
    "ref_xlogy",
    "to_float64",
    "ulp_error",
    "vectorize",
]

#: Decimal digits of the references (at least; more where a formula cancels).
DPS = 60
_MAX_DPS = 4000


def _mp() -> Any:
    try:
        import mpmath
    except ImportError as exc:  # pragma: no cover - exercised only without mpmath
        raise ImportError(
            "floatguard.testing needs mpmath for its references; install it with `pip install 'floatguard[dev]'`"
        ) from exc
    return mpmath.mp


# -- dtypes ---------------------------------------------------------------------------
# name: (precision p incl. the implicit bit, exponent of the smallest normal, of the largest binade)
_FORMATS = {
    "float16": (11, -14, 15),
    "bfloat16": (8, -126, 127),
    "float32": (24, -126, 127),
    "float64": (53, -1022, 1023),
}
_ALIASES = {"half": "float16", "single": "float32", "double": "float64"}


def dtype_info(dtype: Any) -> tuple[str, int, int, int]:
    """``(name, p, emin, emax)`` of a floating dtype given as NumPy/torch/JAX dtype or name.

    >>> dtype_info("bfloat16")
    ('bfloat16', 8, -126, 127)
    """
    if isinstance(dtype, str):
        name = dtype
    else:
        name = getattr(dtype, "name", None) if isinstance(dtype, np.dtype) else None
        if name is None:
            try:
                name = np.dtype(dtype).name
            except TypeError:
                name = str(dtype)
    name = name.rsplit(".", 1)[-1].lower()
    name = _ALIASES.get(name, name)
    if name not in _FORMATS:
        raise ValueError(f"floatguard.testing: unsupported dtype {dtype!r} (float16, bfloat16, float32, float64)")
    return (name, *_FORMATS[name])


def to_float64(a: Any) -> np.ndarray:
    """NumPy float64 copy of a NumPy array, torch tensor (any float dtype), JAX array or scalar."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch, without importing it
        a = a.detach().cpu().double().numpy()
    return np.asarray(np.asarray(a).astype(np.float64))


# -- conversion helpers -----------------------------------------------------------------
def _mpf(v: Any) -> Any:
    mp = _mp()
    return v if isinstance(v, mp.mpf) else mp.mpf(float(v))


def _floats(x: Any) -> tuple[float, ...]:
    """Hashable exact key of an array-like: its values as a tuple of Python floats."""
    return tuple(to_float64(x).ravel().tolist())


def _obj_array(values: Sequence[Any], shape: tuple[int, ...] | None = None) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out if shape is None else out.reshape(shape)


def _keep(where: Any, shape: tuple[int, ...]) -> np.ndarray:
    if where is None:
        return np.ones(shape, dtype=bool)
    return np.broadcast_to(to_float64(where) != 0, shape)


class _Cancelled(Exception):
    """A sum cancelled too many digits; recompute with ``more`` extra digits."""

    def __init__(self, more: int) -> None:
        super().__init__(more)
        self.more = more


_KEEP = 40  # significant digits a reference must keep after cancellation


def _check(total: Any, big: Any) -> Any:
    """Raise :class:`_Cancelled` if ``total`` kept fewer than _KEEP digits of terms of size ``big``."""
    mp = _mp()
    if not mp.isfinite(total) or big == 0 or mp.dps >= _MAX_DPS:
        return total
    if total == 0:
        raise _Cancelled(mp.dps)
    kept = mp.dps - int(mp.log10(big / abs(total)))
    if kept < _KEEP:
        raise _Cancelled(_KEEP - kept + 10)
    return total


def _add(*terms: Any) -> Any:
    """Sum of a few mpf terms, checked for cancellation."""
    mp = _mp()
    return _check(mp.fsum(terms), max((abs(t) for t in terms if mp.isfinite(t)), default=mp.zero))


def _precise(f: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``f`` with DPS digits; on cancellation rerun it with enough extra digits."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mp = _mp()
        dps = DPS
        while True:
            with mp.workdps(dps):
                try:
                    return f(*args, **kwargs)
                except _Cancelled as c:
                    dps = min(_MAX_DPS, dps + c.more)

    return wrapper


# -- ulp error ----------------------------------------------------------------------------
def _ulp_exp(e: Any, p: int, emin: int) -> int:
    """Exponent k with ulp = 2**k of the binade of |e| (subnormal spacing below 2**emin)."""
    if e == 0:
        return emin - p + 1
    _, _man, exp, bc = e._mpf_
    return max(exp + bc - 1, emin) - p + 1


def _ulp_one(c: float, e: Any, p: int, emin: int, emax: int) -> float:
    mp = _mp()
    _, man, exp, bc = e._mpf_
    if man and math.isfinite(c):  # the common case, on mpmath's raw tuples
        k = max(exp + bc - 1, emin) - p + 1
        from_float, mpf_sub = _libmp()
        _, dman, dexp, _ = mpf_sub(from_float(c), e._mpf_, 80)
        return math.ldexp(float(dman), dexp - k) if dman else 0.0
    if math.isnan(c) or mp.isnan(e):
        return 0.0 if (math.isnan(c) and mp.isnan(e)) else math.inf
    if math.isinf(c):
        if mp.isinf(e):
            return 0.0 if (c > 0) == (e > 0) else math.inf
        # a finite exact value beyond the overflow threshold rounds to inf
        threshold = mp.ldexp(mp.mpf(2) - mp.ldexp(1, -p), emax)
        return 0.0 if abs(e) >= threshold and (c > 0) == (e > 0) else math.inf
    if mp.isinf(e):
        return math.inf
    k = _ulp_exp(e, p, emin)  # exact value 0
    return math.ldexp(abs(c), -k)


@functools.cache
def _libmp() -> tuple[Callable[..., Any], Callable[..., Any]]:
    _mp()
    from mpmath.libmp import from_float, mpf_sub

    return from_float, mpf_sub


def ulp_error(computed: Any, exact: Any, dtype: Any) -> float | np.ndarray:
    """``|computed - exact|`` in ulps of ``dtype`` at ``exact``.

    The ulp is the spacing of ``dtype`` in the binade containing ``|exact|``
    (the subnormal spacing below the smallest normal). ``exact`` is an mpmath
    number, a float, or an array of them (object arrays of mpf included);
    ``computed`` is a scalar or array of any backend, broadcast against it.
    Equal non-finite values have error 0, mismatched ones ``inf``; an exact
    value beyond the overflow threshold of ``dtype`` matches ``inf`` of its sign.

    >>> ulp_error(1.0 + 2**-23, 1.0, "float32")
    1.0
    """
    _, p, emin, emax = dtype_info(dtype)
    mp = _mp()
    c = to_float64(computed)
    ex = exact if isinstance(exact, np.ndarray) else np.asarray(exact, dtype=object)
    c, ex = np.broadcast_arrays(c, ex)
    with mp.workdps(DPS):
        pairs = zip(c.ravel().tolist(), ex.ravel(), strict=True)
        out = np.array([_ulp_one(ci, _mpf(ei), p, emin, emax) for ci, ei in pairs], dtype=np.float64)
    if c.ndim == 0:
        return float(out[0])
    return out.reshape(c.shape)


def max_ulp(op_result: Any, reference: Any, dtype: Any) -> float:
    """Largest :func:`ulp_error` over an array (0.0 for an empty one)."""
    err = np.asarray(ulp_error(op_result, reference, dtype), dtype=np.float64)
    return float(err.max()) if err.size else 0.0


def vectorize(ref: Callable[..., Any]) -> Callable[..., np.ndarray]:
    """Elementwise reference over broadcast array arguments: an object array of mpf.

    >>> vectorize(ref_softplus)(np.array([0.0, 1.0])).shape
    (2,)
    """

    def apply(*arrays: Any) -> np.ndarray:
        bs = np.broadcast_arrays(*(to_float64(a) for a in arrays))
        flat = [b.ravel().tolist() for b in bs]
        return _obj_array([ref(*vals) for vals in zip(*flat, strict=True)], bs[0].shape)

    apply.__name__ = getattr(ref, "__name__", "ref") + "_vectorized"
    return apply


def cond_elementwise(cond: Callable[..., float]) -> Callable[..., np.ndarray]:
    """Elementwise condition number over broadcast array arguments: a float64 array."""

    def apply(*arrays: Any) -> np.ndarray:
        bs = np.broadcast_arrays(*(to_float64(a) for a in arrays))
        flat = [b.ravel().tolist() for b in bs]
        return np.array([cond(*vals) for vals in zip(*flat, strict=True)], dtype=np.float64).reshape(bs[0].shape)

    return apply


def _ratio(num: Any, den: Any) -> float:
    """``|num / den|`` as a float; ``inf`` when ``den`` is 0 and ``num`` is not, NaN-safe."""
    mp = _mp()
    if mp.isnan(num) or mp.isnan(den) or mp.isinf(den):
        return 0.0 if mp.isinf(den) and mp.isfinite(num) else math.nan
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return float(abs(num / den))


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


@functools.lru_cache(maxsize=256)
@_precise
def _lse(xs: tuple[float, ...]) -> Any:
    mp = _mp()
    kind = _nonfinite_row(xs)
    if kind is not None:
        return {"nan": mp.nan, "+inf": mp.inf, "empty": mp.ninf}[kind]
    m, _, s, _, _ = _lse_parts(xs)
    return _add(m, mp.log1p(s))


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
    mp = _mp()
    kind = _nonfinite_row(xs)
    if kind is not None:
        return {"nan": mp.nan, "+inf": mp.inf, "empty": mp.ninf}[kind]
    m, _, s, _, _ = _lse_parts(xs)
    return _add(m, mp.log1p(s), -mp.log(len(xs)))


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
        return {"nan": mp.nan, "+inf": mp.inf, "empty": mp.ninf}[kind]
    terms = [mp.mpf(u) + mp.mpf(v) for u, v, t in zip(a, b, sums, strict=True) if t != -math.inf]
    k = max(range(len(terms)), key=terms.__getitem__)
    m = terms[k]
    s = mp.fsum(mp.exp(t - m) for i, t in enumerate(terms) if i != k)
    return _add(m, mp.log1p(s))


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
    return bool(xs.size) and not np.isnan(xs).any() and not (xs == math.inf).any() and (xs > -math.inf).any()


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
    lse = ref_logsumexp(xs)
    return _div(_weighted_abs(xs, float(lse)), float(lse))


def cond_logmeanexp(x: Any) -> float:
    """``sum_i |x_i| p_i / |logmeanexp(x)|``."""
    xs = to_float64(x).ravel()
    if not _row_ok(xs):
        return 0.0
    return _div(_weighted_abs(xs, float(ref_logsumexp(xs))), float(ref_logmeanexp(xs)))


def _softmax_conds(x: Any, log: bool) -> np.ndarray:
    xs = to_float64(x).ravel()
    if not _row_ok(xs):
        return np.zeros(xs.shape)
    lse = float(ref_logsumexp(xs))
    with np.errstate(all="ignore"):
        p = np.exp(xs - lse)
        ax = np.where(p > 0, np.abs(xs), 0.0)
    total = _weighted_abs(xs, lse)
    # sum_j |x_j| |delta_ij - p_j| = |x_i| (1 - p_i) + sum_{j != i} |x_j| p_j
    num = ax * (1 - p) + np.maximum(total - ax * p, 0.0)
    if not log:
        return num
    vals = np.array([float(v) for v in ref_log_softmax(xs)])
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
    refs = np.array([float(v) for v in ref_logcumsumexp(xs)])
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
    lse = float(ref_logsumexp(xs))
    pc = math.exp(xs[c] - lse)
    num = max(_weighted_abs(xs, lse) - abs(xs[c]) * pc, 0.0) + abs(xs[c]) * (1 - pc)
    return _div(num, float(ref_cross_entropy_row(xs, c)))


def cond_log_prod(p: Any) -> float:
    """``n / |sum_i log p_i|`` (each ``d log p_i / d p_i * p_i = 1``)."""
    ps = to_float64(p).ravel()
    return _div(ps.size, float(ref_log_prod(ps)))


def cond_log_matmul_exp(a: Any, b: Any) -> np.ndarray:
    """Per entry: ``sum_k (|a_ik| + |b_kj|) w_k / |C_ij|`` with ``w`` the softmax of ``a_ik + b_kj``.

    (The ``a_ik + b_kj`` are rounded in floating point, so the bound counts
    both magnitudes.)
    """
    a64, b64 = to_float64(a), to_float64(b)
    c = np.vectorize(float, otypes=[np.float64])(ref_log_matmul_exp(a64, b64))
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
    return _ratio(abs(av) * sa + abs(bv) * (1 - sa), ref_logaddexp(a, b))


@_cond_scalar
def cond_logsubexp(a: float, b: float) -> float:
    """``(|a| / (1 - e^{b-a}) + |b| e^{b-a} / (1 - e^{b-a})) / |logsubexp(a, b)|``."""
    mp = _mp()
    if a <= b:
        return math.inf
    av, bv = mp.mpf(a), mp.mpf(b)
    den = -mp.expm1(bv - av)
    return _ratio((abs(av) + abs(bv) * mp.exp(bv - av)) / den, ref_logsubexp(a, b))


@_cond_scalar
def cond_log1mexp(x: float) -> float:
    """``|x e^x / (1 - e^x)| / |log1mexp(x)|``."""
    mp = _mp()
    if x >= 0:
        return math.inf
    xv = mp.mpf(x)
    return _ratio(xv / mp.expm1(-xv), ref_log1mexp(x))


@_cond_scalar
def cond_softplus(x: float) -> float:
    """``|x sigmoid(x) / softplus(x)|``."""
    return _ratio(_mp().mpf(x) * ref_sigmoid(x), ref_softplus(x))


@_cond_scalar
def cond_softplus_inverse(y: float) -> float:
    """``|y / (1 - e^{-y})| / |softplus_inverse(y)|``."""
    mp = _mp()
    if y <= 0:
        return math.inf
    yv = mp.mpf(y)
    return _ratio(yv / -mp.expm1(-yv), ref_softplus_inverse(y))


@_cond_scalar
def cond_sigmoid(x: float) -> float:
    """``|x (1 - sigmoid(x))|``."""
    return float(abs(_mp().mpf(x) * ref_sigmoid(-x)))


@_cond_scalar
def cond_log_sigmoid(x: float) -> float:
    """``|x sigmoid(-x) / log_sigmoid(x)|``."""
    return _ratio(_mp().mpf(x) * ref_sigmoid(-x), ref_log_sigmoid(x))


@_cond_scalar
def cond_xlogy(x: float, y: float) -> float:
    """``(|x log y| + |x|) / |x log y|`` (both arguments perturbed)."""
    mp = _mp()
    if x == 0:
        return 0.0
    f = ref_xlogy(x, y)
    return _ratio(abs(f) + abs(mp.mpf(x)), f)


@_cond_scalar
def cond_xlog1py(x: float, y: float) -> float:
    """``(|x log1p(y)| + |x y / (1 + y)|) / |x log1p(y)|``."""
    mp = _mp()
    if x == 0 or y <= -1:
        return 0.0
    f = ref_xlog1py(x, y)
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
    num = abs(xv * (ref_sigmoid(x) - yv))
    if 0 < y < 1:
        num += abs(xv * yv)
    return _ratio(num, ref_bce_with_logits(x, y))
