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

The second half of the module holds the kernels of the PyTorch path (``torch_*``, and
``ptr_*`` entry points on raw data pointers): forward and fused backward of each op,
reading float32 / float64 / bfloat16 / float16 storage in place (16-bit floats as 16-bit
integers, converted in registers, rounded back to nearest even), a table-free float64
``exp`` for float32 outputs and float32 arithmetic for 16-bit ones; see the comments there.

Without numba this module still imports (``AVAILABLE`` is False, the kernels are
not usable) and callers use the NumPy path.
"""

from __future__ import annotations

import decimal
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # the `fast` extra is not installed
    numba = None

AVAILABLE = numba is not None

TABLE_BITS = 7
N = 1 << TABLE_BITS
BLK = 128  # entries per reduction block: two small buffers that stay in L1
ROW_BUFFER = 1 << 14  # softmax rows up to this length keep exp(x - m) in a buffer: one exp per entry


def _njit(fastmath: set[str] | bool = False) -> Callable[[Any], Any]:
    if numba is None:
        return lambda f: f
    return numba.njit(cache=True, fastmath=fastmath, error_model="numpy", boundscheck=False, nogil=True)


_CONTRACT = {"contract"}
_SUM = {"contract", "reassoc"}  # only on loops whose one reduction is the sum of positive terms


# -- bit casts between float64 and int64 --------------------------------------------------------
if numba is not None:

    @intrinsic
    def _as_int(typingctx: Any, x: Any) -> Any:
        """The bits of a float64 as an int64 (a no-op bitcast)."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.IntType(64))

        return types.int64(types.float64), codegen

    @intrinsic
    def _as_float(typingctx: Any, i: Any) -> Any:
        """The float64 with the bits of an int64."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.DoubleType())

        return types.float64(types.int64), codegen

else:  # never called: only the names, for the plain-Python definitions below
    _as_int = _as_float = None


# -- constants of exp ----------------------------------------------------------------------------
SHIFT = float.fromhex("0x1.8p52")  # adding it rounds to an integer, kept in the low mantissa bits
INV_LN2_N = float.fromhex("0x1.71547652b82fep0") * N
NEG_LN2_HI_N = float.fromhex("-0x1.62e42fefa0000p-8")  # 36 significant bits: k * hi is exact
NEG_LN2_LO_N = float.fromhex("-0x1.cf79abc9e3b3ap-47")
C2 = float.fromhex("0x1.ffffffffffdbdp-2")
C3 = float.fromhex("0x1.555555555543cp-3")
C4 = float.fromhex("0x1.55555cf172b91p-5")
C5 = float.fromhex("0x1.1111167a4d017p-7")
EXTRA = 64  # the scale carries 2^64, taken out at the end: 2^(k div N) stays normal down to d = -746
TWO_M_EXTRA = 2.0**-EXTRA


def _table() -> tuple[np.ndarray, np.ndarray]:
    """``T_j`` and the bits of ``H_j 2^EXTRA`` less ``j << (52 - TABLE_BITS)``, with ``2^(j/N) = H_j (1 + T_j)``."""
    tail = np.empty(N)
    sbits = np.empty(N, dtype=np.int64)
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        ln2 = decimal.Decimal(2).ln()
        for j in range(N):
            v = (ln2 * j / N).exp()
            hi = float(v)  # correctly rounded
            tail[j] = float((v - decimal.Decimal(hi)) / decimal.Decimal(hi))
            sbits[j] = struct.unpack("<q", struct.pack("<d", hi))[0] - (j << (52 - TABLE_BITS)) + (EXTRA << 52)
    return tail, sbits


TAIL, SBITS = _table()


# -- exp, in two halves ------------------------------------------------------------------------
@_njit(_CONTRACT)
def _reduce(d: float) -> tuple[float, int]:
    """``d = k ln2/N + r``: returns ``r`` and the bits of ``k + SHIFT`` (``d`` clamped to >= -746)."""
    d = d if d > -746.0 else -746.0  # also -inf: exp(-746) rounds to 0
    kd = d * INV_LN2_N + SHIFT
    ki = _as_int(kd)
    kd -= SHIFT
    return d + kd * NEG_LN2_HI_N + kd * NEG_LN2_LO_N, ki


@_njit(_CONTRACT)
def _exp_reduced(r: float, ki: int) -> float:
    """``2^(k/N) exp(r)`` from the output of :func:`_reduce`."""
    j = ki & (N - 1)
    sbits = SBITS[j] + (ki << (52 - TABLE_BITS))  # the high bits of ki, the shifter's, shift out
    r2 = r * r
    tmp = TAIL[j] + r + r2 * (C2 + r * C3) + r2 * r2 * (C4 + r * C5)
    scale = _as_float(sbits)
    return (scale + scale * tmp) * TWO_M_EXTRA


@_njit(_CONTRACT)
def exp_nonpositive(d: np.ndarray, out: np.ndarray) -> None:
    """``out = exp(d)`` for float64 ``d <= 0`` (``-inf`` allowed; NaN not): the kernel, for tests."""
    for i in range(d.size):
        r, ki = _reduce(d[i])
        out[i] = _exp_reduced(r, ki)


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
def _add(total: float, comp: float, part: float) -> tuple[float, float]:
    """Neumaier's compensated ``total + part`` (``part >= 0``)."""
    t = total + part
    if abs(total) >= part:
        comp += (total - t) + part
    else:
        comp += (part - t) + total
    return t, comp


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


# ================================================================================================
# Kernels of the PyTorch path (:mod:`._torch_fast`): forward and fused backward, every storage dtype
# ================================================================================================
# Rows come in their storage dtype: float64, float32, and bfloat16 / float16 *viewed* as int16 /
# uint16 (numba has no 16-bit floats): ``_load`` widens an entry to float64 in registers (exact) and
# ``_encode`` rounds a float64 to the storage dtype once, round-to-nearest-even, so no float64 copy
# of a tensor is ever made. The dtype of the array picks the conversion when numba compiles.
#
# For float32 outputs the softmax and log_softmax kernels use ``_exp_f32out``, a table-free exp
# (degree 7 on ``|r| <= ln2/2``, relative error < 2^-32 on normal results, 0 below 2^-1022) that
# LLVM vectorizes in full: the output rounds to 24 bits, so it stays within 0.5 ulp + 2^-8 ulp
# (``_exp_short``, degree 10 and 2^-41, is the losses'); bfloat16 and float16 rows run in float32.
# ``logsumexp`` (which can cancel: ``m + log1p(s)``
# near 0) and every float64 output keep the 0.51-ulp table ``exp`` above.
#
# Only the entry kernels (``torch_*``) are cached: numba cannot inline a helper that it loaded from
# its cache into a new caller (the cache holds machine code), and a helper called per entry must be
# inlined for the loop to vectorize. So the helpers here are compiled afresh with each entry kernel.


def _inline(fastmath: set[str] | bool = False) -> Callable[[Any], Any]:
    """``numba.njit`` of a helper of the entry kernels: like :func:`_njit`, but never cached."""
    if numba is None:
        return lambda f: f
    return numba.njit(cache=False, fastmath=fastmath, error_model="numpy", boundscheck=False, nogil=True)

if numba is not None:

    @intrinsic
    def _f32_bits(typingctx: Any, x: Any) -> Any:
        """The bits of a float32 as an int32."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.IntType(32))

        return types.int32(types.float32), codegen

    @intrinsic
    def _f32_from_bits(typingctx: Any, i: Any) -> Any:
        """The float32 with the bits of an int32."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), codegen

    @intrinsic
    def _bf16_of_f32(typingctx: Any, x: Any) -> Any:
        """float32 to bfloat16 bits, round to nearest even (NaN kept, made quiet), in 32-bit integer IR:
        numba's typing would widen the same Python arithmetic to int64, half the vector lanes."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            i32 = ir.IntType(32)

            def c(v: int) -> Any:
                return ir.Constant(i32, v)

            b = builder.bitcast(args[0], i32)
            hi = builder.lshr(b, c(16))
            up = builder.add(builder.add(b, c(0x7FFF)), builder.and_(hi, c(1)))  # wraps only for NaNs
            nan = builder.icmp_unsigned(">", builder.and_(b, c(0x7FFFFFFF)), c(0x7F800000))
            h = builder.select(nan, builder.or_(hi, c(0x40)), builder.lshr(up, c(16)))
            return builder.trunc(h, ir.IntType(16))

        return types.int16(types.float32), codegen

    @intrinsic
    def _f32_of_bf16(typingctx: Any, h: Any) -> Any:
        """bfloat16 bits (int16) to float32 (exact)."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            i32 = ir.IntType(32)
            b = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
            return builder.bitcast(b, ir.FloatType())

        return types.float32(types.int16), codegen

    @intrinsic
    def _half_of_f32(typingctx: Any, x: Any) -> Any:
        """float32 to float16 bits (uint16), round to nearest even: LLVM's ``fptrunc`` (F16C's vcvtps2ph)."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

        return types.uint16(types.float32), codegen

    @intrinsic
    def _f32_of_half(typingctx: Any, h: Any) -> Any:
        """float16 bits (uint16) to float32 (exact): LLVM's ``fpext`` (vcvtph2ps)."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return types.float32(types.uint16), codegen

    from numba.extending import overload

    def _load(v):
        """An entry as float64: bfloat16 bits (int16), float16 bits (uint16), float32 or float64."""
        raise NotImplementedError  # only its numba overload runs

    def _encode(v, like):
        """float64 ``v`` rounded (nearest even) to the dtype of array ``like``, as a value of that dtype."""
        raise NotImplementedError

    @overload(_load)
    def _load_impl(v):  # unannotated: numba compares the signature with the stub's
        if v == types.int16:  # bfloat16: the high half of a float32
            return lambda v: np.float64(_f32_from_bits(np.int32(v) << 16))
        if v == types.uint16:  # float16
            return lambda v: _half_to_f64(v)
        return lambda v: np.float64(v)

    def _key(v):
        """An entry's bits as a signed int64 in the order of the values (NaNs beyond the infinities)."""
        raise NotImplementedError

    def _nan_bits(v):
        """Whether an entry is a NaN, from its bits (no floating-point comparison)."""
        raise NotImplementedError

    def _unkey(k, like):
        """The float64 value of key ``k`` (from :func:`_key`) of an entry of the type of ``like``."""
        raise NotImplementedError

    # (bits of the type as a signed int64, width, NaN threshold of the magnitude bits)
    _BITS: dict[Any, Any] = {
        types.float64: (numba.njit(cache=False)(lambda v: _as_int(v)), 64, 0x7FF0000000000000),
        types.float32: (numba.njit(cache=False)(lambda v: np.int64(_f32_bits(v))), 32, 0x7F800000),
        types.int16: (numba.njit(cache=False)(lambda v: np.int64(v)), 16, 0x7F80),
        types.uint16: (numba.njit(cache=False)(lambda v: (np.int64(v) ^ 0x8000) - 0x8000), 16, 0x7C00),
    }

    @overload(_key)
    def _key_impl(v):
        bits, w, _ = _BITS[v]
        mag = (1 << (w - 1)) - 1

        def impl(v):  # sign-magnitude to two's complement: flip the magnitude of negative values
            b = bits(v)
            return b ^ ((b >> 63) & mag)

        return impl

    @overload(_nan_bits)
    def _nan_bits_impl(v):
        bits, w, inf = _BITS[v]
        mag = (1 << (w - 1)) - 1
        return lambda v: (bits(v) & mag) > inf

    @overload(_unkey)
    def _unkey_impl(k, like):
        _, w, _ = _BITS[like]
        mag = (1 << (w - 1)) - 1
        if like == types.float64:
            return lambda k, like: _as_float(k ^ ((k >> 63) & mag))
        if like == types.float32:
            return lambda k, like: np.float64(_f32_from_bits(np.int32(k ^ ((k >> 63) & mag))))
        if like == types.int16:
            return lambda k, like: _load(np.int16(k ^ ((k >> 63) & mag)))
        return lambda k, like: _load(np.uint16((k ^ ((k >> 63) & mag)) & 0xFFFF))

    @overload(_encode)
    def _encode_impl(v, like):
        dt = like.dtype
        if dt == types.int16:
            return lambda v, like: _f64_to_bf16(v)
        if dt == types.uint16:
            return lambda v, like: _f64_to_half(v)
        if dt == types.float32:
            return lambda v, like: np.float32(v)
        return lambda v, like: v


@_inline()
def _half_to_f64(h: int) -> float:
    """float16 bits to float64 (exact), in integer operations but for the subnormals' ``a * 2^-24``."""
    a = np.int64(h) & 0x7FFF
    normal = (a << 42) + ((1023 - 15) << 52)  # rebias the exponent, widen the mantissa
    special = np.int64(0x7FF0000000000000) | ((a & 0x3FF) << 42)  # inf, or NaN with its payload
    bits = _as_int(np.float64(a) * 2.0**-24) if a < 0x400 else (normal if a < 0x7C00 else special)
    return _as_float(bits | ((np.int64(h) & 0x8000) << 48))


@_inline()
def _sign16(v: float) -> int:
    return (_as_int(v) >> 48) & 0x8000


@_inline()
def _round_bits(v: float, drop: int, rebias: int, tiny: float, magic: float, inf: int, nan: int) -> int:
    """float64 ``v`` rounded to nearest even on a narrower float format, as that format's bits.

    Normal results: the float64 bits less ``drop`` mantissa bits, rounded on the integer (a carry
    may move to the next binade or to inf, as it should), the exponent rebiased. Below ``tiny`` (the
    format's smallest normal): ``|v| + magic`` rounds ``|v|`` to the format's subnormal spacing (an
    exact float64 addition, then one rounding).
    """
    b = _as_int(v) & 0x7FFFFFFFFFFFFFFF
    normal = ((b + ((np.int64(1) << (drop - 1)) - 1) + ((b >> drop) & 1)) >> drop) - rebias
    normal = min(normal, inf)
    sub = _as_int(_as_float(b) + magic) - _as_int(magic)
    h = sub if _as_float(b) < tiny else normal
    h = nan if b > 0x7FF0000000000000 else h
    return h | _sign16(v)


@_inline()
def _f64_to_bf16(v: float) -> np.int16:
    """float64 to bfloat16 bits, round to nearest even (overflow to inf, NaN kept)."""
    return np.int16(_round_bits(v, 45, (1023 - 127) << 7, 2.0**-126, 2.0**-81, 0x7F80, 0x7FC0))


@_inline()
def _f64_to_half(v: float) -> np.uint16:
    """float64 to float16 bits, round to nearest even (overflow to inf, NaN kept)."""
    return np.uint16(_round_bits(v, 42, (1023 - 15) << 10, 2.0**-14, 2.0**28, 0x7C00, 0x7E00))


INV_LN2 = float.fromhex("0x1.71547652b82fep0")
NEG_LN2_HI = float.fromhex("-0x1.62e42fefa39efp-1")
NEG_LN2_LO = float.fromhex("-0x1.abc9e3b39803fp-56")
# 1/j! for j = 2..10 (Taylor): degree 10 on |r| <= ln2/2 leaves (ln2/2)^11 / 11! < 2^-41
_INV_FACT = [1.0 / math.factorial(j) for j in range(2, 11)]
F2, F3, F4, F5, F6, F7, F8, F9, F10 = _INV_FACT


@_inline(_CONTRACT)
def _exp_short(d: float) -> float:
    """``exp(d)`` for ``d <= ~0`` to a relative 2^-41 (0 below 2^-1022, and for ``-inf``); vectorizes in full."""
    d = d if d > -746.0 else -746.0
    kd = d * INV_LN2 + SHIFT
    ki = _as_int(kd)
    kd -= SHIFT
    r = d + kd * NEG_LN2_HI + kd * NEG_LN2_LO
    r2 = r * r
    r4 = r2 * r2
    p = (1.0 + r) + r2 * (F2 + r * F3) + r4 * ((F4 + r * F5) + r2 * (F6 + r * F7)) + r4 * r4 * (F8 + r * F9 + r2 * F10)
    e = (ki << 52) + (1023 << 52)  # the low bits of ki hold k (two's complement), the shifter's shift out
    return p * _as_float(e) if kd >= -1022.0 else 0.0


# exp(r) = 1 + r + r^2 q(r), q of degree 5 fitted (least squares on Chebyshev nodes of |r| <= ln2/2,
# against mpmath): relative error < 2^-32, 2^-8 of a float32 ulp. exp(0) is exactly 1.
Q0, Q1, Q2, Q3, Q4, Q5 = (float.fromhex(h) for h in (
    "0x1.0000000b9945ep-1", "0x1.555555675f239p-3", "0x1.5554e8d5a85a9p-5",
    "0x1.1110c6120d9a1p-7", "0x1.6d4366531bd0dp-10", "0x1.a151bcd91932dp-13"))


@_inline(_CONTRACT)
def _exp_f32out(d: float) -> float:
    """``exp(d)`` for ``d <= ~0`` to a relative 2^-32 (0 below 2^-1022, and for ``-inf``), for results
    rounded to float32: :func:`_exp_short` with a polynomial of degree 7 instead of 10."""
    d = d if d > -746.0 else -746.0
    kd = d * INV_LN2 + SHIFT
    ki = _as_int(kd)
    kd -= SHIFT
    r = d + kd * NEG_LN2_HI + kd * NEG_LN2_LO
    r2 = r * r
    q = (Q0 + r * Q1) + r2 * ((Q2 + r * Q3) + r2 * (Q4 + r * Q5))
    p = (1.0 + r) + r2 * q
    e = (ki << 52) + (1023 << 52)
    return p * _as_float(e) if kd >= -1022.0 else 0.0


_reduce_inl = _inline(_CONTRACT)(getattr(_reduce, "py_func", _reduce))  # uncached copies, see above
_exp_reduced_inl = _inline(_CONTRACT)(getattr(_exp_reduced, "py_func", _exp_reduced))
_add_inl = _inline()(getattr(_add, "py_func", _add))


@_inline(_CONTRACT)
def _exp_accurate(d: float) -> float:
    """The 0.51-ulp table ``exp`` of one value ``d <= ~0`` (``-inf`` gives 0)."""
    r, ki = _reduce_inl(d)
    return _exp_reduced_inl(r, ki)


@_inline()
def _row_max(row: np.ndarray) -> float:
    """The max of a row as float64, NaN if the row holds one: an integer max of order-preserving keys of
    the bits (LLVM vectorizes integer reductions, not floating-point max without fast-math ``nnan``)."""
    km = np.int64(-(2**63))
    nan = False
    for i in range(row.size):
        km = max(km, _key(row[i]))
        nan |= _nan_bits(row[i])
    return np.nan if nan else _unkey(km, row[0])


@_inline(_SUM)
def _sum_short(row: np.ndarray, m: float, e: np.ndarray) -> float:
    """``e_i = exp(row_i - m)`` (short exp) and their sum (the max term included: exactly 1 each)."""
    acc = 0.0
    for i in range(row.size):
        v = _exp_short(_load(row[i]) - m)
        e[i] = v
        acc += v
    return acc


@_inline(_SUM)
def _rest_short(row: np.ndarray, m: float) -> tuple[float, int]:
    """``sum exp(row_i - m)`` over entries below the max (short exp), and the count of entries at it."""
    acc = 0.0
    ties = 0
    for i in range(row.size):
        d = _load(row[i]) - m
        at = d == 0.0
        ties += np.int64(at)
        acc += 0.0 if at else _exp_short(d)
    return acc, ties


@_inline(_SUM)
def _sum_f32out(row: np.ndarray, m: float, e: np.ndarray) -> float:
    """:func:`_sum_short` with :func:`_exp_f32out` (float32 rows)."""
    acc = 0.0
    for i in range(row.size):
        v = _exp_f32out(_load(row[i]) - m)
        e[i] = v
        acc += v
    return acc


@_inline(_SUM)
def _rest_f32out(row: np.ndarray, m: float) -> tuple[float, int]:
    """:func:`_rest_short` with :func:`_exp_f32out` (float32 rows)."""
    acc = 0.0
    ties = 0
    for i in range(row.size):
        d = _load(row[i]) - m
        at = d == 0.0
        ties += np.int64(at)
        acc += 0.0 if at else _exp_f32out(d)
    return acc, ties


@_inline(_SUM)
def _rest_accurate_block(seg: np.ndarray, m: float) -> tuple[float, int]:
    acc = 0.0
    ties = 0
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


@_inline(_CONTRACT)
def _scale_out(e: np.ndarray, q: float, out: np.ndarray) -> None:
    for i in range(e.size):
        out[i] = _encode(e[i] * q, out)


@_inline(_CONTRACT)
def _log_out_ld(row: np.ndarray, m: float, log1p_s: float, out: np.ndarray) -> None:
    for i in range(row.size):
        out[i] = _encode((_load(row[i]) - m) - log1p_s, out)


@_njit()
def torch_softmax_fwd(x: np.ndarray, out: np.ndarray, finite: np.ndarray, log: bool) -> bool:
    """softmax (``e / (1 + s)``) or log_softmax (``(x - m) - log1p(s)``) rows of float32, bfloat16 or
    float16 ``x`` (storage dtype) into ``out`` (same dtype), short exp, one rounding per entry.

    ``finite[r]`` says whether row ``r`` has a finite max; other rows are left untouched. Returns
    whether every row has one.
    """
    r_count, n = x.shape
    e = np.empty(n)
    ok = True
    for r in range(r_count):
        row = x[r]
        m = _row_max(row)
        fin = np.isfinite(m)
        finite[r] = fin
        if not fin:
            ok = False
            continue
        if log:
            s, ties = _rest_f32out(row, m)
            _log_out_ld(row, m, np.log1p(s + np.float64(ties - 1)), out[r])
        else:
            total = _sum_f32out(row, m, e)  # 1 + s, summed with the max term(s) inside
            _scale_out(e, 1.0 / total, out[r])
    return ok


@_njit()
def torch_logsumexp_fwd(x: np.ndarray, lse: np.ndarray) -> None:
    """``lse[r] = m + log1p(s)`` (float64) of rows of any storage dtype, table exp; the max where not finite."""
    for r in range(x.shape[0]):
        row = x[r]
        m = _row_max(row)
        lse[r] = m + np.log1p(_rest_accurate(row, m)) if np.isfinite(m) else m


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
    for i in range(p.size):
        pi = _load(p[i])
        grad[i] = _encode(pi * (_load(g[i]) - dot), grad)


@_inline(_CONTRACT)
def _log_softmax_grad_row(o: np.ndarray, g: np.ndarray, total: float, grad: np.ndarray, short: bool) -> None:
    if short:
        for i in range(o.size):
            grad[i] = _encode(_load(g[i]) - _exp_f32out(_load(o[i])) * total, grad)
    else:
        for i in range(o.size):
            grad[i] = _encode(_load(g[i]) - _exp_accurate(_load(o[i])) * total, grad)


@_inline(_CONTRACT)
def _lse_grad_row(x: np.ndarray, lse: float, g: float, grad: np.ndarray, short: bool) -> None:
    if short:
        for i in range(x.size):
            grad[i] = _encode(g * _exp_f32out(_load(x[i]) - lse), grad)
    else:
        for i in range(x.size):
            grad[i] = _encode(g * _exp_accurate(_load(x[i]) - lse), grad)


@_inline()
def _zero_row(grad: np.ndarray) -> None:
    for i in range(grad.size):
        grad[i] = _encode(0.0, grad)


@_njit()
def torch_softmax_bwd(
    out: np.ndarray, g: np.ndarray, finite: np.ndarray, grad: np.ndarray, log: bool, short: bool
) -> None:
    """Fused backward of softmax (``p (g - sum(g p))``) or log_softmax (``g - exp(o) sum(g)``), per row,
    float64 in registers, one rounding to ``grad``'s dtype; 0 on rows where ``finite`` is False.

    ``out``, ``g`` and ``grad`` share one storage dtype; ``short`` (not for float64) picks the short exp.
    A ``finite`` of one entry holds for every row.
    """
    one = finite.size == 1
    for r in range(out.shape[0]):
        if not finite[0 if one else r]:
            _zero_row(grad[r])
        elif log:
            _log_softmax_grad_row(out[r], g[r], _sum_ld(g[r]), grad[r], short)
        else:
            _softmax_grad_row(out[r], g[r], _dot_ld(g[r], out[r]), grad[r])


@_njit()
def torch_logsumexp_bwd(x: np.ndarray, lse: np.ndarray, g: np.ndarray, grad: np.ndarray, short: bool) -> None:
    """``grad = g exp(x - lse)`` (the softmax), per row, from float64 ``lse`` and ``g``; 0 where ``lse``
    is not finite. ``short`` (not for float64) picks the short exp."""
    for r in range(x.shape[0]):
        if np.isfinite(lse[r]):
            _lse_grad_row(x[r], lse[r], g[r], grad[r], short)
        else:
            _zero_row(grad[r])


# -- float32 arithmetic for bfloat16 and float16 rows -------------------------------------------
# Their outputs keep 8 or 11 bits: float32 arithmetic (16 lanes per AVX-512 vector, twice float64's)
# leaves a relative error of a few 2^-24 before the one rounding to the output, under 2^-10 of an
# ulp. ``_exp32`` is a float32 exp (Taylor degree 6 on |r| <= ln2/2: 2^-23, plus the roundings);
# results below 2^-126 are scaled in two steps so that subnormals round once. Sums run in float32
# over blocks of BLK16 entries (16 lanes, a few terms per lane: < 2^-19 relative) and in float64
# across blocks, so their error does not grow with the row length. Conversions to and from the
# 16-bit storage are 32-bit integer IR (bfloat16) and F16C's conversions (float16): see the intrinsics.
F32 = np.float32
LOG2E32, SHIFT32 = F32(1.4426950408889634), F32(12582912.0)  # 1.5 * 2^23
LN2_HI32, LN2_LO32 = F32(0.693145751953125), F32(1.4286068203094173e-06)  # hi: 16 bits, k * hi exact
E2, E3, E4, E5, E6 = (F32(1.0 / math.factorial(j)) for j in range(2, 7))
ONE32, NEG104 = F32(1.0), F32(-104.0)  # exp(-104) < 2^-150: 0 in float32
I1, I23, I127, I_SHIFT = np.int32(1), np.int32(23), np.int32(127), np.int32(0x4B400000)


@_inline(_CONTRACT)
def _exp32(d: float) -> float:
    """float32 ``exp(d)`` for float32 ``d <= ~0`` (``-inf`` and below -104 give 0), relative error ~2^-22."""
    d = d if d > NEG104 else NEG104
    kd = d * LOG2E32 + SHIFT32
    k = _f32_bits(kd) - I_SHIFT
    kd = kd - SHIFT32
    r = (d - kd * LN2_HI32) - kd * LN2_LO32
    r2 = r * r
    p = (ONE32 + r) + r2 * ((E2 + r * E3) + r2 * (E4 + r * E5 + r2 * E6))
    k1 = k >> I1
    s1 = _f32_from_bits((k1 + I127) << I23)  # int32 throughout: 16 lanes (an int64 constant would halve them)
    s2 = _f32_from_bits((k - k1 + I127) << I23)
    return (p * s1) * s2


if numba is not None:

    def _load32(v):
        """A bfloat16 (int16) or float16 (uint16) entry as float32 (exact)."""
        raise NotImplementedError

    def _encode32(v, like):
        """float32 ``v`` rounded (nearest even) to bfloat16 or float16 bits, the dtype of ``like``."""
        raise NotImplementedError

    @overload(_load32)
    def _load32_impl(v):
        if v == types.int16:
            return lambda v: _f32_of_bf16(v)
        return lambda v: _f32_of_half(v)

    @overload(_encode32)
    def _encode32_impl(v, like):
        if like.dtype == types.int16:
            return lambda v, like: _bf16_of_f32(v)
        return lambda v, like: _half_of_f32(v)


BLK16 = 512  # float32 partial sums run over blocks this long, then go to a float64 sum
# (each block is a helper on a slice: with the block loop in the same function LLVM does not vectorize)


@_inline(_SUM)
def _exp_sum32_blk(seg: np.ndarray, m: float, e: np.ndarray) -> float:
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
def _rest32_blk(seg: np.ndarray, m: float) -> tuple[float, int]:
    acc = F32(0.0)
    ties = 0
    for i in range(seg.size):
        d = _load32(seg[i]) - m
        at = d == F32(0.0)
        ties += np.int64(at)
        acc += F32(0.0) if at else _exp32(d)
    return acc, ties


@_inline()
def _rest32(row: np.ndarray, m: float) -> tuple[float, int]:
    """``sum exp(row_i - m)`` (float32 exp and block sums, float64 across) over entries below the max,
    and the ties."""
    total = 0.0
    ties = 0
    for b0 in range(0, row.size, BLK16):
        part, t = _rest32_blk(row[b0 : b0 + BLK16], m)
        total += np.float64(part)
        ties += t
    return total, ties


@_inline(_CONTRACT)
def _scale_out32(e: np.ndarray, q: float, out: np.ndarray) -> None:
    for i in range(e.size):
        out[i] = _encode32(e[i] * q, out)


@_inline(_CONTRACT)
def _log_out32(row: np.ndarray, m: float, log1p_s: float, out: np.ndarray) -> None:
    for i in range(row.size):
        out[i] = _encode32((_load32(row[i]) - m) - log1p_s, out)


@_njit()
def torch_softmax_fwd16(x: np.ndarray, out: np.ndarray, finite: np.ndarray, log: bool) -> bool:
    """:func:`torch_softmax_fwd` for bfloat16 / float16 rows, in float32 arithmetic (float64 sums)."""
    r_count, n = x.shape
    e = np.empty(n, dtype=np.float32)
    ok = True
    for r in range(r_count):
        row = x[r]
        m = _row_max(row)
        fin = np.isfinite(m)
        finite[r] = fin
        if not fin:
            ok = False
            continue
        m32 = F32(m)  # exact: the max is an entry
        if log:
            s, ties = _rest32(row, m32)
            _log_out32(row, m32, F32(np.log1p(s + np.float64(ties - 1))), out[r])
        else:
            _scale_out32(e, F32(1.0 / _sum32_store(row, m32, e)), out[r])
    return ok


@_inline(_SUM)
def _dot32_blk(a: np.ndarray, b: np.ndarray) -> float:
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
def _sum32_blk(a: np.ndarray) -> float:
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
def _softmax_grad32(p: np.ndarray, g: np.ndarray, dot: float, grad: np.ndarray) -> None:
    for i in range(p.size):
        grad[i] = _encode32(_load32(p[i]) * (_load32(g[i]) - dot), grad)


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
            _zero_row(grad[r])
        elif log:
            _log_softmax_grad32(out[r], g[r], F32(_sum32(g[r])), grad[r])
        else:
            _softmax_grad32(out[r], g[r], F32(_dot32(g[r], out[r])), grad[r])


@_njit()
def torch_logsumexp_bwd16(x: np.ndarray, lse: np.ndarray, g: np.ndarray, grad: np.ndarray) -> None:
    """:func:`torch_logsumexp_bwd` for bfloat16 / float16 rows, float32 exp."""
    for r in range(x.shape[0]):
        if np.isfinite(lse[r]):
            _lse_grad32(x[r], lse[r], F32(g[r]), grad[r])
        else:
            _zero_row(grad[r])


# -- entry points on raw pointers (the per-call cost of a small tensor) -----------------------------
# torch tensors pass ``data_ptr()`` and their shape: no NumPy views to make (~0.7 us each) and only
# integers for numba to unbox. ``code`` is the storage dtype: 0 float32, 1 bfloat16, 2 float16,
# 3 float64 (index into STORAGE_CODES); every entry compiles the kernel for each of them.
STORAGE_CODES = ("float32", "bfloat16", "float16", "float64")

if numba is not None:

    @intrinsic
    def _voidptr(typingctx: Any, addr: Any) -> Any:
        """The address held by an int64, as a ``void *`` (for ``numba.carray``)."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

        return types.voidptr(types.int64), codegen

    carray = numba.carray
else:
    _voidptr = carray = None


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
