r"""A float64 ``log1p`` that LLVM vectorizes: no libm call, no table, no branch.

.. math:: \mathrm{log1p}(x) = k \ln 2 + \log(1 + f) + c / u, \qquad
          \log(1 + f) = f - h + s (h + R(s^2)), \quad s = \frac{f}{2 + f}, \; h = f^2 / 2

fdlibm's ``log1p`` (Sun, 1993, as in musl), written with selects instead of
branches so that a loop over it becomes SIMD code (numba has no SVML here, and
libm's ``log1p`` costs ~20 ns an element inside the fused kernels):

* ``u = 1 + x`` rounded; ``k`` and ``1 + f = u / 2^k`` in ``[sqrt(2)/2, sqrt(2))``
  from the bits of ``u`` (an integer add puts the ``sqrt(2)`` boundary on an
  exponent step), and the rounding error of ``u`` carried as ``c = x - (u - 1)``
  (``1 - (u - x)`` for ``k >= 2``), both exact, divided by ``u``;
* ``R`` the degree-7 minimax polynomial of fdlibm in ``s^2 <= 0.0295``
  (``|error| < 2^-58.45``);
* ``k ln 2`` split in ``ln2_hi`` (exact product for ``|k| < 2^11``) and ``ln2_lo``.

Error below 1 ulp (fdlibm's bound; the tests measure it against mpmath on
subnormal, tiny, huge and near ``-1`` arguments). ``log1p(-1) = -inf``,
``x < -1`` gives NaN, ``log1p(inf) = inf``, NaN propagates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._numba_bits import AVAILABLE, _as_float, _as_int, _njit, intrinsic

select: Any
if AVAILABLE:
    from numba import types

    @intrinsic
    def select(typingctx: Any, cond: Any, a: Any, b: Any) -> Any:
        """``a if cond else b`` as one LLVM ``select`` (a numba ternary is a branch, which stops vectorization)."""
        if not isinstance(cond, types.Boolean) or a != b:
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.select(args[0], args[1], args[2])

        return a(cond, a, b), codegen

else:  # never called: only the name, for the plain-Python definitions below
    select = None


def inline(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A numba function inlined into its callers in numba's IR: LLVM's inliner gives up on nested
    helpers of this size, and a call left inside a loop stops its vectorization."""
    if not AVAILABLE:
        return fn
    import numba

    return numba.njit(inline="always", fastmath={"contract"}, error_model="numpy", boundscheck=False)(fn)

LN2_HI = float.fromhex("0x1.62e42feep-1")
LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
LG1 = 6.666666666666735130e-01
LG2 = 3.999999999940941908e-01
LG3 = 2.857142874366239149e-01
LG4 = 2.222219843214978396e-01
LG5 = 1.818357216161805012e-01
LG6 = 1.531383769920937332e-01
LG7 = 1.479819860511658591e-01
_OFFSET = 0x3FF00000 - 0x3FE6A09E  # moves the high word so that sqrt(2)/2 falls on an exponent step
_LOW32 = 0xFFFFFFFF
_CONTRACT = {"contract"}


_MAGIC = 0x4338000000000000  # the bits of 1.5 * 2^52: k + _MAGIC read as a float is 1.5 * 2^52 + k (|k| < 2^51)
_MAGIC_F = 6755399441055744.0


@inline
def _high_word(bits: int) -> int:
    """The high 32 bits of the float64 bits of a positive number: a logical shift (the mask tells LLVM so; an
    arithmetic shift of 64-bit lanes has no AVX2 instruction)."""
    return (bits >> 32) & 0xFFFFFFFF


@inline
def _log1p_finite(x: float) -> float:
    """``log1p(x)`` for finite ``x > -1`` (``-1 < x < 2^1023``): the kernel, without special cases."""
    u = 1.0 + x
    bits = _as_int(u)
    k = ((_high_word(bits) + _OFFSET) >> 20) - 0x3FF
    c = select(k >= 2, 1.0 - (u - x), x - (u - 1.0))
    c = select(k < 54, c / u, 0.0)  # beyond 2^54 the correction is below ulp (and c / u could underflow)
    return _log_kernel(u, c)


@inline
def log_positive(u: float) -> float:
    """``log(u)`` for a normal positive finite float64 ``u`` (no special cases): the kernel of :func:`log1p`
    with nothing to carry, below 1 ulp (fdlibm's ``log``)."""
    return _log_kernel(u, 0.0)


@inline
def _log_kernel(u: float, c: float) -> float:
    """``log(u) + c`` for a normal positive ``u`` and a small correction ``c`` (fdlibm, see the module docstring)."""
    bits = _as_int(u)
    hu = _high_word(bits) + _OFFSET
    k = (hu >> 20) - 0x3FF
    hu = (hu & 0x000FFFFF) + 0x3FE6A09E
    f = _as_float((hu << 32) | (bits & _LOW32)) - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (LG2 + w * (LG4 + w * LG6))
    t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)))
    dk = _as_float(k + _MAGIC) - _MAGIC_F  # k as a float with vector integer adds (AVX2 has no int64 -> float64)
    return s * (hfsq + t1 + t2) + (dk * LN2_LO + c) - hfsq + f + dk * LN2_HI


@inline
def log1p_nonneg(x: float) -> float:
    """``log1p(x)`` for finite ``x >= 0`` to a relative ``2^-51.9`` (measured against mpmath), with one divide
    (:func:`log1p` has two): the rounding error ``c`` of ``u = 1 + x`` enters as ``c (2 - u)`` for ``c / u``, off
    by ``(u - 1)^2 c / u`` near 1, and ``0`` from ``u = 2`` (``|c / u| <= 2^-53`` beside ``log(u) >= ln 2``). For
    the per-position ``log1p(s)`` of the middle-axis kernels: 0.56x :func:`log1p`'s time on AVX2."""
    u = 1.0 + x
    bits = _as_int(u)
    k = ((_high_word(bits) + _OFFSET) >> 20) - 0x3FF
    c = select(k >= 2, 1.0 - (u - x), x - (u - 1.0)) * max(2.0 - u, 0.0)
    return _log_kernel(u, c)


@inline
def log1p(x: float) -> float:
    """``log1p(x)`` for every float64: ``-inf`` at -1, NaN below and for NaN, ``inf`` at ``inf``."""
    inside = (x > -1.0) & (x < np.inf)
    r = _log1p_finite(select(inside, x, 0.0))
    r = select((x < np.inf) & (x != 0.0), r, x)  # +-0 and inf are their own log1p
    return select(x > -1.0, r, select(x == -1.0, -np.inf, np.nan))


@_njit(_CONTRACT)
def log1p_array(x: np.ndarray, out: np.ndarray) -> None:
    """``out = log1p(x)`` elementwise on float64 arrays (the kernel, for tests and timing)."""
    for i in range(x.size):
        out[i] = log1p(x[i])


# -- the short versions, for float32/bfloat16 results: no float64 divide -------------------------
# A float64 divide costs ~2 cycles an element even in SIMD (the FMAs of a polynomial ~0.06): the kernels below
# replace it by polynomials and a correction step (an earlier float32 divide with a Newton step, ``recip_short``,
# was slower still: a divide and two conversions).
# 1 / d on [1, 2] without a divide: a degree-3 fit (minimax of the relative error |1 - d y|, 2^-9.17) and one
# step of order 4, y (1 + eps) (1 + eps^2) with eps = 1 - d y, which takes the error to eps^4 (2^-36.7): 7
# multiply-adds in place of a float32 divide, its two conversions and its Newton step. With the short
# exp's 2^-35 a float32 sigmoid stays within 0.5 + 2^-10.5 ulp. The float32 sigmoid backward (softplus /
# log_sigmoid, 4M entries, one thread, Zen 4) took 0.89x the time; a degree-4 fit with a Horner step of order 4
# (2^-46.8, 8 multiply-adds, one longer chain) only 0.95x.
Q0, Q1, Q2, Q3 = (float.fromhex(h) for h in (
    "0x1.6a09c2c6d6a67p+1", "-0x1.783c56f6caf22p+1", "0x1.54bde47ee816bp+0", "-0x1.c65285fe8acc8p-3"))


@inline
def recip_unit(d: float) -> float:
    r"""``1 / d`` for ``1 <= d <= 2`` to a relative ``2^-36.6``, without a divide (NaN gives NaN).

    .. math:: y_0 = Q(d), \quad \varepsilon = 1 - d y_0, \qquad
              \frac{1}{d} = \frac{y_0}{1 - \varepsilon} \approx y_0 (1 + \varepsilon)(1 + \varepsilon^2)

    ``Q`` of degree 3 keeps ``|eps| < 2^-9.17``; the product is ``y_0 (1 - eps^4) / (1 - eps)``, off by a
    relative ``eps^4 < 2^-36.6`` (and a few float64 roundings, ``2^-52``).
    """
    y = Q0 + d * (Q1 + d * (Q2 + d * Q3))
    eps = 1.0 - d * y
    y = y + y * eps
    return y + y * (eps * eps)


# log1p(e) on 0 <= e <= 1, for float32 and bfloat16 results (softplus's log1p(exp(-|x|)), the BCE loss): e P(e) with
# P(e) = log1p(e) / e = 1 + e Q(e), Q of degree 11 (a near-minimax of the relative error on [0, 1], iterated weighted
# least squares on Chebyshev nodes against mpmath: 2^-35.5; P is analytic up to its branch point at -1, so each degree
# gains a factor 3 + sqrt(8)). No reduction, no 1 + e to round (e + e^2 Q(e) is relative to e however small, and e
# itself where e^2 underflows), no reciprocal: 13 multiply-adds. The atanh form it replaces (u = 1 + e = 2^k (1 + f),
# s = f / (2 + f) by a divide-free reciprocal, 2 s + s z P(z) and the rounding error of u) took 26 and reached 2^-44,
# more than a float32 result needs: on Zen 4 softplus's loop is bound by its zmm float64 multiply-adds (8 lanes, one
# a cycle), and the float32 softplus forward (4M entries, one thread) takes 0.72x its time with this one.
L1P = tuple(float.fromhex(h) for h in (
    "-0x1.ffffffb3db68fp-2", "0x1.55554064a321dp-2", "-0x1.fffbf3283a007p-3", "0x1.9966c2da423f1p-3",
    "-0x1.53d9bd24115a1p-3", "0x1.1d5ef5fe3ed7cp-3", "-0x1.cfde106343066p-4", "0x1.53ce07225be41p-4",
    "-0x1.9921b5842c5f3p-5", "0x1.6b221c0ff1d62p-6", "-0x1.99f31c2ff0b9dp-8", "0x1.b1fd3243c29f8p-11",
))
K0, K1, K2, K3, K4, K5, K6, K7, K8, K9, K10, K11 = L1P


@inline
def log1p_unit(e: float) -> float:
    r"""``log1p(e)`` for ``0 <= e <= 1`` to a relative ``2^-35.5`` (``e`` itself where ``e^2`` underflows),
    without a divide: for results rounded to float32 or bfloat16 (softplus's ``log1p(exp(-|x|))``), 2^-11 of
    their ulp.

    .. math:: \mathrm{log1p}(e) = e + e^2 Q(e), \qquad 1 + e\,Q(e) \approx \frac{\log(1 + e)}{e}
              \;(Q \text{ of degree 11})

    ``Q`` evaluated in Estrin's pairs (a shorter dependency chain than Horner's).
    """
    e2 = e * e
    e4 = e2 * e2
    r0 = (K0 + e * K1) + e2 * (K2 + e * K3)
    r1 = (K4 + e * K5) + e2 * (K6 + e * K7)
    r2 = (K8 + e * K9) + e2 * (K10 + e * K11)
    return e + e2 * (r0 + e4 * (r1 + e4 * r2))


@_njit(_CONTRACT)
def log1p_unit_array(x: np.ndarray, out: np.ndarray) -> None:
    """``out = log1p_unit(x)`` on float64 arrays in ``[0, 1]`` (for tests)."""
    for i in range(x.size):
        out[i] = log1p_unit(x[i])


@_njit(_CONTRACT)
def log1p_nonneg_array(x: np.ndarray, out: np.ndarray) -> None:
    """``out = log1p_nonneg(x)`` on finite float64 arrays ``>= 0`` (for tests)."""
    for i in range(x.size):
        out[i] = log1p_nonneg(x[i])


@_njit(_CONTRACT)
def recip_unit_array(x: np.ndarray, out: np.ndarray) -> None:
    """``out = recip_unit(x)`` on float64 arrays in ``[1, 2]`` (for tests)."""
    for i in range(x.size):
        out[i] = recip_unit(x[i])
