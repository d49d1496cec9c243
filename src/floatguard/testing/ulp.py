"""Errors in units of the last place: :func:`ulp_error` against an mpmath reference, and the
elementwise adapters that apply scalar references and condition numbers over arrays."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ._precision import DPS, _mp, _mpf, _obj_array, dtype_info, to_float64


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

    >>> from floatguard.testing import ref_softplus
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
