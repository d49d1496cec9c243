"""NumPy path of logsumexp, softmax and log_softmax: the same algorithm, in cache-sized blocks.

The generic array-API code makes about a dozen full-size temporaries (a float64
copy, the shifted values, their exponentials, masks...). On NumPy arrays, where
no autodiff is needed, this module computes the same quantities block by block
in one reusable float64 buffer that stays in cache: one pass for the argmax,
then per block ``exp(x - m)`` into the buffer and a pairwise sum. The results
are identical in value to the generic path's (same formulas: max term taken out,
``log1p``, division by ``1 + s``); ``benchmarks/ops_speed.py`` shows the gain.

Every function takes rows ``x`` of shape ``(R, n)`` (any float dtype, C-contiguous)
and returns float64 results; the caller rounds to the input dtype.

With numba installed (the ``fast`` extra), float16, float32 and float64 rows go
to the compiled kernels of :mod:`._numba_fast` instead (same formulas, a
vectorized float64 ``exp`` of glibc's accuracy: NumPy's float64 ``exp`` is
scalar libm without AVX-512, 3x slower than the float32 one, which made this
path slower than the naive formula). numba is imported, and the kernels
compiled (a few seconds, once) or loaded from numba's cache (0.5 s), on the
first such call, never at import of floatguard; without numba, or if it fails,
this NumPy code is used. Set ``_numpy_fast.kernels = False`` to force it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from . import _core
from ._core import blocks
from ._kernels import register
from ._namespace import WIDE_LONGDOUBLE, Backend

# elements of float64 per block: 2^15 * 8 B = 256 KiB, half of a typical L2
BLOCK = 1 << 15

# -- compiled kernels (optional) --------------------------------------------------------------
# the _numba_fast module once loaded, False when numba is missing or failed, None before the first try
kernels: Any = None
NUMBA_DTYPES = frozenset({np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)})  # not longdouble


def _kernels_for(dtype: np.dtype) -> Any:
    """The kernels module when it handles ``dtype`` (imports numba on first use), else None."""
    global kernels
    if dtype not in NUMBA_DTYPES:
        return None
    if kernels is None:
        try:
            from . import _numba_fast  # without numba: imports, AVAILABLE is False

            kernels = _numba_fast if _numba_fast.AVAILABLE else False
        except Exception as exc:  # numba installed but broken (too new a NumPy, say)
            kernels = False
            warnings.warn(f"floatguard: numba kernels disabled, using NumPy ({exc!r})", RuntimeWarning, stacklevel=3)
    return kernels or None


FAILED = object()  # what _run returns when a kernel could not be compiled


def _run(kernel: Any, *args: Any) -> Any:
    """Call a compiled kernel; if it fails (to compile), warn, disable the kernels and return ``FAILED``."""
    global kernels
    try:
        return kernel(*args)
    except Exception as exc:  # numba cannot compile here: the NumPy path still can
        kernels = False
        warnings.warn(f"floatguard: numba kernels disabled, using NumPy ({exc!r})", RuntimeWarning, stacklevel=3)
        return FAILED


def _as_kernel_input(x: np.ndarray) -> np.ndarray:
    """float16 rows as float32 (exact): numba has no float16 on the CPU."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _max_and_argmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # argmax treats NaN as the largest value, so a row with a NaN gets m = NaN
    k = np.argmax(x, axis=1)
    m = np.take_along_axis(x, k[:, None], axis=1)[:, 0].astype(np.float64)
    return m, k


def rest_sum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row max ``m``, its index ``k`` and ``s = sum_{i != k} exp(x_i - m)`` (0 on rows with non-finite ``m``)."""
    r, n = x.shape
    m, k = _max_and_argmax(x)
    kern = _kernels_for(x.dtype)
    if kern is not None:
        s = np.empty(r)
        if _run(kern.rest_sums, _as_kernel_input(x), m, k, s) is not FAILED:
            return m, k, s
    finite = np.isfinite(m)
    m0 = np.where(finite, m, 0.0)
    s = np.zeros(r)
    buf = np.empty(min(BLOCK, max(r * n, 1)))
    for r0, r1, c0, c1 in blocks(r, n, BLOCK):
        rows, cols = r1 - r0, c1 - c0
        b = buf[: rows * cols].reshape(rows, cols)
        np.subtract(x[r0:r1, c0:c1], m0[r0:r1, None], out=b)
        np.exp(b, out=b)
        kk = k[r0:r1] - c0
        inside = (kk >= 0) & (kk < cols)
        b[np.nonzero(inside)[0], kk[inside]] = 0.0
        s[r0:r1] += b.sum(axis=1)
    s[~finite] = 0.0
    return m, k, s


def logsumexp_rows(x: np.ndarray) -> np.ndarray:
    """``m + log1p(s)`` per row; rows with non-finite max give that max (-inf, +inf or NaN)."""
    m, _, s = rest_sum(x)
    return np.where(np.isfinite(m), m + np.log1p(s), m)


def softmax_rows(x: np.ndarray, out: np.ndarray, log: bool) -> bool:
    """Fill ``out`` with softmax (``e / (1 + s)``) or log_softmax (``d - log1p(s)``) of the rows of ``x``.

    Rows that fit in a block are done in one sweep (one ``exp`` per element);
    longer rows take a first sweep for ``s`` and a second for the output.
    Returns True when some row has a non-finite max; the caller then fills those
    rows with their limit values.
    """
    r, n = x.shape
    kern = _kernels_for(x.dtype)
    if kern is not None and (x.dtype != np.float16 or n <= BLOCK):
        bad = _softmax_compiled(kern, x, out, log)
        if bad is not FAILED:
            return bad
    if n > BLOCK:
        m, _, s = rest_sum(x)
        finite = np.isfinite(m)
        m0 = np.where(finite, m, 0.0)
        log1p_s = np.log1p(s)
        buf = np.empty(BLOCK)
        for r0, r1, c0, c1 in blocks(r, n, BLOCK):
            b = buf[: c1 - c0].reshape(1, -1)
            np.subtract(x[r0:r1, c0:c1], m0[r0:r1, None], out=b)
            if log:
                np.subtract(b, log1p_s[r0:r1, None], out=out[r0:r1, c0:c1], casting="same_kind")
            else:
                np.exp(b, out=b)
                np.divide(b, (1.0 + s[r0:r1])[:, None], out=out[r0:r1, c0:c1], casting="same_kind")
        return not bool(finite.all())
    m, k = _max_and_argmax(x)
    finite = np.isfinite(m)
    m0 = np.where(finite, m, 0.0)
    d_buf = np.empty(min(BLOCK, max(r * n, 1)))
    e_buf = np.empty_like(d_buf) if log else d_buf
    for r0, r1, _, _ in blocks(r, n, BLOCK):
        rows = r1 - r0
        d = d_buf[: rows * n].reshape(rows, n)
        e = e_buf[: rows * n].reshape(rows, n)
        np.subtract(x[r0:r1], m0[r0:r1, None], out=d)
        np.exp(d, out=e)
        at = (np.arange(rows), k[r0:r1])
        e[at] = 0.0
        s = e.sum(axis=1)
        s[~finite[r0:r1]] = 0.0
        if log:
            np.subtract(d, np.log1p(s)[:, None], out=out[r0:r1], casting="same_kind")
        else:
            e[at] = 1.0
            # BHH's division form, rounded once into the output dtype
            np.divide(e, (1.0 + s)[:, None], out=out[r0:r1], casting="same_kind")
    return not bool(finite.all())


def _softmax_compiled(kern: Any, x: np.ndarray, out: np.ndarray, log: bool) -> Any:
    """:func:`softmax_rows` with the compiled kernels; ``FAILED`` if they failed to compile.

    float16 rows go through float32 (exact) and a float64 buffer of at most
    ``BLOCK`` entries, so that the output is rounded once from float64.
    """
    m, k = _max_and_argmax(x)
    if x.dtype != np.float16:
        return _run(kern.softmax_rows, x, m, k, out, log, x.dtype == np.float64)
    r, n = x.shape
    buf = np.empty(min(BLOCK, r * n))
    bad = False
    for r0, r1, _, _ in blocks(r, n, BLOCK):
        b = buf[: (r1 - r0) * n].reshape(r1 - r0, n)
        got = _run(kern.softmax_rows, _as_kernel_input(x[r0:r1]), m[r0:r1], k[r0:r1], b, log, False)
        if got is FAILED:
            return FAILED
        bad |= got
        out[r0:r1] = b
    return bad


# -- the NumPy rows kernels of the ops (see ._kernels) -----------------------------------------
_NUMPY = Backend("numpy", np)


def _not_long(rows: np.ndarray) -> bool:
    """The kernels compute in float64: a ``longdouble`` wider than it takes the generic path, in itself."""
    return rows.dtype != WIDE_LONGDOUBLE


@register("logsumexp", "numpy", predicate=_not_long)
def _logsumexp_kernel(rows: np.ndarray) -> np.ndarray:
    """``logsumexp`` of rows (R, n): R float64 values."""
    return logsumexp_rows(np.ascontiguousarray(rows))


def _softmax_kernel(rows: np.ndarray, log: bool) -> np.ndarray:
    """softmax or log_softmax of rows (R, n) in their dtype; rows with a non-finite max get their limit."""
    flat = np.ascontiguousarray(rows)
    out = np.empty(flat.shape, dtype=rows.dtype)
    if softmax_rows(flat, out, log):  # some rows have a non-finite max
        bad = ~np.isfinite(flat.max(axis=1))
        out[bad] = _core.softmax_rows(_NUMPY, flat[bad], log)
    return out


@register("softmax", "numpy", predicate=_not_long)
def _softmax_only(rows: np.ndarray) -> np.ndarray:
    return _softmax_kernel(rows, False)


@register("log_softmax", "numpy", predicate=_not_long)
def _log_softmax_only(rows: np.ndarray) -> np.ndarray:
    return _softmax_kernel(rows, True)
