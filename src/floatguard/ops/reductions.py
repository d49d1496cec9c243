"""Log-domain reductions: logsumexp, softmax, log_softmax, logmeanexp, logcumsumexp.

All of them shift by the row maximum and take the maximum term out of the sum
(Blanchard, Higham & Higham, IMA J. Numer. Anal. 41(4), 2021), computing in
float64 for float16, bfloat16 and float32 inputs and rounding once at the end.

Non-finite inputs: ``-inf`` is log(0) (an entry that contributes nothing; a row
of only ``-inf`` is an empty sum: logsumexp ``-inf``, softmax zeros, gradient
0), ``+inf`` gives the limit (logsumexp ``+inf``, softmax shares the mass among
the ``+inf`` entries), and NaN propagates to the whole row, value and gradient (as PyTorch's and
jax.nn's; the limits of ``-inf`` and ``+inf`` rows have gradient 0).

Each op is defined once, here, and reads top to bottom: the plain call may go straight to a
backend's kernel (:func:`._kernels.select_call`); else the arguments are checked, the reduced
axes moved last and flattened to rows ``(R, n)``, and the rows go to the kernel the table
holds for their backend and dtype (:func:`._kernels.select`: :mod:`._numpy_fast`,
:mod:`._torch_fast`, :mod:`._jax_kernels`) or, where none applies, to the generic
array-namespace code of :mod:`._core`; the result is rounded once to the input dtype.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any

import numpy as np

from . import _complex
from ._core import logsumexp_rows, nan_rows, nan_where, shifted, softmax_rows
from ._kernels import select, select_call
from ._namespace import (
    Backend,
    alias,
    as_float,
    as_inexact,
    check_array_like,
    check_flag,
    is_complex_dtype,
    jit_on_jax,
    namespace,
    normalize_axes,
    normalize_axis,
    promoted_dtype,
    quiet,
)

__all__ = ["log_softmax", "logcumsumexp", "logmeanexp", "logsumexp", "softmax"]


# -- shape plumbing -------------------------------------------------------------
def _to_rows(xp: Any, a: Any, axes: tuple[int, ...]) -> Any:
    """Move ``axes`` of ``a`` to the end and flatten them into one last axis."""
    others = tuple(i for i in range(a.ndim) if i not in axes)
    if axes != tuple(range(a.ndim - len(axes), a.ndim)):
        a = xp.permute_dims(a, others + axes)
    n = math.prod(a.shape[len(others):])
    return xp.reshape(a, (*tuple(a.shape[:len(others)]), n))


def _from_rows(xp: Any, r: Any, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> Any:
    """Inverse of :func:`_to_rows` for a reduced result of shape ``(..., 1)``."""
    if keepdims:
        return xp.reshape(r, tuple(1 if i in axes else s for i, s in enumerate(shape)))
    return xp.reshape(r, tuple(s for i, s in enumerate(shape) if i not in axes))


def _broadcast_arg(be: Backend, a: Any, shape: tuple[int, ...], name: str, func: str) -> Any:
    xp = be.xp
    try:
        return xp.broadcast_to(a, shape)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"floatguard.{func}: argument {name!r} has shape {tuple(a.shape)}, which does "
            f"not broadcast to the shape {tuple(shape)} of 'x'"
        ) from exc


def _mask(be: Backend, where: Any, x: Any, func: str) -> Any:
    """``where`` (a bool array, or a Python bool or list of bools) broadcast to the shape of ``x``."""
    if where is None:
        return None
    xp = be.xp
    if not hasattr(where, "dtype"):
        where = xp.asarray(where)
        if be.name == "torch":
            where = where.to(x.device)
    if where.dtype != xp.bool:
        raise TypeError(f"floatguard.{func}: argument 'where' must be a boolean array, got dtype {where.dtype}")
    return _broadcast_arg(be, where, tuple(x.shape), "where", func)


def _prepare(x: Any, func: str, **named: Any) -> tuple[Backend, Any]:
    """Backend of ``x`` and the other named arrays, and ``x`` checked to be a float array."""
    be = namespace(("x", x), *named.items(), func=func)
    return be, as_float(be, x, "x", func)


def _inputs(func: str, x: Any, b: Any = None, where: Any = None) -> tuple[Backend, Any, Any, Any]:
    """Backend; ``x`` and ``b`` promoted to their common dtype as SciPy does (integers and bools
    to the default float, a complex ``b`` makes the result complex) and broadcast together (``b``
    may have more dimensions than ``x``); ``where`` as a bool mask of their shape."""
    be = namespace(("x", x), ("b", b), ("where", where), func=func)
    xp = be.xp
    if b is None:
        x = as_inexact(be, x, "x", func)
    else:
        for name, v in (("x", x), ("b", b)):
            if not hasattr(v, "dtype"):
                check_array_like(v, name, func)
        dtype = promoted_dtype(be, x, b)
        x = xp.astype(as_inexact(be, x, "x", func), dtype, copy=False)
        b = xp.astype(as_inexact(be, b, "b", func), dtype, copy=False)
        if tuple(b.shape) != tuple(x.shape):
            try:
                x, b = xp.broadcast_arrays(x, b)
            except (ValueError, RuntimeError) as exc:
                raise ValueError(
                    f"floatguard.{func}: argument 'b' has shape {tuple(b.shape)}, which does not "
                    f"broadcast with the shape {tuple(x.shape)} of 'x'"
                ) from exc
    return be, x, b, _mask(be, where, x, func)


def _one_entry(be: Backend, x: Any, b: Any, mask: Any, keepdims: bool) -> tuple[Any, Any, Any, bool]:
    """A 0-d input as a 1-d row of one entry (SciPy's ``atleast_1d``), so that ``axis=0``/``-1``
    reduce it as in SciPy and PyTorch. Also says whether the result must be made 0-d again:
    a kept dimension of a 0-d input is ``(1,)`` in SciPy but ``()`` in PyTorch and JAX."""
    if x.ndim:
        return x, b, mask, False
    xp = be.xp
    x, b, mask = (None if v is None else xp.reshape(v, (1,)) for v in (x, b, mask))
    return x, b, mask, keepdims and be.name != "numpy"


def _result(be: Backend, val: Any, dtype: Any, to_0d: bool = False) -> Any:
    """``val`` in ``dtype``; 0-d NumPy results as NumPy scalars (``np.float64``...), as SciPy returns."""
    xp = be.xp
    val = xp.astype(val, dtype, copy=False)
    if to_0d:
        val = xp.reshape(val, ())
    return val[()] if be.name == "numpy" and val.ndim == 0 else val


def _work(be: Backend, x: Any) -> Any:
    """``x`` in the working dtype (float64 where available): only the generic path needs this copy."""
    return be.xp.astype(x, be.work_dtype(x.dtype), copy=False)


# -- public ops -------------------------------------------------------------------
@quiet
def logsumexp(
    x: Any,
    axis: int | tuple[int, ...] | None = None,
    b: Any = None,
    keepdims: bool = False,
    return_sign: bool = False,
    *,
    where: Any = None,
    dim: int | tuple[int, ...] | None = None,
    keepdim: bool | None = None,
) -> Any:
    r"""Log of the sum of exponentials, :math:`\log \sum_i b_i e^{x_i}`, without overflow.

    Computed as :math:`m + \log1p(s)` with :math:`m = \max_i x_i` and
    :math:`s = \sum_{i \ne k} e^{x_i - m}` (the maximum term taken out), in
    float64 for inputs of lower precision.

    Parameters
    ----------
    x : array
        Input (NumPy, PyTorch or JAX; lists and scalars too). Integer and boolean
        inputs are promoted as the peer does: NumPy to float64 (SciPy), PyTorch to
        ``torch.get_default_dtype()`` (``torch.logsumexp``), JAX to its default float.
        Complex input gives the complex log: shifted by the max real part, the
        imaginary part is the phase in ``(-pi, pi]`` (SciPy's convention).
        A 0-d input is one entry (``axis=0`` reduces it, as in SciPy and PyTorch).
    axis : int, tuple of int or None
        Axes to reduce; ``None`` (the default, as SciPy) reduces all.
    b : array, optional
        Weights (SciPy's ``b``); may be negative or complex. ``x`` and ``b``
        broadcast against each other and the result has their promoted dtype
        (float32 ``x`` with float64 ``b`` gives float64). Entries with
        ``b == 0`` are left out, even where ``x`` is ``+inf``.
    keepdims : bool
        Keep the reduced axes with length 1.
    return_sign : bool
        Also return the sign of the sum (needed when ``b`` has negative
        entries); without it a negative sum gives NaN, as in SciPy.
    where : bool array, optional
        Only entries where ``where`` is True take part. A row with no entry
        gives ``-inf`` (the log of an empty sum) and a zero gradient.
    dim, keepdim
        PyTorch's names of ``axis`` and ``keepdims`` (``torch.logsumexp(x, dim, keepdim)``).

    Returns
    -------
    array, or (array, array) with ``return_sign``
        Same kind and device as ``x``, dtype promoted as above; a 0-d NumPy result
        is a NumPy scalar (``np.float64``...) as in SciPy. For complex input with
        ``return_sign`` the value is ``log|sum|`` (real) and the sign the complex phase.

    Notes
    -----
    Error: at most 1 ulp for float16, bfloat16 and float32 inputs; at most
    2 ulp times the condition number for float64 (tested against mpmath).
    The gradient is ``softmax(x)``, exactly 0 on masked and ``-inf`` entries.

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> x = np.array([1000.0, 1000.5, 999.0])
    >>> float(np.log(np.sum(np.exp(x))))   # naive: exp(1000) overflows  # doctest: +SKIP
    inf
    >>> round(float(fg.logsumexp(x)), 6)
    1001.104131
    """
    # a backend's kernel for the plain call (one axis, no b, where or sign); None: not applicable
    fast = select_call("logsumexp", x)
    if (fast is not None and b is None and where is None and return_sign is False
            and (axis is None) != (dim is None) and (keepdim is None or keepdims is False)):
        val = fast(x, dim if axis is None else axis, keepdims if keepdim is None else keepdim)
        if val is not None:
            return val
    axis = alias(axis, None, dim, ("axis", "dim"), "logsumexp")
    keepdims = check_flag(alias(keepdims, False, keepdim, ("keepdims", "keepdim"), "logsumexp"),
                          "keepdims" if keepdim is None else "keepdim", "logsumexp")
    return_sign = check_flag(return_sign, "return_sign", "logsumexp")
    be, x, b, mask = _inputs("logsumexp", x, b, where)
    xp = be.xp
    x, b, mask, keep0d = _one_entry(be, x, b, mask, keepdims)
    dtype = x.dtype
    shape = tuple(x.shape)
    axes = normalize_axes(axis, x.ndim, "axis", "logsumexp")
    rows, rb, rmask = (None if v is None else _to_rows(xp, v, axes) for v in (x, b, mask))
    if is_complex_dtype(be, dtype):
        val, sign = _complex.logsumexp_rows(be, rows, rb, rmask, return_sign)
        val_dtype = xp.real(x).dtype if return_sign else dtype
    elif b is None:
        val = _lse_rows(be, rows if rmask is None else xp.where(rmask, rows, -float("inf")))
        # the sign of a sum of exponentials: 1, 0 for an empty sum, NaN with the value (no literal 0 here:
        # XLA would share it with the sums of JAX's kernel, which slows them down)
        sign = xp.where(xp.isnan(val), val, xp.astype(val > -float("inf"), val.dtype))
        val_dtype = dtype
    else:
        val, sign = _weighted(be, rows, rb, rmask)
        if not return_sign:  # a negative sum has no real log
            val = xp.where(sign < 0, xp.full_like(val, float("nan")), val)
        val_dtype = dtype
    val = _result(be, _from_rows(xp, val, shape, axes, keepdims), val_dtype, keep0d)
    return (val, _result(be, _from_rows(xp, sign, shape, axes, keepdims), dtype, keep0d)) if return_sign else val


def _lse_rows(be: Backend, rows: Any) -> Any:
    """logsumexp of the last axis of ``rows`` (kept, length 1): the backend's kernel, or the generic path."""
    xp = be.xp
    lead = tuple(rows.shape[:-1])
    flat = xp.reshape(rows, (math.prod(lead), rows.shape[-1]))
    kernel = select("logsumexp", be.name, flat)
    return xp.reshape(logsumexp_rows(be, flat) if kernel is None else kernel(flat), (*lead, 1))


@jit_on_jax()
def _weighted(be: Backend, rows: Any, b: Any, mask: Any) -> tuple[Any, Any]:
    """``log|sum b_i e^{x_i}|`` of the last axis of ``rows`` (kept) and its sign, with the max term taken out;
    entries with ``b_i == 0`` or outside ``mask`` are left out. In the working dtype.

    ``sum b_i e_i = b_k (1 + q)`` with ``q = (sum_{i!=k} b_i e_i + b_k expm1(d_k)) / b_k``;
    ``log|1 + q|`` is ``log1p(q)`` for ``q > -1`` and ``log(-1 - q)`` below.
    """
    xp = be.xp
    rows = _work(be, rows)
    b = xp.astype(b, rows.dtype)
    mask = (b != 0) if mask is None else (mask & (b != 0))
    sh = shifted(be, rows, mask)
    if rows.shape[-1] == 0:  # empty sums: log 0 = -inf, sign 0
        return sh.m, xp.zeros_like(sh.m)
    zero_b = xp.zeros_like(b)
    b_k = xp.sum(xp.where(sh.is_k, b, zero_b), axis=-1, keepdims=True)
    rest = xp.sum(xp.where(sh.is_k, zero_b, b * sh.e), axis=-1, keepdims=True)
    ok = sh.finite & (b_k != 0)
    safe_bk = xp.where(ok, b_k, xp.ones_like(b_k))
    q = xp.where(ok, (rest + b_k * xp.expm1(sh.d_k)) / safe_bk, xp.zeros_like(b_k))
    above = q > -1
    below = q < -1
    log_abs = xp.where(
        above,
        xp.log1p(xp.where(above, q, xp.zeros_like(q))),
        xp.log(xp.where(below, -1 - q, xp.ones_like(q))),
    )
    finite_val = sh.m + xp.log(xp.abs(safe_bk)) + log_abs
    neg_inf = xp.full_like(finite_val, -float("inf"))
    val = nan_rows(be, rows, sh.m, xp.where(ok, xp.where(above | below, finite_val, neg_inf), sh.m))
    sign = xp.where(ok, xp.sign(safe_bk) * xp.where(above, 1.0, xp.where(below, -1.0, 0.0)), 1.0)
    # rows that are not finite: +inf (sign of its weight), NaN, or -inf (empty: sign 0)
    sign = xp.where(sh.m == -float("inf"), xp.zeros_like(sign), sign)
    # a +inf row takes the sign of the weight of its (first) +inf entry; a NaN row a NaN sign
    sign = xp.where(~sh.finite & (sh.m > 0), xp.sign(b_k), sign)
    return val, xp.where(xp.isnan(sh.m), sh.m, sign)


@quiet
def softmax(x: Any, axis: int | tuple[int, ...] | None = -1, *, where: Any = None, dim: int | None = None,
            dtype: Any = None) -> Any:
    r"""Softmax along ``axis``: :math:`e^{x_i} / \sum_j e^{x_j}`, never NaN.

    Computed as :math:`e^{x_i - m} / (1 + s)` with :math:`m = \max_j x_j` and
    :math:`s` the sum of the other terms: the division form, which Blanchard,
    Higham & Higham (2021) show is more accurate than :math:`\exp(x_i - \mathrm{lse})`.

    ``axis`` may be a tuple or ``None`` (normalize over all those axes, as SciPy);
    the default ``-1`` is JAX's and PyTorch's (SciPy's default is ``None``).
    Integers and bools are promoted as in :func:`logsumexp`; complex input is shifted by
    the max real part. ``dim`` is PyTorch's name of ``axis``. A 0-d input is a row of one entry (1).
    ``where`` masks entries (they get probability 0). A row with every entry
    masked or ``-inf`` gives zeros and a zero gradient (where PyTorch attention
    gives NaN). ``+inf`` entries share the probability mass equally (the limit).
    ``dtype`` is PyTorch's: the input is cast to it first and the result has it
    (``F.softmax(scores, dim=-1, dtype=torch.float32)`` of attention code).

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within
    2 ulp times the condition number.

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> x = np.array([1000.0, 1000.5, 999.0], dtype=np.float32)
    >>> np.exp(x) / np.exp(x).sum()   # naive: inf / inf  # doctest: +SKIP
    array([nan, nan, nan], dtype=float32)
    >>> fg.softmax(x).round(4)
    array([0.3315, 0.5465, 0.122 ], dtype=float32)
    """
    return _softmax(x, axis, where, dim, dtype, log=False)


@quiet
def log_softmax(
    x: Any, axis: int | tuple[int, ...] | None = -1, *, where: Any = None, dim: int | None = None, dtype: Any = None
) -> Any:
    r"""Log of the softmax along ``axis``: :math:`x_i - \log \sum_j e^{x_j}`.

    Computed as :math:`(x_i - m) - \log1p(s)`; SciPy, PyTorch and JAX use
    :math:`\log(1 + s)` here, which loses every digit of a small ``s`` (for
    ``[0, -30, ..., -30]`` they are off by about 10^7 ulp in float32).

    Masked and ``-inf`` entries give ``-inf``; a row with nothing left gives
    ``-inf`` everywhere and a zero gradient. ``dim`` and ``dtype`` are PyTorch's (see :func:`softmax`);
    ``axis`` may be a tuple or ``None`` as in :func:`softmax` (default ``-1``, SciPy's is
    ``None``). For complex input the imaginary part is not wrapped: its ``exp`` is the softmax.

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> x = np.array([0.0] + [-30.0] * 50)
    >>> float(fg.log_softmax(x)[0])      # -50 e^-30, to the last digit
    -4.678811484409142e-12
    """
    return _softmax(x, axis, where, dim, dtype, log=True)


def _softmax(x: Any, axis: int | tuple[int, ...] | None, where: Any, dim: int | None, dtype: Any, log: bool) -> Any:
    """softmax or log_softmax over ``axis`` (one row per combination of the other axes)."""
    func = "log_softmax" if log else "softmax"
    if dtype is not None:
        x = _cast(x, dtype, func)
    fast = select_call(func, x)  # a backend's kernel for the plain call (the last axis, no where)
    if fast is not None and where is None and (dim is None or axis == -1):
        out = fast(x, axis if dim is None else dim)
        if out is not None:  # None: not applicable
            return out
    axis = alias(axis, -1, dim, ("axis", "dim"), func)
    be, x, _, mask = _inputs(func, x, None, where)
    xp = be.xp
    shape = tuple(x.shape)
    x, _, mask, _ = _one_entry(be, x, None, mask, False)  # a 0-d input: a row of one entry (1)
    axes = normalize_axes(axis, x.ndim, "axis", func)
    rows = _to_rows(xp, x, axes)
    rmask = None if mask is None else _to_rows(xp, mask, axes)
    if is_complex_dtype(be, x.dtype):
        out = _complex.softmax_rows(be, rows, rmask, log)
    else:
        if rmask is not None:  # masked entries are log(0)
            rows = xp.where(rmask, rows, -float("inf"))
        flat = xp.reshape(rows, (math.prod(rows.shape[:-1]), rows.shape[-1]))
        kernel = select(func, be.name, flat)
        out = xp.reshape(softmax_rows(be, flat, log) if kernel is None else kernel(flat), tuple(rows.shape))
    out = _unrows(xp, xp.astype(out, x.dtype, copy=False), tuple(x.shape), axes)
    return _result(be, xp.reshape(out, shape) if len(shape) == 0 else out, x.dtype)


def _cast(x: Any, dtype: Any, func: str) -> Any:
    """``x`` cast to ``dtype``, a floating or complex dtype of its library (PyTorch's ``dtype=`` argument)."""
    be = namespace(("x", x), func=func)
    if be.name == "torch":
        torch = sys.modules["torch"]
        ok = isinstance(dtype, torch.dtype) and (dtype.is_floating_point or dtype.is_complex)
    else:
        try:
            ok = bool(be.xp.issubdtype(be.xp.dtype(dtype), be.xp.inexact))
        except TypeError:
            ok = False
    if not ok:
        raise TypeError(f"floatguard.{func}: argument 'dtype' must be a floating or complex dtype of the array's "
                        f"library ({be.name}), got {dtype!r}")
    if be.name == "torch":
        return x.to(dtype)
    return be.xp.asarray(x).astype(dtype)


def _unrows(xp: Any, rows: Any, shape: tuple[int, ...], axes: tuple[int, ...]) -> Any:
    """Inverse of :func:`_to_rows` for an unreduced result (same number of entries as ``shape``)."""
    others = tuple(i for i in range(len(shape)) if i not in axes)
    order = others + axes
    out = xp.reshape(rows, tuple(shape[i] for i in order))
    if order == tuple(range(len(shape))):
        return out
    return xp.permute_dims(out, tuple(order.index(i) for i in range(len(shape))))


@quiet
def logmeanexp(x: Any, axis: int | tuple[int, ...] | None = None, *, keepdims: bool = False, where: Any = None,
               dim: int | tuple[int, ...] | None = None, keepdim: bool | None = None) -> Any:
    r"""Log of the mean of exponentials, :math:`\log(\frac1n \sum_i e^{x_i})`.

    With ``m`` the max, ``d_i = x_i - m`` and ``n`` the number of reduced
    entries, ``t = mean(expm1(d_i))`` is ``(1 + s)/n - 1`` summed without
    cancellation, and the result is ``m + log1p(t)`` (``m + log((1 + s)/n)``
    when ``t < -1/2``). ``logsumexp(x) - log(n)`` would lose every digit of a
    result near 0 (the mean of values close to 0). Used for importance-weighted bounds
    (IWAE) and log-likelihoods averaged over samples. ``dim``, ``keepdim``: PyTorch's names.

    ``where`` (bool array, or list) keeps only the entries where it is True, as in
    ``jax.nn.logmeanexp``; ``n`` is then their count. The mean of no entries (an
    empty axis, or a row with nothing kept) is NaN, as ``np.mean`` of an empty slice
    (on NumPy arrays with the same ``RuntimeWarning``); a row of only ``-inf`` is
    ``-inf``. Integer and boolean inputs are promoted to the default float.

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> x = np.array([1000.0, 1000.0 + 1e-10])
    >>> float(np.log(np.mean(np.exp(x))))   # naive: exp overflows  # doctest: +SKIP
    inf
    >>> float(fg.logmeanexp(x))   # 1000 + 5e-11
    1000.00000000005
    """
    axis = alias(axis, None, dim, ("axis", "dim"), "logmeanexp")
    keepdims = check_flag(alias(keepdims, False, keepdim, ("keepdims", "keepdim"), "logmeanexp"),
                          "keepdims" if keepdim is None else "keepdim", "logmeanexp")
    be, x, _, mask = _inputs("logmeanexp", x, None, where)
    if is_complex_dtype(be, x.dtype):
        raise TypeError(f"floatguard.logmeanexp: argument 'x' must be real, got dtype {x.dtype}")
    x, _, mask, keep0d = _one_entry(be, x, None, mask, keepdims)
    xw = _work(be, x)
    xp = be.xp
    axes = normalize_axes(axis, x.ndim, "axis", "logmeanexp")
    shape = tuple(x.shape)
    rmask = None if mask is None else _to_rows(xp, mask, axes)
    val, empty = _logmeanexp_rows(be, _to_rows(xp, xw, axes), rmask)
    if be.name == "numpy" and bool(np.any(empty)):
        warnings.warn("Mean of empty slice", RuntimeWarning, stacklevel=3)
    return _result(be, _from_rows(xp, val, shape, axes, keepdims), x.dtype, keep0d)


@jit_on_jax()
def _logmeanexp_rows(be: Backend, rows: Any, rmask: Any) -> tuple[Any, Any]:
    """:func:`logmeanexp` of the last axis of ``rows`` (kept) in their (working) dtype, entries outside ``rmask``
    (or None) left out, and where nothing was kept."""
    xp = be.xp
    sh = shifted(be, rows, rmask)
    if rmask is None:
        n = xp.full_like(sh.m, float(rows.shape[-1]))
        em1 = xp.expm1(sh.d)
    else:
        n = xp.sum(xp.astype(rmask, rows.dtype), axis=-1, keepdims=True)
        em1 = xp.where(rmask, xp.expm1(sh.d), xp.zeros_like(sh.d))
    safe_n = xp.where(n > 0, n, xp.ones_like(n))
    # (1 + s) / n - 1 = mean(expm1(d_i)): terms of one sign, no cancellation near a 0 result;
    # far from 0 (t near -1, where log1p is ill-conditioned) log((1 + s) / n) is accurate
    t = xp.sum(em1, axis=-1, keepdims=True) / safe_n
    near = t > -0.5
    val = sh.m + xp.where(near, xp.log1p(xp.where(near, t, xp.zeros_like(t))), xp.log((1 + sh.s) / safe_n))
    val = nan_rows(be, rows, sh.m, xp.where(sh.finite, val, sh.m))
    empty = n == 0
    return xp.where(empty, xp.full_like(val, float("nan")), val), empty


@quiet
def logcumsumexp(x: Any, axis: int = -1, *, dim: int | None = None) -> Any:
    r"""Running log-sum-exp along ``axis``: :math:`y_i = \log \sum_{j \le i} e^{x_j}`.

    A log-depth scan over (max, rest-sum) pairs in float64, rounding once per
    output: a chained ``logaddexp``, as in NumPy, PyTorch and JAX, rounds once
    per step (6.6 ulp after 1000 float64 steps). Leading ``-inf`` entries give
    ``-inf`` (empty prefix sums) with a zero gradient, where
    ``torch.logcumsumexp``'s gradient is NaN. ``dim`` is PyTorch's name of ``axis``.

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> x = np.array([1000.0, 1000.0, 1000.0])
    >>> np.log(np.cumsum(np.exp(x)))   # naive: exp overflows  # doctest: +SKIP
    array([inf, inf, inf])
    >>> fg.logcumsumexp(x)   # 1000 + log(1, 2, 3)
    array([1000.        , 1000.69314718, 1001.09861229])
    """
    axis = alias(axis, -1, dim, ("axis", "dim"), "logcumsumexp")
    be, x = _prepare(x, "logcumsumexp")
    xw = _work(be, x)
    ax = normalize_axis(axis, x.ndim, "axis", "logcumsumexp")
    if x.ndim == 0:
        return x
    return be.xp.astype(_scan_logcumsumexp(be, xw, ax), x.dtype, copy=False)


@jit_on_jax(2)
def _scan_logcumsumexp(be: Backend, x: Any, ax: int) -> Any:
    """Hillis-Steele scan over pairs (max ``m``, sum ``s`` of the other shifted terms).

    Combining a prefix (m_a, s_a) with the next block (m_b, s_b): with hi the
    side of the larger max, ``m = m_hi`` and ``s = s_hi + (1 + s_lo) exp(m_lo - m_hi)``.
    The result ``m + log1p(s)`` rounds once per output instead of once per
    step; ``log2(n)`` combining passes, each with only ``where``, ``exp`` and
    ``concat``, so autodiff goes through it.
    """
    xp = be.xp
    m = xp.moveaxis(x, (ax,), (-1,))  # tuples: torch.vmap has no rule for moveaxis.int
    s = xp.zeros_like(m)
    n = m.shape[-1]
    shift = 1
    while shift < n:
        ma, sa = m[..., :-shift], s[..., :-shift]  # prefix ending `shift` earlier
        mb, sb = m[..., shift:], s[..., shift:]
        a_hi = (ma > mb) | xp.isnan(ma)
        m_hi = xp.where(a_hi, ma, mb)
        m_lo = xp.where(a_hi, mb, ma)
        s_hi = xp.where(a_hi, sa, sb)
        s_lo = xp.where(a_hi, sb, sa)
        ok = xp.isfinite(m_hi)
        delta = xp.where(ok, m_lo - m_hi, -xp.ones_like(m_hi))
        scale = xp.where(ok, xp.exp(delta), xp.zeros_like(delta))
        m = xp.concat([m[..., :shift], m_hi], axis=-1)
        s = xp.concat([s[..., :shift], s_hi + (1 + s_lo) * scale], axis=-1)
        shift *= 2
    # prefixes with an infinite max (all -inf, a +inf) are constants: zero gradient, never NaN; with a NaN, NaN and a
    # NaN gradient (to the NaN entry: m is it), as the other reductions'
    nan = xp.isnan(m)
    out = xp.where(xp.isfinite(m), m + xp.log1p(s), xp.where(nan, m * nan_where(xp, nan, m), be.stop_gradient(m)))
    return xp.moveaxis(out, (-1,), (ax,))
