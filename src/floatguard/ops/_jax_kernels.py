"""The JAX kernels of logsumexp, softmax and log_softmax (see :mod:`._kernels`): :mod:`._jax_fast`.

Two stages, one algorithm:

* ``call``: the plain call (the last axis of a real floating array, no ``where`` or ``b``) goes to
  :mod:`._jax_fast` with the array as it is, of any rank: no reshape to rows around the custom
  function. XLA fuses the two differently: on attention scores (4×8×256×256) the bfloat16 forward
  took 0.7-0.8x the time of the reshaped path and its ``jax.vjp`` 0.6-0.8x, the float32 ``jax.vjp``
  under ``jax_enable_x64`` 0.35x for softmax and log_softmax (``benchmarks/training_speed.py`` and
  side-by-side medians). float32 worked in float32 (no x64) is the exception: there rows are 1.0x
  with ``jax.vjp`` and 0.87-0.98x forward, so that case keeps the reshape;
* ``rows``: every other call, after the reduced axes are moved last and flattened to ``(R, n)``.

Each returns the op per row in the input dtype (the op rounds once to it). Imported on the first
JAX array an op gets.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from . import _jax_fast
from ._kernels import register

# the real floating dtypes (NumPy dtype objects, what ``x.dtype`` of a JAX array is)
DTYPES = tuple(jnp.dtype(t) for t in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


def _last(x: Any, axis: Any) -> bool:
    """Whether ``axis`` names the last axis of ``x`` (an integer, not a bool) and ``x`` has rows to reduce."""
    if isinstance(axis, bool) or x.ndim == 0 or x.size == 0:
        return False
    try:
        axis = operator.index(axis)
    except TypeError:  # a tuple, None, ...: the full path (which checks it)
        return False
    return axis in (-1, x.ndim - 1)


def _apply(fn: Callable[[Any], Any], x: Any) -> Any:
    """``fn`` of the last axis of ``x`` (``(..., n)`` to ``(..., k)``): on ``x`` as it is, or on its rows for
    float32 worked in float32 (see the module docstring)."""
    if x.ndim <= 2 or x.dtype != jnp.float32 or _jax_fast._work_dtype(x.dtype) != jnp.float32:
        return fn(x)
    out = fn(jnp.reshape(x, (-1, x.shape[-1])))
    return jnp.reshape(out, (*x.shape[:-1], out.shape[-1]))


def _middle(x: Any, axis: Any) -> int | None:
    """The normalized ``axis`` when it names another axis than the last of ``x`` (an integer in range, not a bool),
    ``x`` has entries and is worked in float32 (:func:`._jax_fast.works_in_float32`): reduced where it lies."""
    if isinstance(axis, bool) or x.ndim < 2 or x.size == 0 or not _jax_fast.works_in_float32(x.dtype):
        return None
    try:
        axis = operator.index(axis)
    except TypeError:
        return None
    if not -x.ndim <= axis < x.ndim - 1:
        return None
    return axis % x.ndim


@register("logsumexp", "jax", stage="call", dtypes=DTYPES)
def _logsumexp_call(x: Any, axis: Any, keepdims: Any) -> Any:
    if type(keepdims) is not bool:
        return None
    if not _last(x, axis):
        ax = _middle(x, axis)
        if ax is None:
            return None
        lse = _jax_fast.logsumexp_rows(x, ax)
        return lse if keepdims else jnp.squeeze(lse, ax)
    lse = _apply(_jax_fast.logsumexp_rows, x)
    return lse if keepdims else jnp.squeeze(lse, -1)


@register("softmax", "jax", stage="call", dtypes=DTYPES)
def _softmax_call(x: Any, axis: Any) -> Any:
    if _last(x, axis):
        return _apply(_jax_fast.softmax_rows, x)
    ax = _middle(x, axis)
    return None if ax is None else _jax_fast.softmax_rows(x, ax)


@register("log_softmax", "jax", stage="call", dtypes=DTYPES)
def _log_softmax_call(x: Any, axis: Any) -> Any:
    if _last(x, axis):
        return _apply(_jax_fast.log_softmax_rows, x)
    ax = _middle(x, axis)
    return None if ax is None else _jax_fast.log_softmax_rows(x, ax)


@register("logsumexp", "jax")
def _logsumexp(rows: Any) -> Any:
    return _jax_fast.logsumexp_rows(rows)


@register("softmax", "jax")
def _softmax(rows: Any) -> Any:
    return _jax_fast.softmax_rows(rows)


@register("log_softmax", "jax")
def _log_softmax(rows: Any) -> Any:
    return _jax_fast.log_softmax_rows(rows)
