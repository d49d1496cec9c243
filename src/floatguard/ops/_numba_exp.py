"""The float64 and float32 ``exp`` kernels of the compiled paths, for arguments ``d <= 0``.

* :func:`_reduce` / :func:`_exp_reduced`: the table algorithm of glibc's ``exp`` (ARM
  optimized-routines, Szabolcs Nagy), 0.51 ulp, in two halves so that a block's reduction
  vectorizes (see :mod:`._numba_fast`); :func:`_exp_accurate` both halves inlined;
* :func:`_exp_f32out`: no table (``2^(k/2)`` by a select), degree 6 on ``|r| <= ln2/4``, relative ``2^-35``
  (0 below ``2^-1022``), vectorizes in full: for results rounded to float32 or bfloat16 (0.5 ulp + ``2^-11`` ulp);
  :func:`_exp_row` the same clamped at -700 with no underflow select and degree 5 (relative ``2^-29.27``: the
  terms and entries of a float32 softmax/log_softmax row with a finite max);
* :func:`_expm1_small`: ``expm1`` on ``[-ln2, 0]`` from the same polynomial (relative ``2^-34``);
* :func:`_exp32`: float32 arithmetic for bfloat16 and float16 rows (relative ``~2^-22``);
* :func:`_exp32_acc`: float32 arithmetic within 0.83 ulp (the float32 log_softmax backward);
* :func:`_exp_neg32_parts`: float32 ``exp(-a) = s (1 + p)`` with ``s`` and the pair ``1, p`` kept apart (for
  the float32 sigmoid backward);
* :func:`_add`: Neumaier's compensated sum of two partial sums.
"""

from __future__ import annotations

import decimal
import math
import struct

import numpy as np

from ._numba_bits import _CONTRACT, _as_float, _as_int, _f32_bits, _f32_from_bits, _inline, _njit

TABLE_BITS = 7
N = 1 << TABLE_BITS
BLK = 128  # entries per reduction block of the table exp's sums: two small buffers that stay in L1

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
def _sum_of(total: float, comp: float) -> float:
    """The value ``total + comp`` of a compensated sum made by :func:`_add`; ``total`` itself where it is not finite: an
    infinite term (a loss of ``+inf``: a ``-inf`` logit at the target) makes ``comp`` NaN (``inf - inf``), and the
    sum was NaN where it is ``+inf``."""
    return total + comp if total - total == 0.0 else total


# exp(d) = 2^(k/2) exp(r), |r| <= ln2/4: 2^(j/2) (j = k mod 2) is 1 or sqrt(2), picked by a select on the
# low bit of k (no table: the loop vectorizes without gathers); r = d - k ln2/2 in one fma (|k| <= 2153, so
# the rounding of ln2/2 moves r by < 2^-43). exp(r) = 1 + r + r^2 q(r), q of degree 4 fitted (least squares
# on Chebyshev nodes of |r| <= ln2/4, against mpmath): relative error < 2^-35 with the roundings, 2^-11 of a
# float32 ulp. Against a table-free degree-7 exp on |r| <= ln2/2 it saves 3 of 11 multiply-adds per entry
# (the FMA ports bound the float32 kernels' exp loops). A 16- or 32-entry table with a degree 3-4 polynomial
# needs gathers (vgatherqpd): 1.3-1.45x slower on Zen 4; exp(0) is exactly 1.
INV_LN2_2 = float.fromhex("0x1.71547652b82fep+1")
NEG_LN2_2 = float.fromhex("-0x1.62e42fefa39efp-2")
ONE_BITS = 0x3FF0000000000000  # the bits of 1; of sqrt(2) less 1 << 51 (k's low bit, which ki << 51 adds)
SQRT2_BITS = struct.unpack("<q", struct.pack("<d", float.fromhex("0x1.6a09e667f3bcdp+0")))[0] - (1 << 51)
Q2, Q3, Q4, Q5, Q6 = (float.fromhex(h) for h in (
    "0x1.ffffffe003d3fp-2", "0x1.555548c451068p-3", "0x1.5555b9a950c81p-5",
    "0x1.115bf5d00c33ap-7", "0x1.6b24815501272p-10"))


# The same with q of degree 3 (least squares reweighted to the minimax, against mpmath): relative 2^-29.27,
# 2^-5.3 of a float32 ulp, for the entries of float32 softmax/log_softmax rows (:func:`_exp_row`), whose
# outputs are a product or a sum of same-signed terms (nothing cancels the error away from the final rounding's
# 0.5 ulp): one multiply-add fewer per entry, 0.94x the float32 softmax forward's time.
R2, R3, R4, R5 = (float.fromhex(h) for h in (
    "0x1.ffffdd9eb1395p-2", "0x1.5555789d2b487p-3", "0x1.55ccfb9c4662ep-5", "0x1.10eb38008c006p-7"))


@_inline(_CONTRACT)
def _half_steps(d: float) -> tuple[float, float, float]:
    """``(r, s, kd)``: ``d = k ln2/2 + r`` (``|r| <= ln2/4``, ``k`` by the shifter, ``kd = k`` as a float) and
    ``s = 2^(k/2)`` put together in the exponent bits from 1 or sqrt(2) (normal while ``kd >= -2044``)."""
    kd = d * INV_LN2_2 + SHIFT
    ki = _as_int(kd)
    kd -= SHIFT
    r = d + kd * NEG_LN2_2
    s = _as_float((SQRT2_BITS if (ki & 1) != 0 else ONE_BITS) + (ki << 51))  # ki's high bits shift out
    return r, s, kd


@_inline(_CONTRACT)
def _exp_half_steps(d: float) -> tuple[float, float]:
    """``(exp(d), kd)`` for ``-1400 <= d <= ~0``, ``kd = round(2 d / ln2)`` (:func:`_half_steps`),
    ``exp(r) = 1 + r + r^2 q(r)``, ``exp(d) = s + s (r + r^2 q(r))``; relative 2^-35 while ``kd >= -2044``."""
    r, s, kd = _half_steps(d)
    return s + s * _expm1_reduced(r), kd


@_inline(_CONTRACT)
def _expm1_reduced(r: float) -> float:
    """``exp(r) - 1 = r + r^2 q(r)`` for ``|r| <= ln2/4``, ``q`` of degree 4 (Q2..Q6): relative 2^-35."""
    r2 = r * r
    return r + r2 * ((Q2 + r * Q3) + r2 * ((Q4 + r * Q5) + r2 * Q6))


@_inline(_CONTRACT)
def _expm1_small(d: float) -> float:
    """``expm1(d)`` for ``-ln2 <= d <= 0`` to a relative 2^-34: ``s (r + r^2 q(r)) + (s - 1)`` of
    :func:`_exp_half_steps` (``s`` is 1, sqrt(2)/2 or 1/2 there: ``s - 1`` exact, no cancellation)."""
    r, s, _ = _half_steps(d)
    return s * _expm1_reduced(r) + (s - 1.0)


@_inline(_CONTRACT)
def _exp_f32out(d: float) -> float:
    """``exp(d)`` for ``d <= ~0`` to a relative 2^-35 (0 below 2^-1022, and for ``-inf``), for results
    rounded to float32; vectorizes in full (:func:`_exp_half_steps`)."""
    v, kd = _exp_half_steps(d if d > -746.0 else -746.0)
    return v if kd >= -2044.0 else 0.0


# :func:`_exp_f32out` less its underflow select, for the terms of a row sum and the softmax entries of a
# row with a finite max: d is clamped to -700 instead, so an entry further below the max (or -inf) gives
# exp(-700) ~ 1e-304 where it gave 0. In a softmax row that is e / (1 + s) with 1 + s >= 1, 0 once rounded
# to float32; in a sum that holds the max term (exactly 1) it changes nothing. Two vector ops of the ~16
# on the FMA ports fewer per entry: 0.88-0.9x the pass. And the polynomial of degree 5 (R2..R5 above): the
# float32 output of a softmax entry e q is within 0.5 + 2^-4.3 ulp (e and 1 + s each 2^-29.27 relative).
@_inline(_CONTRACT)
def _exp_row(d: float) -> float:
    """``exp(d)`` for ``d <= ~0`` to a relative 2^-29.27 (exactly 1 at 0: ``r = 0``), ``exp(-700)`` below ``-700``."""
    r, s, _ = _half_steps(d if d > -700.0 else -700.0)
    r2 = r * r
    return s + s * (r + r2 * ((R2 + r * R3) + r2 * (R4 + r * R5)))


@_inline(_CONTRACT)
def _exp_clamped(d: float) -> float:
    """``exp(d)`` for ``d <= ~0`` to a relative 2^-35 (:func:`_exp_half_steps`), ``d`` clamped at -700 with no
    underflow select: ``exp(-700)`` (1e-304) for anything below, for results rounded to float32 or 16 bits where
    that is 0 (a logsumexp's backward, ``|g| exp(-700) < 2^-880``) or beside a 1 in a row sum."""
    return _exp_half_steps(d if d > -700.0 else -700.0)[0]


_reduce_inl = _inline(_CONTRACT)(getattr(_reduce, "py_func", _reduce))  # uncached copies, see above
_exp_reduced_inl = _inline(_CONTRACT)(getattr(_exp_reduced, "py_func", _exp_reduced))
_add_inl = _inline()(getattr(_add, "py_func", _add))


@_inline(_CONTRACT)
def _exp_accurate(d: float) -> float:
    """The 0.51-ulp table ``exp`` of one value ``d <= ~0`` (``-inf`` gives 0)."""
    r, ki = _reduce_inl(d)
    return _exp_reduced_inl(r, ki)

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
def _steps32(d: np.float32) -> tuple[np.float32, np.int32]:
    """``k = round(d / ln2)`` by the shifter, as a float32 and as an int32 (``-150 <= d / ln2 <= 0``)."""
    kd = d * LOG2E32 + SHIFT32
    return kd - SHIFT32, _f32_bits(kd) - I_SHIFT


@_inline(_CONTRACT)
def _scale32(p: np.float32, k: np.int32) -> np.float32:
    """``p 2^k`` in two steps, so that a result below 2^-126 rounds once (``k >= -150``)."""
    k1 = k >> I1
    s1 = _f32_from_bits((k1 + I127) << I23)  # int32 throughout: 16 lanes (an int64 constant would halve them)
    s2 = _f32_from_bits((k - k1 + I127) << I23)
    return (p * s1) * s2


@_inline(_CONTRACT)
def _exp32(d: np.float32) -> np.float32:
    """float32 ``exp(d)`` for float32 ``d <= ~0`` (``-inf`` and below -104 give 0), relative error ~2^-22."""
    d = d if d > NEG104 else NEG104
    kd, k = _steps32(d)
    r = (d - kd * LN2_HI32) - kd * LN2_LO32
    r2 = r * r
    p = (ONE32 + r) + r2 * ((E2 + r * E3) + r2 * (E4 + r * E5 + r2 * E6))
    return _scale32(p, k)



# -- float32 exp(-a) as s (1 + p), kept apart: the float32 sigmoid backward --------------------------
# exp(-a) = 2^-k exp(r), r = -a + k ln2 (k by the shifter; k LN2_HI32 exact for k <= 127, so one rounding
# of r: 2^-26 for |r| <= ln2/2), exp(r) = 1 + p, p = r + r^2 q(r), q of degree 4 fitted in float32
# coefficients (iterated weighted least squares on Chebyshev nodes of |r| <= 0.3471, against mpmath):
# |p - expm1(r)| < 2^-28.2 exp(r). The caller keeps 1 + p unrounded (the pair 1, p) and s = 2^-k apart.
M0, M1, M2, M3, M4 = (F32(float.fromhex(h)) for h in (
    "0x1.fffffcp-2", "0x1.55549p-3", "0x1.5558a2p-5", "0x1.123adap-7", "0x1.6a5e6ap-10"))


@_inline(_CONTRACT)
def _q32(r: np.float32, r2: np.float32) -> np.float32:
    """``q(r)`` of ``expm1(r) = r + r^2 q(r)`` (M0..M4), ``r2 = r^2``."""
    return (M0 + r * M1) + r2 * ((M2 + r * M3) + r2 * M4)


@_inline(_CONTRACT)
def _neg32_steps(a: np.float32) -> tuple[np.float32, np.float32, np.float32]:
    """``s = 2^-k`` (normal), ``kd = -k`` (a float32) and ``rh = -a + k LN2_HI32`` (exact) of float32 ``0 <= a <= 80``:
    ``exp(-a) = s exp(rh - kd LN2_LO32)``."""
    kd = SHIFT32 - a * LOG2E32
    k = _f32_bits(kd) - I_SHIFT  # -k, as int32
    kd = kd - SHIFT32
    return _f32_from_bits((k + I127) << I23), kd, -a - kd * LN2_HI32


@_inline(_CONTRACT)
def _exp_neg32_parts(a: np.float32) -> tuple[np.float32, np.float32]:
    r"""``exp(-a) = s (1 + p)`` for float32 ``0 <= a <= 80``: ``s = 2^-k`` (normal) and ``p = expm1(r)``,
    ``|r| <= ln2/2``, to ``2^-24`` of ``1 + p`` (see the error budget of
    :func:`._numba_elementwise._g_sigmoid32`); ``a`` beyond 80, inf or NaN give garbage (callers check).

    .. math:: e^{-a} = 2^{-k} e^{r}, \quad r = -a + k \ln 2, \qquad e^{r} = 1 + r + r^2 q(r)
    """
    s, kd, rh = _neg32_steps(a)
    r = rh - kd * LN2_LO32
    r2 = r * r
    return s, r + r2 * _q32(r, r2)


@_inline(_CONTRACT)
def _exp_neg32_split(a: np.float32) -> tuple[np.float32, np.float32, np.float32]:
    """``exp(-a) = s (1 + r + w)`` for float32 ``0 <= a <= 80``, ``1 + r + w`` unrounded: ``s = 2^-k`` (normal), ``r``
    the reduced argument rounded once and ``w = r^2 q(r)`` plus what that rounding lost (as :func:`_exp32_acc`), so
    that ``r + w`` is ``expm1`` of the exact reduced argument to the fit's ``2^-28.2`` and ``w``'s float32 roundings
    (the float32 log1mexp backward, :func:`._numba_elementwise._g_log1mexp32`)."""
    s, kd, rh = _neg32_steps(a)
    r = rh - kd * LN2_LO32
    tail = (rh - r) - kd * LN2_LO32
    r2 = r * r
    return s, r, r2 * _q32(r, r2) + tail


# -- float32 exp(d) within 0.83 ulp: the float32 log_softmax backward (16 lanes) ----------------------
# A gradient has the budget of 2 ulp (times the condition number where g_i - p_i sum(g) cancels), so the
# exp of a saved log_softmax output o <= 0 (a float32, exact) runs in float32 lanes, twice float64's: the
# reduction of :func:`_exp_neg32_parts` with the rounding of r put back after the polynomial (M0..M4),
# and 1 + (r + r^2 q) rounded once: within 0.83 ulp (against mpmath); 2^k in two steps so that a subnormal
# result rounds once (as :func:`_exp32`), 0 below -104.
@_inline(_CONTRACT)
def _exp32_acc(d: np.float32) -> np.float32:
    """float32 ``exp(d)`` of a float32 ``d <= 0`` within 0.83 ulp (``-inf``, NaN and below -104 give 0)."""
    d = d if d > NEG104 else NEG104
    kd, k = _steps32(d)
    rh = d - kd * LN2_HI32  # exact
    r = rh - kd * LN2_LO32
    tail = (rh - r) - kd * LN2_LO32  # what rounding r lost, added after the polynomial
    r2 = r * r
    p = ONE32 + (r + (r2 * _q32(r, r2) + tail))
    return _scale32(p, k)
