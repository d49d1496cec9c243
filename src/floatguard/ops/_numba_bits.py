"""numba plumbing of the compiled kernels: compile decorators, bit casts, 16-bit storage.

* :func:`_njit` (cached entry kernels) and :func:`_inline` (helpers compiled afresh into each
  caller, so that their loops vectorize); fast-math ``contract`` everywhere, ``reassoc`` only on
  loops whose one reduction is a sum of positive terms (``_SUM``);
* bit casts between floats and integers as LLVM ``bitcast`` intrinsics;
* the storage dtypes of a tensor's rows: float64, float32, and bfloat16 / float16 *viewed* as
  int16 / uint16 (numba has no 16-bit floats): :func:`_load` widens an entry to float64 in
  registers (exact), :func:`_encode` rounds a float64 to the storage dtype once (nearest even),
  :func:`_load32` / :func:`_encode32` do the same in float32; the dtype of the array picks the
  conversion when numba compiles, and :func:`_load_as` / :func:`_round_to` pick the float64 or the
  float32 pair from the type of a value;
* :func:`_row_max`, a row's max from order-preserving integer keys of its bits (vectorizes);
* :func:`_voidptr` and ``carray``: arrays over a tensor's ``data_ptr()``;
* the on-disk cache stamp of the kernels: numba's, and :func:`kernels_revision`, a hash of every kernel module.

Without numba this module still imports (``AVAILABLE`` is False) and the decorators return the
plain Python functions, never called.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

numba: Any
try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import overload
except ImportError:  # the `fast` extra is not installed
    numba = None

AVAILABLE = numba is not None

_OPS_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def kernels_revision() -> str:
    """A hash of the sources of every numba module of ``floatguard.ops`` (``_numba_*.py``): what the cached kernels
    were compiled from, helpers inlined from other files included."""
    digest = hashlib.sha256()
    try:
        for name in sorted(os.listdir(_OPS_DIR)):
            if name.startswith("_numba_") and name.endswith(".py"):
                with open(os.path.join(_OPS_DIR, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read() + b"\0")
    except OSError:  # not a directory of files (a zip import): numba's own stamps alone
        return ""
    return digest.hexdigest()[:16]


def _install_revision_locator() -> bool:
    """Make numba's on-disk cache of floatguard's kernels stale whenever any of their sources changes.

    numba stamps a cached function with its own source file only (a hash of its contents in numba 0.68, its
    modification time and size in older ones). An entry kernel inlines helpers from the other ``_numba_*`` modules
    (an exp, a ``log1p``, a block pass), so a change to a helper left every entry kernel of an unchanged file running
    the old helper from the cache: an editable install, or a source tree under development, computed with code it no
    longer had (a fix to the 16-bit column sums reached ``log_softmax`` but not the cross-entropy, whose file had not
    changed). Here a locator put first in numba's list answers for the files of this directory: the locator numba
    would have used, with the stamp ``(its stamp,`` :func:`kernels_revision` ``)``. Other functions keep numba's
    locators. Returns False where numba's caching machinery is not the one this was written for (then nothing
    changes)."""
    try:
        from numba.core import caching
    except ImportError:
        return False
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)  # the name in 0.68, and before
    base = getattr(caching, "_CacheLocator", None)
    found = getattr(impl, "_locator_classes", None)
    if base is None or not isinstance(found, list):
        return False
    classes: list[Any] = found
    if any(getattr(c, "floatguard_revision", False) for c in classes):
        return True

    class _RevisionLocator(base):  # type: ignore[misc,valid-type]
        floatguard_revision = True

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def ensure_cache_path(self) -> None:
            self._inner.ensure_cache_path()

        def get_cache_path(self) -> Any:
            return self._inner.get_cache_path()

        def get_source_stamp(self) -> Any:
            return (self._inner.get_source_stamp(), kernels_revision())

        def get_disambiguator(self) -> Any:
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            if os.path.dirname(os.path.abspath(py_file)) != _OPS_DIR:
                return None
            for other in classes:
                inner = None if other is cls else other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
            return None

    classes.insert(0, _RevisionLocator)
    return True


REVISION_LOCATOR = AVAILABLE and _install_revision_locator()


def intrinsic(fn: Callable[..., Any]) -> Any:
    """numba's ``intrinsic``: a function of LLVM IR, callable from numba code (typed ``Any``: its calls
    leave out the ``typingctx`` of its definition)."""
    return numba.extending.intrinsic(fn)

def _njit(fastmath: set[str] | bool = False) -> Callable[[Any], Any]:
    if numba is None:
        return lambda f: f
    return numba.njit(cache=True, fastmath=fastmath, error_model="numpy", boundscheck=False, nogil=True)


_CONTRACT = {"contract"}
_SUM = {"contract", "reassoc"}  # only on loops whose one reduction is the sum of positive terms


def _inline(fastmath: set[str] | bool = False) -> Callable[[Any], Any]:
    """``numba.njit`` of a helper of the entry kernels: like :func:`_njit`, but never cached.

    numba cannot inline a helper that it loaded from its cache into a new caller (the cache holds
    machine code), and a helper called per entry must be inlined for the loop to vectorize.
    """
    if numba is None:
        return lambda f: f
    return numba.njit(cache=False, fastmath=fastmath, error_model="numpy", boundscheck=False, nogil=True)



# -- stubs: names for the numba code, only their overloads (below) ever run -------------------------
def _load(v: Any) -> float:
    """An entry as float64: bfloat16 bits (int16), float16 bits (uint16), float32 or float64."""
    raise NotImplementedError


def _encode(v: Any, like: Any) -> Any:
    """float64 ``v`` rounded (nearest even) to the dtype of array ``like``, as a value of that dtype."""
    raise NotImplementedError


def _key(v: Any) -> Any:
    """An entry's bits as a signed int64 in the order of the values (NaNs beyond the infinities)."""
    raise NotImplementedError


def _nan_bits(v: Any) -> bool:
    """Whether an entry is a NaN, from its bits (no floating-point comparison)."""
    raise NotImplementedError


def _unkey(k: Any, like: Any) -> Any:
    """The float64 value of key ``k`` (from :func:`_key`) of an entry of the type of ``like``."""
    raise NotImplementedError


def _load32(v: Any) -> Any:
    """A bfloat16 (int16) or float16 (uint16) entry as float32 (exact)."""
    raise NotImplementedError


def _encode32(v: Any, like: Any) -> Any:
    """float32 ``v`` rounded (nearest even) to bfloat16 or float16 bits, the dtype of ``like``."""
    raise NotImplementedError


def _load_as(v: Any, like: Any) -> Any:
    """An entry widened (exactly) to the type of the scalar ``like``: :func:`_load32` for a float32
    ``like`` (16-bit entries only), else :func:`_load`. One kernel serves both working precisions."""
    raise NotImplementedError


def _round_to(v: Any, like: Any) -> Any:
    """``v`` rounded once to the dtype of array ``like``: :func:`_encode32` for a float32 ``v`` (16-bit
    ``like`` only), else :func:`_encode`."""
    raise NotImplementedError


# -- bit casts: float64 <-> int64, float32 <-> int32 -------------------------------------------------
def _bitcast(name: str, to: Any, frm: Any, llvm_to: Any, doc: str) -> Any:
    """An intrinsic that reads the bits of a ``frm`` value as a ``to`` value (LLVM ``bitcast``: no code)."""

    def cast(typingctx: Any, x: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], llvm_to)

        return to(frm), codegen

    cast.__name__ = cast.__qualname__ = name
    cast.__doc__ = doc
    return intrinsic(cast)


if numba is not None:
    _as_int = _bitcast("_as_int", types.int64, types.float64, ir.IntType(64), "The bits of a float64 as an int64.")
    _as_float = _bitcast("_as_float", types.float64, types.int64, ir.DoubleType(),
                         "The float64 with the bits of an int64.")
    _f32_bits = _bitcast("_f32_bits", types.int32, types.float32, ir.IntType(32), "The bits of a float32 as an int32.")
    _f32_from_bits = _bitcast("_f32_from_bits", types.float32, types.int32, ir.FloatType(),
                              "The float32 with the bits of an int32.")
else:  # never called: only the names, for the plain-Python definitions below
    _as_int = _as_float = _f32_bits = _f32_from_bits = None


if numba is not None:

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

    @overload(_load)
    def _load_impl(v):  # unannotated: numba compares its parameters with those of the lambdas it returns
        if v == types.int16:  # bfloat16: the high half of a float32
            return lambda v: np.float64(_f32_from_bits(np.int32(v) << 16))
        if v == types.uint16:  # float16
            return lambda v: _half_to_f64(v)
        return lambda v: np.float64(v)

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


if numba is not None:

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

    @overload(_load_as)
    def _load_as_impl(v, like):
        if like == types.float32:
            return lambda v, like: _load32(v)
        return lambda v, like: _load(v)

    @overload(_round_to)
    def _round_to_impl(v, like):
        if v == types.float32:
            return lambda v, like: _encode32(v, like)
        return lambda v, like: _encode(v, like)



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


if numba is not None:

    @intrinsic
    def _voidptr(typingctx: Any, addr: Any) -> Any:
        """The address held by an int64, as a ``void *`` (for ``numba.carray``)."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

        return types.voidptr(types.int64), codegen

    @intrinsic
    def fma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
        """``fma(a, b, c)`` of three float32 or three float64, one rounding (explicit: fast-math ``contract``
        may or may not fuse a product and a sum, and error-free transformations need the fused one)."""
        if not (a == b == c and a in (types.float32, types.float64)):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.fma(args[0], args[1], args[2])

        return a(a, a, a), codegen

    carray = numba.carray
else:
    _voidptr = carray = None

    def fma(a: Any, b: Any, c: Any) -> Any:
        """``a b + c`` rounded once (numba absent: exact rationals; never called on the kernels' paths)."""
        from fractions import Fraction

        return type(a)(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))
