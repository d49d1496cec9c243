"""The cross-entropy kernels' row steps that depend on the storage dtype (the rest sum is logsumexp's,
:func:`._numba_torch._rest_for`): the gradient row,
``p_c - 1``, and the exps a forward keeps for the gradient it writes (float64 rows: the 0.51-ulp table exp;
float32: the short float64 exp; bfloat16 bits: float32 lanes), each a stub that numba compiles, per dtype, as
one of the functions below (``overload``). :mod:`._numba_ce` and :mod:`._numba_ce_fused` build their kernels
from them.

Without numba this module imports and only the plain-Python stubs exist (never called).
"""

from __future__ import annotations

import numpy as np

from ._numba_bits import _CONTRACT, _SUM, AVAILABLE, _encode32, _inline, _load32, _njit, _voidptr, carray
from ._numba_exp import F32, ONE32, _exp32, _exp_f32out
from ._numba_log import select
from ._numba_loss_dtypes import _exp_for, _ld, _st
from ._numba_torch import BLK16, _scale_out


@_njit()
def _no_grad_row(out: np.ndarray, mark: float) -> None:
    """The gradient row of a row that has none (ignored, a non-finite max, ``g_r = 0``): 0, but NaN where ``mark``
    is NaN, the residual max (``m``) :func:`_numba_ce._no_row` leaves for a row whose loss is NaN (a NaN logit):
    a NaN loss keeps a NaN gradient, as PyTorch's (a finite gradient beside it lets a gradient scaler take the
    step)."""
    v = 0.0 if mark == mark else mark
    for i in range(out.size):
        _st(out, i, v)


def _pc_minus_1_for(row: np.ndarray, d: float) -> float:
    """``p_c - 1 = expm1(d)``, ``d = (x_c - m) - log1p(s)``, without cancellation where ``p_c`` is near 1 for
    float32/bfloat16 rows (the gradient :func:`ce_plain_forward_grad` writes); float64 rows keep ``exp(d) - 1``,
    which the device composition (:mod:`._torch_ce_device`) matches and ``test_device_path`` compares."""
    return float(np.expm1(d))


def _grad_row_for(row: np.ndarray, m: float, lg: float, gr: float, out: np.ndarray) -> None:
    """``out_i = gr exp((row_i - m) - lg)`` rounded once: float64 registers for float32/float64 rows,
    float32 arithmetic for bfloat16 ones (int16 bits; relative ~2^-21 before the rounding to 8 bits)."""
    out[:] = gr * np.exp((row - m) - lg)


@_njit(_CONTRACT)
def _plain_grad_row(row: np.ndarray, shift: float, gr: float, out: np.ndarray) -> None:
    for i in range(row.size):
        _st(out, i, gr * _exp_for(row, _ld(row[i]) - shift))


@_inline(_CONTRACT)
def _grad_row32(row: np.ndarray, m: np.float32, lg: np.float32, gr: np.float32, out: np.ndarray) -> None:
    """``out_i = gr exp((row_i - m) - lg)`` of bfloat16 bits in float32 arithmetic (16 lanes): ``row_i - m``
    of two 8-bit values is exact or off by ``2^-24 |d|``, so the exp's relative error stays ~2^-21."""
    for i in range(row.size):
        out[i] = _encode32(gr * _exp32((_load32(row[i]) - m) - lg), out)


if AVAILABLE:
    from numba import types
    from numba.extending import overload

    @overload(_pc_minus_1_for, inline="always")
    def _pc_minus_1_for_impl(row, d):  # unannotated: numba compares signatures
        if row.dtype == types.float64:
            return lambda row, d: _exp_for(row, d) - 1.0
        return lambda row, d: np.expm1(d)

    @overload(_grad_row_for, inline="always")
    def _grad_row_for_impl(row, m, lg, gr, out):  # unannotated: numba compares signatures
        if row.dtype == types.int16:
            return lambda row, m, lg, gr, out: _grad_row32(row, np.float32(m), np.float32(lg), np.float32(gr), out)
        return lambda row, m, lg, gr, out: _plain_grad_row(row, m + lg, gr, out)






@_inline(_SUM)
def _rest_store_gap(row: np.ndarray, m: float, e: np.ndarray) -> tuple[float, float, float]:
    """:func:`._numba_torch._rest_f32out` (float32 rows) that also keeps ``e_i = exp(row_i - m)`` (1 at the max)
    and sums ``m - row_i`` (the unweighted label smoothing's gap sum; dead code, dropped, where unused)."""
    acc = 0.0
    ties = 0.0
    gap = 0.0
    for i in range(row.size):
        d = _ld(row[i]) - m
        at = d == 0.0
        v = _exp_f32out(d)  # exactly 1 at d = 0
        e[i] = v
        ties += select(at, 1.0, 0.0)
        acc += select(at, 0.0, v)
        gap -= d
    return acc, ties, gap


@_inline(_SUM)
def _rest_store32_gap_blk(seg: np.ndarray, m: np.float32, e: np.ndarray) -> tuple[np.float32, np.float32,
                                                                                   np.float32]:
    acc = F32(0.0)
    ties = F32(0.0)
    gap = F32(0.0)
    for i in range(seg.size):
        d = _load32(seg[i]) - m
        at = d == F32(0.0)
        v = _exp32(d)  # exactly 1 at d = 0
        e[i] = v
        ties += select(at, ONE32, F32(0.0))
        acc += select(at, F32(0.0), v)
        gap -= d
    return acc, ties, gap


@_inline()
def _rest_store32_gap(row: np.ndarray, m: np.float32, e: np.ndarray) -> tuple[float, float, float]:
    """:func:`._numba_torch._rest32` (bfloat16 bits, float32 arithmetic) that also keeps ``e_i`` (float32) and sums
    ``m - row_i`` (float32 lanes over blocks of ``BLK16``: ``row_i - m`` of two bfloat16 values is exact or off by
    ``2^-24`` relative; the block sums go to float64)."""
    total = 0.0
    ties = 0.0
    gap = 0.0
    for b0 in range(0, row.size, BLK16):
        part, t, gp = _rest_store32_gap_blk(row[b0 : b0 + BLK16], m, e[b0 : b0 + BLK16])
        total += np.float64(part)
        ties += np.float64(t)
        gap += np.float64(gp)
    return total, ties, gap


def _rest_store_gap_for(row: np.ndarray, m: float, e: np.ndarray) -> tuple[float, float, float]:
    """:func:`_rest_store_for` and ``sum_i (m - row_i)`` in the same pass (``+inf`` for a ``-inf`` entry)."""
    e[:] = np.exp(row - m)
    return float(np.sum(e[row < m])), float(np.sum(row == m)), float(np.sum(m - row))


def _rest_store_for(row: np.ndarray, m: float, e: np.ndarray) -> tuple[float, float]:
    """``(sum_{x_i < m} e_i, #{x_i = m})`` with ``e_i = exp(row_i - m)`` kept in ``e``: float64 registers for
    float32 rows (``e`` float64), float32 arithmetic for bfloat16 ones (``e`` float32)."""
    e[:] = np.exp(row - m)
    return float(np.sum(e[row < m])), float(np.sum(row == m))


def _row_buffer(x: np.ndarray, n: int) -> np.ndarray:
    """The ``e`` buffer of :func:`_rest_store_for` for rows like ``x``'s."""
    return np.empty(n)


def _scale_for(e: np.ndarray, q: float, out: np.ndarray) -> None:
    """``out_i = e_i q`` rounded once (in float32 for a float32 ``e``)."""
    out[:] = e * q


@_inline(_CONTRACT)
def _scale_row64(o: np.ndarray, gr: float) -> None:
    for i in range(o.size):
        _st(o, i, gr * _ld(o[i]))


@_inline(_CONTRACT)
def _scale_row32(o: np.ndarray, gr: np.float32) -> None:
    for i in range(o.size):
        o[i] = _encode32(gr * _load32(o[i]), o)


def _scale_row_for(o: np.ndarray, gr: float) -> None:
    """``o_i = gr o_i`` in place, rounded once: float64 registers for float32/float64 rows, float32 lanes for
    bfloat16 bits (the product of two 8-bit significands is exact in float32; ``gr`` a bfloat16 upstream
    gradient)."""
    o[:] = o * gr


if AVAILABLE:

    @overload(_scale_row_for, inline="always")
    def _scale_row_for_impl(o, gr):  # unannotated: numba compares signatures
        if o.dtype == types.int16:
            return lambda o, gr: _scale_row32(o, np.float32(gr))
        return lambda o, gr: _scale_row64(o, gr)

    @overload(_rest_store_gap_for, inline="always")
    def _rest_store_gap_for_impl(row, m, e):  # unannotated: numba compares signatures
        if row.dtype == types.int16:
            return lambda row, m, e: _rest_store32_gap(row, np.float32(m), e)
        return lambda row, m, e: _rest_store_gap(row, m, e)

    @overload(_rest_store_for, inline="always")
    def _rest_store_for_impl(row, m, e):  # unannotated: numba compares signatures
        if row.dtype == types.int16:
            return lambda row, m, e: _rest_store32_gap(row, np.float32(m), e)[:2]
        return lambda row, m, e: _rest_store_gap(row, m, e)[:2]

    @overload(_row_buffer, inline="always")
    def _row_buffer_impl(x, n):  # unannotated: numba compares signatures
        if x.dtype == types.int16:
            return lambda x, n: np.empty(n, dtype=np.float32)
        return lambda x, n: np.empty(n)

    @overload(_scale_for, inline="always")
    def _scale_for_impl(e, q, out):  # unannotated: numba compares signatures
        if e.dtype == types.float32:
            return lambda e, q, out: _scale_out(e, np.float32(q), out)
        return lambda e, q, out: _scale_out(e, q, out)


@_njit()
def weights64(wa: int, w64: bool, n: int) -> np.ndarray:
    """The class weights ``(n,)`` at ``wa`` as float64: in place when they are (``w64``), a float64 copy of
    float32 ones; none (an empty array) for ``wa = 0``."""
    if wa == 0:
        return carray(_voidptr(wa), (0,), np.float64)
    if w64:
        return carray(_voidptr(wa), (n,), np.float64)
    w32 = carray(_voidptr(wa), (n,), np.float32)
    w = np.empty(n)
    for i in range(n):
        w[i] = w32[i]
    return w


# -- rows whose max is +inf: the limit of the loss ----------------------------------------------------
@_njit()
def inf_row_loss(row: np.ndarray, c: int, wc: float, w: np.ndarray, weighted: bool, eps: float, trow: np.ndarray,
                 probs: bool) -> float:
    """The loss of a row whose max is ``+inf``: the limit ``sum_i a_i nll_i`` as its ``k`` ``+inf`` entries grow
    together and share the mass (``nll_i = log k`` there, ``+inf`` at the finite entries, as the limit of
    ``log_softmax``), a zero coefficient dropping its term. ``a_i = (1 - eps) w_c [i = c] + eps w_i / C`` for class
    ``c`` of weight ``wc``, ``((1 - eps) t_i + eps / C) w_i`` for probabilities ``trow`` (``w_i = 1``
    unweighted). So ``w_c log k`` for a target among the ``+inf`` entries, ``+inf`` where a finite entry has
    mass (``-inf`` for a negative one, NaN for both signs); never the ``-inf`` of ``-max``."""
    n = row.size
    k = 0.0
    a_inf = 0.0
    pos = False
    neg = False
    for i in range(n):
        wi = np.float64(w[i]) if weighted else 1.0
        if probs:
            a = ((1.0 - eps) * _ld(trow[i]) + eps / n) * wi
        else:
            a = (eps / n) * wi + ((1.0 - eps) * wc if i == c else 0.0)
        if _ld(row[i]) == np.inf:
            k += 1.0
            a_inf += a
        elif a > 0.0:
            pos = True
        elif a < 0.0:
            neg = True
    if pos and neg:
        return np.nan
    if pos:
        return np.inf
    if neg:
        return -np.inf
    return a_inf * np.log(k)
