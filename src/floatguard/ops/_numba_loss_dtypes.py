"""What the loss kernels do per storage dtype: load an element, store a result, and the ``exp``,
``log1p`` and reciprocal accurate enough for it.

Rows come as float32, float64, or bfloat16 read through its ``int16`` bits (``bf16 -> f32`` is
``bits << 16``); :func:`_ld` widens an element to float64 in registers (exact) and :func:`_st` rounds a
float64 once to the output's dtype (bfloat16 through round-to-odd float32, which makes the double
rounding exact). :func:`_exp_for`, :func:`_log1p_for` and :func:`_recip_for` pick, when numba compiles,
the float64-accurate function for float64 arrays and a shorter one (still well inside an ulp once
rounded to 24 bits or fewer) for float32 and bfloat16.

Without numba this module imports and only the plain-Python stubs exist (never called).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._numba_bits import _CONTRACT, AVAILABLE, _njit
from ._numba_exp import _exp_f32out, _exp_reduced_inl, _reduce_inl
from ._numba_log import inline, log1p_unit, recip_unit
from ._numba_log import log1p as _log1p
from ._numba_log import select as _select_intrinsic

# numba's ``@intrinsic`` objects type as ``(typingctx, *args)`` callables; in compiled code they take the
# arguments alone: rebound here as plain callables (the same objects) so that the calls type-check.
select: Callable[..., Any] = _select_intrinsic

if AVAILABLE:
    from numba import types
    from numba.extending import overload

    from ._numba_bits import _encode
    from ._numba_bits import _f32_bits as _f32_bits_intrinsic
    from ._numba_bits import _f32_from_bits as _f32_from_bits_intrinsic

    _f32_bits: Callable[..., Any] = _f32_bits_intrinsic
    _f32_from_bits: Callable[..., Any] = _f32_from_bits_intrinsic


# -- load and store ---------------------------------------------------------------------------------
def _ld(v: Any) -> float:
    """A loaded element as float64 (an int16 is the bits of a bfloat16)."""
    return float(v)


def _st(out: np.ndarray, i: int, v: float) -> None:
    """``out[i] = v`` rounded once to ``out``'s dtype (an int16 array holds bfloat16 bits)."""
    out[i] = v


if AVAILABLE:

    @overload(_ld, jit_options={"fastmath": {"contract"}})
    def _ld_impl(v):  # unannotated: numba compares signatures
        if isinstance(v, types.Integer):
            return lambda v: np.float64(_f32_from_bits(np.int32((np.int32(v) & 0xFFFF) << 16)))
        return lambda v: np.float64(v)

    @overload(_st)
    def _st_impl(out, i, v):  # unannotated: numba compares signatures
        if out.dtype == types.int16:

            def store_bf16(out, i, v):
                out[i] = _bf16_bits(v)

            return store_bf16

        def store(out, i, v):
            out[i] = _encode(v, out)

        return store


@inline
def _bf16_bits(v: float) -> np.int16:
    """float64 ``v`` rounded once, to nearest even, to bfloat16 bits, in 32-bit lanes (twice as many as
    :func:`._numba_bits._encode`'s int64 ones): ``v`` to float32 rounded to odd (the nearest-even float32,
    moved toward zero when it rounded away, its last bit set when inexact), whose 16 extra bits make the
    nearest-even rounding of its high half the one of ``v``; NaN gives the quiet NaN of its sign."""
    f = np.float32(v)
    fd = np.float64(f)
    b = _f32_bits(f)
    b = np.int32(select(abs(fd) > abs(v), np.int32(b - 1), b) | np.int32(fd != v))
    h = np.int32(np.int32(b + np.int32(0x7FFF + ((b >> 16) & 1))) >> 16)
    return np.int16(select(v == v, h, np.int32((b >> 16) | 0x7FC0)))


# -- exp, log1p and 1/d as accurate as the dtype needs ------------------------------------------------
@_njit(_CONTRACT)
def _exp_np(d: float) -> float:
    """``exp(d)`` for ``d <= 0`` (``-inf`` gives 0, NaN gives 0: callers propagate NaN themselves)."""
    r, ki = _reduce_inl(d)
    return _exp_reduced_inl(r, ki)


def _exp_for(a: np.ndarray, d: float) -> float:
    """``exp(d)`` for ``d <= 0`` as accurate as the dtype of ``a`` needs: the 0.51-ulp table exp for
    float64, the table-free :func:`._numba_exp._exp_f32out` (relative 2^-35, no gathers) for float32 and
    bfloat16 (int16 bits): a result rounded to 24 bits or fewer keeps its 1 ulp with 2^-11 ulp to spare."""
    return float(np.exp(d))


def _log1p_for(a: np.ndarray, e: float) -> float:
    """``log1p(e)`` for ``0 <= e <= 1`` as the dtype of ``a`` needs: the 0.77-ulp :func:`._numba_log.log1p`
    for float64, the divide-free relative ``2^-35.5`` :func:`._numba_log.log1p_unit` for float32/bfloat16."""
    return float(np.log1p(e))


def _recip_for(a: np.ndarray, d: float) -> float:
    """``1 / d`` (``1 <= d <= 2``, or NaN): a float64 divide for float64 ``a``, else the divide-free relative
    ``2^-36.6`` :func:`._numba_log.recip_unit` (with the short exp's ``2^-35``, a float32 or bfloat16 sigmoid
    within ``0.5 + 2^-10.5`` ulp)."""
    return 1.0 / d


@inline
def _recip(d: float) -> float:
    return 1.0 / d


def _by_dtype(stub: Callable[..., float], accurate: Any, short: Any) -> None:
    """Compile ``stub(a, v)`` as ``accurate(v)`` for a float64 array ``a``, else as ``short(v)``."""

    @overload(stub, inline="always")
    def impl(a, v):  # unannotated: numba compares signatures
        if a.dtype == types.float64:
            return lambda a, v: accurate(v)
        return lambda a, v: short(v)


if AVAILABLE:
    _by_dtype(_exp_for, _exp_np, _exp_f32out)
    _by_dtype(_log1p_for, _log1p, log1p_unit)
    _by_dtype(_recip_for, _recip, recip_unit)
