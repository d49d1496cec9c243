"""Kernels of softmax, log_softmax, logsumexp and cross-entropy along a middle axis: ``(O, C, I)`` layouts.

A class axis that is not the last (PyTorch's ``(N, C, H, W)`` segmentation logits, a softmax over
``dim=1``) has its ``C`` entries of a row ``I`` apart in memory. The row kernels (:mod:`._numba_torch`,
:mod:`._numba_ce_rows`) need the rows contiguous: moving the axis last is a transposing copy each way
(for ``8×21×128×128`` float32 the two copies took longer than the loss), and rows of a few dozen entries
are short for a loop over the row. Here the loops run over the positions instead: for a block of ``CB``
positions of one ``o``, each of the ``C`` slices ``x[o, c, j0:j0 + CB]`` is contiguous, and every step
(the max, the sum, the output) is one loop over it with a per-position accumulator, which LLVM vectorizes
as it does the rows' loops. A row's values never leave the block, which stays in L1/L2.

The arithmetic is the row kernels': ``m`` the max (on the storage bits, NaN found as in
:func:`._numba_torch._row_max32`); for float32 rows float64 registers, ``1 + s`` summed with the max term(s)
inside by the short exps of :mod:`._numba_exp` and summed again without it (a tie test per entry) only for the
confident positions, ``log1p(s)`` by the vectorized :func:`._numba_log.log1p_nonneg`, one rounding per output, the
backward's entries in float32 lanes from float64 sums; for bfloat16 and float16 rows float32 lanes throughout, the
ties counted apart. Two classes (binary segmentation) take one exp per position, of the difference of the two
entries (:func:`_stats2`, :func:`_softmax_pair`), and the backward one loop over the positions
(:func:`_softmax_bwd_pair`): the general blocks spent most of their time per position there. The cross-entropy
gathers the targets' logits and writes their ``p - 1`` (``-s / (1 + s)`` at the max) in its vector passes over the
classes where there are few of them, per position above. Float64 rows keep the row path and its 0.51-ulp table exp.
A block holding a position whose max is not finite (a ``+inf``, a NaN, or every entry ``-inf``) makes the kernel
return False before writing its outputs' limits: the caller then takes the row path, which has those semantics.

The cross-entropy's kernels are :mod:`._numba_columns_ce`. Only the entry kernels (``ptr_cols_*``) are cached;
the helpers are inlined.
"""

from __future__ import annotations

import numpy as np

from ._numba_bits import (
    _CONTRACT,
    AVAILABLE,
    _encode,
    _encode32,
    _f32_from_bits,
    _inline,
    _load,
    _load32,
    _nan_bits,
    _njit,
    _unkey,
    _voidptr,
    carray,
)
from ._numba_exp import F32, _exp32, _exp32_acc, _exp_accurate, _exp_clamped, _exp_f32out, _exp_row
from ._numba_log import log1p_nonneg, log1p_unit, select
from ._numba_torch import (
    _INF32,
    _KMIN16,
    _KMIN32,
    _MAG32,
    _ZERO16,
    _ZERO32,
    _max_key16,
    _max_key32,
    _max_mag16,
    _max_mag32,
)

CB = 2048  # positions per block at most: a block's float64 buffers stay in L1, its C slices in L2 (see _block)


@_inline()
def _block(n_cls: int) -> int:
    """Positions per block: ``CB``, fewer where the block's ``C`` slices would pass 256 KiB (float32). Long slices keep
    the hardware prefetchers streaming (blocks of 256 ran 1.3-1.5x slower at ``C = 21``)."""
    return max(64, min(CB, (1 << 16) // n_cls))


# -- the max of each position, on the storage bits ----------------------------------------------------
@_inline()
def _max_blk32(seg: np.ndarray, km: np.ndarray, mm: np.ndarray) -> None:
    for j in range(seg.size):
        km[j] = _max_key32(km[j], seg[j])
        mm[j] = _max_mag32(mm[j], seg[j])


@_inline()
def _max_blk16(seg: np.ndarray, km: np.ndarray, mm: np.ndarray) -> None:
    for j in range(seg.size):
        km[j] = _max_key16(km[j], seg[j])
        mm[j] = _max_mag16(mm[j], seg[j])


@_inline()
def _maxes32(xo: np.ndarray, j0: int, nb: int, m: np.ndarray) -> bool:
    """``m[:nb]`` = the max of positions ``j0 .. j0 + nb`` of float32 ``xo`` (C, I); False if one is not finite."""
    km = np.full(nb, _KMIN32)
    mm = np.full(nb, _ZERO32)
    for c in range(xo.shape[0]):
        _max_blk32(xo[c, j0 : j0 + nb], km, mm)
    bad = np.int32(0)  # counted, not branched on: the loop vectorizes (2.6x faster at C = 2)
    for j in range(nb):
        k = km[j]
        v = np.float64(_f32_from_bits(np.int32(k ^ ((k >> 31) & _MAG32))))
        bad += np.int32(mm[j] > _INF32) + np.int32(abs(v) == np.inf)
        m[j] = v
    return bad == 0


@_inline()
def _maxes16(xo: np.ndarray, j0: int, nb: int, m: np.ndarray) -> bool:
    """:func:`_maxes32` of bfloat16 (int16) or float16 (uint16) bits."""
    km = np.full(nb, _KMIN16)
    mm = np.full(nb, _ZERO16)
    for c in range(xo.shape[0]):
        _max_blk16(xo[c, j0 : j0 + nb], km, mm)
    like = xo[0, 0]
    ok = True
    for j in range(nb):
        v = _unkey(np.int64(km[j]), like)
        if _nan_bits(xo.dtype.type(mm[j])) or not np.isfinite(v):
            ok = False
        m[j] = v
    return ok


def _maxes(xo: np.ndarray, j0: int, nb: int, m: np.ndarray) -> bool:
    """The max of each position of a block (float64 ``m``); False when one is not finite (overloaded by dtype)."""
    return (_maxes32 if xo.dtype == np.float32 else _maxes16)(xo, j0, nb, m)


if AVAILABLE:
    from numba import types as _types
    from numba.extending import overload as _overload

    @_overload(_maxes, inline="always")
    def _maxes_impl(xo, j0, nb, m):  # unannotated: numba compares signatures
        if xo.dtype == _types.float32:
            return lambda xo, j0, nb, m: _maxes32(xo, j0, nb, m)
        return lambda xo, j0, nb, m: _maxes16(xo, j0, nb, m)


# -- the sum without the max term ------------------------------------------------------------------------
@_inline(_CONTRACT)
def _rest_entry(d: float) -> tuple[float, float]:
    """``(tie, term)`` of an entry ``d = x - m`` of the sum without the max term: 1 and 0 at the max, else 0 and
    ``exp(d)`` (for :func:`_rest_blk` and :func:`_rest_one`, which then give the same bits)."""
    at = d == 0.0
    return select(at, 1.0, 0.0), select(at, 0.0, _exp_f32out(d))


@_inline(_CONTRACT)
def _rest_blk(seg: np.ndarray, m: np.ndarray, acc: np.ndarray, ties: np.ndarray) -> None:
    for j in range(seg.size):
        tie, term = _rest_entry(_load(seg[j]) - m[j])
        ties[j] += tie
        acc[j] += term


@_inline(_CONTRACT)
def _all_blk(seg: np.ndarray, m: np.ndarray, acc: np.ndarray) -> None:
    for j in range(seg.size):
        acc[j] += _exp_clamped(_load(seg[j]) - m[j])


@_inline(_CONTRACT)
def _total_blk(seg: np.ndarray, m: np.ndarray, acc: np.ndarray) -> None:
    for j in range(seg.size):
        acc[j] += _exp_row(_load(seg[j]) - m[j])


@_inline(_CONTRACT)
def _rest_blk16(seg: np.ndarray, m: np.ndarray, acc: np.ndarray, ties: np.ndarray) -> None:
    for j in range(seg.size):
        d = _load32(seg[j]) - m[j]
        at = d == F32(0.0)
        ties[j] += F32(1.0) if at else F32(0.0)
        acc[j] += F32(0.0) if at else _exp32(d)


def _sum_all(xo: np.ndarray, j0: int, nb: int, mb: np.ndarray, sb: np.ndarray, exact: bool) -> float:
    """``sb = 1 + s`` of a block: for float32 rows one sum with the max term(s) inside by the 2^-35 short exp
    (``exact``: the 2^-29.27 :func:`._numba_exp._exp_row`, for softmax, log_softmax and the cross-entropy, as the row
    kernels; logsumexp, which can cancel near 0, keeps 2^-35); for 16-bit rows ``sb = s`` itself, the terms below the
    max apart from the ties, in float32 lanes (as the row kernels' 16-bit paths). Returns the ``s`` below which the
    block is summed again without the max term (see :func:`_stats`), -1 for 16-bit rows. (16-bit rows used to give
    ``1 + s`` too: an ``s`` below 2^-53 was lost, and the log_softmax of a max entry that bfloat16 holds as
    -1.8e-24 came out 0.)"""
    return (_sum_all32 if xo.dtype == np.float32 else _sum_all16)(xo, j0, nb, mb, sb, exact)


@_inline()
def _sum_all32(xo: np.ndarray, j0: int, nb: int, mb: np.ndarray, sb: np.ndarray, exact: bool) -> float:
    for c in range(xo.shape[0]):
        if exact:
            _total_blk(xo[c, j0 : j0 + nb], mb, sb)
        else:
            _all_blk(xo[c, j0 : j0 + nb], mb, sb)
    return np.float64(xo.shape[0]) * 2.0**-24


@_inline()
def _sum_all16(xo: np.ndarray, j0: int, nb: int, mb: np.ndarray, sb: np.ndarray, exact: bool) -> float:
    m32 = np.empty(nb, dtype=np.float32)
    a32 = np.zeros(nb, dtype=np.float32)
    t32 = np.zeros(nb, dtype=np.float32)  # ties counted in float32: exact below 2^24
    for j in range(nb):
        m32[j] = F32(mb[j])  # exact: the max is an entry
    for c in range(xo.shape[0]):
        _rest_blk16(xo[c, j0 : j0 + nb], m32, a32, t32)
    for j in range(nb):
        sb[j] = np.float64(a32[j]) + (np.float64(t32[j]) - 1.0)  # s itself: 1 + s would lose an s below 2^-53
    return -1.0  # s is relative already: never summed again


@_inline()
def _stats(xo: np.ndarray, j0: int, nb: int, m: np.ndarray, s: np.ndarray, short: bool) -> bool:
    """``m`` and ``s`` (the sum without the max term, ties adding 1 each) of positions ``j0 .. j0 + nb``; False
    (and nothing else computed) when a position has no finite max.

    ``s`` is ``(1 + s) - 1`` of one sum with the max term(s) inside (no tie test; ``short``: the 2^-29.27 exp, else
    the 2^-35 one), as the row kernels' log_softmax: its error is the terms' ``2^-29.27 s`` (``2^-35 s``) plus ``C``
    roundings of ``2^-53`` beside the 1. A position below ``s = C 2^-24`` (a confident one, whose ``log1p(s)`` needs
    ``s`` relative) is summed again without the max term, a tie test per entry, as a row of the row kernels is: one
    position at a time where few are (:func:`_rest_one`), the whole block in vector passes where more than one in
    eight are (:func:`_rest_blk`; 0.8x the time of summing every block that way at C = 21). Either way a position's
    ``s`` depends on its own entries only, not on its block (nor on the threads' split of the positions). (Summing
    the whole block again for one confident position in it took two to four classes, where nearly every block holds
    one, 1.3-1.6x PyTorch's step.) 16-bit rows sum without the max term from the start (:func:`_sum_all16`); two
    classes take :func:`_stats2`.
    """
    n_cls = xo.shape[0]
    if n_cls == 2:
        return _stats2(xo, j0, nb, m, s)
    if not _maxes(xo, j0, nb, m):
        return False
    mb = m[:nb]
    sb = s[:nb]
    sb[:] = 0.0
    thr = _sum_all(xo, j0, nb, mb, sb, short)
    if thr < 0.0:  # 16-bit rows: s summed without the max term already
        return True
    low = np.int32(0)
    for j in range(nb):
        sb[j] -= 1.0
        low += np.int32(sb[j] < thr)
    if low and low * 8 <= nb:
        for j in range(nb):
            if sb[j] < thr:
                sb[j] = _rest_one(xo, j0 + j, mb[j])
    elif low:
        acc = np.zeros(nb)
        ties = np.zeros(nb)
        for c in range(n_cls):
            _rest_blk(xo[c, j0 : j0 + nb], mb, acc, ties)
        for j in range(nb):
            if sb[j] < thr:
                sb[j] = acc[j] + (ties[j] - 1.0)
    return True


@_inline(_CONTRACT)
def _stats2(xo: np.ndarray, j0: int, nb: int, m: np.ndarray, s: np.ndarray) -> bool:
    """:func:`_stats` of two classes: ``m = max(a, b)`` and ``s = exp(-|a - b|)``, the one term without the max (1 at
    a tie), by the 2^-35 exp of the difference, exact in float64 (every input dtype): one exp per position, no max
    pass, tie test or second sum, and ``s`` relative wherever it is small. False as :func:`_stats` (a NaN, a
    ``+inf``, or both ``-inf``: ``d`` is NaN or ``m`` not finite). The float32 log_softmax kernel at 8×2×256×256 took
    0.47x the general blocks' time; its results are closer to correctly rounded (the general ``fl(1 + s) - 1`` is
    2^-29 relative: of 300 outputs that differ, 295 now correctly rounded, 5 before). Steps, side by side against
    the general blocks: log_softmax 1.41 -> 0.65x PyTorch's (float32); the cross-entropy's forward also takes
    :func:`._numba_columns_ce._ce_pair`."""
    x0 = xo[0, j0 : j0 + nb]
    x1 = xo[1, j0 : j0 + nb]
    bad = np.int32(0)  # counted, not branched on: the loop vectorizes
    for j in range(nb):
        u = _load(x0[j])
        v = _load(x1[j])
        d = -abs(u - v)
        mx = select(u > v, u, v)
        bad += np.int32(not (abs(mx) < np.inf)) + np.int32(d != d)
        m[j] = mx
        s[j] = _exp_f32out(d)
    return bad == 0


@_inline(_CONTRACT)
def _rest_one(xo: np.ndarray, j: int, m: float) -> float:
    """``s`` of position ``j`` without the max term: :func:`_rest_blk`'s arithmetic for one position (the same bits)."""
    acc = 0.0
    ties = 0.0
    for c in range(xo.shape[0]):
        tie, term = _rest_entry(_load(xo[c, j]) - m)
        ties += tie
        acc += term
    return acc + (ties - 1.0)


@_inline(_CONTRACT)
def _log1p_blk(s: np.ndarray, out: np.ndarray, unit: bool) -> None:
    """``out = log1p(s)`` of the positions' ``s >= 0`` by :func:`._numba_log.log1p_nonneg` (one divide); ``unit``:
    every ``s`` in ``[0, 1]`` (two classes, :func:`_stats2`), by the polynomial :func:`._numba_log.log1p_unit`
    (2^-35.5, no divide). With few classes the positions' ``log1p`` is a large part of the forward: at four classes
    (8×4×86016 float32) the log_softmax kernel took 6.55 ms with the general ``log1p`` (two divides), 6.1 now."""
    if unit:
        for j in range(s.size):
            out[j] = log1p_unit(s[j])
        return
    for j in range(s.size):
        out[j] = log1p_nonneg(s[j])


# -- softmax, log_softmax, logsumexp: forward ----------------------------------------------------------
@_inline(_CONTRACT)
def _softmax_blk(seg: np.ndarray, m: np.ndarray, q: np.ndarray, out: np.ndarray) -> None:
    for j in range(seg.size):
        out[j] = _encode(_exp_row(_load(seg[j]) - m[j]) * q[j], out)


@_inline(_CONTRACT)
def _log_softmax_blk(seg: np.ndarray, m: np.ndarray, l1p: np.ndarray, out: np.ndarray) -> None:
    for j in range(seg.size):
        out[j] = _encode((_load(seg[j]) - m[j]) - l1p[j], out)


@_inline(_CONTRACT)
def _log_softmax_blk16(seg: np.ndarray, m: np.ndarray, l1p: np.ndarray, out: np.ndarray) -> None:
    for j in range(seg.size):
        out[j] = _encode32((_load32(seg[j]) - m[j]) - l1p[j], out)


def _outputs(xo: np.ndarray, oo: np.ndarray, j0: int, nb: int, mb: np.ndarray, vb: np.ndarray, log: bool) -> None:
    """The output pass of one block of :func:`cols_softmax` (``vb``: ``log1p(s)``, or ``1 / (1 + s)``), overloaded by
    dtype: float64 lanes for float32 rows, float32 lanes for 16-bit ones."""
    (_outputs32 if xo.dtype == np.float32 else _outputs16)(xo, oo, j0, nb, mb, vb, log)


@_inline()
def _outputs32(xo: np.ndarray, oo: np.ndarray, j0: int, nb: int, mb: np.ndarray, vb: np.ndarray, log: bool) -> None:
    for c in range(xo.shape[0]):
        if log:
            _log_softmax_blk(xo[c, j0 : j0 + nb], mb, vb, oo[c, j0 : j0 + nb])
        else:
            _softmax_blk(xo[c, j0 : j0 + nb], mb, vb, oo[c, j0 : j0 + nb])


@_inline()
def _outputs16(xo: np.ndarray, oo: np.ndarray, j0: int, nb: int, mb: np.ndarray, vb: np.ndarray, log: bool) -> None:
    m32 = np.empty(nb, dtype=np.float32)
    v32 = np.empty(nb, dtype=np.float32)
    for j in range(nb):
        m32[j], v32[j] = F32(mb[j]), F32(vb[j])
    for c in range(xo.shape[0]):  # log_softmax only: 16-bit softmax is _softmax_block16
        _log_softmax_blk16(xo[c, j0 : j0 + nb], m32, v32, oo[c, j0 : j0 + nb])


def _softmax_block(xo: np.ndarray, oo: np.ndarray, j0: int, nb: int, m: np.ndarray, s: np.ndarray,
                   ebuf: np.ndarray) -> bool:
    """The softmax of one block of :func:`cols_softmax`; False if a position has no finite max. ``exp(x - m)`` of the
    block is kept in ``ebuf`` (float64 by the degree-5 exp for float32 rows, float32 lanes for 16-bit ones) and
    ``e / (1 + s)`` written from it: one exp per entry (two took 1.25x the forward's time)."""
    return (_softmax_block32 if xo.dtype == np.float32 else _softmax_block16)(xo, oo, j0, nb, m, s, ebuf)


@_inline(_CONTRACT)
def _exp_store_blk(seg: np.ndarray, m: np.ndarray, e: np.ndarray, acc: np.ndarray) -> None:
    for j in range(seg.size):
        v = _exp_row(_load(seg[j]) - m[j])
        e[j] = v
        acc[j] += v


@_inline(_CONTRACT)
def _scale_blk(e: np.ndarray, q: np.ndarray, out: np.ndarray) -> None:
    for j in range(out.size):
        out[j] = _encode(e[j] * q[j], out)


@_inline()
def _softmax_block32(xo: np.ndarray, oo: np.ndarray, j0: int, nb: int, m: np.ndarray, s: np.ndarray,
                     ebuf: np.ndarray) -> bool:
    if not _maxes(xo, j0, nb, m):
        return False
    n_cls = xo.shape[0]
    mb = m[:nb]
    sb = s[:nb]
    sb[:] = 0.0
    for c in range(n_cls):
        _exp_store_blk(xo[c, j0 : j0 + nb], mb, ebuf[c, :nb], sb)
    for j in range(nb):
        sb[j] = 1.0 / sb[j]  # 1 + s >= 1: the max term(s) inside, exactly 1 each
    for c in range(n_cls):
        _scale_blk(ebuf[c, :nb], sb, oo[c, j0 : j0 + nb])
    return True


def _softmax_pair(xo: np.ndarray, oo: np.ndarray, j0: int, nb: int) -> bool:
    """The softmax of one block of two classes, one exp per position: ``q = 1 / (1 + e)`` at the max and ``e q``
    at the other entry, ``e = exp(-|a - b|)``: the arithmetic of :func:`_softmax_block32` (float64 lanes, the degree-5
    exp) or :func:`_softmax_block16` (float32 lanes), whose max term is exactly 1, so the same bits, with no max pass
    and no buffer. float32 step at 8×2×256×256 with :func:`_softmax_bwd_pair`, side by side: 1.3 -> 0.58x PyTorch's
    (bfloat16 1.02x either way). False as :func:`_stats2` (overloaded by dtype)."""
    return (_softmax_pair32 if xo.dtype == np.float32 else _softmax_pair16)(xo, oo, j0, nb)


@_inline(_CONTRACT)
def _softmax_pair32(xo: np.ndarray, oo: np.ndarray, j0: int, nb: int) -> bool:
    x0, x1 = xo[0, j0 : j0 + nb], xo[1, j0 : j0 + nb]
    y0, y1 = oo[0, j0 : j0 + nb], oo[1, j0 : j0 + nb]
    bad = np.int32(0)  # counted, not branched on: the loop vectorizes
    for j in range(nb):
        u = _load(x0[j])
        v = _load(x1[j])
        mx = select(u > v, u, v)
        e = _exp_row(-abs(u - v))
        bad += np.int32(not (abs(mx) < np.inf)) + np.int32(e != e)
        q = 1.0 / (1.0 + e)
        y0[j] = _encode(select(u > v, q, e * q), y0)  # at a tie e = 1: both q
        y1[j] = _encode(select(u > v, e * q, q), y1)
    return bad == 0


@_inline(_CONTRACT)
def _softmax_pair16(xo: np.ndarray, oo: np.ndarray, j0: int, nb: int) -> bool:
    x0, x1 = xo[0, j0 : j0 + nb], xo[1, j0 : j0 + nb]
    y0, y1 = oo[0, j0 : j0 + nb], oo[1, j0 : j0 + nb]
    bad = np.int32(0)
    for j in range(nb):
        u = _load32(x0[j])
        v = _load32(x1[j])
        mx = select(u > v, u, v)
        e = _exp32(-abs(u - v))  # min - max rounds as the general blocks' x - m
        bad += np.int32(not (abs(mx) < F32(np.inf))) + np.int32(e != e)
        q = F32(1.0) / (F32(1.0) + e)
        y0[j] = _encode32(select(u > v, q, e * q), y0)
        y1[j] = _encode32(select(u > v, e * q, q), y1)
    return bad == 0


def _ebuf_width(x: np.ndarray) -> int:
    """How many times the input's bytes an entry of :func:`_ebuf` takes: 2 for float32 rows (a float64 buffer), 1
    for 16-bit ones (float32 lanes; half the block measured 1.05x the softmax's time)."""
    return 2 if x.dtype == np.float32 else 1


def _ebuf(x: np.ndarray, n_cls: int, cb: int) -> np.ndarray:
    """The buffer of a softmax block's ``exp(x - m)``: float64 for float32 rows, float32 for 16-bit ones."""
    return np.empty((n_cls, cb), dtype=np.float64 if x.dtype == np.float32 else np.float32)


@_inline(_CONTRACT)
def _exp_store_blk16(seg: np.ndarray, m: np.ndarray, e: np.ndarray, acc: np.ndarray) -> None:
    for j in range(seg.size):
        v = _exp32(_load32(seg[j]) - m[j])
        e[j] = v
        acc[j] += v


@_inline(_CONTRACT)
def _scale_blk16(e: np.ndarray, q: np.ndarray, out: np.ndarray) -> None:
    for j in range(out.size):
        out[j] = _encode32(e[j] * q[j], out)


@_inline()
def _softmax_block16(xo: np.ndarray, oo: np.ndarray, j0: int, nb: int, m: np.ndarray, s: np.ndarray,
                     ebuf: np.ndarray) -> bool:
    if not _maxes(xo, j0, nb, m):
        return False
    m32 = np.empty(nb, dtype=np.float32)
    a32 = np.zeros(nb, dtype=np.float32)
    for j in range(nb):
        m32[j] = F32(m[j])
    n_cls = xo.shape[0]
    for c in range(n_cls):
        _exp_store_blk16(xo[c, j0 : j0 + nb], m32, ebuf[c, :nb], a32)
    for j in range(nb):
        a32[j] = F32(1.0) / a32[j]  # 1 + s >= 1: the max term(s) inside, exactly 1 each
    for c in range(n_cls):
        _scale_blk16(ebuf[c, :nb], a32, oo[c, j0 : j0 + nb])
    return True


if AVAILABLE:

    @_overload(_ebuf_width, inline="always")
    def _ebuf_width_impl(x):  # unannotated: numba compares signatures
        if x.dtype == _types.float32:
            return lambda x: 2
        return lambda x: 1

    @_overload(_ebuf, inline="always")
    def _ebuf_impl(x, n_cls, cb):  # unannotated: numba compares signatures
        if x.dtype == _types.float32:
            return lambda x, n_cls, cb: np.empty((n_cls, cb))
        return lambda x, n_cls, cb: np.empty((n_cls, cb), dtype=np.float32)

    @_overload(_softmax_block, inline="always")
    def _softmax_block_impl(xo, oo, j0, nb, m, s, ebuf):  # unannotated: numba compares signatures
        if xo.dtype == _types.float32:
            return lambda xo, oo, j0, nb, m, s, ebuf: _softmax_block32(xo, oo, j0, nb, m, s, ebuf)
        return lambda xo, oo, j0, nb, m, s, ebuf: _softmax_block16(xo, oo, j0, nb, m, s, ebuf)

    @_overload(_softmax_pair, inline="always")
    def _softmax_pair_impl(xo, oo, j0, nb):  # unannotated: numba compares signatures
        if xo.dtype == _types.float32:
            return lambda xo, oo, j0, nb: _softmax_pair32(xo, oo, j0, nb)
        return lambda xo, oo, j0, nb: _softmax_pair16(xo, oo, j0, nb)

    @_overload(_sum_all, inline="always")
    def _sum_all_impl(xo, j0, nb, mb, sb, exact):  # unannotated: numba compares signatures
        if xo.dtype == _types.float32:
            return lambda xo, j0, nb, mb, sb, exact: _sum_all32(xo, j0, nb, mb, sb, exact)
        return lambda xo, j0, nb, mb, sb, exact: _sum_all16(xo, j0, nb, mb, sb, exact)

    @_overload(_outputs, inline="always")
    def _outputs_impl(xo, oo, j0, nb, mb, vb, log):  # unannotated: numba compares signatures
        if xo.dtype == _types.float32:
            return lambda xo, oo, j0, nb, mb, vb, log: _outputs32(xo, oo, j0, nb, mb, vb, log)
        return lambda xo, oo, j0, nb, mb, vb, log: _outputs16(xo, oo, j0, nb, mb, vb, log)


@_njit()
def cols_softmax(x: np.ndarray, out: np.ndarray, log: bool, o0: int, o1: int, i0: int, i1: int) -> bool:
    """softmax (``exp(x - m) / (1 + s)``) or log_softmax (``(x - m) - log1p(s)``) over axis 1 of ``x`` (O, C, I)
    into ``out`` (same dtype), one rounding per entry; False (``out`` partly written) if a position has no
    finite max."""
    _, n_cls, _ = x.shape
    cb = _block(n_cls if log else _ebuf_width(x) * n_cls)  # softmax: a smaller block for a float64 buffer
    m = np.empty(cb)
    s = np.empty(cb)
    v = np.empty(cb)
    ebuf = _ebuf(x, 0 if log else n_cls, cb)
    for o in range(o0, o1):
        xo = x[o]
        oo = out[o]
        for j0 in range(i0, i1, cb):
            nb = min(cb, i1 - j0)
            vb = v[:nb]
            if log:
                if not _stats(xo, j0, nb, m, s, True):
                    return False
                _log1p_blk(s[:nb], vb, n_cls == 2)
                _outputs(xo, oo, j0, nb, m[:nb], vb, log)
            elif n_cls == 2:
                if not _softmax_pair(xo, oo, j0, nb):
                    return False
            elif not _softmax_block(xo, oo, j0, nb, m, s, ebuf):
                return False
    return True


@_njit()
def cols_logsumexp(x: np.ndarray, lse: np.ndarray, o0: int, o1: int, i0: int, i1: int) -> bool:
    """``lse[o, j] = m + log1p(s)`` (float64) over axis 1 of ``x`` (O, C, I); False if a position has no finite
    max. A result near 0 (``|lse| < s / (1 + s) + C 2^-24``, where ``m < 0`` cancels ``log1p(s)``) is summed again
    with the 0.51-ulp table exp, as the row kernel does."""
    _, n_cls, _ = x.shape
    cb = _block(n_cls)
    m = np.empty(cb)
    s = np.empty(cb)
    v = np.empty(cb)
    thr = np.float64(n_cls) * 2.0**-24
    for o in range(o0, o1):
        xo = x[o]
        lo = lse[o]
        for j0 in range(i0, i1, cb):
            nb = min(cb, i1 - j0)
            if not _stats(xo, j0, nb, m, s, False):
                return False
            _log1p_blk(s[:nb], v[:nb], n_cls == 2)
            for j in range(nb):
                r = m[j] + v[j]
                if abs(r) < s[j] / (1.0 + s[j]) + thr:  # cancellation: the accurate sum
                    acc = 0.0
                    ties = 0.0
                    for c in range(n_cls):
                        d = _load(xo[c, j0 + j]) - m[j]
                        if d == 0.0:
                            ties += 1.0
                        else:
                            acc += _exp_accurate(d)
                    r = m[j] + np.log1p(acc + (ties - 1.0))
                lo[j0 + j] = r
    return True


# -- backward ------------------------------------------------------------------------------------------
@_inline(_CONTRACT)
def _dot_blk(p: np.ndarray, g: np.ndarray, acc: np.ndarray) -> None:
    for j in range(p.size):
        acc[j] += _load(p[j]) * _load(g[j])


@_inline(_CONTRACT)
def _sum_blk(g: np.ndarray, acc: np.ndarray) -> None:
    for j in range(g.size):
        acc[j] += _load(g[j])


# bfloat16 and float16 rows: the entries in float32 lanes (twice float64's), the per-position values rounded to
# float32 once per block; 8 or 11 output bits against float32's 24 (as the row kernels' 16-bit paths)
@_inline(_CONTRACT)
def _softmax_grad_blk16(p: np.ndarray, g: np.ndarray, dot: np.ndarray, grad: np.ndarray) -> None:
    for j in range(p.size):
        grad[j] = _encode32(_load32(p[j]) * (_load32(g[j]) - dot[j]), grad)


@_inline(_CONTRACT)
def _log_softmax_grad_blk16(o: np.ndarray, g: np.ndarray, tot: np.ndarray, grad: np.ndarray) -> None:
    for j in range(o.size):
        grad[j] = _encode32(_load32(g[j]) - _exp32(_load32(o[j])) * tot[j], grad)


@_inline(_CONTRACT)
def _softmax_grad_blk32(p: np.ndarray, g: np.ndarray, dot: np.ndarray, grad: np.ndarray) -> None:
    for j in range(p.size):
        grad[j] = p[j] * (g[j] - dot[j])


@_inline(_CONTRACT)
def _log_softmax_grad_blk32(o: np.ndarray, g: np.ndarray, tot: np.ndarray, grad: np.ndarray) -> None:
    for j in range(o.size):
        grad[j] = g[j] - _exp32_acc(o[j]) * tot[j]


@_inline()
def _softmax_bwd32(po: np.ndarray, go: np.ndarray, ro: np.ndarray, j0: int, nb: int, ab: np.ndarray,
                   log: bool) -> None:
    """float32 rows: the sums in float64, then rounded to float32 once per position, and the entries in float32 lanes,
    as the row kernels (:func:`._numba_torch._softmax_grad_row32`, within ``1 + 0.5 kappa'`` ulp, and
    :func:`._numba_torch._log_softmax_grad_row`, within ``0.5 + 1.33 kappa`` ulp: inside the bound of 2 ulp times the
    condition number)."""
    n_cls = po.shape[0]
    a32 = np.empty(nb, dtype=np.float32)
    for c in range(n_cls):
        if log:
            _sum_blk(go[c, j0 : j0 + nb], ab)
        else:
            _dot_blk(po[c, j0 : j0 + nb], go[c, j0 : j0 + nb], ab)
    for j in range(nb):
        a32[j] = F32(ab[j])
    for c in range(n_cls):
        if log:
            _log_softmax_grad_blk32(po[c, j0 : j0 + nb], go[c, j0 : j0 + nb], a32, ro[c, j0 : j0 + nb])
        else:
            _softmax_grad_blk32(po[c, j0 : j0 + nb], go[c, j0 : j0 + nb], a32, ro[c, j0 : j0 + nb])


@_inline()
def _softmax_bwd16(po: np.ndarray, go: np.ndarray, ro: np.ndarray, j0: int, nb: int, ab: np.ndarray,
                   log: bool) -> None:
    n_cls = po.shape[0]
    a32 = np.empty(nb, dtype=np.float32)
    if log:
        for c in range(n_cls):
            _sum_blk(go[c, j0 : j0 + nb], ab)
        for j in range(nb):
            a32[j] = F32(ab[j])
        for c in range(n_cls):
            _log_softmax_grad_blk16(po[c, j0 : j0 + nb], go[c, j0 : j0 + nb], a32, ro[c, j0 : j0 + nb])
    else:
        for c in range(n_cls):
            _dot_blk(po[c, j0 : j0 + nb], go[c, j0 : j0 + nb], ab)
        for j in range(nb):
            a32[j] = F32(ab[j])
        for c in range(n_cls):
            _softmax_grad_blk16(po[c, j0 : j0 + nb], go[c, j0 : j0 + nb], a32, ro[c, j0 : j0 + nb])


def _softmax_bwd_block(po: np.ndarray, go: np.ndarray, ro: np.ndarray, j0: int, nb: int, ab: np.ndarray,
                       log: bool) -> None:
    """One block of :func:`cols_softmax_bwd` (overloaded by dtype: float64 lanes for float32, float32 for 16 bits)."""
    (_softmax_bwd32 if po.dtype == np.float32 else _softmax_bwd16)(po, go, ro, j0, nb, ab, log)


if AVAILABLE:

    @_overload(_softmax_bwd_block, inline="always")
    def _softmax_bwd_block_impl(po, go, ro, j0, nb, ab, log):  # unannotated: numba compares signatures
        if po.dtype == _types.float32:
            return lambda po, go, ro, j0, nb, ab, log: _softmax_bwd32(po, go, ro, j0, nb, ab, log)
        return lambda po, go, ro, j0, nb, ab, log: _softmax_bwd16(po, go, ro, j0, nb, ab, log)


def _softmax_bwd_pair(po: np.ndarray, go: np.ndarray, ro: np.ndarray, j0: int, nb: int, log: bool) -> None:
    """One block of :func:`cols_softmax_bwd` of two classes in one loop over the positions: the arithmetic of
    :func:`_softmax_bwd32` / :func:`_softmax_bwd16` in the same order (the float64 sums of two exact products or
    entries), so the same bits (overloaded by dtype)."""
    (_softmax_bwd_pair32 if po.dtype == np.float32 else _softmax_bwd_pair16)(po, go, ro, j0, nb, log)


@_inline(_CONTRACT)
def _softmax_bwd_pair32(po: np.ndarray, go: np.ndarray, ro: np.ndarray, j0: int, nb: int, log: bool) -> None:
    p0, p1, g0, g1 = po[0, j0 : j0 + nb], po[1, j0 : j0 + nb], go[0, j0 : j0 + nb], go[1, j0 : j0 + nb]
    r0, r1 = ro[0, j0 : j0 + nb], ro[1, j0 : j0 + nb]
    if log:
        for j in range(nb):
            tot = F32((0.0 + _load(g0[j])) + _load(g1[j]))  # from 0.0, as the general sums (a -0.0 sum is 0.0)
            r0[j] = g0[j] - _exp32_acc(p0[j]) * tot
            r1[j] = g1[j] - _exp32_acc(p1[j]) * tot
        return
    for j in range(nb):
        dot = F32((0.0 + _load(p0[j]) * _load(g0[j])) + _load(p1[j]) * _load(g1[j]))
        r0[j] = p0[j] * (g0[j] - dot)
        r1[j] = p1[j] * (g1[j] - dot)


@_inline(_CONTRACT)
def _softmax_bwd_pair16(po: np.ndarray, go: np.ndarray, ro: np.ndarray, j0: int, nb: int, log: bool) -> None:
    p0, p1, g0, g1 = po[0, j0 : j0 + nb], po[1, j0 : j0 + nb], go[0, j0 : j0 + nb], go[1, j0 : j0 + nb]
    r0, r1 = ro[0, j0 : j0 + nb], ro[1, j0 : j0 + nb]
    if log:
        for j in range(nb):
            tot = F32((0.0 + _load(g0[j])) + _load(g1[j]))
            r0[j] = _encode32(_load32(g0[j]) - _exp32(_load32(p0[j])) * tot, r0)
            r1[j] = _encode32(_load32(g1[j]) - _exp32(_load32(p1[j])) * tot, r1)
        return
    for j in range(nb):
        dot = F32((0.0 + _load(p0[j]) * _load(g0[j])) + _load(p1[j]) * _load(g1[j]))
        r0[j] = _encode32(_load32(p0[j]) * (_load32(g0[j]) - dot), r0)
        r1[j] = _encode32(_load32(p1[j]) * (_load32(g1[j]) - dot), r1)


if AVAILABLE:

    @_overload(_softmax_bwd_pair, inline="always")
    def _softmax_bwd_pair_impl(po, go, ro, j0, nb, log):  # unannotated: numba compares signatures
        if po.dtype == _types.float32:
            return lambda po, go, ro, j0, nb, log: _softmax_bwd_pair32(po, go, ro, j0, nb, log)
        return lambda po, go, ro, j0, nb, log: _softmax_bwd_pair16(po, go, ro, j0, nb, log)


@_njit()
def cols_softmax_bwd(out: np.ndarray, g: np.ndarray, grad: np.ndarray, log: bool, o0: int, o1: int, i0: int,
                     i1: int) -> None:
    """The backward of :func:`cols_softmax` from its output: ``p (g - sum(g p))`` or ``g - exp(o) sum(g)`` over
    axis 1, sums in float64, one rounding per entry (every position has a finite max)."""
    _, n_cls, _ = out.shape
    cb = _block(n_cls)
    acc = np.empty(cb)
    for o in range(o0, o1):
        po, go, ro = out[o], g[o], grad[o]
        for j0 in range(i0, i1, cb):
            nb = min(cb, i1 - j0)
            if n_cls == 2:
                _softmax_bwd_pair(po, go, ro, j0, nb, log)
                continue
            ab = acc[:nb]
            ab[:] = 0.0
            _softmax_bwd_block(po, go, ro, j0, nb, ab, log)


@_inline(_CONTRACT)
def _lse_grad_blk(seg: np.ndarray, lse: np.ndarray, g: np.ndarray, grad: np.ndarray) -> None:
    for j in range(seg.size):
        grad[j] = _encode(g[j] * _exp_clamped(_load(seg[j]) - lse[j]), grad)


@_njit()
def cols_logsumexp_bwd(x: np.ndarray, lse: np.ndarray, g: np.ndarray, grad: np.ndarray, o0: int, o1: int, i0: int,
                       i1: int) -> None:
    """``grad = g exp(x - lse)`` over axis 1, from float64 ``lse`` and ``g`` (O, I) (every ``lse`` finite)."""
    _, n_cls, _ = x.shape
    cb = _block(n_cls)
    for o in range(o0, o1):
        for j0 in range(i0, i1, cb):
            nb = min(cb, i1 - j0)
            lb = lse[o, j0 : j0 + nb]
            gb = g[o, j0 : j0 + nb]
            for c in range(n_cls):
                _lse_grad_blk(x[o, c, j0 : j0 + nb], lb, gb, grad[o, c, j0 : j0 + nb])


# -- entry points on raw pointers --------------------------------------------------------------------------
# ``code``: 0 float32, 1 bfloat16 (int16 bits), 2 float16 (uint16 bits), as :data:`._numba_torch.STORAGE_CODES`;
# ``dims`` = (O, C, I); each entry works on ``o0 <= o < o1`` (the caller's threads take disjoint ranges).
@_njit()
def ptr_cols_softmax(code: int, xa: int, oa: int, dims: tuple[int, int, int], log: bool, o0: int, o1: int, i0: int,
                     i1: int) -> bool:
    if code == 0:
        return cols_softmax(carray(_voidptr(xa), dims, np.float32), carray(_voidptr(oa), dims, np.float32), log,
                            o0, o1, i0, i1)
    if code == 1:
        return cols_softmax(carray(_voidptr(xa), dims, np.int16), carray(_voidptr(oa), dims, np.int16), log, o0, o1,
                            i0, i1)
    return cols_softmax(carray(_voidptr(xa), dims, np.uint16), carray(_voidptr(oa), dims, np.uint16), log, o0, o1, i0,
                        i1)


@_njit()
def ptr_cols_softmax_bwd(code: int, oa: int, ga: int, gra: int, dims: tuple[int, int, int], log: bool, o0: int,
                         o1: int, i0: int, i1: int) -> None:
    if code == 0:
        cols_softmax_bwd(carray(_voidptr(oa), dims, np.float32), carray(_voidptr(ga), dims, np.float32),
                         carray(_voidptr(gra), dims, np.float32), log, o0, o1, i0, i1)
    elif code == 1:
        cols_softmax_bwd(carray(_voidptr(oa), dims, np.int16), carray(_voidptr(ga), dims, np.int16),
                         carray(_voidptr(gra), dims, np.int16), log, o0, o1, i0, i1)
    else:
        cols_softmax_bwd(carray(_voidptr(oa), dims, np.uint16), carray(_voidptr(ga), dims, np.uint16),
                         carray(_voidptr(gra), dims, np.uint16), log, o0, o1, i0, i1)


@_njit()
def ptr_cols_logsumexp(code: int, xa: int, lse: np.ndarray, dims: tuple[int, int, int], o0: int, o1: int, i0: int,
                       i1: int) -> bool:
    """:func:`cols_logsumexp` into float64 ``lse`` (O, I)."""
    if code == 0:
        return cols_logsumexp(carray(_voidptr(xa), dims, np.float32), lse, o0, o1, i0, i1)
    if code == 1:
        return cols_logsumexp(carray(_voidptr(xa), dims, np.int16), lse, o0, o1, i0, i1)
    return cols_logsumexp(carray(_voidptr(xa), dims, np.uint16), lse, o0, o1, i0, i1)


@_njit()
def ptr_cols_logsumexp_bwd(code: int, xa: int, lse: np.ndarray, g: np.ndarray, gra: int, dims: tuple[int, int, int],
                           o0: int, o1: int, i0: int, i1: int) -> None:
    """:func:`cols_logsumexp_bwd`, float64 ``lse`` and ``g`` (O, I)."""
    if code == 0:
        cols_logsumexp_bwd(carray(_voidptr(xa), dims, np.float32), lse, g, carray(_voidptr(gra), dims, np.float32),
                           o0, o1, i0, i1)
    elif code == 1:
        cols_logsumexp_bwd(carray(_voidptr(xa), dims, np.int16), lse, g, carray(_voidptr(gra), dims, np.int16), o0,
                           o1, i0, i1)
    else:
        cols_logsumexp_bwd(carray(_voidptr(xa), dims, np.uint16), lse, g, carray(_voidptr(gra), dims, np.uint16),
                           o0, o1, i0, i1)


from ._numba_columns_ce import (  # noqa: E402  (the callers load this module alone)
    ptr_cols_ce_bwd,
    ptr_cols_ce_fwd,
    ptr_cols_ce_prob_bwd,
    ptr_cols_ce_prob_fwd,
)

__all__ = ["ptr_cols_ce_bwd", "ptr_cols_ce_fwd", "ptr_cols_ce_prob_bwd", "ptr_cols_ce_prob_fwd", "ptr_cols_logsumexp",
           "ptr_cols_logsumexp_bwd", "ptr_cols_softmax", "ptr_cols_softmax_bwd"]
