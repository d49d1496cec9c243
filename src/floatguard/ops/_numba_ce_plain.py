"""Compiled (numba) cross-entropy, the common case: class indices, no weight, no smoothing, on a route of its
own (few arguments, one packed residual array): the forward, the backward, and the forward that also writes the
gradient of ``loss.backward()``. The row steps by dtype are :mod:`._numba_ce_rows`'; the general kernels (weights,
label smoothing, probabilities, soft-capping, z-loss) are :mod:`._numba_ce`.

Without numba this module imports (``AVAILABLE`` is False) and callers use the generic path.
"""

from __future__ import annotations

import numpy as np

from ._numba_bits import _inline, _njit, _voidptr, carray
from ._numba_bits import _row_max as _key_max
from ._numba_ce_rows import (
    _grad_row_for,
    _no_grad_row,
    _pc_minus_1_for,
    _rest_store_for,
    _row_buffer,
    _scale_for,
    _scale_row_for,
    inf_row_loss,
    weights64,
)
from ._numba_exp import _add, _sum_of
from ._numba_log import log1p as _log1p
from ._numba_loss_dtypes import _ld, _st
from ._numba_torch import _rest_for


# -- cross-entropy, the common case: class indices, no weight, no smoothing --------------------------
# Few arguments (numba's dispatch types each one), one packed residual array, and H1's inline row
# helpers (an integer-key max, the rest sum without slices for short rows): the latency route.
@_inline()
def _row_start(x: np.ndarray, target: np.ndarray, w: np.ndarray, r: int, ignore: int, has_ignore: bool,
               res: np.ndarray) -> tuple[int, float]:
    """The start of a row of :func:`ce_plain_forward` (and :func:`ce_plain_forward_grad`): its state and max;
    ``res[3, r]`` its weight in a mean, ``w_c`` (1 without class weights, ``w`` empty).

    -1: its class outside ``[0, C)``; 0: ignored (``res`` zeroed); 1: a non-finite max ``m`` (loss ``+inf`` for
    ``-inf``, NaN for NaN, the limit :func:`._numba_ce_rows.inf_row_loss` for ``+inf``, as
    :func:`._numba_ce.ce_index_forward`'s; no gradient: 0, NaN where the loss is NaN, marked by ``res[1, r]``
    NaN); 2: a finite max ``m``, to go on with.
    """
    c = target[r]
    if has_ignore and c == ignore:
        for j in range(5):
            res[j, r] = 0.0
        return 0, 0.0
    if c < 0 or c >= x.shape[1]:
        return -1, 0.0
    m = _key_max(x[r])
    res[3, r] = np.float64(w[c]) if w.size > 0 else 1.0
    if np.isfinite(m):
        return 2, m
    res[0, r] = -m if m != np.inf else inf_row_loss(x[r], c, res[3, r], w, False, 0.0, x[r], False)
    res[1, r] = 0.0 if res[0, r] == res[0, r] else res[0, r]  # NaN marks a NaN loss: a NaN gradient row
    res[2, r] = 0.0
    res[4, r] = 0.0
    return 1, m


@_inline()
def _row_loss(res: np.ndarray, r: int, v: float, m: float, lg: float) -> None:
    """``res[:, r]`` of a row with a finite max: its loss ``v``, ``m``, ``log1p(s)``, alive."""
    res[0, r] = v
    res[1, r] = m
    res[2, r] = lg
    res[4, r] = 1.0


@_njit()
def ce_plain_forward(x: np.ndarray, target: np.ndarray, w: np.ndarray, ignore: int, has_ignore: bool,
                     res: np.ndarray) -> tuple[int, float, float]:
    """Rows ``(R, C)`` and class indices, class weights ``w`` (float32 or float64; empty: none): ``res``
    ``(5, R)`` gets the row losses ``w_c (log1p(s) + (m - x_c))``, ``m``, ``log1p(s)``, the row's weight in a
    mean (``w_c``, 0 if ignored) and ``alive`` (finite max).

    Returns the first row whose index is outside ``[0, C)`` (or -1), the sum of the losses and the mean's
    divisor, the sum of the row weights (the count of rows not ignored without ``w``). A row with a non-finite
    max has the loss of :func:`_row_start` and no gradient.
    """
    r_count = x.shape[0]
    weighted = w.size > 0
    total, comp, count = 0.0, 0.0, 0.0
    plain = 0.0  # the non-finite rows' losses (+-inf, NaN), outside the compensated sum
    for r in range(r_count):
        state, m = _row_start(x, target, w, r, ignore, has_ignore, res)
        if state < 0:
            return r, 0.0, 0.0
        count += res[3, r] if state > 0 else 0.0
        if state == 1:
            plain += res[0, r]
        if state < 2:
            continue
        row = x[r]
        lg = _log1p(_rest_for(row, m))
        v = lg + (m - _ld(row[target[r]]))
        if weighted:
            v = res[3, r] * v
        _row_loss(res, r, v, m, lg)
        total, comp = _add(total, comp, v)
    return -1, _sum_of(total, comp) + plain, count


@_njit()
def ptr_ce_plain_forward(code: int, xa: int, ta: int, wa: int, w64: bool, r: int, n: int, ignore: int,
                         has_ignore: bool, res: np.ndarray) -> tuple[int, float, float]:
    """:func:`ce_plain_forward` on tensors' storage (a small call's route: a NumPy view of a tensor costs ~1 us,
    and numba's dispatch of each array more than of an int): C-contiguous rows ``(r, n)`` at ``xa`` (``code`` 0
    float32, 1 bfloat16 bits, 3 float64), int64 indices ``(r,)`` at ``ta``, class weights ``(n,)`` at ``wa``
    (float64 with ``w64``, else float32, widened here: the kernels are compiled for float64 weights alone;
    ``wa = 0``: none)."""
    t = carray(_voidptr(ta), (r,), np.int64)
    w = weights64(wa, w64, n)
    if code == 0:
        return ce_plain_forward(carray(_voidptr(xa), (r, n), np.float32), t, w, ignore, has_ignore, res)
    if code == 1:
        return ce_plain_forward(carray(_voidptr(xa), (r, n), np.int16), t, w, ignore, has_ignore, res)
    return ce_plain_forward(carray(_voidptr(xa), (r, n), np.float64), t, w, ignore, has_ignore, res)


@_njit()
def ce_plain_backward(x: np.ndarray, target: np.ndarray, gs: float, g: np.ndarray, res: np.ndarray,
                      out: np.ndarray) -> None:
    """``out = g_r w_c (softmax(x) - onehot_c)`` from :func:`ce_plain_forward`'s residuals (``w_c = res[3, r]``,
    1 without class weights); ``g_r = gs``, or ``gs g[r]`` when ``g`` has one entry per row."""
    r_count = x.shape[0]
    per_row = g.size > 0
    for r in range(r_count):
        o = out[r]
        gr = (gs * g[r] if per_row else gs) * res[3, r]
        if res[4, r] == 0.0 or gr == 0.0:
            _no_grad_row(o, res[1, r])
            continue
        row = x[r]
        m, lg = res[1, r], res[2, r]
        _grad_row_for(row, m, lg, gr, o)
        c = target[r]
        _st(o, c, gr * _pc_minus_1_for(row, (_ld(row[c]) - m) - lg))


@_njit()
def ce_plain_scale_rows(grad: np.ndarray, g: np.ndarray, res: np.ndarray) -> None:
    """``grad_r *= g_r`` in place, each entry rounded once: the backward of an unreduced forward that wrote
    ``R = softmax(x) - onehot_c`` (:func:`ce_plain_forward_grad` with ``gs = 1``). Rows ignored or with a
    non-finite max (``res[4] == 0``) and rows with ``g_r == 0`` are set to 0 (NaN where the loss is NaN), as
    :func:`ce_plain_backward` gives them whatever ``g_r`` (also ``inf`` or NaN: their loss is a constant)."""
    for r in range(grad.shape[0]):
        o = grad[r]
        gr = float(g[r])
        if res[4, r] == 0.0 or gr == 0.0:
            _no_grad_row(o, res[1, r])
            continue
        _scale_row_for(o, gr)


# -- cross-entropy, the common case, the gradient written by the forward ----------------------------
# ``loss.backward()`` of a mean or a sum passes the gradient 1: the forward, which has every
# ``e_i = exp(x_i - m)`` of a row in a row buffer once it has the row's sum, writes ``g (softmax - onehot)``
# for ``g = 1`` (times the mean's ``1 / count``) at once, and the backward hands it over instead of
# computing every exp a second time (Liger Kernel's fused cross-entropy does the same on GPUs).
@_njit()
def ce_plain_forward_grad(x: np.ndarray, target: np.ndarray, w: np.ndarray, ignore: int, has_ignore: bool,
                          res: np.ndarray, gs: float, grad: np.ndarray) -> tuple[int, float, float]:
    """:func:`ce_plain_forward` of float32 or bfloat16 rows that also writes
    ``grad = gs w_c (softmax(x) - onehot_c)`` (0 on rows ignored or with a non-finite max, NaN on NaN rows): the
    gradient :func:`ce_plain_backward` gives for ``g = gs``.

    ``gs < 0`` stands for the mean's ``1 / den`` (the weights of the rows not ignored, summed first: their count
    without class weights). ``p_i = e_i / (1 + s)`` from the kept ``e_i`` (the exps of the loss, 2^-32 relative for
    float32 rows, ~2^-21 for bfloat16), rounded once; the target entry ``p_c - 1`` as ``-s / (1 + s)`` where
    ``x_c`` is the max (no cancellation).
    """
    r_count, n = x.shape
    weighted = w.size > 0
    if gs < 0.0:
        kept = 0.0
        for r in range(r_count):
            c = target[r]
            if not (has_ignore and c == ignore):  # a bad index is reported by the row loop below
                kept += np.float64(w[c]) if weighted and 0 <= c < n else 1.0
        gs = 1.0 / kept if kept else 0.0
    e = _row_buffer(x, n)
    total, comp, count = 0.0, 0.0, 0.0
    plain = 0.0
    for r in range(r_count):
        state, m = _row_start(x, target, w, r, ignore, has_ignore, res)
        if state < 0:
            return r, 0.0, 0.0
        o = grad[r]
        count += res[3, r] if state > 0 else 0.0
        if state == 1:
            plain += res[0, r]
        if state < 2:
            _no_grad_row(o, res[1, r])
            continue
        row = x[r]
        c = target[r]
        acc, ties = _rest_store_for(row, m, e)
        s = acc + (ties - 1.0)
        lg = _log1p(s)
        xc = _ld(row[c])
        v = lg + (m - xc)
        gw = gs
        if weighted:
            v = res[3, r] * v
            gw = gs * res[3, r]
        _row_loss(res, r, v, m, lg)
        total, comp = _add(total, comp, v)
        q = gw / (1.0 + s)
        _scale_for(e, q, o)
        _st(o, c, -(s * q) if xc == m else np.float64(e[c]) * q - gw)
    return -1, _sum_of(total, comp) + plain, count


@_njit()
def ptr_ce_plain_forward_grad(code: int, xa: int, ta: int, wa: int, w64: bool, r: int, n: int, ignore: int,
                              has_ignore: bool, res: np.ndarray, gs: float, ga: int) -> tuple[int, float, float]:
    """:func:`ce_plain_forward_grad` on tensors' storage, as :func:`ptr_ce_plain_forward`: float32 (``code`` 0) or
    bfloat16 bits (1) rows, the gradient written to ``(r, n)`` of their dtype at ``ga``."""
    t = carray(_voidptr(ta), (r,), np.int64)
    w = weights64(wa, w64, n)
    if code == 0:
        return ce_plain_forward_grad(carray(_voidptr(xa), (r, n), np.float32), t, w, ignore, has_ignore, res, gs,
                                     carray(_voidptr(ga), (r, n), np.float32))
    return ce_plain_forward_grad(carray(_voidptr(xa), (r, n), np.int16), t, w, ignore, has_ignore, res, gs,
                                 carray(_voidptr(ga), (r, n), np.int16))
