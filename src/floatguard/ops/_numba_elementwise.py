"""Compiled (numba) elementwise loss kernels: binary cross-entropy with logits, softplus, log_sigmoid,
log1mexp and logaddexp, forward and backward, and a raw-pointer entry for small tensors.

Elements are float32, float64 or bfloat16 bits (see :mod:`._numba_loss_dtypes`), computed in float64
registers and rounded once to the output's dtype.

Without numba this module imports (the kernels are plain functions, never called) and callers use the
generic path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._numba_bits import _CONTRACT, _SUM, _njit, carray
from ._numba_bits import _voidptr as _voidptr_intrinsic
from ._numba_log import inline
from ._numba_log import log1p as _log1p
from ._numba_loss_dtypes import _exp_for, _exp_np, _ld, _log1p_for, _recip_for, _st, select

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
def bce_forward(x: np.ndarray, y: np.ndarray, w: np.ndarray, pw: np.ndarray, out: np.ndarray, store: bool) -> float:
    """Rows ``(R, C)``: ``w (pw y softplus(-x) + (1 - y) softplus(x))``, a zero coefficient dropping its term.

    ``w`` and ``pw`` are ``(R, C)``, ``(1, C)`` or ``(0, 0)`` (absent). With ``store`` the
    elements go to ``out`` (float64 ``(R, C)``); returns their sum either way.
    """
    r_count, n = x.shape
    total, comp = 0.0, 0.0
    ones = np.ones(n)
    for r in range(r_count):
        o = out[r] if store else ones
        acc = _bce_row(x[r], y[r], _row_or_ones(w, r, ones), _row_or_ones(pw, r, ones), o, store)
        total, comp = _add2(total, comp, acc)
    return total + comp


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


@_njit()
def bce_backward(x: np.ndarray, y: np.ndarray, w: np.ndarray, pw: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    """``out = g w (sigmoid(x) (1 - y) - pw y sigmoid(-x))``; ``g`` is ``(R, C)`` or ``(1, 1)``."""
    r_count, n = x.shape
    scalar = g.size == 1
    ones = np.ones(n)
    gs = g[0, 0] if scalar else 1.0
    for r in range(r_count):
        gr = ones if scalar else g[r]
        _bce_grad_row(x[r], y[r], _row_or_ones(w, r, ones), _row_or_ones(pw, r, ones), gr, gs, out[r])


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
def bce_forward_grad(x: np.ndarray, y: np.ndarray, gs: float, grad: np.ndarray) -> float:
    """:func:`bce_forward` without weights (the sum of the losses) that also writes ``grad``, the gradient
    :func:`bce_backward` gives for ``g = gs``: ``gs (sigmoid(x) (1 - y) - y sigmoid(-x))``, rounded once.

    ``loss.backward()`` of a mean or a sum passes 1, and the backward hands this over instead of computing
    every ``exp(-|x|)`` a second time.
    """
    total, comp = 0.0, 0.0
    for r in range(x.shape[0]):
        total, comp = _add2(total, comp, _bce_row_grad(x[r], y[r], gs, grad[r]))
    return total + comp


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
    else:  # libm expm1 and log near 0: a scalar loop
        for i in range(x.size):
            v = _ld(x[i])
            if v > -0.6931471805599453:
                res = np.log(-np.expm1(v) + 0.0)
            elif v == v:
                res = _log1p(-_exp_np(v))
            else:
                res = v
            _st(out, i, res)


@_njit(_CONTRACT)
def _sigmoid_grad_loop(x: np.ndarray, g: np.ndarray, out: np.ndarray, neg: bool) -> None:
    """``out = g sigmoid(+-x)``; ``g`` of one entry stands for all (an expanded scalar gradient)."""
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


@_njit(_CONTRACT)
def unary_backward(x: np.ndarray, g: np.ndarray, out: np.ndarray, op: int) -> None:
    """Gradients: softplus ``sigmoid(x)``, log_sigmoid ``sigmoid(-x)``, log1mexp ``-1 / expm1(-x)``, times ``g``."""
    if op == 0 or op == 1:
        _sigmoid_grad_loop(x, g, out, op == 1)
    else:
        for i in range(x.size):
            v = _ld(x[i])
            d = -1.0 / (np.expm1(-v) + 0.0) if not v > 0 else np.nan  # -inf at 0 (the +0.0)
            _st(out, i, _ld(g[i if g.size > 1 else 0]) * d)


@inline
def _hi_lo(av: float, bv: float) -> tuple[bool, float, float, bool]:
    """The larger and the smaller of ``a``, ``b`` (a NaN ``a`` counts as the larger), and whether ``max`` is finite."""
    a_hi = (av >= bv) | (av != av)
    hi = select(a_hi, av, bv)
    lo = select(a_hi, bv, av)
    return a_hi, hi, lo, hi - hi == 0.0


@_njit(_CONTRACT)
def logaddexp_forward(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``max + log1p(exp(min - max))``; ``-inf`` with ``-inf`` is ``-inf``, ``+inf`` wins, NaN propagates."""
    for i in range(a.size):
        _, hi, lo, fin = _hi_lo(_ld(a[i]), _ld(b[i]))
        res = hi + _log1p(_exp_np(select(fin, lo - hi, 0.0)))  # can cancel (hi < 0): the table exp always
        _st(out, i, select(lo == lo, select(fin, res, hi), lo))


@_njit(_CONTRACT)
def logaddexp_backward(a: np.ndarray, b: np.ndarray, g: np.ndarray, ga: np.ndarray, gb: np.ndarray) -> None:
    """``g sigmoid(a - b)`` and ``g sigmoid(b - a)``; 0 and 0 where both are ``-inf``; ``g`` of one entry: for all."""
    if g.size == 1 and a.size != 1:
        _lae_grad_loop(a, b, np.full(a.size, _ld(g[0])), ga, gb)
    else:
        _lae_grad_loop(a, b, g, ga, gb)


@_njit(_CONTRACT)
def _lae_grad_loop(a: np.ndarray, b: np.ndarray, g: np.ndarray, ga: np.ndarray, gb: np.ndarray) -> None:
    for i in range(a.size):
        gv = _ld(g[i])
        a_hi, hi, lo, fin = _hi_lo(_ld(a[i]), _ld(b[i]))
        e = _exp_for(a, select(fin, lo - hi, 0.0))
        e = select(lo == lo, e, lo)
        q = _recip_for(a, 1.0 + e)
        # +inf wins; NaN passes through as a value of the max's side; both -inf: no gradient
        s_hi = select(fin, q, select(hi == -np.inf, 0.0, 1.0))
        s_lo = select(fin, e * q, 0.0)
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
