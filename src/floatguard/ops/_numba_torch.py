"""Kernels of the PyTorch path (:mod:`._torch_fast`): forward and fused backward, every storage dtype.

Rows come in their storage dtype (float64, float32, bfloat16 / float16 viewed as int16 / uint16:
see :mod:`._numba_bits`), so no float64 copy of a tensor is ever made. For float32 outputs the
softmax and log_softmax kernels use :func:`._numba_exp._exp_row` (``_exp_f32out`` clamped, with
no select); ``logsumexp`` (which can cancel: ``m + log1p(s)`` near 0) and every float64 output keep
the 0.51-ulp table ``exp``; bfloat16 and float16 rows run in float32 arithmetic (see the comments there).

Only the entry kernels (``torch_*``, ``ptr_*``) are cached; the helpers are :func:`._numba_bits._inline`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._numba_bits import (
    _CONTRACT,
    _SUM,
    AVAILABLE,
    _encode,
    _encode32,
    _f32_from_bits,
    _inline,
    _load,
    _load32,
    _load_as,
    _nan_bits,
    _njit,
    _round_to,
    _row_max,
    _unkey,
    _voidptr,
    carray,
    intrinsic,
)
from ._numba_exp import (
    BLK,
    F32,
    ONE32,
    _add_inl,
    _exp32,
    _exp32_acc,
    _exp_accurate,
    _exp_clamped,
    _exp_f32out,
    _exp_row,
)

# -- the max of a float32 row, in 32-bit lanes ------------------------------------------------------
# :func:`._numba_bits._row_max` keys every dtype as int64 (8 lanes); numba's typing widens int32
# arithmetic to int64 too, so the float32 steps are LLVM IR on i32 (16 lanes): 0.7x its time.
if AVAILABLE:
    from llvmlite import ir
    from numba import types

    _I32 = ir.IntType(32)

    def _c32(v: int) -> Any:
        return ir.Constant(_I32, v)

    @intrinsic
    def _max_key32(typingctx: Any, km: Any, v: Any) -> Any:
        """``max(km, key(v))``, ``key`` the float32 bits with the magnitude flipped when negative: the order
        of the values (NaNs beyond the infinities)."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            b = builder.bitcast(args[1], _I32)
            k = builder.xor(b, builder.and_(builder.ashr(b, _c32(31)), _c32(0x7FFFFFFF)))
            return builder.select(builder.icmp_signed(">", k, args[0]), k, args[0])

        return types.int32(types.int32, types.float32), codegen

    @intrinsic
    def _max_mag32(typingctx: Any, mm: Any, v: Any) -> Any:
        """``max(mm, |v|)`` of the magnitude bits of a float32 (a NaN has the largest ones); a row holds a NaN
        when the max is above the bits of ``inf``. (An or of ``isnan`` flags took 1.4x the max pass's time.)"""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            mag = builder.and_(builder.bitcast(args[1], _I32), _c32(0x7FFFFFFF))
            return builder.select(builder.icmp_signed(">", mag, args[0]), mag, args[0])

        return types.int32(types.int32, types.float32), codegen

    _I16 = ir.IntType(16)

    @intrinsic
    def _max_key16(typingctx: Any, km: Any, v: Any) -> Any:
        """``max(km, key(v))`` of bfloat16 (int16) or float16 (uint16) bits, ``key`` as in :func:`_max_key32`,
        in 16-bit integer IR: 32 lanes per AVX-512 vector (numba's typing would widen it to int64, 8 lanes)."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            b = args[1]
            k = builder.xor(b, builder.and_(builder.ashr(b, ir.Constant(_I16, 15)), ir.Constant(_I16, 0x7FFF)))
            return builder.select(builder.icmp_signed(">", k, args[0]), k, args[0])

        return types.int16(types.int16, v), codegen

    @intrinsic
    def _max_mag16(typingctx: Any, mm: Any, v: Any) -> Any:
        """``max(mm, |v|)`` of the magnitude bits of 16-bit float bits (a NaN has the largest ones)."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            mag = builder.and_(args[1], ir.Constant(_I16, 0x7FFF))
            return builder.select(builder.icmp_signed(">", mag, args[0]), mag, args[0])

        return types.int16(types.int16, v), codegen
else:  # never called
    _max_key32 = _max_mag32 = _max_key16 = _max_mag16 = None

_KMIN32, _ZERO32, _MAG32, _INF32 = np.int32(-(2**31)), np.int32(0), np.int32(0x7FFFFFFF), np.int32(0x7F800000)
_KMIN16, _ZERO16 = np.int16(-(2**15)), np.int16(0)


@_inline()
def _row_max32(row: np.ndarray) -> float:
    """:func:`._numba_bits._row_max` of a float32 row (NaN if the row holds one), in 32-bit lanes."""
    km = _KMIN32
    mm = _ZERO32
    for i in range(row.size):
        km = _max_key32(km, row[i])
        mm = _max_mag32(mm, row[i])
    if mm > _INF32:
        return np.nan
    return np.float64(_f32_from_bits(np.int32(km ^ ((km >> 31) & _MAG32))))


@_inline()
def _row_max16(row: np.ndarray) -> float:
    """:func:`._numba_bits._row_max` of a bfloat16 (int16) or float16 (uint16) row, in 16-bit lanes: the
    max of the keys and the max of the magnitudes (a NaN if that one is a NaN's)."""
    km = _KMIN16
    mm = _ZERO16
    for i in range(row.size):
        km = _max_key16(km, row[i])
        mm = _max_mag16(mm, row[i])
    if _nan_bits(row.dtype.type(mm)):
        return np.nan
    return _unkey(np.int64(km), row[0])


@_inline(_SUM)
def _sum_f32out(row: np.ndarray, m: float, e: np.ndarray) -> float:
    """``e_i = exp(row_i - m)`` (:func:`._numba_exp._exp_row`) and their sum (the max term included: exactly 1 each),
    for float32 rows with a finite max."""
    acc = 0.0
    for i in range(row.size):
        v = _exp_row(_load(row[i]) - m)
        e[i] = v
        acc += v
    return acc


@_inline(_SUM)
def _sum_all_f32out(row: np.ndarray, m: float) -> float:
    """``1 + s = sum exp(row_i - m)`` (:func:`._numba_exp._exp_row`), the max term(s) included, for float32 rows."""
    acc = 0.0
    for i in range(row.size):
        acc += _exp_row(_load(row[i]) - m)
    return acc


@_inline()
def _log1p_rest(row: np.ndarray, m: float, exact: bool) -> tuple[float, bool]:
    """``log1p(s)``, ``s = sum_{i != k} exp(row_i - m)``, for the log_softmax of a float32 row, and whether the
    next row should be summed without the max term straight away.

    ``s`` is taken as ``(1 + s) - 1`` from one sum with no tie test (:func:`_sum_all_f32out`: the max term is
    exactly 1, ties add exactly 1 each, and the subtraction is exact). Its error is the terms' ``2^-29.27 s``
    (:func:`._numba_exp._exp_row`) plus the roundings of the one partial sum (of the 8-lane reduction) that holds
    the 1: at most ``n/8`` additions of ``2^-53`` each. Below ``s = n 2^-24`` that could exceed ``2^-32 s`` (a
    confident row, whose largest output ``-log1p(s)`` is near 0 and needs ``s`` relative): such a row is summed
    without the max term (:func:`_rest_f32out`, every term relative to ``s``, a tie test per entry). Otherwise
    the error of ``s``, and of ``log1p(s)``, stays under ``2^-29`` relative: 2^-5 ulp of the float32 result.

    Confident rows come in batches (a trained classifier): after one, the next row takes the exact sum first
    (``exact``), and the one sum again only once a row is not confident, so a batch of them costs one pass
    per row, not two.
    """
    thr = np.float64(row.size) * 2.0**-24
    if not exact:
        s = _sum_all_f32out(row, m) - 1.0
        if s >= thr:
            u = 1.0 + s
            return np.log(u) + (s - (u - 1.0)), False
    rest, ties = _rest_f32out(row, m)
    s = rest + np.float64(ties - 1)
    return np.log1p(s), s < thr


@_inline(_SUM)
def _rest_f32out(row: np.ndarray, m: float) -> tuple[float, np.int64]:
    """``sum exp(row_i - m)`` (:func:`._numba_exp._exp_f32out`) over entries below the max, and the count
    of entries at it, for float32 rows."""
    acc = 0.0
    ties = np.int64(0)
    for i in range(row.size):
        d = _load(row[i]) - m
        at = d == 0.0
        ties += np.int64(at)
        acc += 0.0 if at else _exp_f32out(d)
    return acc, ties


@_inline(_SUM)
def _rest_accurate_block(seg: np.ndarray, m: float) -> tuple[float, np.int64]:
    acc = 0.0
    ties = np.int64(0)
    for i in range(seg.size):
        d = _load(seg[i]) - m
        at = d == 0.0
        ties += np.int64(at)
        acc += _exp_accurate(-np.inf if at else d)
    return acc, ties


@_inline()
def _rest_accurate(row: np.ndarray, m: float) -> float:
    """``s = sum_{i != k} exp(row_i - m)`` with the table exp; entries tied at the max add exactly 1."""
    total, comp, ties = 0.0, 0.0, 0
    for b0 in range(0, row.size, BLK):
        part, t = _rest_accurate_block(row[b0 : b0 + BLK], m)
        total, comp = _add_inl(total, comp, part)
        ties += t
    return (total + comp) + np.float64(ties - 1)


# The output loops below serve both working precisions: float64 values (float32 / float64 rows) or
# float32 ones (bfloat16 / float16 rows); the type of ``q``, ``m`` or ``dot`` picks the load and the rounding.
@_inline(_CONTRACT)
def _scale_out(e: np.ndarray, q: float, out: np.ndarray) -> None:
    """``out_i = e_i q``, rounded once to ``out``'s dtype."""
    for i in range(e.size):
        out[i] = _round_to(e[i] * q, out)


@_inline(_CONTRACT)
def _log_out(row: np.ndarray, m: float, log1p_s: float, out: np.ndarray) -> None:
    """``out_i = (row_i - m) - log1p(s)``, rounded once to ``out``'s dtype."""
    for i in range(row.size):
        out[i] = _round_to((_load_as(row[i], m) - m) - log1p_s, out)


@_njit()
def torch_softmax_fwd(x: np.ndarray, out: np.ndarray, finite: np.ndarray, log: bool) -> bool:
    """softmax (``e / (1 + s)``) or log_softmax (``(x - m) - log1p(s)``) rows of float32 ``x`` into
    ``out`` (float32), short exp, one rounding per entry (16-bit rows: :func:`torch_softmax_fwd16`).

    ``finite[r]`` says whether row ``r`` has a finite max; other rows are left untouched. Returns
    whether every row has one.
    """
    r_count, n = x.shape
    e = np.empty(0 if log else n)
    ok = True
    exact = False  # log: the last row was confident (see _log1p_rest)
    for r in range(r_count):
        row = x[r]
        m = _row_max32(row)
        fin = np.isfinite(m)
        finite[r] = fin
        if not fin:
            ok = False
            continue
        if log:
            l1p, exact = _log1p_rest(row, m, exact)
            _log_out(row, m, l1p, out[r])
        else:
            total = _sum_f32out(row, m, e)  # 1 + s, summed with the max term(s) inside
            _scale_out(e, 1.0 / total, out[r])
    return ok


def _rest_for(row: np.ndarray, m: float) -> float:
    """``s = sum_{i != k} exp(row_i - m)`` (ties at the max add exactly 1) for :func:`torch_logsumexp_fwd` and the
    cross-entropy kernels (:mod:`._numba_ce_rows`): the
    0.51-ulp table exp for float64 rows; the short exp in float64 registers for float32 rows (relative 2^-32, as
    the cross-entropy's forward; the table exp took 2.8 ms at 1024×2048, torch.logsumexp's own time, against 1.5);
    float32 lanes for 16-bit rows (relative ~2^-21, 2^-13 of their ulp)."""
    return float(np.sum(np.exp(row - m))) - 1.0


if AVAILABLE:
    from numba import types as _types
    from numba.extending import overload as _overload

    @_overload(_rest_for, inline="always")
    def _rest_for_impl(row, m):  # unannotated: numba compares signatures
        if row.dtype == _types.float64:
            return lambda row, m: _rest_accurate(row, m)
        if row.dtype == _types.float32:

            def short(row, m):
                acc, ties = _rest_f32out(row, m)
                return acc + np.float64(ties - 1)

            return short

        def short16(row, m):
            acc, ties = _rest32(row, np.float32(m))  # the max is an entry: exact in float32
            return acc + (ties - 1.0)

        return short16


@_inline(_SUM)
def _sum_all_f32acc(row: np.ndarray, m: float) -> float:
    """``1 + s = sum exp(row_i - m)`` of a float32 row, the max term(s) included (exactly 1 each, no tie test),
    the terms by the 2^-35 short exp clamped at -700 with no underflow select
    (:func:`._numba_exp._exp_clamped`: ``exp(-700)`` for an entry further below the max, nothing beside the 1)."""
    acc = 0.0
    for i in range(row.size):
        acc += _exp_clamped(_load(row[i]) - m)
    return acc


def _rest_lse(row: np.ndarray, m: float) -> float:
    """``s`` for :func:`torch_logsumexp_fwd`: :func:`_rest_for`, but for float32 rows ``(1 + s) - 1`` from one sum
    with no tie test (:func:`_sum_all_f32acc`, as the log_softmax forward sums): terms relative ``2^-35``, the
    8-lane sum's roundings an absolute ``n 2^-56`` or so; 0.8x the time of the pass with a tie test per entry
    (1024×2048; the degree-3 exp of :func:`_sum_all_f32out`, 2^-29.27, would give 0.74x and results 0.51 ulp off)."""
    return float(np.sum(np.exp(row - m))) - 1.0


if AVAILABLE:

    @_overload(_rest_lse, inline="always")
    def _rest_lse_impl(row, m):  # unannotated: numba compares signatures
        if row.dtype == _types.float32:
            return lambda row, m: _sum_all_f32acc(row, m) - 1.0
        return lambda row, m: _rest_for(row, m)


@_njit()
def torch_logsumexp_fwd(x: np.ndarray, lse: np.ndarray) -> None:
    """``lse[r] = m + log1p(s)`` (float64) of rows of any storage dtype (:func:`_rest_lse`); the max where not
    finite. The short exps leave ``log1p(s)`` an absolute ``2^-35 s / (1 + s)`` off (float32 rows, plus the
    sum's ``n 2^-56``; ``2^-21`` for 16-bit ones), ``2^-8`` ulp of the result or less unless ``m < 0`` cancels
    it (``|lse| < s / (1 + s) + n 2^-24``, a result near 0): such a row is summed again with the table exp."""
    for r in range(x.shape[0]):
        row = x[r]
        m = _row_max(row)
        if not np.isfinite(m):
            lse[r] = m
            continue
        s = _rest_lse(row, m)
        v = m + np.log1p(s)
        if abs(v) < s / (1.0 + s) + np.float64(row.size) * 2.0**-24:
            v = m + np.log1p(_rest_accurate(row, m))
        lse[r] = v


@_inline(_SUM)
def _dot_ld(a: np.ndarray, b: np.ndarray) -> float:
    acc = 0.0
    for i in range(a.size):
        acc += _load(a[i]) * _load(b[i])
    return acc


@_inline(_SUM)
def _sum_ld(a: np.ndarray) -> float:
    acc = 0.0
    for i in range(a.size):
        acc += _load(a[i])
    return acc


@_inline(_CONTRACT)
def _softmax_grad_row(p: np.ndarray, g: np.ndarray, dot: float, grad: np.ndarray) -> None:
    """``grad_i = p_i (g_i - dot)``, in the precision of ``dot`` (see :func:`_scale_out`)."""
    for i in range(p.size):
        grad[i] = _round_to(_load_as(p[i], dot) * (_load_as(g[i], dot) - dot), grad)


@_inline(_CONTRACT)
def _softmax_grad_row32(p: np.ndarray, g: np.ndarray, dot: float, grad: np.ndarray) -> None:
    """``grad_i = p_i (g_i - dot)`` of float32 rows in float32 lanes (16 per vector, no conversions), ``dot``
    (float64) rounded to float32 once: three roundings, so ``grad_i`` is within ``1 + 0.5 kappa'_i`` ulp,
    ``kappa'_i = |dot| / |g_i - dot|`` (the half ulp of ``dot`` that the subtraction exposes), inside the
    bound ``2 max(1, kappa_i)`` (``kappa_i >= (|g_i| + |dot|) / |g_i - dot|``, see
    :mod:`floatguard.testing.gradients`). 0.63-0.86x the float64 backward's time (8192×256, 1024×2048)."""
    d32 = F32(dot)
    for i in range(p.size):
        grad[i] = p[i] * (g[i] - d32)


@_inline(_CONTRACT)
def _log_softmax_grad_row(o: np.ndarray, g: np.ndarray, total: float, grad: np.ndarray, short: bool) -> None:
    """``grad_i = g_i - exp(o_i) sum(g)``, one rounding. ``short`` (float32 rows): in float32 lanes, the
    0.83-ulp :func:`._numba_exp._exp32_acc` and ``sum(g)`` rounded to float32, so ``grad_i`` is within
    ``0.5 + 1.33 kappa_i`` ulp, ``kappa_i = exp(o_i) |sum(g)| / |grad_i|`` (at most 1 where nothing cancels);
    float64 otherwise."""
    if short:
        t32 = F32(total)
        for i in range(o.size):
            grad[i] = F32(g[i]) - _exp32_acc(F32(o[i])) * t32
    else:
        for i in range(o.size):
            grad[i] = _encode(_load(g[i]) - _exp_accurate(_load(o[i])) * total, grad)


@_inline(_CONTRACT)
def _lse_grad_row(x: np.ndarray, lse: float, g: float, grad: np.ndarray, short: bool) -> None:
    """``grad_i = g exp(x_i - lse)`` rounded once. ``short`` (float32 and 16-bit rows): the 2^-35 short exp with
    ``x_i - lse`` clamped at -700 and no underflow select (0.9x the time): below, ``|g| exp(-700) < 2^-880``
    rounds to a zero of ``g``'s sign in these dtypes, as the exact value does."""
    if short:
        for i in range(x.size):
            grad[i] = _encode(g * _exp_clamped(_load(x[i]) - lse), grad)
    else:
        for i in range(x.size):
            grad[i] = _encode(g * _exp_accurate(_load(x[i]) - lse), grad)


@_inline()
def _no_grad_row(grad: np.ndarray, nan: bool) -> None:
    """The gradient of a row with no finite max: 0 (``-inf`` and ``+inf`` rows: their values are limits), NaN for
    a NaN row (``nan``), as PyTorch's and jax.nn's: a finite gradient beside a NaN value lets a gradient scaler or an
    optimizer's check take the step."""
    v = np.nan if nan else 0.0
    for i in range(grad.size):
        grad[i] = _encode(v, grad)


@_njit()
def torch_softmax_bwd(
    out: np.ndarray, g: np.ndarray, finite: np.ndarray, grad: np.ndarray, log: bool, short: bool
) -> None:
    """Fused backward of softmax (``p (g - sum(g p))``) or log_softmax (``g - exp(o) sum(g)``), per row,
    one rounding to ``grad``'s dtype; on rows where ``finite`` is False 0, NaN for NaN rows (a NaN output).
    float64 in registers, but for float32 rows (``short``): the sums in float64, the entries in float32 lanes, see
    :func:`_softmax_grad_row32` and :func:`_log_softmax_grad_row`.

    ``out``, ``g`` and ``grad`` share one storage dtype; ``short`` (float32 rows) picks the short exp.
    A ``finite`` of one entry holds for every row.
    """
    one = finite.size == 1
    for r in range(out.shape[0]):
        if not finite[0 if one else r]:
            first = _load(out[r, 0])
            _no_grad_row(grad[r], first != first)
        elif log:
            _log_softmax_grad_row(out[r], g[r], _sum_ld(g[r]), grad[r], short)
        elif short:
            _softmax_grad_row32(out[r], g[r], _dot_ld(g[r], out[r]), grad[r])
        else:
            _softmax_grad_row(out[r], g[r], _dot_ld(g[r], out[r]), grad[r])


@_njit()
def torch_logsumexp_bwd(x: np.ndarray, lse: np.ndarray, g: np.ndarray, grad: np.ndarray, short: bool) -> None:
    """``grad = g exp(x - lse)`` (the softmax), per row, from float64 ``lse`` and ``g``; 0 where ``lse``
    is infinite, NaN where it is NaN. ``short`` (not for float64) picks the short exp."""
    for r in range(x.shape[0]):
        if np.isfinite(lse[r]):
            _lse_grad_row(x[r], lse[r], g[r], grad[r], short)
        else:
            _no_grad_row(grad[r], lse[r] != lse[r])


BLK16 = 512  # float32 partial sums run over blocks this long, then go to a float64 sum
# (each block is a helper on a slice: with the block loop in the same function LLVM does not vectorize)


@_inline(_SUM)
def _exp_sum32_blk(seg: np.ndarray, m: float, e: np.ndarray) -> np.float32:
    acc = F32(0.0)
    for i in range(seg.size):
        v = _exp32(_load32(seg[i]) - m)
        e[i] = v
        acc += v
    return acc


@_inline()
def _sum32_store(row: np.ndarray, m: float, e: np.ndarray) -> float:
    """``e_i = exp(row_i - m)`` in float32 and their sum (float32 within blocks, float64 across)."""
    total = 0.0
    for b0 in range(0, row.size, BLK16):
        total += np.float64(_exp_sum32_blk(row[b0 : b0 + BLK16], m, e[b0 : b0 + BLK16]))
    return total


@_inline(_SUM)
def _rest32_blk(seg: np.ndarray, m: float) -> tuple[np.float32, np.float32]:
    acc = F32(0.0)
    ties = F32(0.0)  # counted in float32 (exact below 2^24): an int64 counter halves the vector lanes
    for i in range(seg.size):
        d = _load32(seg[i]) - m
        at = d == F32(0.0)
        ties += ONE32 if at else F32(0.0)
        acc += F32(0.0) if at else _exp32(d)
    return acc, ties


@_inline()
def _rest32(row: np.ndarray, m: float) -> tuple[float, float]:
    """``sum exp(row_i - m)`` (float32 exp and block sums, float64 across) over entries below the max,
    and the ties (a whole float64)."""
    total = 0.0
    ties = 0.0
    for b0 in range(0, row.size, BLK16):
        part, t = _rest32_blk(row[b0 : b0 + BLK16], m)
        total += np.float64(part)
        ties += np.float64(t)
    return total, ties


@_njit()
def torch_softmax_fwd16(x: np.ndarray, out: np.ndarray, finite: np.ndarray, log: bool) -> bool:
    """:func:`torch_softmax_fwd` for bfloat16 / float16 rows, in float32 arithmetic (float64 sums)."""
    r_count, n = x.shape
    e = np.empty(n, dtype=np.float32)
    ok = True
    for r in range(r_count):
        row = x[r]
        m = _row_max16(row)
        fin = np.isfinite(m)
        finite[r] = fin
        if not fin:
            ok = False
            continue
        m32 = F32(m)  # exact: the max is an entry
        if log:
            s, ties = _rest32(row, m32)
            _log_out(row, m32, F32(np.log1p(s + np.float64(ties - 1))), out[r])
        else:
            _scale_out(e, F32(1.0 / _sum32_store(row, m32, e)), out[r])
    return ok


@_inline(_SUM)
def _dot32_blk(a: np.ndarray, b: np.ndarray) -> np.float32:
    acc = F32(0.0)
    for i in range(a.size):
        acc += _load32(a[i]) * _load32(b[i])  # the product of two 8- or 11-bit values: exact
    return acc


@_inline()
def _dot32(a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for b0 in range(0, a.size, BLK16):
        total += np.float64(_dot32_blk(a[b0 : b0 + BLK16], b[b0 : b0 + BLK16]))
    return total


@_inline(_SUM)
def _sum32_blk(a: np.ndarray) -> np.float32:
    acc = F32(0.0)
    for i in range(a.size):
        acc += _load32(a[i])
    return acc


@_inline()
def _sum32(a: np.ndarray) -> float:
    total = 0.0
    for b0 in range(0, a.size, BLK16):
        total += np.float64(_sum32_blk(a[b0 : b0 + BLK16]))
    return total


@_inline(_CONTRACT)
def _log_softmax_grad32(o: np.ndarray, g: np.ndarray, total: float, grad: np.ndarray) -> None:
    for i in range(o.size):
        grad[i] = _encode32(_load32(g[i]) - _exp32(_load32(o[i])) * total, grad)


@_inline(_CONTRACT)
def _lse_grad32(x: np.ndarray, lse: float, g: float, grad: np.ndarray) -> None:
    for i in range(x.size):
        grad[i] = _encode32(g * _exp32(F32(_load(x[i]) - lse)), grad)  # x - lse in float64, then rounded


@_njit()
def torch_softmax_bwd16(out: np.ndarray, g: np.ndarray, finite: np.ndarray, grad: np.ndarray, log: bool) -> None:
    """:func:`torch_softmax_bwd` for bfloat16 / float16 rows, in float32 arithmetic (float64 sums)."""
    one = finite.size == 1
    for r in range(out.shape[0]):
        if not finite[0 if one else r]:
            first = _load(out[r, 0])
            _no_grad_row(grad[r], first != first)
        elif log:
            _log_softmax_grad32(out[r], g[r], F32(_sum32(g[r])), grad[r])
        else:
            _softmax_grad_row(out[r], g[r], F32(_dot32(g[r], out[r])), grad[r])


@_njit()
def torch_logsumexp_bwd16(x: np.ndarray, lse: np.ndarray, g: np.ndarray, grad: np.ndarray) -> None:
    """:func:`torch_logsumexp_bwd` for bfloat16 / float16 rows, float32 exp."""
    for r in range(x.shape[0]):
        if np.isfinite(lse[r]):
            _lse_grad32(x[r], lse[r], F32(g[r]), grad[r])
        else:
            _no_grad_row(grad[r], lse[r] != lse[r])


# -- entry points on raw pointers (the per-call cost of a small tensor) -----------------------------
# torch tensors pass ``data_ptr()`` and their shape: no NumPy views to make (~0.7 us each) and only
# integers for numba to unbox. ``code`` is the storage dtype: 0 float32, 1 bfloat16, 2 float16,
# 3 float64 (index into STORAGE_CODES); every entry compiles the kernel for each of them.
STORAGE_CODES = ("float32", "bfloat16", "float16", "float64")



@_njit()
def ptr_softmax_fwd(code: int, xa: int, oa: int, fa: int, r: int, n: int, log: bool) -> bool:
    """:func:`torch_softmax_fwd` on C-contiguous (r, n) rows at ``xa`` / ``oa``, ``finite`` (r,) at ``fa``
    (codes 0, 1, 2 only: float64 takes the table-exp kernels)."""
    fin = carray(_voidptr(fa), (r,), np.bool_)
    if code == 0:
        return torch_softmax_fwd(carray(_voidptr(xa), (r, n), np.float32), carray(_voidptr(oa), (r, n), np.float32),
                                 fin, log)
    if code == 1:
        return torch_softmax_fwd16(carray(_voidptr(xa), (r, n), np.int16), carray(_voidptr(oa), (r, n), np.int16),
                                   fin, log)
    return torch_softmax_fwd16(carray(_voidptr(xa), (r, n), np.uint16), carray(_voidptr(oa), (r, n), np.uint16),
                               fin, log)


@_njit()
def ptr_softmax_bwd(code: int, oa: int, ga: int, fa: int, nf: int, gra: int, r: int, n: int, log: bool) -> None:
    """:func:`torch_softmax_bwd` on rows at ``oa`` (output), ``ga`` (incoming grad), ``gra`` (result) and
    ``finite`` (``nf`` entries: 1 or r) at ``fa``."""
    fin = carray(_voidptr(fa), (nf,), np.bool_)
    s = (r, n)
    if code == 0:
        torch_softmax_bwd(carray(_voidptr(oa), s, np.float32), carray(_voidptr(ga), s, np.float32), fin,
                          carray(_voidptr(gra), s, np.float32), log, True)
    elif code == 1:
        torch_softmax_bwd16(carray(_voidptr(oa), s, np.int16), carray(_voidptr(ga), s, np.int16), fin,
                            carray(_voidptr(gra), s, np.int16), log)
    elif code == 2:
        torch_softmax_bwd16(carray(_voidptr(oa), s, np.uint16), carray(_voidptr(ga), s, np.uint16), fin,
                            carray(_voidptr(gra), s, np.uint16), log)
    else:
        torch_softmax_bwd(carray(_voidptr(oa), s, np.float64), carray(_voidptr(ga), s, np.float64), fin,
                          carray(_voidptr(gra), s, np.float64), log, False)


@_njit()
def ptr_logsumexp_fwd(code: int, xa: int, la: int, r: int, n: int) -> None:
    """:func:`torch_logsumexp_fwd` of rows at ``xa`` into float64 ``lse`` (r,) at ``la``."""
    lse = carray(_voidptr(la), (r,), np.float64)
    if code == 0:
        torch_logsumexp_fwd(carray(_voidptr(xa), (r, n), np.float32), lse)
    elif code == 1:
        torch_logsumexp_fwd(carray(_voidptr(xa), (r, n), np.int16), lse)
    elif code == 2:
        torch_logsumexp_fwd(carray(_voidptr(xa), (r, n), np.uint16), lse)
    else:
        torch_logsumexp_fwd(carray(_voidptr(xa), (r, n), np.float64), lse)


@_njit()
def ptr_logsumexp_bwd(code: int, xa: int, la: int, ga: int, gra: int, r: int, n: int) -> None:
    """:func:`torch_logsumexp_bwd`: rows at ``xa`` and ``gra``, float64 ``lse`` and ``g`` (r,) at ``la``, ``ga``."""
    lse = carray(_voidptr(la), (r,), np.float64)
    g = carray(_voidptr(ga), (r,), np.float64)
    s = (r, n)
    if code == 0:
        torch_logsumexp_bwd(carray(_voidptr(xa), s, np.float32), lse, g, carray(_voidptr(gra), s, np.float32), True)
    elif code == 1:
        torch_logsumexp_bwd16(carray(_voidptr(xa), s, np.int16), lse, g, carray(_voidptr(gra), s, np.int16))
    elif code == 2:
        torch_logsumexp_bwd16(carray(_voidptr(xa), s, np.uint16), lse, g, carray(_voidptr(gra), s, np.uint16))
    else:
        torch_logsumexp_bwd(carray(_voidptr(xa), s, np.float64), lse, g, carray(_voidptr(gra), s, np.float64), False)
