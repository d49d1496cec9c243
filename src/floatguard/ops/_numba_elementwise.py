"""Compiled (numba) elementwise loss kernels: binary cross-entropy with logits, softplus, log_sigmoid,
log1mexp and logaddexp, forward and backward, and a raw-pointer entry for small tensors.

Elements are float32, float64 or bfloat16 bits (see :mod:`._numba_loss_dtypes`), computed in float64
registers and rounded once to the output's dtype; the float32 backward of softplus / log_sigmoid instead
runs in float32 lanes with error-free pairs (within 1.5 ulp, see :func:`_g_sigmoid32`), and the float64
BCE gradient (float64 registers leave it no spare bits) carries its roundings as pairs (:func:`_bce_grad_row64`).

Without numba this module imports (the kernels are plain functions, never called) and callers use the
generic path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._numba_bits import _CONTRACT, _SUM, AVAILABLE, _f32_bits, _njit, carray, fma
from ._numba_bits import _voidptr as _voidptr_intrinsic
from ._numba_exp import _exp_neg32_parts, _exp_neg32_split, _expm1_reduced, _half_steps
from ._numba_log import inline, log_positive
from ._numba_log import log1p as _log1p
from ._numba_loss_dtypes import _by_dtype, _exp_for, _exp_np, _ld, _log1p_for, _recip_for, _st, select

_voidptr: Callable[..., Any] = _voidptr_intrinsic  # an ``@intrinsic``: called without its ``typingctx``


# -- elementwise: binary cross-entropy, softplus, log_sigmoid, logaddexp, log1mexp ------------------
# Branch-free bodies (``select``, ``max``) and the vectorizable float64 ``log1p`` of ._numba_log:
# LLVM turns each loop into SIMD code (a numba ternary or a libm call inside a loop stops it).
@inline
def _softplus_pair(a: np.ndarray, x: float) -> tuple[float, float]:
    """``softplus(-x)`` and ``softplus(x)`` from one ``log1p(exp(-|x|))``; NaN gives NaN twice (``a``: see _exp_for)."""
    lg = _log1p_for(a, _exp_for(a, -abs(x)))
    pos = select(x < 0.0, -x, 0.0) + lg
    neg = select(x > 0.0, x, 0.0) + lg
    return select(x == x, pos, x), select(x == x, neg, x)


@inline
def _sigmoid_pair(a: np.ndarray, x: float) -> tuple[float, float]:
    """``sigmoid(x)`` and ``sigmoid(-x)`` from one ``e = exp(-|x|)`` (NaN gives 0 and 1: callers propagate)."""
    e = _exp_for(a, -abs(x))
    q = _recip_for(a, 1.0 + e)
    return select(x > 0.0, q, e * q), select(x > 0.0, e * q, q)


@_njit(_SUM)
def _bce_row(xr: np.ndarray, yr: np.ndarray, wr: np.ndarray, pr: np.ndarray, o: np.ndarray, store: bool) -> float:
    """One row of :func:`bce_forward` (``wr``, ``pr`` all ones when absent)."""
    acc = 0.0
    if store:
        for i in range(xr.size):
            v = _bce_value(xr, _ld(xr[i]), _ld(yr[i]), wr[i], pr[i])
            o[i] = v
            acc += v
    else:
        for i in range(xr.size):
            acc += _bce_value(xr, _ld(xr[i]), _ld(yr[i]), wr[i], pr[i])
    return acc


@inline
def _bce_value(a: np.ndarray, xv: float, yv: float, wv: float, pv: float) -> float:
    pos, neg = _softplus_pair(a, xv)
    pos *= pv
    v = select(yv != 0.0, yv * pos, 0.0) + select(yv != 1.0, (1.0 - yv) * neg, 0.0)
    return select(xv == xv, v * wv, xv)


@_njit()
def _row_or_ones(a: np.ndarray, r: int, ones: np.ndarray) -> np.ndarray:
    if a.shape[0] == 0:
        return ones
    return a[r if a.shape[0] > 1 else 0]


@_njit()
def bce_forward(x: np.ndarray, y: np.ndarray, w: np.ndarray, pw: np.ndarray, out: np.ndarray,
                store: bool) -> tuple[float, float]:
    """Rows ``(R, C)``: ``w (pw y softplus(-x) + (1 - y) softplus(x))``, a zero coefficient dropping its term.

    ``w`` and ``pw`` are ``(R, C)``, ``(1, C)`` or ``(0, 0)`` (absent). With ``store`` the
    elements go to ``out`` (float64 ``(R, C)``); returns their sum either way, as a compensated pair ``(total,
    comp)`` (the sum is ``total + comp``): ``math.fsum`` of the pairs of row chunks rounds as one chunk's sum.
    """
    r_count, n = x.shape
    total, comp = 0.0, 0.0
    ones = np.ones(n)
    for r in range(r_count):
        o = out[r] if store else ones
        acc = _bce_row(x[r], y[r], _row_or_ones(w, r, ones), _row_or_ones(pw, r, ones), o, store)
        total, comp = _add2(total, comp, acc)
    return total, comp


@_njit()
def _add2(total: float, comp: float, part: float) -> tuple[float, float]:
    t = total + part
    if abs(total) >= abs(part):
        comp += (total - t) + part
    else:
        comp += (part - t) + total
    return t, comp


@_njit(_CONTRACT)
def _bce_grad_row(xr: np.ndarray, yr: np.ndarray, wr: np.ndarray, pr: np.ndarray, gr: np.ndarray, gs: float,
                  o: np.ndarray) -> None:
    """``o = g w (sigmoid(x) (1 - y) - pw y sigmoid(-x))`` with ``g = gs gr`` (``gr`` ones for a scalar ``g``)."""
    for i in range(xr.size):
        xv, yv = _ld(xr[i]), _ld(yr[i])
        sig, sig_neg = _sigmoid_pair(xr, xv)
        v = (sig * (1.0 - yv) - sig_neg * yv * pr[i]) * wr[i]
        _st(o, i, select(xv == xv, v, xv) * (gs * gr[i]))


@_njit()  # no ``contract``: a fused ``p1 - p2`` would break the exact error terms below
def _bce_grad_row64(xr: np.ndarray, yr: np.ndarray, wr: np.ndarray, pr: np.ndarray, gr: np.ndarray, gs: float,
                    gl: float, o: np.ndarray) -> None:
    """float64 :func:`_bce_grad_row` (``g = (gs + gl) gr``) with one rounding at the end.

    The three or four roundings of the float64 formula (``1 + e``, ``1 / (1 + e)``, ``1 / N``, the products),
    each up to an ulp of the result, are carried as pairs instead: ``1 + e = h + l`` exactly (Fast2Sum),
    ``1 / (1 + e) = q0 + dq`` with ``dq = q0 (1 - h q0 - l q0)`` (one Newton step on the fma residual),
    ``e / (1 + e)`` from the exact product ``e q0``; the terms ``sigmoid(x) (1 - y)`` and
    ``pw y sigmoid(-x)`` as exact products plus their low parts, their difference by TwoSum, and the scale
    ``w g`` as a pair (``gs + gl`` is ``g / N`` to ``2^-106``). Left: the 0.51-ulp ``exp`` (at most 1.02 ulp of
    ``sigmoid(-|x|)``, 0.26 of ``sigmoid(|x|)``), the roundings of ``1 - y`` and ``pw y`` (counted by the
    condition number) and the final one: within ``1.6 ulp * max(1, kappa)``.
    """
    for i in range(xr.size):
        xv, yv = xr[i], _ld(yr[i])
        e = _exp_for(xr, -abs(xv))
        h = 1.0 + e
        lo = e - (h - 1.0)  # 1 + e = h + lo exactly (1 >= e)
        q0 = 1.0 / h
        dq = q0 * (fma(-h, q0, 1.0) - lo * q0)  # 1 / (1 + e) = q0 + dq (relative 2^-104)
        eq = e * q0
        deq = fma(e, q0, -eq) + e * dq  # e / (1 + e) = eq + deq
        pos = xv > 0.0
        s_hi, s_lo = select(pos, q0, eq), select(pos, dq, deq)  # sigmoid(x)
        n_hi, n_lo = select(pos, eq, q0), select(pos, deq, dq)  # sigmoid(-x)
        a = 1.0 - yv
        b = yv * pr[i]
        p1 = s_hi * a
        p2 = n_hi * b
        e1 = fma(s_hi, a, -p1) + s_lo * a
        e2 = fma(n_hi, b, -p2) + n_lo * b
        v_hi = p1 - p2
        t = v_hi - p1
        v_lo = ((p1 - (v_hi - t)) - (p2 + t)) + (e1 - e2)  # TwoSum's error plus the low parts
        sc = gs * gr[i]  # exact: gr[i] is 1, or gs is 1 and gl 0
        w_hi = wr[i] * sc
        w_lo = fma(wr[i], sc, -w_hi) + wr[i] * (gl * gr[i])  # w g = w_hi + w_lo
        low = v_hi * w_lo + v_lo * w_hi
        low = select(low == low, low, 0.0)  # an infinite w or g: the plain product's inf or NaN
        o[i] = select(xv == xv, fma(v_hi, w_hi, low), xv)


def _bce_grad_rows(xr: np.ndarray, yr: np.ndarray, wr: np.ndarray, pr: np.ndarray, gr: np.ndarray, gs: float,
                   gl: float, o: np.ndarray) -> None:
    """:func:`_bce_grad_row64` for float64 rows, else :func:`_bce_grad_row` (rounded once to 24 bits or fewer
    from float64 registers, ``gl`` unused)."""


if AVAILABLE:
    from numba import types as _types
    from numba.extending import overload as _overload

    @_overload(_bce_grad_rows)
    def _bce_grad_rows_impl(xr, yr, wr, pr, gr, gs, gl, o):  # unannotated: numba compares signatures
        if xr.dtype == _types.float64:
            return lambda xr, yr, wr, pr, gr, gs, gl, o: _bce_grad_row64(xr, yr, wr, pr, gr, gs, gl, o)
        return lambda xr, yr, wr, pr, gr, gs, gl, o: _bce_grad_row(xr, yr, wr, pr, gr, gs, o)


@_njit()
def bce_backward(x: np.ndarray, y: np.ndarray, w: np.ndarray, pw: np.ndarray, g: np.ndarray, out: np.ndarray,
                 div: float = 1.0) -> None:
    """``out = g w (sigmoid(x) (1 - y) - pw y sigmoid(-x)) / div``; ``g`` is ``(R, C)`` (``div`` 1) or ``(1, 1)``.

    A float64 ``out`` carries ``g / div`` as a pair (the mean's ``1 / N`` not rounded on its own) and is
    within ``2 ulp * max(1, kappa)`` (:func:`_bce_grad_row64`).
    """
    r_count, n = x.shape
    scalar = g.size == 1
    ones = np.ones(n)
    gv = g[0, 0] if scalar else 1.0
    gs = gv / div
    gl = fma(-gs, div, gv) / div  # g / div = gs + gl
    if not abs(gl) < np.inf:  # g or g / div infinite or NaN
        gl = 0.0
    for r in range(r_count):
        gr = ones if scalar else g[r]
        _bce_grad_rows(x[r], y[r], _row_or_ones(w, r, ones), _row_or_ones(pw, r, ones), gr, gs, gl, out[r])


@_njit(_SUM)
def _bce_row_grad(xr: np.ndarray, yr: np.ndarray, gs: float, o: np.ndarray) -> float:
    """One row of :func:`bce_forward_grad`: the sum of the row's losses; ``o`` its gradient."""
    acc = 0.0
    for i in range(xr.size):
        xv, yv = _ld(xr[i]), _ld(yr[i])
        acc += _bce_value(xr, xv, yv, 1.0, 1.0)
        sig, sig_neg = _sigmoid_pair(xr, xv)  # the same exp(-|x|) as the loss's: computed once
        _st(o, i, select(xv == xv, sig * (1.0 - yv) - sig_neg * yv, xv) * gs)
    return acc


@_njit()
def bce_forward_grad(x: np.ndarray, y: np.ndarray, gs: float, grad: np.ndarray) -> tuple[float, float]:
    """:func:`bce_forward` without weights (the sum of the losses, as its pair) that also writes ``grad``, the gradient
    :func:`bce_backward` gives for ``g = gs``: ``gs (sigmoid(x) (1 - y) - y sigmoid(-x))``, rounded once.

    ``loss.backward()`` of a mean or a sum passes 1, and the backward hands this over instead of computing
    every ``exp(-|x|)`` a second time.
    """
    total, comp = 0.0, 0.0
    for r in range(x.shape[0]):
        total, comp = _add2(total, comp, _bce_row_grad(x[r], y[r], gs, grad[r]))
    return total, comp


@_njit(_CONTRACT)
def _softplus_loop(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.size):
        _st(out, i, _softplus_pair(x, _ld(x[i]))[1])


@_njit(_CONTRACT)
def _log_sigmoid_loop(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.size):
        _st(out, i, -_softplus_pair(x, _ld(x[i]))[0])


@_njit(_CONTRACT)
def unary_forward(x: np.ndarray, out: np.ndarray, op: int) -> None:
    """``op`` 0: softplus, 1: log_sigmoid, 2: log1mexp; float64 in registers, one rounding."""
    if op == 0:  # one small function per loop: LLVM inlines log1p into it and vectorizes
        _softplus_loop(x, out)
    elif op == 1:
        _log_sigmoid_loop(x, out)
    else:
        _log1mexp_loop(x, out)


# -- log1mexp: libm for float64, a vectorized body for float32 and bfloat16 --------------------------------
# ``log(1 - e^v)`` is ``log(-expm1(v))`` above ``-ln2`` and ``log1p(-e^v)`` below (Maechler). float64 results
# keep libm's ``expm1`` and ``log`` (a scalar loop, ~20 ns an element); float32 and bfloat16 ones take both
# branches branch-free and select: ``expm1`` from the short exp's polynomial (relative 2^-34), one fdlibm ``log``
# for both branches (below 1 ulp of float64; the far branch's tail by its series, see _log1mexp_short), so the
# result is within 2^-33 relative before its one rounding: 0.5 + 2^-9 ulp of float32. The gradient
# ``-e^v / (1 - e^v)`` from the same two values.
LN2 = 0.6931471805599453


@inline
def _log1mexp_libm(v: float) -> float:
    if v > -LN2:
        return np.log(-np.expm1(v) + 0.0)
    if v == v:
        return _log1p(-_exp_np(v))
    return v


@inline
def _log1mexp_grad_libm(v: float) -> float:
    return select(v > 0.0, np.nan, -1.0 / (np.expm1(-v) + 0.0))  # -inf at 0 (the +0.0)


@inline
def _one_minus_exp(v: float) -> tuple[bool, float, float]:
    """``(near, y, e)`` for ``v <= 0``: ``near = v > -ln2``; ``y = 1 - e^v`` (``-expm1(v)``, +0 at 0) where
    ``near``, else ``e = e^v`` (0 below -746, and for ``-inf`` and NaN)."""
    near = v > -LN2
    # one reduction and one polynomial for both: expm1(v) = s q + (s - 1) (exactly _expm1_small where near), e^v =
    # s + s q (exactly _exp_f32out elsewhere), bit for bit as the two calls they replace; each branch reads only its
    # own value. Float32 forward at 4096×1024, side by side: 19.8 -> 16.8 ms; bfloat16 backward 13-16 -> 10.8 ms
    r, s, kd = _half_steps(select(v > -746.0, v, -746.0))  # also -inf (e = 0) and NaN (selected away by the callers)
    q = _expm1_reduced(r)
    y = 0.0 - (s * q + (s - 1.0))
    e = select(kd >= -2044.0, s + s * q, 0.0)
    return near, y, e


@inline
def _log1mexp_short(v: float) -> float:
    """One ``log`` for both branches: ``log(y)`` near 0, ``log(1 - e)`` below ``-ln2`` down to ``e = 2^-10``
    (``1 - e`` in [0.5, 1), its rounding 2^-43 of the result), then ``log1p(-e)`` by its series to ``e^6``
    (truncation below 2^-50 relative). It took fdlibm's ``log1p`` as well: 13.6 -> 10.8 ms at 4096×1024."""
    near, y, e = _one_minus_exp(v)
    small = e < 2.0**-10
    lg = log_positive(select(near, select(y > 0.0, y, 1.0), select(small, 1.0, 1.0 - e)))
    series = -e * (1.0 + e * (0.5 + e * (1.0 / 3.0 + e * (0.25 + e * (0.2 + e * (1.0 / 6.0))))))
    res = select(near | ~small, lg, series)
    res = select(v == 0.0, -np.inf, res)
    return select(v <= 0.0, res, select(v == v, np.nan, v))


@inline
def _log1mexp_grad_short(v: float) -> float:
    near, y, e = _one_minus_exp(v)
    d = -select(near, 1.0 - y, e) / select(near, y, 1.0 - e)  # -inf at 0 (y = +0)
    return select(v <= 0.0, d, select(v == v, np.nan, v))


def _log1mexp_for(a: np.ndarray, v: float) -> float:
    """``log1mexp(v)`` as the dtype of ``a`` needs: libm for float64, :func:`_log1mexp_short` else."""
    return float(np.log(-np.expm1(v)))


def _log1mexp_grad_for(a: np.ndarray, v: float) -> float:
    """``d log1mexp / dv`` as the dtype of ``a`` needs (see :func:`_log1mexp_for`)."""
    return float(-1.0 / np.expm1(-v))


if AVAILABLE:
    _by_dtype(_log1mexp_for, _log1mexp_libm, _log1mexp_short)
    _by_dtype(_log1mexp_grad_for, _log1mexp_grad_libm, _log1mexp_grad_short)


@_njit(_CONTRACT)
def _log1mexp_loop(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.size):
        _st(out, i, _log1mexp_for(x, _ld(x[i])))


@_njit(_CONTRACT)
def _log1mexp_grad_loop(x: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    if g.size == 1 and x.size != 1:  # an expanded scalar gradient
        gv = _ld(g[0])
        for i in range(x.size):
            _st(out, i, gv * _log1mexp_grad_for(x, _ld(x[i])))
    else:
        for i in range(x.size):
            _st(out, i, _ld(g[i]) * _log1mexp_grad_for(x, _ld(x[i])))


# -- the float32 sigmoid backward in float32 lanes ------------------------------------------------------
# ``g sigmoid(+-x)`` for float32 ``x``, ``g`` and ``out``: 16 float32 lanes in place of 8 float64 ones, one
# float32 divide and error-free pairs in place of the float64 registers. ``e = exp(-|x|) = s (1 + p)`` (the
# pair ``1, p`` and ``s = 2^-k`` exact), ``h = 1 + e``; ``sigmoid(|x|) = 1 / h``, ``sigmoid(-|x|) = e / h``.
#
# Error budget (u = 2^-24, float32's unit roundoff; all products of a power of two ``s`` exact; ulps of the
# result, in which a relative error rho counts at most rho / u):
#   1. ``r``: one rounding, |r| <= 0.3466: 2^-26 = 0.25u absolute, a relative 0.25u of ``1 + p``.
#   2. ``p = r + r^2 q(r)``: the fit 2^-28.2 (0.07u) of ``1 + p``; the roundings of ``r^2`` (0.07u), of ``q``'s
#      two outer multiply-adds (|q| < 0.57: 1.14u, times r^2 <= 0.1202: 0.14u) and of ``p`` (|p| < 0.4143:
#      0.25u), 0.46u absolute, over ``1 + p >= 0.7071``: 0.65u. With 1.: ``1 + p`` within 0.97u of ``exp(r)``.
#   3. ``e = e_hi + e_lo`` (Sterbenz: ``s - e_hi`` exact; the fma leaves ``e_lo``'s own rounding, u^2 e),
#      ``h = h_hi + h_lo`` (Fast2Sum, then ``+ e_lo``: u^2): exact to 2u^2.
#   4. ``q0 = N_hi / h_hi`` rounded (N: 1 or ``e``); ``N_hi - q0 h_hi`` exact (the residual of a correctly
#      rounded quotient, by fma); ``+ N_lo - q0 h_lo`` and ``* (1 / h)`` (``q0`` or ``1 - q0``, 2u) add a
#      few u^2: ``q0 + q_lo`` is ``N / h`` to 5u^2.
#   5. ``g q0 + g q_lo``: one fma, 0.5 ulp; ``g q_lo`` rounded: u^2 (a subnormal result: 0.5 ulp).
# The sigmoid's relative sensitivity to ``1 + p`` is ``1 / h`` or ``e / h``, at most 1: 0.97u, and the total
# is 0.5 + 0.97 + 10u (< 2^-19) < 1.48 ulp. A subnormal result (|g sigmoid| < 2^-126): 0.5 (5.) + 0.5 (the
# rounding of ``g q_lo``) + 0.97u of a value below 2^-126 (0.49 ulp of 2^-149) < 1.5 ulp. The tests hold it
# to 1.5 ulp (measured: 0.95). Inputs the lanes leave out, by block: |x| > 80 (``exp(-|x|)`` then nears the
# subnormals), inf or NaN ``x``, inf or NaN ``g``: the block goes through the float64 loop (0.5 ulp + 2^-10).
X32_MAX_BITS = np.int32(0x42A00000)  # the bits of 80.0
G32_OFF = np.int32(0x7F800000 - 0x42A00000 - 1)  # |g| bits less it: above X32_MAX_BITS for an inf or NaN g
ABS32 = np.int32(0x7FFFFFFF)
ONE32, ZERO32 = np.float32(1.0), np.float32(0.0)
BLOCK32 = 2048  # entries per block: a block with an entry out of the lanes' range is done again in float64


@inline
def _g_sigmoid32(xv: np.float32, gv: np.float32, neg: bool) -> np.float32:
    r"""``g sigmoid(-x)`` (``neg``) or ``g sigmoid(x)`` in float32 for ``|x| <= 80`` and finite ``g``, within
    1.5 ulp (the budget above).

    .. math:: e = e^{-|x|}, \quad h = 1 + e, \qquad
              g\,\sigma(\pm x) = g \frac{N}{h}, \quad N = 1 \;(\pm x > 0), \; e \;(\text{else})
    """
    pos = select(neg, xv < ZERO32, xv > ZERO32)
    s, p = _exp_neg32_parts(abs(xv))
    e_hi = fma(s, p, s)
    e_lo = fma(s, p, s - e_hi)
    h_hi = ONE32 + e_hi
    h_lo = (e_hi - (h_hi - ONE32)) + e_lo
    n_hi = select(pos, ONE32, e_hi)
    q0 = n_hi / h_hi
    rem = (fma(-q0, h_hi, n_hi) + select(pos, ZERO32, e_lo)) - q0 * h_lo
    q_lo = rem * select(pos, q0, ONE32 - q0)  # 1 / h: q0, or 1 - e / h
    return fma(gv, q0, gv * q_lo)


@_njit(_CONTRACT)
def _g_sigmoid32_block(x: np.ndarray, g: np.ndarray, out: np.ndarray, neg: bool) -> np.int32:
    """:func:`_g_sigmoid32` over a block; returns the largest of ``|x|``'s bits and ``|g|``'s less G32_OFF."""
    m = np.int32(0)
    for i in range(x.size):
        xv, gv = x[i], g[i]
        b = np.int32(_f32_bits(xv) & ABS32)
        m = select(b > m, b, m)
        c = np.int32((_f32_bits(gv) & ABS32) - G32_OFF)
        m = select(c > m, c, m)
        out[i] = _g_sigmoid32(xv, gv, neg)
    return m


@_njit(_CONTRACT)
def _g_sigmoid32_block_scalar(x: np.ndarray, gv: np.float32, out: np.ndarray, neg: bool) -> np.int32:
    """:func:`_g_sigmoid32_block` for one ``g`` (checked by the caller); the largest of ``|x|``'s bits."""
    m = np.int32(0)
    for i in range(x.size):
        xv = x[i]
        b = np.int32(_f32_bits(xv) & ABS32)
        m = select(b > m, b, m)
        out[i] = _g_sigmoid32(xv, gv, neg)
    return m


@_njit()
def _block_bits(x: np.ndarray, g: np.ndarray, scalar: bool) -> np.int32:
    """The largest of ``|x|``'s bits and (unless ``scalar``) ``|g|``'s less G32_OFF: what the lanes' blocks return."""
    m = np.int32(0)
    for i in range(x.size):
        b = np.int32(_f32_bits(x[i]) & ABS32)
        m = select(b > m, b, m)
    if not scalar:
        for i in range(g.size):
            c = np.int32((_f32_bits(g[i]) & ABS32) - G32_OFF)
            m = select(c > m, c, m)
    return m


@_njit(_CONTRACT)
def _sigmoid_grad64(x: np.ndarray, g: np.ndarray, out: np.ndarray, neg: bool) -> None:
    """``out = g sigmoid(+-x)`` in float64 registers, rounded once; ``g`` of one entry stands for all."""
    if g.size == 1:
        gv = _ld(g[0])
        for i in range(x.size):
            v = _ld(x[i])
            s, s_neg = _sigmoid_pair(x, v)
            _st(out, i, gv * select(v == v, select(neg, s_neg, s), v))
    else:
        for i in range(x.size):
            v = _ld(x[i])
            s, s_neg = _sigmoid_pair(x, v)
            _st(out, i, _ld(g[i]) * select(v == v, select(neg, s_neg, s), v))


@_njit()
def _sigmoid_grad32(x: np.ndarray, g: np.ndarray, out: np.ndarray, neg: bool) -> None:
    """float32 ``out = g sigmoid(+-x)`` block by block in float32 lanes; a block with ``|x| > 80``, an inf or
    NaN (``x`` or ``g``) again through :func:`_sigmoid_grad64`."""
    n = x.size
    scalar = g.size == 1
    gv = g[0] if scalar else ONE32
    if scalar and not np.int32(_f32_bits(gv) & ABS32) < np.int32(0x7F800000):
        _sigmoid_grad64(x, g, out, neg)
        return
    # after a block that needed float64 a cheap pass over the next block's bits decides first (blocks alike cost
    # that pass and the float64 one, not the lanes' too); either way a block's bits depend on the block alone, which
    # the callers' chunks keep whole (FLAT_BLOCK): the same bits on any number of threads
    wide = False
    for i0 in range(0, n, BLOCK32):
        i1 = min(i0 + BLOCK32, n)
        xs, os = x[i0:i1], out[i0:i1]
        gs = g if scalar else g[i0:i1]
        if wide and _block_bits(xs, gs, scalar) > X32_MAX_BITS:
            _sigmoid_grad64(xs, gs, os, neg)
            continue
        m = _g_sigmoid32_block_scalar(xs, gv, os, neg) if scalar else _g_sigmoid32_block(xs, gs, os, neg)
        wide = m > X32_MAX_BITS
        if wide:
            _sigmoid_grad64(xs, gs, os, neg)


def _sigmoid_grad_lanes(x: np.ndarray, g: np.ndarray, out: np.ndarray, neg: bool) -> bool:
    """Whether :func:`_sigmoid_grad32` took ``x``, ``g``, ``out`` (all float32) and wrote ``out``."""
    return False


def _float32_lanes(stub: Callable[..., bool], kernel: Any) -> None:
    """Compile ``stub(*args)`` as ``kernel(*args)`` returning True where every array among ``args`` is float32, else
    as False: the dispatch of a float32-lanes kernel (the other dtypes keep their float64 loops)."""
    from numba import types
    from numba.extending import overload

    @overload(stub)
    def impl(*args):  # unannotated: numba compares signatures
        if all(v.dtype == types.float32 for v in args if isinstance(v, types.Array)):

            def lanes(*args):
                kernel(*args)
                return True

            return lanes
        return lambda *args: False


if AVAILABLE:
    _float32_lanes(_sigmoid_grad_lanes, _sigmoid_grad32)


@_njit(_CONTRACT)
def _sigmoid_grad_loop(x: np.ndarray, g: np.ndarray, out: np.ndarray, neg: bool) -> None:
    """``out = g sigmoid(+-x)``; ``g`` of one entry stands for all (an expanded scalar gradient): float32 in
    float32 lanes (within 1.5 ulp), float64 and bfloat16 in float64 registers (0.5 ulp + 2^-10)."""
    if not _sigmoid_grad_lanes(x, g, out, neg):
        _sigmoid_grad64(x, g, out, neg)


# -- the float32 log1mexp backward in float32 lanes ---------------------------------------------------
# ``g d/dx log(1 - e^x) = -g q``, ``q = e / D``, ``e = e^x``, ``D = 1 - e`` (``x <= 0``), from the exp's reduction
# kept unrounded (:func:`._numba_exp._exp_neg32_split`): ``e = s (1 + P)``, ``s = 2^-k`` and ``P = r + w`` (``w =
# r^2 q(r)`` and the rounding of ``r``) as an exact pair.
# Then ``N = s + s P`` and ``D = (1 - s) - s P`` (``1 - s`` a pair too, for ``k > 24``) are exact pairs of the same
# ``P`` with ``N + D = 1``: near 0 (``k = 0``) ``D = -P`` keeps its relative accuracy where ``1 - e`` would cancel.
# ``q0 = N_hi / D_hi``, its residual by fma, ``q_lo = rem / D = rem (1 + q0)`` (``1 / D = 1 + q``), and
# ``-(g q0 + g q_lo)`` in one fma (``-g q0`` where that overflows: ``g q_lo`` may overflow too, to the other sign).
# The errors are those of ``w`` (the fit's ``2^-28.2`` and its float32 roundings, ``2^-26.5`` absolute at most,
# relative to ``P`` below 2^-25) and the final rounding: measured within 0.82 ulp, held to 1.5 as the sigmoid's
# (tests/ops/test_numba_elementwise.py). A block with ``x`` out of ``[-80, -2^-126]`` (0, positive, subnormal, inf,
# NaN) or an inf or NaN ``g`` goes through the float64 loop. The float64 loop took 2x the time (5.3 against 2.6 ms
# at 4096×1024).
X32_MIN_BITS = np.int32(0x00800000)  # the bits of 2^-126: -x below it (or negative) leaves the lanes


@inline
def _g_log1mexp32(xv: np.float32, gv: np.float32) -> np.float32:
    s, r, w = _exp_neg32_split(-xv)
    p_hi = r + w
    p_lo = w - (p_hi - r)  # P = r + w exactly (|r| > |w|)
    sp = s * p_hi  # exact: s a power of two
    n_hi = s + sp
    n_lo = (sp - (n_hi - s)) + s * p_lo
    a1 = ONE32 - s
    a1_lo = (ZERO32 - s) - (a1 - ONE32)  # 1 - s = a1 + a1_lo exactly
    d_hi = a1 - sp
    d_lo = (((ZERO32 - sp) - (d_hi - a1)) + a1_lo) - s * p_lo
    q0 = n_hi / d_hi
    rem = (fma(-q0, d_hi, n_hi) + n_lo) - q0 * d_lo
    q_lo = rem * (ONE32 + q0)
    hi = gv * q0
    # q0 reaches 2^126 near 0: where g q0 overflows, g q_lo can too, with the other sign
    return -select(hi - hi == ZERO32, fma(gv, q0, gv * q_lo), hi)


@_njit(_CONTRACT)
def _g_log1mexp32_block(x: np.ndarray, g: np.ndarray, out: np.ndarray, scalar: bool) -> bool:
    """:func:`_g_log1mexp32` over a block (``g[0]`` for all with ``scalar``); whether every entry was in range."""
    hi = np.int32(0)
    lo = np.int32(0x7FFFFFFF)
    if scalar:
        gv = g[0]
        for i in range(x.size):
            xv = x[i]
            b = np.int32(_f32_bits(-xv))  # -x in (0, 80]: bits in [X32_MIN_BITS, X32_MAX_BITS]
            hi = select(b > hi, b, hi)
            lo = select(b < lo, b, lo)
            out[i] = _g_log1mexp32(xv, gv)
    else:
        for i in range(x.size):
            xv, gv = x[i], g[i]
            b = np.int32(_f32_bits(-xv))
            hi = select(b > hi, b, hi)
            lo = select(b < lo, b, lo)
            c = np.int32((_f32_bits(gv) & ABS32) - G32_OFF)
            hi = select(c > hi, c, hi)
            out[i] = _g_log1mexp32(xv, gv)
    return bool(hi <= X32_MAX_BITS) and bool(lo >= X32_MIN_BITS)


@_njit()
def _log1mexp_grad32(x: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    """float32 log1mexp gradients block by block in float32 lanes; a block out of their range again through
    :func:`_log1mexp_grad_loop`."""
    n = x.size
    scalar = g.size == 1 and n != 1
    for i0 in range(0, n, BLOCK32):
        i1 = min(i0 + BLOCK32, n)
        gs = g if scalar else g[i0:i1]
        if not _g_log1mexp32_block(x[i0:i1], gs, out[i0:i1], scalar):
            _log1mexp_grad_loop(x[i0:i1], gs, out[i0:i1])


def _log1mexp_grad_lanes(x: np.ndarray, g: np.ndarray, out: np.ndarray) -> bool:
    """Whether :func:`_log1mexp_grad32` took ``x``, ``g``, ``out`` (all float32) and wrote ``out``."""
    return False


if AVAILABLE:
    _float32_lanes(_log1mexp_grad_lanes, _log1mexp_grad32)


@_njit(_CONTRACT)
def unary_backward(x: np.ndarray, g: np.ndarray, out: np.ndarray, op: int) -> None:
    """Gradients: softplus ``sigmoid(x)``, log_sigmoid ``sigmoid(-x)``, log1mexp ``-1 / expm1(-x)``, times ``g``."""
    if op == 0 or op == 1:
        _sigmoid_grad_loop(x, g, out, op == 1)
    elif not _log1mexp_grad_lanes(x, g, out):
        _log1mexp_grad_loop(x, g, out)


@inline
def _hi_lo(av: float, bv: float) -> tuple[bool, float, float, bool]:
    """The larger and the smaller of ``a``, ``b`` (a NaN ``a`` counts as the larger), and whether ``max`` is finite."""
    a_hi = (av >= bv) | (av != av)
    hi = select(a_hi, av, bv)
    lo = select(a_hi, bv, av)
    return a_hi, hi, lo, hi - hi == 0.0


def _short_for(a: np.ndarray, v: float) -> float:
    """1.0 where the short exp and log1p serve the dtype of ``a`` (float32, bfloat16), 0.0 for float64."""
    return 0.0


@inline
def _zero(v: float) -> float:
    return 0.0


@inline
def _one(v: float) -> float:
    return 1.0


if AVAILABLE:
    _by_dtype(_short_for, _zero, _one)


@_njit(_CONTRACT)
def _lae_accurate(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    for i in range(a.size):
        _, hi, lo, fin = _hi_lo(_ld(a[i]), _ld(b[i]))
        res = hi + _log1p(_exp_np(select(fin, lo - hi, 0.0)))
        _st(out, i, select(lo == lo, select(fin, res, hi), lo))


@_njit(_CONTRACT)  # an integer count: it vectorizes without reassociating the exp's and log1p's float steps
def _lae_short(a: np.ndarray, b: np.ndarray, out: np.ndarray, bad: np.ndarray) -> np.int64:
    """:func:`logaddexp_forward` by the short exp and log1p (``l = log1p(e)`` within ``2^-34 l``); ``bad[i]`` is 1
    where ``hi + l`` cancels (``|hi + l| < l / 4``, ``hi < 0``: the error exceeds ``2^-32`` of the result), and the
    return value their number."""
    count = np.int64(0)
    for i in range(a.size):
        _, hi, lo, fin = _hi_lo(_ld(a[i]), _ld(b[i]))
        lg = _log1p_for(a, _exp_for(a, select(fin, lo - hi, 0.0)))
        res = hi + lg
        c = abs(res) * 4.0 < lg
        bad[i] = np.uint8(c)
        count += np.int64(c)
        _st(out, i, select(lo == lo, select(fin, res, hi), lo))
    return count


LAE_BLOCK = 4096  # entries per block of the short pass: its flags stay in the L1 cache
# Callers that split flat elements into chunks (threads) start each chunk at a multiple of this: the float32 lane
# kernels decide float32 or float64 per block of BLOCK32 from the chunk's start, so every block, and its bits, is then
# the one a single chunk makes
FLAT_BLOCK = max(BLOCK32, LAE_BLOCK)


@_njit()
def logaddexp_forward(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``max + log1p(exp(min - max))``; ``-inf`` with ``-inf`` is ``-inf``, ``+inf`` wins, NaN propagates. float64:
    the table exp and the 0.77-ulp ``log1p``; float32/bfloat16 the short ones (the float32 forward took 3.2x
    softplus's time with the table exp, 1.5x so), the entries that cancel (``hi < 0``, a result near 0; 0.75% of
    two normal arrays of scale 4) again as float64's."""
    if _short_for(a, 0.0) == 0.0:
        _lae_accurate(a, b, out)
        return
    size = min(a.size, LAE_BLOCK)
    bad = np.empty(size, dtype=np.uint8)
    idx = np.empty(0, dtype=np.int64)  # the buffers of _lae_fix, made on the first block that needs them
    hb, db = np.empty(0), np.empty(0)
    for b0 in range(0, a.size, LAE_BLOCK):
        b1 = min(b0 + LAE_BLOCK, a.size)
        if _lae_short(a[b0:b1], b[b0:b1], out[b0:b1], bad) > 0:
            # by their indices: over every entry with a test, LLVM computes the fix for all (masked stores)
            if idx.size == 0:
                idx, hb, db = np.empty(size, dtype=np.int64), np.empty(size), np.empty(size)
            n = 0
            for i in range(b1 - b0):
                if bad[i]:
                    idx[n] = b0 + i
                    n += 1
            _lae_fix(a, b, idx, n, out, hb, db)


@_njit()  # no contract, as the loop it replaced: the same bits
def _lae_fix(a: np.ndarray, b: np.ndarray, idx: np.ndarray, n: int, out: np.ndarray, hb: np.ndarray,
             db: np.ndarray) -> None:
    """The flagged entries ``idx[:n]`` of :func:`logaddexp_forward` again by the table exp and the float64 ``log1p``:
    gathered, computed in a loop LLVM vectorizes, scattered (one at a time they took 2.5 of the float32 forward's
    19 ms at 4096×1024 on an AVX2 VM, 0.75% of its entries)."""
    for t in range(n):
        j = idx[t]
        _, hi, lo, _ = _hi_lo(_ld(a[j]), _ld(b[j]))
        hb[t] = hi
        db[t] = lo - hi
    for t in range(n):
        db[t] = hb[t] + _log1p(_exp_np(db[t]))
    for t in range(n):
        _st(out, idx[t], db[t])


@_njit(_CONTRACT)
def logaddexp_backward(a: np.ndarray, b: np.ndarray, g: np.ndarray, ga: np.ndarray, gb: np.ndarray) -> None:
    """``g sigmoid(a - b)`` and ``g sigmoid(b - a)``; 0 and 0 where both are ``-inf``, NaN and NaN where either is NaN
    (as PyTorch's); ``g`` of one entry: for all.
    float32 in float32 lanes (:func:`_lae_grad32`, within 1.5 ulp), the others in float64 registers."""
    if _lae_grad_lanes(a, b, g, ga, gb):
        return
    if g.size == 1 and a.size != 1:
        _lae_grad_loop(a, b, np.full(a.size, _ld(g[0])), ga, gb)
    else:
        _lae_grad_loop(a, b, g, ga, gb)


# -- the float32 logaddexp backward in float32 lanes --------------------------------------------------
# ``g sigmoid(+-d)``, ``d = a - b``, by the lanes' sigmoid above (its budget: within 1.5 ulp) with two changes.
# ``d`` is not a float32: ``d = d_hi + delta`` exactly (TwoSum), and ``sigmoid(|d_hi| + dl) = sigmoid(|d_hi|)
# (1 + sigmoid(-|d_hi|) dl)``, ``sigmoid(-|d_hi| - dl) = sigmoid(-|d_hi|) (1 - sigmoid(|d_hi|) dl)`` (``dl =
# +-delta``; ``|dl| <= 2^-24 |d_hi| <= 2^-17.6``, so the next term, ``dl^2 / 2``, is below 2^-36) go into the low
# parts. And one divide serves both sides: ``1 / h = q0 + q_lo``, then ``e / h = (e_hi + e_lo)(q0 + q_lo) = m0 + m_lo``
# (``m0 = e_hi q0`` rounded, its error by fma; the other products add u^2). A block with ``|d_hi| > 80``, an inf or
# NaN (``a``, ``b``, ``d`` or ``g``) goes through the float64 loop. The float64 registers took 2x the time: a
# float64 divide per entry on 8 lanes.
@inline
def _lae_grad32(av: np.float32, bv: np.float32, gv: np.float32) -> tuple[np.float32, np.float32]:
    d = av - bv
    bb = d - av
    delta = (av - (d - bb)) - (bv + bb)  # a - b = d + delta exactly (d finite)
    pos = d >= ZERO32
    s, p = _exp_neg32_parts(abs(d))
    e_hi = fma(s, p, s)
    e_lo = fma(s, p, s - e_hi)
    h_hi = ONE32 + e_hi
    h_lo = (e_hi - (h_hi - ONE32)) + e_lo
    q0 = ONE32 / h_hi
    q_lo = (fma(-q0, h_hi, ONE32) - q0 * h_lo) * q0  # 1 / h = q0 + q_lo
    m0 = e_hi * q0
    m_lo = fma(e_hi, q0, -m0) + (e_hi * q_lo + e_lo * q0)  # e / h = m0 + m_lo
    dl = select(pos, delta, -delta)
    g_big = fma(gv, q0, gv * (q_lo + q0 * (m0 * dl)))
    g_small = fma(gv, m0, gv * (m_lo - m0 * (q0 * dl)))
    return select(pos, g_big, g_small), select(pos, g_small, g_big)


@_njit(_CONTRACT)
def _lae_grad32_block(a: np.ndarray, b: np.ndarray, g: np.ndarray, ga: np.ndarray, gb: np.ndarray,
                      scalar: bool) -> np.int32:
    """:func:`_lae_grad32` over a block (``g[0]`` for all with ``scalar``); returns the largest of ``|a - b|``'s
    bits and ``|g|``'s less G32_OFF (an inf or NaN anywhere: above X32_MAX_BITS)."""
    m = np.int32(0)
    if scalar:
        gv = g[0]
        for i in range(a.size):
            av, bv = a[i], b[i]
            bits = np.int32(_f32_bits(av - bv) & ABS32)
            m = select(bits > m, bits, m)
            ga[i], gb[i] = _lae_grad32(av, bv, gv)
    else:
        for i in range(a.size):
            av, bv, gv = a[i], b[i], g[i]
            bits = np.int32(_f32_bits(av - bv) & ABS32)
            m = select(bits > m, bits, m)
            c = np.int32((_f32_bits(gv) & ABS32) - G32_OFF)
            m = select(c > m, c, m)
            ga[i], gb[i] = _lae_grad32(av, bv, gv)
    return m


@_njit()
def _lae_grad32_blocks(a: np.ndarray, b: np.ndarray, g: np.ndarray, ga: np.ndarray, gb: np.ndarray) -> None:
    """float32 logaddexp gradients block by block in float32 lanes; a block out of their range again through
    :func:`_lae_grad_loop` (every entry: the lanes' results there are garbage)."""
    n = a.size
    scalar = g.size == 1 and n != 1
    gfull = np.full(min(n, BLOCK32), g[0]) if scalar else g[:0]
    for i0 in range(0, n, BLOCK32):
        i1 = min(i0 + BLOCK32, n)
        gs = g if scalar else g[i0:i1]
        if _lae_grad32_block(a[i0:i1], b[i0:i1], gs, ga[i0:i1], gb[i0:i1], scalar) > X32_MAX_BITS:
            _lae_grad_loop(a[i0:i1], b[i0:i1], gfull[: i1 - i0] if scalar else gs, ga[i0:i1], gb[i0:i1])


def _lae_grad_lanes(a: np.ndarray, b: np.ndarray, g: np.ndarray, ga: np.ndarray, gb: np.ndarray) -> bool:
    """Whether :func:`_lae_grad32_blocks` took the arrays (all float32) and wrote ``ga`` and ``gb``."""
    return False


if AVAILABLE:
    _float32_lanes(_lae_grad_lanes, _lae_grad32_blocks)


@_njit(_CONTRACT)
def _lae_grad_loop(a: np.ndarray, b: np.ndarray, g: np.ndarray, ga: np.ndarray, gb: np.ndarray) -> None:
    for i in range(a.size):
        gv = _ld(g[i])
        a_hi, hi, lo, fin = _hi_lo(_ld(a[i]), _ld(b[i]))
        e = _exp_for(a, select(fin, lo - hi, 0.0))
        e = select(lo == lo, e, lo)
        q = _recip_for(a, 1.0 + e)
        # +inf wins; both -inf: no gradient; a NaN (``hi``, on either side): NaN gradients on both sides, as the value
        s_hi = select(fin, q, select(hi == -np.inf, 0.0, select(hi == hi, 1.0, hi)))
        s_lo = select(fin, e * q, select(hi == hi, 0.0, hi))
        _st(ga, i, gv * select(a_hi, s_hi, s_lo))
        _st(gb, i, gv * select(a_hi, s_lo, s_hi))


# -- the latency route of the elementwise ops: raw data pointers -----------------------------------
# A small contiguous float32/float64 tensor passes ``data_ptr()`` and its size: no NumPy views to make
# (~0.7 us each, plus a detach) and only integers for numba to unbox.
@_njit()
def ptr_unary(f64: bool, xa: int, ga: int, oa: int, size: int, op: int, back: bool) -> None:
    """:func:`unary_forward` (or :func:`unary_backward` with ``back``, ``size`` gradients at ``ga``) on
    ``size`` contiguous float64 (``f64``) or float32 elements at ``xa``, into ``oa``."""
    if f64:
        x, o = carray(_voidptr(xa), (size,), np.float64), carray(_voidptr(oa), (size,), np.float64)
        if back:
            unary_backward(x, carray(_voidptr(ga), (size,), np.float64), o, op)
        else:
            unary_forward(x, o, op)
    else:
        x32, o32 = carray(_voidptr(xa), (size,), np.float32), carray(_voidptr(oa), (size,), np.float32)
        if back:
            unary_backward(x32, carray(_voidptr(ga), (size,), np.float32), o32, op)
        else:
            unary_forward(x32, o32, op)


@_njit()
def ptr_logaddexp(f64: bool, aa: int, ba: int, oa: int, size: int) -> None:
    """:func:`logaddexp_forward` on ``size`` contiguous float64 (``f64``) or float32 elements at ``aa``, ``ba``."""
    if f64:
        logaddexp_forward(carray(_voidptr(aa), (size,), np.float64), carray(_voidptr(ba), (size,), np.float64),
                          carray(_voidptr(oa), (size,), np.float64))
    else:
        logaddexp_forward(carray(_voidptr(aa), (size,), np.float32), carray(_voidptr(ba), (size,), np.float32),
                          carray(_voidptr(oa), (size,), np.float32))
