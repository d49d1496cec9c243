"""Cross-entropy forwards that also write the gradient of ``loss.backward()``: class weights, label
smoothing, class probabilities (the common case has its own, :func:`._numba_ce_plain.ce_plain_forward_grad`).

A mean or a sum of float32/bfloat16 logits that require grad is a training step's loss: its
backward passes the gradient 1 (times a power of two under loss scaling). The forward has every
``e_i = exp(x_i - m)`` of a row in a row buffer once it has the row's sum, so it writes
``gs (a softmax(x)_i - b_i)`` at once and the backward hands it over (:func:`._torch_rows.written_gradient`)
instead of computing every exp a second time. ``gs`` is the scale of ``g = 1``: 1 for a sum, ``1 / den``
for a mean (``den`` the sum of the rows' target weights, or the row count for probabilities), computed by
the caller as :func:`._torch_ce.row_grad` does, so that the gradient is the one the backward kernel writes
for ``g = 1`` up to the exps (here the forward's, rounded from the same short exp).

Per row, with ``q = 1 / (1 + s)`` and ``p_i = e_i q``:

* class index ``c``: ``a p_i - (eps / C) w_i`` with ``a = (1 - eps) w_c + eps W / C`` (``W = sum w``), and at
  ``c`` ``(1 - eps) w_c (p_c - 1) + (eps / C) (W p_c - w_c)``, where ``p_c - 1 = -s q`` when ``x_c`` is the
  max (no cancellation, as the common case);
* probabilities ``t``: ``T p_i - t'_i w_i`` with ``t' = (1 - eps) t + eps / C`` and ``T = sum t' w``.

Rows ignored or with a non-finite max get the gradient 0 (NaN where the loss is NaN), as in the backward
kernels.
"""

from __future__ import annotations

import numpy as np

from ._numba_bits import _CONTRACT, _inline, _njit
from ._numba_bits import _row_max as _key_max
from ._numba_ce import _gap_sum, _no_row, _target_sums, _w_total, res_sums
from ._numba_ce_rows import (
    _no_grad_row,
    _rest_store_for,
    _rest_store_gap_for,
    _row_buffer,
    _scale_for,
    inf_row_loss,
)
from ._numba_log import log1p as _log1p
from ._numba_loss_dtypes import _ld, _st


@_inline()
def _rest_log(row: np.ndarray, m: float, e: np.ndarray) -> tuple[float, float]:
    """``(s, log1p(s))`` of a row with a finite max ``m``, its ``e_i = exp(x_i - m)`` kept in ``e``."""
    acc, ties = _rest_store_for(row, m, e)
    s = acc + (ties - 1.0)
    return s, _log1p(s)


@_inline(_CONTRACT)
def _write_w(e: np.ndarray, a: float, b: float, w: np.ndarray, weighted: bool, o: np.ndarray) -> None:
    """``o_i = a e_i - b w_i`` (``w = 1`` unweighted), rounded once."""
    if weighted:
        for i in range(e.size):
            _st(o, i, a * np.float64(e[i]) - b * w[i])
    else:
        for i in range(e.size):
            _st(o, i, a * np.float64(e[i]) - b)


@_inline(_CONTRACT)
def _write_t(e: np.ndarray, a: float, b: float, c: float, trow: np.ndarray, w: np.ndarray, weighted: bool,
             o: np.ndarray) -> None:
    """``o_i = a e_i - (b t_i + c) w_i`` (``w = 1`` unweighted), rounded once."""
    if weighted:
        for i in range(e.size):
            _st(o, i, a * np.float64(e[i]) - (b * _ld(trow[i]) + c) * w[i])
    else:
        for i in range(e.size):
            _st(o, i, a * np.float64(e[i]) - (b * _ld(trow[i]) + c))


@_njit()
def mean_den(target: np.ndarray, w: np.ndarray, weighted: bool, ignore: int, has_ignore: bool,
             n: int) -> tuple[int, float]:
    """``(first row with a bad index or -1, den)``: ``den`` the target weights of the rows kept, summed in row
    order (as :func:`._numba_ce.res_sums` sums the row weights the forward writes: the same den)."""
    den = 0.0
    for r in range(target.size):
        c = target[r]
        if has_ignore and c == ignore:
            continue
        if c < 0 or c >= n:
            return r, 0.0
        den += w[c] if weighted else 1.0
    return -1, den


@_njit()
def ce_index_forward_grad(
    x: np.ndarray, target: np.ndarray, w: np.ndarray, weighted: bool, ignore: int, has_ignore: bool, eps: float,
    gs: float, loss: np.ndarray, m_out: np.ndarray, l_out: np.ndarray, wt_out: np.ndarray, alive: np.ndarray,
    grad: np.ndarray,
) -> int:
    """:func:`._numba_ce.ce_index_forward` of float32 or bfloat16 rows (no soft-capping) that also writes
    ``grad``, the gradient of the loss for the upstream gradient ``gs`` per row (see the module docstring;
    ``gs < 0`` stands for the mean's ``1 / den``, summed here first); returns the first row with a bad index,
    or -1."""
    r_count, n = x.shape
    if gs < 0.0:  # the mean's 1 / den, den the target weights of the rows kept (the index check comes with it)
        bad, den = mean_den(target, w, weighted, ignore, has_ignore, n)
        if bad >= 0:
            return bad
        gs = 1.0 / den if den != 0.0 else 0.0
    w_total = _w_total(w, weighted, n)
    e = _row_buffer(x, n)
    for r in range(r_count):
        c = target[r]
        o = grad[r]
        if has_ignore and c == ignore:
            _no_row(r, 0.0, loss, m_out, l_out, alive)
            wt_out[r] = 0.0
            _no_grad_row(o, 0.0)
            continue
        if c < 0 or c >= n:
            return r
        wc = w[c] if weighted else 1.0
        wt_out[r] = wc
        row = x[r]
        m = _key_max(row)
        if not np.isfinite(m):
            _no_row(r, inf_row_loss(row, c, wc, w, weighted, eps, row, False) if m == np.inf else -m, loss, m_out,
                    l_out, alive)
            _no_grad_row(o, m_out[r])
            continue
        if eps != 0.0 and not weighted:  # the gap sum in the pass of the exps
            acc, ties, gap = _rest_store_gap_for(row, m, e)
            s = acc + (ties - 1.0)
            lg = _log1p(s)
        else:
            s, lg = _rest_log(row, m, e)
            gap = _gap_sum(row, m, w, weighted) if eps != 0.0 else 0.0
        xc = _ld(row[c])
        val = (1.0 - eps) * wc * (lg + (m - xc)) if eps != 1.0 else 0.0
        if eps != 0.0:
            val += eps / n * (w_total * lg + gap)
        loss[r] = val
        m_out[r] = m
        l_out[r] = lg
        alive[r] = 1.0
        q = 1.0 / (1.0 + s)
        b = gs * eps / n
        a = gs * ((1.0 - eps) * wc + eps * w_total / n) * q
        if b == 0.0:  # no smoothing: a e_i, in float32 lanes for bfloat16 rows (as the common case)
            _scale_for(e, a, o)
        else:
            _write_w(e, a, b, w, weighted, o)
        pc1 = -(s * q) if xc == m else np.float64(e[c]) * q - 1.0  # p_c - 1
        _st(o, c, gs * ((1.0 - eps) * wc * pc1) + b * (w_total * (pc1 + 1.0) - wc))
    return -1


@_njit()
def ce_prob_forward_grad(
    x: np.ndarray, t: np.ndarray, w: np.ndarray, weighted: bool, eps: float, gs: float,
    loss: np.ndarray, m_out: np.ndarray, l_out: np.ndarray, tw_out: np.ndarray, alive: np.ndarray,
    grad: np.ndarray,
) -> None:
    """:func:`._numba_ce.ce_prob_forward` of float32 or bfloat16 rows (no soft-capping) that also writes ``grad``,
    the gradient for the upstream gradient ``gs`` per row (see the module docstring)."""
    r_count, n = x.shape
    e = _row_buffer(x, n)
    for r in range(r_count):
        row, trow, o = x[r], t[r], grad[r]
        m = _key_max(row)
        tw, acc = _target_sums(row, trow, w, weighted, eps, m)
        tw_out[r] = tw
        if not np.isfinite(m):
            _no_row(r, inf_row_loss(row, -1, 0.0, w, weighted, eps, trow, True) if m == np.inf else -m, loss, m_out,
                    l_out, alive)
            _no_grad_row(o, m_out[r])
            continue
        s, lg = _rest_log(row, m, e)
        loss[r] = tw * lg + acc
        m_out[r] = m
        l_out[r] = lg
        alive[r] = 1.0
        _write_t(e, gs * tw / (1.0 + s), gs * (1.0 - eps), gs * eps / n, trow, w, weighted, o)


@_njit()
def ce_index_forward_grad_res(x: np.ndarray, target: np.ndarray, w: np.ndarray, weighted: bool, ignore: int,
                              has_ignore: bool, eps: float, gs: float, res: np.ndarray,
                              grad: np.ndarray) -> tuple[int, float, float, float]:
    """:func:`ce_index_forward_grad` with its five row outputs the rows of ``res`` ``(5, R)`` (a small call's
    dispatch) and :func:`._numba_ce.res_sums`: ``(bad row or -1, total, den, count)``."""
    bad = ce_index_forward_grad(x, target, w, weighted, ignore, has_ignore, eps, gs, res[0], res[1], res[2],
                                res[3], res[4], grad)
    total, den, count = res_sums(res, target, ignore, has_ignore)
    return bad, total, den, count
