"""Compiled (numba) cross-entropy kernels: forward and backward of rows of logits, by class index or
class probabilities, with class weights, label smoothing, soft-capping and the z-loss. The common case
(class indices, nothing else) has a route of its own (:mod:`._numba_ce_plain`); the row steps that depend on
the dtype are :mod:`._numba_ce_rows`'; the forwards that also write the gradient, :mod:`._numba_ce_fused`.

Per row ``x`` of ``C`` logits (float32, float64 or bfloat16 bits: see :mod:`._numba_loss_dtypes`),
everything in float64 registers:

* pass 1: ``m = max_i x_i`` (one vectorized integer pass over order-preserving keys; NaN if the row holds one);
* pass 2: ``s = sum_{x_i < m} exp(x_i - m) + (#{x_i = m} - 1)``, the rest sum (the max term taken out,
  ties added exactly): for float64 rows with the vectorized table ``exp`` (0.51 ulp) and compensated
  block sums, for float32 and bfloat16 rows with the short exp of the common case (relative 2^-35,
  float64 sums; bfloat16 in float32 lanes), whose losses are rounded to 24 bits or fewer; with label
  smoothing also ``sum_i w_i (m - x_i)`` (non-negative terms: nothing cancels);
* the row loss from ``L = log1p(s)``: ``nll_c = L + (m - x_c)``.

Only per-row residuals are kept (``m``, ``L`` and the row's coefficients); the
backward pass recomputes ``p_i = exp((x_i - m) - L)`` (the table exp for float64 rows, the short one
otherwise) and writes ``g (a p_i - b_i)`` in the input dtype, rounded once. The common case of float32 and
bfloat16 rows has a forward that writes the gradient of ``g = 1`` too
(:func:`._numba_ce_plain.ce_plain_forward_grad`, from the exps of its sum, kept in a row buffer).

Rows with a non-finite max (all ``-inf``, a ``+inf``, a NaN) are flagged
(``alive = 0``) and get the gradient 0, but NaN where their loss is NaN (a NaN logit: NaN loss, NaN gradient, as
PyTorch's); their loss is ``+inf`` for rows of ``-inf``, NaN for NaN rows, and the
limit (:func:`._numba_ce_rows.inf_row_loss`: ``w_c log k`` or ``+inf``) for rows holding ``+inf``.

Soft-capping (``cap > 0``, Gemma 2): each row is first mapped to ``cap tanh(x / cap)``
in a float64 row buffer (no (N, C) temporary) and the passes above run on it; the
backward writes the capped row's gradient to a second row buffer and multiplies it
by ``sech^2(x / cap)`` when rounding it to the output. The z-loss (PaLM) needs no
pass of its own: ``log Z = m + L`` is a residual, and its gradient ``2 coef log Z
softmax`` is a per-row addition ``zg`` to the coefficient of ``p_i``.

Without numba this module imports (``AVAILABLE`` is False) and callers use the generic path.
"""

from __future__ import annotations

import numpy as np

from ._numba_bits import _CONTRACT, _SUM, AVAILABLE, _inline, _njit, _voidptr, carray
from ._numba_bits import _row_max as _key_max
from ._numba_ce_rows import (
    _no_grad_row,
    _pc_minus_1_for,
    inf_row_loss,
    weights64,
)
from ._numba_exp import BLK, _add, _exp_f32out, _exp_reduced, _reduce, _sum_of
from ._numba_log import select
from ._numba_loss_dtypes import _ld, _st
from ._numba_torch import _rest_for

# -- pass 1: the row max, :func:`._numba_bits._row_max` (one integer pass, NaN if the row holds one) -------


# -- pass 2: the rest sum ------------------------------------------------------------------------
@_njit(_SUM)
def _reduce_seg(seg: np.ndarray, m: float, rb: np.ndarray, kb: np.ndarray, nz: np.ndarray) -> int:
    """Reduce ``seg - m`` for the exp; ``nz`` 0 at the max ties (their count returned), else 1."""
    ties = 0
    for i in range(seg.size):
        d = _ld(seg[i]) - m
        rb[i], kb[i] = _reduce(d)
        tie = d == 0.0
        nz[i] = 0.0 if tie else 1.0
        ties += 1 if tie else 0
    return ties


@_njit(_SUM)
def _sum_seg(rb: np.ndarray, kb: np.ndarray, nz: np.ndarray, n: int) -> float:
    acc = 0.0
    for i in range(n):
        acc += _exp_reduced(rb[i], kb[i]) * nz[i]
    return acc


@_njit(_SUM)
def _gap_sum(row: np.ndarray, m: float, w: np.ndarray, weighted: bool) -> float:
    """``sum_i w_i (m - x_i)`` (``w = 1`` unweighted): non-negative terms, ``+inf`` for ``-inf`` logits."""
    acc = 0.0
    if weighted:
        for i in range(row.size):
            acc += w[i] * (m - _ld(row[i]))
    else:
        for i in range(row.size):
            acc += m - _ld(row[i])
    return acc


@_njit()
def _rest(row: np.ndarray, m: float, rb: np.ndarray, kb: np.ndarray, nz: np.ndarray) -> float:
    """``s = sum_{i != k} exp(x_i - m)`` for a finite ``m``."""
    n = row.size
    total, comp = 0.0, 0.0
    ties = 0
    for b0 in range(0, n, BLK):
        b1 = min(b0 + BLK, n)
        ties += _reduce_seg(row[b0:b1], m, rb, kb, nz)
        total, comp = _add(total, comp, _sum_seg(rb, kb, nz, b1 - b0))
    return (total + comp) + (ties - 1)


@_inline()
def _w_total(w: np.ndarray, weighted: bool, n: int) -> float:
    """``W = sum_i w_i`` of the class weights (``n`` unweighted)."""
    if not weighted:
        return float(n)
    acc = 0.0
    for i in range(n):
        acc += w[i]
    return acc


@_inline()
def _no_row(r: int, v: float, loss: np.ndarray, m_out: np.ndarray, l_out: np.ndarray, alive: np.ndarray) -> None:
    """The residuals of a row that is ignored (``v = 0``) or has a non-finite max (``v`` its loss): no gradient, 0
    or, where the loss is NaN, NaN (``m`` NaN marks it: :func:`._numba_ce_rows._no_grad_row`)."""
    loss[r] = v
    m_out[r] = 0.0 if v == v else v
    l_out[r] = 0.0
    alive[r] = 0.0


# -- soft-capping: y = cap tanh(x / cap), d y / d x = sech^2(x / cap) ---------------------------------
@_njit()
def _cap_row(row: np.ndarray, cap: float, out: np.ndarray) -> None:
    """``out_i = cap tanh(x_i / cap)`` in float64 (``+-inf`` give ``+-cap``, NaN stays NaN)."""
    for i in range(row.size):
        out[i] = cap * np.tanh(_ld(row[i]) / cap)


@_njit(_CONTRACT)
def _cap_grad_row(row: np.ndarray, cap: float, gy: np.ndarray, out: np.ndarray) -> None:
    """``out_i = gy_i sech^2(x_i / cap)``, rounded once to ``out``'s dtype.

    ``sech^2 u = 4 E / (1 + E)^2`` with ``E = exp(-2 |u|)``: relative error of a few ulp for every ``u``,
    where ``1 - tanh^2 u`` loses all its digits once ``tanh u`` rounds to 1 (``|u| > 19`` in float64).
    """
    for i in range(row.size):
        e = np.exp(-2.0 * abs(_ld(row[i]) / cap))
        q = 1.0 + e
        _st(out, i, gy[i] * (4.0 * e / (q * q)))


# -- cross-entropy forward ---------------------------------------------------------------------
@_njit()
def _index_row(row: np.ndarray, c: int, wc: float, w: np.ndarray, weighted: bool, w_total: float, eps: float,
               rb: np.ndarray, kb: np.ndarray, nz: np.ndarray) -> tuple[float, float, float, float]:
    """``(loss, m, log1p(s), alive)`` of one row of class ``c`` (see :func:`ce_index_forward`)."""
    n = row.size
    m = _key_max(row)
    if not np.isfinite(m):
        v = inf_row_loss(row, c, wc, w, weighted, eps, row, False) if m == np.inf else -m
        return v, (0.0 if v == v else v), 0.0, 0.0  # m NaN marks a NaN loss (see _no_row)
    lg = np.log1p(_rest_any(row, m, rb, kb, nz))
    val = (1.0 - eps) * wc * (lg + (m - _ld(row[c]))) if eps != 1.0 else 0.0
    if eps != 0.0:
        val += eps / n * (w_total * lg + _gap_sum(row, m, w, weighted))
    return val, m, lg, 1.0


@_njit()
def ce_index_forward(
    x: np.ndarray, target: np.ndarray, w: np.ndarray, weighted: bool, ignore: int, has_ignore: bool, eps: float,
    cap: float, loss: np.ndarray, m_out: np.ndarray, l_out: np.ndarray, wt_out: np.ndarray, alive: np.ndarray,
) -> int:
    """Row losses for class indices; returns the first row with a bad index, or -1.

    ``loss = (1 - eps) w_c nll_c + eps / C sum_i w_i nll_i``; ``wt_out`` the row's
    ``w_c`` (0 where ignored), the weight of the row in a mean. With ``cap > 0`` the
    row is first soft-capped (:func:`_cap_row`, into a float64 row buffer) and
    ``m``, ``log1p(s)`` are those of the capped row.
    """
    r_count, n = x.shape
    rb = np.empty(BLK)
    kb = np.empty(BLK, dtype=np.int64)
    nz = np.empty(BLK)
    buf = np.empty(n if cap > 0.0 else 0)
    w_total = _w_total(w, weighted, n)
    for r in range(r_count):
        c = target[r]
        if has_ignore and c == ignore:
            _no_row(r, 0.0, loss, m_out, l_out, alive)
            wt_out[r] = 0.0
            continue
        if c < 0 or c >= n:
            return r
        wc = w[c] if weighted else 1.0
        wt_out[r] = wc
        if cap > 0.0:
            _cap_row(x[r], cap, buf)
            val, m, lg, al = _index_row(buf, c, wc, w, weighted, w_total, eps, rb, kb, nz)
        else:
            val, m, lg, al = _index_row(x[r], c, wc, w, weighted, w_total, eps, rb, kb, nz)
        loss[r] = val
        m_out[r] = m
        l_out[r] = lg
        alive[r] = al
    return -1


@_inline(_SUM)
def _target_sums(row: np.ndarray, trow: np.ndarray, w: np.ndarray, weighted: bool, eps: float,
                 m: float) -> tuple[float, float]:
    """``(sum_i t'_i w_i, sum_i t'_i w_i (m - x_i))`` of a row of probabilities, ``t' = (1 - eps) t + eps / C``
    (``w = 1`` unweighted): non-negative terms, a zero ``t'_i w_i`` dropping its term even where ``x_i`` is
    ``-inf`` (a select, so that the loop vectorizes); the second sum is meaningless for a non-finite ``m``."""
    n = row.size
    tw = 0.0
    acc = 0.0
    for i in range(n):
        q = (1.0 - eps) * _ld(trow[i]) + eps / n
        if weighted:
            q *= w[i]
        tw += q
        acc += select(q != 0.0, q * (m - _ld(row[i])), 0.0)
    return tw, acc


@_njit()
def res_sums(res: np.ndarray, target: np.ndarray, ignore: int, has_ignore: bool) -> tuple[float, float, float]:
    """``(sum of the row losses, sum of the target weights, rows not ignored)`` of a small call's residuals
    ``res`` ``(5, R)``, summed in row order (the mean's ``den``; the reduction needs no NumPy call after). The
    losses of rows with a finite max compensated, the others (``+-inf``, NaN) apart, as
    :func:`._numba_ce_plain.ce_plain_forward` sums them: the same total for the same rows."""
    total, comp, plain, den, count = 0.0, 0.0, 0.0, 0.0, 0.0
    for r in range(res.shape[1]):
        if res[4, r] != 0.0:
            total, comp = _add(total, comp, res[0, r])
        else:
            plain += res[0, r]
        den += res[3, r]
        count += 0.0 if (has_ignore and target[r] == ignore) else 1.0
    return _sum_of(total, comp) + plain, den, count


@_njit()
def ce_index_forward_res(x: np.ndarray, target: np.ndarray, w: np.ndarray, weighted: bool, ignore: int,
                         has_ignore: bool, eps: float, res: np.ndarray) -> tuple[int, float, float, float]:
    """:func:`ce_index_forward` (no soft-capping) with its five outputs the rows of ``res`` ``(5, R)`` (fewer
    arguments for numba's dispatch, which a small call notices) and :func:`res_sums`: ``(bad row or -1, total,
    den, count)``."""
    bad = ce_index_forward(x, target, w, weighted, ignore, has_ignore, eps, 0.0, res[0], res[1], res[2], res[3],
                           res[4])
    total, den, count = res_sums(res, target, ignore, has_ignore)
    return bad, total, den, count


@_njit()
def _prob_row(row: np.ndarray, trow: np.ndarray, w: np.ndarray, weighted: bool, eps: float, rb: np.ndarray,
              kb: np.ndarray, nz: np.ndarray) -> tuple[float, float, float, float, float]:
    """``(loss, m, log1p(s), sum t' w, alive)`` of one row of probabilities (see :func:`ce_prob_forward`)."""
    m = _key_max(row)
    tw, acc = _target_sums(row, trow, w, weighted, eps, m)
    if not np.isfinite(m):
        v = inf_row_loss(row, -1, 0.0, w, weighted, eps, trow, True) if m == np.inf else -m
        return v, (0.0 if v == v else v), 0.0, tw, 0.0  # m NaN marks a NaN loss (see _no_row)
    lg = np.log1p(_rest_any(row, m, rb, kb, nz))
    return tw * lg + acc, m, lg, tw, 1.0


@_njit()
def ce_prob_forward(
    x: np.ndarray, t: np.ndarray, w: np.ndarray, weighted: bool, eps: float, cap: float,
    loss: np.ndarray, m_out: np.ndarray, l_out: np.ndarray, tw_out: np.ndarray, alive: np.ndarray,
) -> None:
    """Row losses for class probabilities: ``sum_i t'_i w_i nll_i`` with ``t' = (1 - eps) t + eps / C``.

    A zero ``t'_i w_i`` drops its term even where ``nll_i`` is ``+inf``. ``tw_out = sum_i t'_i w_i``.
    ``cap > 0``: the rows soft-capped first, as in :func:`ce_index_forward`.
    """
    r_count, n = x.shape
    rb = np.empty(BLK)
    kb = np.empty(BLK, dtype=np.int64)
    nz = np.empty(BLK)
    buf = np.empty(n if cap > 0.0 else 0)
    for r in range(r_count):
        if cap > 0.0:
            _cap_row(x[r], cap, buf)
            val, m, lg, tw, al = _prob_row(buf, t[r], w, weighted, eps, rb, kb, nz)
        else:
            val, m, lg, tw, al = _prob_row(x[r], t[r], w, weighted, eps, rb, kb, nz)
        loss[r] = val
        m_out[r] = m
        l_out[r] = lg
        tw_out[r] = tw
        alive[r] = al


@_njit()
def _prob_res(x: np.ndarray, t: np.ndarray, w: np.ndarray, eps: float, res: np.ndarray) -> float:
    """:func:`ce_prob_forward` (no soft-capping) into the rows of ``res`` ``(5, R)``; the sum of the row losses
    (those of rows with a finite max compensated, as :func:`res_sums`)."""
    ce_prob_forward(x, t, w, w.size > 0, eps, 0.0, res[0], res[1], res[2], res[3], res[4])
    return loss_total(res[0], res[4])


@_njit()
def loss_total(loss: np.ndarray, alive: np.ndarray) -> float:
    """The sum of the row losses, those of rows with a finite max (``alive``) compensated and the others (``+-inf``,
    NaN) apart, as :func:`res_sums` sums them: one total for every route of the same rows."""
    total, comp, plain = 0.0, 0.0, 0.0
    for r in range(loss.size):
        if alive[r] != 0.0:
            total, comp = _add(total, comp, loss[r])
        else:
            plain += loss[r]
    return _sum_of(total, comp) + plain


@_njit()
def ptr_ce_prob_forward(code: int, xa: int, ta: int, wa: int, w64: bool, r: int, n: int, eps: float,
                        res: np.ndarray) -> float:
    """:func:`_prob_res` on tensors' storage (a small call's route, as
    :func:`._numba_ce_plain.ptr_ce_plain_forward`, whose weights it takes alike): C-contiguous logits and
    probabilities ``(r, n)`` of one dtype at ``xa`` and ``ta`` (``code`` 0 float32, 1 bfloat16 bits, 3 float64)."""
    s = (r, n)
    w = weights64(wa, w64, n)
    if code == 0:
        return _prob_res(carray(_voidptr(xa), s, np.float32), carray(_voidptr(ta), s, np.float32), w, eps, res)
    if code == 1:
        return _prob_res(carray(_voidptr(xa), s, np.int16), carray(_voidptr(ta), s, np.int16), w, eps, res)
    return _prob_res(carray(_voidptr(xa), s, np.float64), carray(_voidptr(ta), s, np.float64), w, eps, res)


# -- cross-entropy backward --------------------------------------------------------------------
@_njit(_CONTRACT)
def _p_block(seg: np.ndarray, shift: float, rb: np.ndarray, kb: np.ndarray) -> None:
    for i in range(seg.size):
        rb[i], kb[i] = _reduce(_ld(seg[i]) - shift)


@_njit(_CONTRACT)
def _grad_block(rb: np.ndarray, kb: np.ndarray, a: float, b: float, wseg: np.ndarray, weighted: bool,
                out: np.ndarray) -> None:
    """``out_i = a p_i - b w_i`` (``w = 1`` unweighted)."""
    if weighted:
        for i in range(out.size):
            _st(out, i, a * _exp_reduced(rb[i], kb[i]) - b * wseg[i])
    else:
        for i in range(out.size):
            _st(out, i, a * _exp_reduced(rb[i], kb[i]) - b)


@_njit(_CONTRACT)
def _grad_block_t(rb: np.ndarray, kb: np.ndarray, a: float, b: float, tseg: np.ndarray, wseg: np.ndarray,
                  weighted: bool, out: np.ndarray) -> None:
    """``out_i = a p_i - b t'_i w_i`` with ``t'_i = (1 - eps) t_i + eps / C`` folded in by the caller."""
    if weighted:
        for i in range(out.size):
            _st(out, i, a * _exp_reduced(rb[i], kb[i]) - b * _ld(tseg[i]) * wseg[i])
    else:
        for i in range(out.size):
            _st(out, i, a * _exp_reduced(rb[i], kb[i]) - b * _ld(tseg[i]))


@_njit(_CONTRACT)
def _grad_block_ts(rb: np.ndarray, kb: np.ndarray, a: float, b: float, c: float, tseg: np.ndarray,
                   wseg: np.ndarray, weighted: bool, out: np.ndarray) -> None:
    """``out_i = a p_i - (b t_i + c) w_i``: smoothed probabilities."""
    if weighted:
        for i in range(out.size):
            _st(out, i, a * _exp_reduced(rb[i], kb[i]) - (b * _ld(tseg[i]) + c) * wseg[i])
    else:
        for i in range(out.size):
            _st(out, i, a * _exp_reduced(rb[i], kb[i]) - (b * _ld(tseg[i]) + c))


@_inline()
def _grad_rows_blocked(row: np.ndarray, shift: float, a: float, b: float, w: np.ndarray, weighted: bool,
                       rb: np.ndarray, kb: np.ndarray, o: np.ndarray) -> None:
    """``o_i = a p_i - b w_i``, ``p_i = exp(x_i - shift)`` by the table exp, in blocks (float64 rows)."""
    n = row.size
    for b0 in range(0, n, BLK):
        b1 = min(b0 + BLK, n)
        _p_block(row[b0:b1], shift, rb, kb)
        _grad_block(rb, kb, a, b, w[b0:b1] if weighted else w, weighted, o[b0:b1])


@_inline(_CONTRACT)
def _grad_rows_short(row: np.ndarray, shift: float, a: float, b: float, w: np.ndarray, weighted: bool,
                     o: np.ndarray) -> None:
    """``o_i = a p_i - b w_i`` with the short exp (float32/bfloat16 rows: relative 2^-35, rounded once)."""
    if weighted:
        for i in range(row.size):
            _st(o, i, a * _exp_f32out(_ld(row[i]) - shift) - b * w[i])
    else:
        for i in range(row.size):
            _st(o, i, a * _exp_f32out(_ld(row[i]) - shift) - b)


@_inline()
def _grad_rows_t_blocked(row: np.ndarray, shift: float, a: float, b: float, c: float, trow: np.ndarray,
                         w: np.ndarray, weighted: bool, rb: np.ndarray, kb: np.ndarray, o: np.ndarray) -> None:
    """``o_i = a p_i - (b t_i + c) w_i`` by the table exp, in blocks (float64 rows)."""
    n = row.size
    for b0 in range(0, n, BLK):
        b1 = min(b0 + BLK, n)
        _p_block(row[b0:b1], shift, rb, kb)
        ws = w[b0:b1] if weighted else w
        if c == 0.0:
            _grad_block_t(rb, kb, a, b, trow[b0:b1], ws, weighted, o[b0:b1])
        else:
            _grad_block_ts(rb, kb, a, b, c, trow[b0:b1], ws, weighted, o[b0:b1])


@_inline(_CONTRACT)
def _grad_rows_t_short(row: np.ndarray, shift: float, a: float, b: float, c: float, trow: np.ndarray,
                       w: np.ndarray, weighted: bool, o: np.ndarray) -> None:
    """``o_i = a p_i - (b t_i + c) w_i`` with the short exp (float32/bfloat16 rows)."""
    if weighted:
        for i in range(row.size):
            _st(o, i, a * _exp_f32out(_ld(row[i]) - shift) - (b * _ld(trow[i]) + c) * w[i])
    else:
        for i in range(row.size):
            _st(o, i, a * _exp_f32out(_ld(row[i]) - shift) - (b * _ld(trow[i]) + c))


def _rest_any(row: np.ndarray, m: float, rb: np.ndarray, kb: np.ndarray, nz: np.ndarray) -> float:
    """``s = sum_{i != k} exp(x_i - m)`` of the general kernels: :func:`_rest` (the 0.51-ulp table exp,
    compensated blocks) for float64 rows and the float64 buffer of a soft-capped row; :func:`_rest_for`'s short
    sums for float32 and bfloat16 rows, whose losses are rounded to 24 bits or fewer (as the common case's)."""
    return _rest(row, m, rb, kb, nz)


def _grad_rows_any(row: np.ndarray, shift: float, a: float, b: float, w: np.ndarray, weighted: bool,
                   rb: np.ndarray, kb: np.ndarray, o: np.ndarray) -> None:
    """``o_i = a exp(x_i - shift) - b w_i`` (``w = 1`` unweighted), rounded once: :func:`_grad_rows_blocked` for
    float64 rows, :func:`_grad_rows_short` for float32 and bfloat16 ones."""
    _grad_rows_blocked(row, shift, a, b, w, weighted, rb, kb, o)


def _grad_rows_t_any(row: np.ndarray, shift: float, a: float, b: float, c: float, trow: np.ndarray, w: np.ndarray,
                     weighted: bool, rb: np.ndarray, kb: np.ndarray, o: np.ndarray) -> None:
    """``o_i = a exp(x_i - shift) - (b t_i + c) w_i``, rounded once, by the row's dtype (as :func:`_grad_rows_any`)."""
    _grad_rows_t_blocked(row, shift, a, b, c, trow, w, weighted, rb, kb, o)


@_njit()
def _index_row_grad(row: np.ndarray, c: int, wc: float, w: np.ndarray, weighted: bool, w_total: float, eps: float,
                    gr: float, zr: float, m: float, lg: float, rb: np.ndarray, kb: np.ndarray, o: np.ndarray) -> None:
    """One row of :func:`ce_index_backward` into ``o``."""
    n = row.size
    a = gr * ((1.0 - eps) * wc + eps * w_total / n) + zr
    b = gr * eps / n
    _grad_rows_any(row, m + lg, a, b, w, weighted, rb, kb, o)
    # a p_c - b w_c - gr (1 - eps) w_c, with p_c - 1 of _pc_minus_1_for: expm1 for float32/bfloat16 rows, where
    # a confident row's p_c - 1 ~ -s would cancel (float64 rows keep exp - 1, as the device composition)
    pc1 = _pc_minus_1_for(row, (_ld(row[c]) - m) - lg)
    _st(o, c, gr * (1.0 - eps) * wc * pc1 + (a - gr * (1.0 - eps) * wc) * (pc1 + 1.0) - b * (w[c] if weighted else 1.0))


@_njit()
def ce_index_backward(
    x: np.ndarray, target: np.ndarray, w: np.ndarray, weighted: bool, eps: float, cap: float, g: np.ndarray,
    zg: np.ndarray, m_in: np.ndarray, l_in: np.ndarray, wt: np.ndarray, alive: np.ndarray, out: np.ndarray,
) -> None:
    """``out = g_r (a softmax(x) - eps / C w - (1 - eps) w_c onehot_c)`` with ``a = (1 - eps) w_c + eps W / C``,
    plus ``zg_r softmax(x)`` (the z-loss's ``2 coef log Z`` times its upstream gradient; ``zg`` empty: none).

    ``cap > 0``: the softmax is the capped row's and the row gradient is multiplied by ``sech^2(x / cap)``
    (worked in a float64 row buffer, rounded once).
    """
    r_count, n = x.shape
    rb = np.empty(BLK)
    kb = np.empty(BLK, dtype=np.int64)
    ybuf = np.empty(n if cap > 0.0 else 0)
    gbuf = np.empty(n if cap > 0.0 else 0)
    has_z = zg.size > 0
    w_total = _w_total(w, weighted, n)
    for r in range(r_count):
        o = out[r]
        gr = g[r] if g.size > 1 else g[0]
        zr = zg[r] if has_z else 0.0
        if alive[r] == 0.0 or (gr == 0.0 and zr == 0.0):
            _no_grad_row(o, m_in[r])
            continue
        if cap > 0.0:
            _cap_row(x[r], cap, ybuf)
            _index_row_grad(ybuf, target[r], wt[r], w, weighted, w_total, eps, gr, zr, m_in[r], l_in[r], rb, kb,
                            gbuf)
            _cap_grad_row(x[r], cap, gbuf, o)
        else:
            _index_row_grad(x[r], target[r], wt[r], w, weighted, w_total, eps, gr, zr, m_in[r], l_in[r], rb, kb, o)


@_njit()
def _prob_row_grad(row: np.ndarray, trow: np.ndarray, w: np.ndarray, weighted: bool, eps: float, gr: float,
                   zr: float, tw: float, m: float, lg: float, rb: np.ndarray, kb: np.ndarray, o: np.ndarray) -> None:
    """One row of :func:`ce_prob_backward` into ``o``."""
    n = row.size
    a = gr * tw + zr
    if eps == 0.0:
        _grad_rows_t_any(row, m + lg, a, gr, 0.0, trow, w, weighted, rb, kb, o)
    else:
        _grad_rows_t_any(row, m + lg, a, gr * (1.0 - eps), gr * eps / n, trow, w, weighted, rb, kb, o)


@_njit()
def ce_prob_backward(
    x: np.ndarray, t: np.ndarray, w: np.ndarray, weighted: bool, eps: float, cap: float, g: np.ndarray,
    zg: np.ndarray, m_in: np.ndarray, l_in: np.ndarray, tw: np.ndarray, alive: np.ndarray, out: np.ndarray,
) -> None:
    """``out = g_r (sum(t' w) softmax(x) - t' w) + zg_r softmax(x)``; ``cap`` as in :func:`ce_index_backward`."""
    r_count, n = x.shape
    rb = np.empty(BLK)
    kb = np.empty(BLK, dtype=np.int64)
    ybuf = np.empty(n if cap > 0.0 else 0)
    gbuf = np.empty(n if cap > 0.0 else 0)
    has_z = zg.size > 0
    for r in range(r_count):
        o = out[r]
        gr = g[r] if g.size > 1 else g[0]
        zr = zg[r] if has_z else 0.0
        if alive[r] == 0.0 or (gr == 0.0 and zr == 0.0):
            _no_grad_row(o, m_in[r])
            continue
        if cap > 0.0:
            _cap_row(x[r], cap, ybuf)
            _prob_row_grad(ybuf, t[r], w, weighted, eps, gr, zr, tw[r], m_in[r], l_in[r], rb, kb, gbuf)
            _cap_grad_row(x[r], cap, gbuf, o)
        else:
            _prob_row_grad(x[r], t[r], w, weighted, eps, gr, zr, tw[r], m_in[r], l_in[r], rb, kb, o)


if AVAILABLE:
    from numba import types
    from numba.extending import overload

    @overload(_rest_any, inline="always")
    def _rest_any_impl(row, m, rb, kb, nz):  # unannotated: numba compares signatures
        if row.dtype == types.float64:
            return lambda row, m, rb, kb, nz: _rest(row, m, rb, kb, nz)
        return lambda row, m, rb, kb, nz: _rest_for(row, m)

    @overload(_grad_rows_any, inline="always")
    def _grad_rows_any_impl(row, shift, a, b, w, weighted, rb, kb, o):  # unannotated: numba compares signatures
        if row.dtype == types.float64:
            return lambda row, shift, a, b, w, weighted, rb, kb, o: _grad_rows_blocked(
                row, shift, a, b, w, weighted, rb, kb, o)
        return lambda row, shift, a, b, w, weighted, rb, kb, o: _grad_rows_short(row, shift, a, b, w, weighted, o)

    @overload(_grad_rows_t_any, inline="always")
    def _grad_rows_t_any_impl(row, shift, a, b, c, trow, w, weighted, rb, kb, o):  # unannotated: see above
        if row.dtype == types.float64:
            return lambda row, shift, a, b, c, trow, w, weighted, rb, kb, o: _grad_rows_t_blocked(
                row, shift, a, b, c, trow, w, weighted, rb, kb, o)
        return lambda row, shift, a, b, c, trow, w, weighted, rb, kb, o: _grad_rows_t_short(
            row, shift, a, b, c, trow, w, weighted, o)
