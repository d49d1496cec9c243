"""Compiled (numba) kernels for logsumexp, softmax and log_softmax rows: the ``fast`` extra.

The same algorithm as :mod:`._numpy_fast` (Blanchard, Higham & Higham 2021), in
float64, on C-contiguous rows ``x`` of shape ``(R, n)`` (float32 or float64;
float16 is converted to float32 by the caller): ``m`` the row max, ``k`` its first
index (both from NumPy's ``argmax``), ``s = sum_{i != k} exp(x_i - m)``,
``logsumexp = m + log1p(s)``, ``softmax_i = e_i / (1 + s)``,
``log_softmax_i = (x_i - m) - log1p(s)``. Rows with a non-finite max are left to
the caller (``s = 0``; output rows untouched, a flag says so).

What makes it fast is a float64 ``exp`` that LLVM vectorizes (NumPy's float64
``exp`` on AVX2 is scalar libm, 5 ns/element). It is the table algorithm of
glibc's ``exp`` (ARM optimized-routines, Szabolcs Nagy), with its constants:

* reduction ``d = k ln2/N + r``, ``N = 128``, ``|r| <= ln2/256``: ``k`` rounded
  with the ``1.5 * 2^52`` shifter (no float-to-int conversion, which AVX2 lacks);
  ``r = fma(-k, hi, d) - k lo`` with ``hi`` 36 significant bits, so the first
  step is exact and the second rounds at ``2^-53 |r|``: negligible;
* ``2^(j/N) = H_j (1 + T_j)`` (``j = k mod N``) from a 128-entry table computed
  at import with :mod:`decimal`: representation error ~2^-106;
* ``exp(r) - 1 = r + r^2 (C2 + C3 r) + r^4 (C4 + C5 r)``: absolute error
  1.6 * 2^-66 on the reduced range (glibc's bound);
* ``exp(d) = scale + scale * tmp`` with ``scale = H_j 2^(k div N)`` put together in the
  exponent bits (int64 adds and shifts) and ``tmp = T_j + exp(r) - 1``: one
  fused rounding, ``|tmp| < 0.003`` so the rounding errors inside ``tmp`` add
  ~0.005 ulp. Bound 0.5 + 1.11/N + poly = 0.51 ulp (glibc's analysis; measured
  max 0.505 ulp against mpmath, bit-identical to glibc's ``exp`` on 99.98% of
  ``[-708, 0]`` and on all of ``[-1, 0]`` we sampled);
* ``d >= -746`` is enforced first (``exp(-746) < 2^-1075`` rounds to 0, and
  ``-inf`` becomes 0), ``d = 0`` gives exactly 1 (``j = 0``, ``T_0 = 0``,
  ``r = 0``); the scale carries an extra ``2^64`` taken out by a final
  multiplication, exact for normal results and one rounding for subnormal ones
  (<= 0.75 ulp of ``2^-1074`` from the double rounding).

``x_i - m`` is at most 0, so overflow cannot occur. The reduction of a block of
128 entries is one vectorized loop (``r`` and the bits of ``k`` go to two small
buffers); the table lookups (scalar loads: AVX2 gathers are slow on AMD) and the
polynomial are a second one. Both halves in one loop run 1.6 ns/entry, the two
loops 1.0 (LLVM scalarizes the first half to feed the loads).

Sums: the vectorized loop keeps 8 partial sums per block (16 terms each, the
depth of NumPy's pairwise sum), ``reassoc`` allowed only on that addition; block
sums are added with Neumaier's compensation. All terms are positive, so the
relative error of ``s`` is at most ~(16 + 3 + 2) * 2^-53 plus the 0.51 ulp of
each ``exp`` (in practice below NumPy's pairwise sum, thanks to the
compensation). Float32 results, rounded once from float64, are within 0.5 ulp +
~1e-7 ulp on well-conditioned rows, and as accurate as the NumPy path where
``logsumexp`` cancels near 0 (there the ``exp`` error counts in full).

Fast-math flags: ``contract`` (FMA fusion, which only removes roundings)
everywhere, ``reassoc`` on the summation loops
only (their one floating-point reduction); never ``nnan``/``ninf``/``afn``.

The kernels are modules of one job: :mod:`._numba_bits` (compile decorators, bit casts,
16-bit storage), :mod:`._numba_exp` (the ``exp`` kernels), this module (the NumPy path's row
kernels) and :mod:`._numba_torch` (the PyTorch path's forward and fused backward on every
storage dtype, and ``ptr_*`` entry points on raw data pointers). The callers load this module
alone: the PyTorch path's entry points and the storage-dtype helpers are importable from here.

Without numba this module still imports (``AVAILABLE`` is False, the kernels are
not usable) and callers use the NumPy path.
"""

from __future__ import annotations

import numpy as np

from ._numba_bits import _CONTRACT, _SUM, AVAILABLE, _encode, _encode32, _load, _load32, _njit  # noqa: F401
from ._numba_exp import BLK, _add, _exp_f32out, _exp_reduced, _reduce, exp_nonpositive  # noqa: F401
from ._numba_torch import (  # noqa: F401  (the PyTorch path's entry points, loaded through this module)
    STORAGE_CODES,
    ptr_logsumexp_bwd,
    ptr_logsumexp_fwd,
    ptr_softmax_bwd,
    ptr_softmax_fwd,
)

ROW_BUFFER = 1 << 14  # softmax rows up to this length keep exp(x - m) in a buffer: one exp per entry


# -- blocks: reduce (vectorized), then look up and sum (vectorized but for the loads) ------------
@_njit(_CONTRACT)
def _reduce_block(seg: np.ndarray, m: float, rb: np.ndarray, kb: np.ndarray) -> None:
    for i in range(seg.size):
        rb[i], kb[i] = _reduce(np.float64(seg[i]) - m)


@_njit(_SUM)
def _sum_block(rb: np.ndarray, kb: np.ndarray, n: int) -> float:
    acc = 0.0
    for i in range(n):
        acc += _exp_reduced(rb[i], kb[i])
    return acc


@_njit(_SUM)
def _sum_block_store(rb: np.ndarray, kb: np.ndarray, e: np.ndarray) -> float:
    acc = 0.0
    for i in range(e.size):
        v = _exp_reduced(rb[i], kb[i])
        e[i] = v
        acc += v
    return acc


@_njit(_CONTRACT)
def _div_block(rb: np.ndarray, kb: np.ndarray, denom: float, out: np.ndarray, exact: bool) -> None:
    if exact:
        for i in range(out.size):
            out[i] = _exp_reduced(rb[i], kb[i]) / denom
    else:
        q = 1.0 / denom
        for i in range(out.size):
            out[i] = _exp_reduced(rb[i], kb[i]) * q


@_njit()
def _sum_exp(
    seg: np.ndarray, m: float, rb: np.ndarray, kb: np.ndarray, e: np.ndarray, store: bool, total: float, comp: float
) -> tuple[float, float]:
    """Add ``sum exp(seg - m)`` to the compensated sum ``(total, comp)``; with ``store`` also ``e = exp(seg - m)``."""
    n = seg.size
    for b0 in range(0, n, BLK):
        b1 = min(b0 + BLK, n)
        _reduce_block(seg[b0:b1], m, rb, kb)
        part = _sum_block_store(rb, kb, e[b0:b1]) if store else _sum_block(rb, kb, b1 - b0)
        total, comp = _add(total, comp, part)
    return total, comp


@_njit()
def _rest_sum(row: np.ndarray, m: float, k: int, rb: np.ndarray, kb: np.ndarray, e: np.ndarray, store: bool) -> float:
    """``sum_{i != k} exp(row_i - m)``; with ``store``, ``e`` gets every ``exp(row_i - m)`` (``e_k = 1``)."""
    n = row.size
    total, comp = _sum_exp(row[:k], m, rb, kb, e[:k], store, 0.0, 0.0)
    total, comp = _sum_exp(row[k + 1 :], m, rb, kb, e[k + 1 : n], store, total, comp)
    if store:
        e[k] = 1.0
    return total + comp


# -- row kernels ------------------------------------------------------------------------------
@_njit()
def rest_sums(x: np.ndarray, m: np.ndarray, k: np.ndarray, s: np.ndarray) -> None:
    """``s[r] = sum_{i != k[r]} exp(x[r, i] - m[r])``; 0 where ``m[r]`` is not finite."""
    rb = np.empty(BLK)
    kb = np.empty(BLK, dtype=np.int64)
    e = np.empty(0)
    for r in range(x.shape[0]):
        s[r] = _rest_sum(x[r], m[r], k[r], rb, kb, e, False) if np.isfinite(m[r]) else 0.0


@_njit(_CONTRACT)
def _log_out(row: np.ndarray, m: float, log1p_s: float, out: np.ndarray) -> None:
    for i in range(row.size):
        out[i] = (np.float64(row[i]) - m) - log1p_s


@_njit()
def _div_out(e: np.ndarray, denom: float, out: np.ndarray, exact: bool) -> None:
    if exact:
        for i in range(e.size):
            out[i] = e[i] / denom
    else:
        q = 1.0 / denom
        for i in range(e.size):
            out[i] = e[i] * q


@_njit()
def softmax_rows(x: np.ndarray, m: np.ndarray, k: np.ndarray, out: np.ndarray, log: bool, exact: bool) -> bool:
    """``out`` = softmax (``e / (1 + s)``) or log_softmax (``(x - m) - log1p(s)``) of the rows of ``x``.

    ``out`` (float32 or float64) gets one rounding from float64. Without
    ``exact`` softmax multiplies by ``1 / (1 + s)`` instead of dividing (vdivpd
    is the slowest instruction of the loop): at most 1.5 ulp of float64 instead
    of 0.5, invisible after rounding to float32 or float16 (< 2^-28 ulp there);
    float64 outputs need ``exact``. Rows where ``m`` is not finite are left
    untouched; returns True when there is one.
    """
    r_count, n = x.shape
    rb = np.empty(BLK)
    kb = np.empty(BLK, dtype=np.int64)
    buffered = not log and n <= ROW_BUFFER
    e = np.empty(n if buffered else 0)
    bad = False
    for r in range(r_count):
        mr = m[r]
        if not np.isfinite(mr):
            bad = True
            continue
        row = x[r]
        s = _rest_sum(row, mr, k[r], rb, kb, e, buffered)
        if log:
            _log_out(row, mr, np.log1p(s), out[r])
        elif buffered:
            _div_out(e, 1.0 + s, out[r], exact)
        else:  # a long row: a second exp pass
            denom = 1.0 + s
            o = out[r]
            for b0 in range(0, n, BLK):
                b1 = min(b0 + BLK, n)
                _reduce_block(row[b0:b1], mr, rb, kb)
                _div_block(rb, kb, denom, o[b0:b1], exact)
    return bad

