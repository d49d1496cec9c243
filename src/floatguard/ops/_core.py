"""Shared kernel of logsumexp, softmax and log_softmax (Blanchard, Higham & Higham 2021).

For a row ``x`` with maximum ``m = x_k`` (first index ``k`` where the max is
attained) the kernel computes, in the working dtype,

    d_i = x_i - m,    e_i = exp(d_i),    s = sum_{i != k} e_i

so that ``logsumexp = m + log1p(s)``, ``softmax_i = e_i / (1 + s)`` and
``log_softmax_i = d_i - log1p(s)``. Taking the max term out of the sum and using
``log1p`` is what keeps the result accurate when one term dominates (the case
where ``log(1 + s)`` loses every digit of ``s``).

The max is a constant for autodiff (the functions are shift-invariant, so its
derivative is exactly zero); the max term re-enters the graph as
``expm1(d_k)``, which is exactly 0 in value but carries the derivative of
``e_k``. Rows whose max is not finite (all entries -inf or masked, a +inf, a
NaN) are computed on safe stand-in values and their results are chosen with
``where``, so their gradients are 0 instead of NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._namespace import Backend


@dataclass
class Shifted:
    """Pieces of the shifted row computation; all arrays in the working dtype."""

    m: Any  # row max (keepdims), constant for autodiff; may be +-inf or NaN
    finite: Any  # bool (keepdims): the row max is finite
    d: Any  # x - m on finite rows, 0 elsewhere
    e: Any  # exp(d)
    s: Any  # sum of e without the max term (keepdims), >= 0; 0 on non-finite rows
    is_k: Any = None  # bool: position of the (first) max in each row
    d_k: Any = None  # d at the max (0 in value, carries the derivative)


def nan_where(xp: Any, cond: Any, x: Any) -> Any:
    """A constant like ``x``: NaN where ``cond``, 0 elsewhere. Added to ``x`` before a function, or multiplied into
    ``x`` in a ``where`` branch, it makes the value *and the gradient* NaN there (a domain error: a finite gradient
    beside a NaN loss lets an optimizer take the step) and leaves both alone elsewhere; a constant NaN chosen by a
    ``where`` would have gradient 0."""
    return xp.where(cond, xp.full_like(x, math.nan), xp.zeros_like(x))


def nan_rows(be: Backend, rows: Any, m: Any, other: Any, keep: Any = None) -> Any:
    """``other`` (per row with the axis kept, or per entry), but on rows whose max ``m`` is NaN (and ``keep``, where
    given) a NaN that carries a NaN gradient to each of the row's entries (their sum times :func:`nan_where`'s
    constant): the value of a row with no finite max is a constant of ``m`` (no gradient), which hid a NaN row from a
    gradient check (PyTorch's and the kernels' give NaN). Elsewhere that branch passes no gradient (its constant is 0
    there), so rows left out by ``keep`` (a cross-entropy's ignored rows) keep gradient 0. NumPy (no gradients):
    ``other``. Under ``jax.jit`` XLA fuses the sum into the row's other passes (JAX cross-entropy and logmeanexp
    4096×1000 with ``jax.grad``: no measurable change)."""
    if be.name == "numpy":
        return other
    xp = be.xp
    nan = xp.isnan(m) if keep is None else xp.isnan(m) & keep
    return xp.where(nan, xp.sum(rows, axis=-1, keepdims=True) * nan_where(xp, nan, m), other)


def shifted(be: Backend, x: Any, mask: Any = None) -> Shifted:
    """Shift the last axis of ``x`` by its max; ``mask`` (bool) keeps entries where True."""
    xp = be.xp
    neg_inf = xp.asarray(-float("inf"), dtype=x.dtype)
    if be.name == "torch":
        neg_inf = neg_inf.to(x.device)
    if mask is not None:
        x = xp.where(mask, x, neg_inf)
    xc = be.stop_gradient(x)
    if x.shape[-1]:
        m = xp.max(xc, axis=-1, keepdims=True)
    else:  # empty rows: the sum of no terms is 0, its log -inf
        m = xp.sum(xc, axis=-1, keepdims=True) + neg_inf
    finite = xp.isfinite(m)
    zero = xp.zeros_like(m)
    m0 = xp.where(finite, m, zero)
    d = xp.where(finite, x - m0, xp.zeros_like(x))
    e = xp.exp(d)
    n = x.shape[-1]
    if n == 0:
        return Shifted(m, finite, d, e, xp.zeros_like(m))
    k = xp.argmax(xc, axis=-1, keepdims=True)
    idx = xp.arange(n, dtype=k.dtype)
    if be.name == "torch":
        idx = idx.to(k.device)
    is_k = idx == k
    rest = xp.sum(xp.where(is_k, xp.zeros_like(e), e), axis=-1, keepdims=True)
    d_k = xp.sum(xp.where(is_k, d, xp.zeros_like(d)), axis=-1, keepdims=True)
    s = xp.where(finite, rest + xp.expm1(d_k), zero)
    return Shifted(m, finite, d, e, s, is_k, d_k)


def limit_weights(be: Backend, x: Any, sh: Shifted) -> Any:
    """Softmax on rows whose max is not finite: the limit value.

    +inf entries share the mass equally (the limit of softmax as they grow
    together), rows of all -inf give zeros, rows with NaN give NaN.
    """
    xp = be.xp
    x = be.stop_gradient(x)
    at_max = xp.astype(x == sh.m, x.dtype)
    count = xp.sum(at_max, axis=-1, keepdims=True)
    pos = sh.m > 0  # +inf rows
    safe_count = xp.where(count > 0, count, xp.ones_like(count))
    w = xp.where(pos, at_max / safe_count, xp.zeros_like(at_max))
    return xp.where(xp.isnan(sh.m), sh.m + xp.zeros_like(x), w)


def inf_row_loss(xp: Any, rows: Any, x_t: Any, cls: Any, spread: Any) -> Any:
    """The cross-entropy of rows whose max is ``+inf``: the limit of ``sum_i a_i nll_i`` as the ``k`` ``+inf``
    entries grow together and share the mass (``nll_i = log k`` there, ``+inf`` at the finite entries: the limit of
    ``log_softmax``), a zero coefficient dropping its term (the kernels' ``_numba_ce_rows.inf_row_loss``).

    ``rows`` ``(..., C)`` (no gradient flows here: only compares and counts read it); the coefficients ``a_i`` are
    ``cls`` ``(...)`` at the target class, whose logit is ``x_t`` (None for class probabilities), plus ``spread``
    (``(C,)`` or ``(..., C)``, every class; None: none). Returns, per row, ``A log k`` with ``A`` the coefficients
    at the ``+inf`` entries, or ``+inf`` where a finite entry has a positive coefficient (``-inf`` negative, NaN
    both). Meaningful on rows whose max is ``+inf`` only; finite elsewhere (the caller selects).
    """
    is_inf = rows == float("inf")
    zero = xp.zeros_like(rows)
    k = xp.sum(xp.astype(is_inf, rows.dtype), axis=-1)
    a_inf = xp.zeros_like(k)
    pos = xp.zeros_like(k) > 0
    neg = pos
    if x_t is not None:
        t_inf = x_t == float("inf")
        a_inf = a_inf + xp.where(t_inf, cls, xp.zeros_like(cls))
        pos = pos | (~t_inf & (cls > 0))
        neg = neg | (~t_inf & (cls < 0))
    if spread is not None:
        a = spread + zero
        a_inf = a_inf + xp.sum(xp.where(is_inf, a, zero), axis=-1)
        pos = pos | xp.any(~is_inf & (a > 0), axis=-1)
        neg = neg | xp.any(~is_inf & (a < 0), axis=-1)
    one = xp.ones_like(k)
    lim = a_inf * xp.log(xp.where(k > 0, k, one))
    inf = one * float("inf")
    return xp.where(pos & neg, inf - inf, xp.where(pos, inf, xp.where(neg, -inf, lim)))


def blocks(r: int, n: int, size: int) -> Iterator[tuple[int, int, int, int]]:
    """Tile an ``(r, n)`` array into blocks of at most ``size`` elements for the in-place paths.

    Yields ``(row0, row1, col0, col1)``: groups of whole rows when a row fits,
    else column chunks of one row at a time.
    """
    if n <= size:
        step = max(1, size // max(n, 1))
        for r0 in range(0, r, step):
            yield r0, min(r, r0 + step), 0, n
    else:
        for row in range(r):
            for c0 in range(0, n, size):
                yield row, row + 1, c0, min(n, c0 + size)


# -- the generic rows kernels: the fallback of every backend (see ._kernels) --------------------
def logsumexp_rows(be: Backend, rows: Any) -> Any:
    """``m + log1p(s)`` of the last axis of ``rows`` (kept, length 1), in the working dtype."""
    xp = be.xp
    rows = xp.astype(rows, be.work_dtype(rows.dtype), copy=False)
    sh = shifted(be, rows)
    return nan_rows(be, rows, sh.m, xp.where(sh.finite, sh.m + xp.log1p(sh.s), sh.m))


def softmax_rows(be: Backend, rows: Any, log: bool) -> Any:
    """softmax (``e / (1 + s)``) or log_softmax (``d - log1p(s)``) of the last axis, in the working dtype;
    rows whose max is not finite get their limit (:func:`limit_weights`, or its log)."""
    xp = be.xp
    rows = xp.astype(rows, be.work_dtype(rows.dtype), copy=False)
    sh = shifted(be, rows)
    w = limit_weights(be, rows, sh)
    if not log:
        return nan_rows(be, rows, sh.m, xp.where(sh.finite, sh.e / (1 + sh.s), w))
    limit = xp.where(w > 0, xp.log(xp.where(w > 0, w, xp.ones_like(w))), xp.full_like(w, -float("inf")))
    limit = xp.where(xp.isnan(w), w, limit)
    return nan_rows(be, rows, sh.m, xp.where(sh.finite, sh.d - xp.log1p(sh.s), limit))
