"""The cross-entropy of class indices along a middle axis: ``(O, C, I)`` layouts (see :mod:`._numba_columns`).

Forward: per position ``m``, ``log1p(s)``, ``s`` and the loss ``w_t (log1p(s) + (m - x_t))``, from the blocks of
:func:`._numba_columns._stats`. Backward: ``scale (softmax - onehot)`` in one vector pass per class, the target's
``p - 1`` as ``-s / (1 + s)`` where the target holds the max (``p`` near 1 would cancel).
"""

from __future__ import annotations

import numpy as np

from ._numba_bits import _CONTRACT, AVAILABLE, _encode, _encode32, _inline, _load, _load32, _njit, _voidptr, carray
from ._numba_columns import _block, _log1p_blk, _stats, _stats2
from ._numba_exp import F32, _exp32, _exp_f32out
from ._numba_log import select

if AVAILABLE:
    from numba import types as _types
    from numba.extending import overload as _overload


# -- cross-entropy of class indices ----------------------------------------------------------------------
# Up to this many classes the target's logit and one-hot take vector passes over the classes; above, a strided
# load and a fixed-up entry per position cost less (8×150×64×64: the passes took 1.3x the forward's time)
PICK_MAX = 32
PICK_FWD = 4  # the forward's gather of the target logits: a pass over the classes cost more than loads from C = 8


@_inline(_CONTRACT)
def _pick_blk(seg: np.ndarray, tb: np.ndarray, c: int, xt: np.ndarray) -> None:
    """``xt[j] = seg[j]`` where the target of position ``j`` is ``c``: the target logits gathered by a vector pass
    over the classes instead of a strided load per position."""
    for j in range(seg.size):
        xt[j] = select(tb[j] == c, _load(seg[j]), xt[j])


@_inline()
def _position_stats(xo: np.ndarray, o: int, j0: int, nb: int, m: np.ndarray, s: np.ndarray, l1p: np.ndarray) -> bool:
    """``m``, ``s`` and ``l1p = log1p(s)`` (O, I) of the positions ``j0 .. j0 + nb`` of ``o``; False if one has no
    finite max."""
    if not _stats(xo, j0, nb, m[o, j0 : j0 + nb], s[o, j0 : j0 + nb], True):
        return False
    _log1p_blk(s[o, j0 : j0 + nb], l1p[o, j0 : j0 + nb], xo.shape[0] == 2)
    return True


@_inline(_CONTRACT)
def _smooth_blk(seg: np.ndarray, wc: float, m: np.ndarray, b: np.ndarray) -> None:
    """``b += w_c (m - x_c)``: the label smoothing's sum over the classes (>= 0)."""
    for j in range(seg.size):
        b[j] += wc * (m[j] - _load(seg[j]))


@_inline(_CONTRACT)
def _ce_pair(xo: np.ndarray, tb: np.ndarray, w: np.ndarray, ignore: int, has_ignore: bool, eps: float, mb: np.ndarray,
             lb: np.ndarray, sb: np.ndarray, lo: np.ndarray, wb: np.ndarray, ab: np.ndarray, j0: int) -> int:
    """One block of :func:`cols_ce_fwd` of two classes: :func:`._numba_columns._stats2`'s ``m`` and ``s`` and their
    ``log1p``, then the weights and index checks in one loop and the loss, the target's logit picked by a select, in
    another (the general blocks take a pass over the classes for the target's logit, and a loop each for the checks,
    the weights and the loss: 1.6 of the 2.6 ms of the forward at 8×2×256×256). Loops of few arrays each: with
    more, LLVM gives up the runtime alias checks that vectorizing them needs (one loop of it all ran 4x slower than
    the general blocks). The same status codes."""
    nb = tb.size
    if not _stats2(xo, j0, nb, mb, sb):
        return 1
    _log1p_blk(sb, lb, True)
    x0 = xo[0, j0 : j0 + nb]
    x1 = xo[1, j0 : j0 + nb]
    weighted = w.size > 0
    w0 = w[0] if weighted else 1.0
    w1 = w[1] if weighted else 1.0
    wrong = np.int64(0)
    for j in range(nb):
        k = tb[j]
        out = (k < 0) | (k >= 2)
        ign = has_ignore & (k == ignore)
        wrong += np.int64(out) - np.int64(out & ign)
        wb[j] = select(ign | out, 0.0, select(k == 1, w1, w0))
    if wrong:
        return 2
    if eps == 0.0:  # an ignored position's loss is 0 even where the logit its index picks is -inf (0 * inf)
        for j in range(nb):
            v = wb[j] * (lb[j] + (mb[j] - select(tb[j] == 1, _load(x1[j]), _load(x0[j]))))
            lo[j] = select(has_ignore & (tb[j] == ignore), 0.0, v)
        return 0
    for j in range(nb):
        k = tb[j]
        ab[j] = select(has_ignore & (k == ignore) | (k < 0) | (k >= 2), 0.0, 1.0)
    for j in range(nb):
        mx = mb[j]
        smooth = (w0 + w1) * lb[j] + (w0 * (mx - _load(x0[j])) + w1 * (mx - _load(x1[j])))
        base = lb[j] + (mx - select(tb[j] == 1, _load(x1[j]), _load(x0[j])))
        lo[j] = select(ab[j] == 0.0, 0.0, (1.0 - eps) * wb[j] * base + (eps / 2.0) * smooth)
    return 0


@_njit()
def cols_ce_fwd(x: np.ndarray, t: np.ndarray, w: np.ndarray, ignore: int, has_ignore: bool, eps: float,
                m: np.ndarray, l1p: np.ndarray, s: np.ndarray, loss: np.ndarray, wt: np.ndarray, alive: np.ndarray,
                o0: int, o1: int, i0: int, i1: int) -> int:
    """Cross-entropy of class indices ``t`` (O, I) over axis 1 of ``x`` (O, C, I): per position ``m``, ``l1p =
    log1p(s)``, ``s`` (for the backward), ``wt = w_t`` and the loss, ``w_t (l1p + (m - x_t))`` or, with label smoothing
    ``eps`` (PyTorch's), ``(1 - eps) w_t (l1p + (m - x_t)) + eps / C sum_c w_c (l1p + (m - x_c))`` and ``alive`` (1, 0
    where ignored: the smoothing term is not weighted by ``w_t``); all 0 at ``ignore``; ``w`` empty for no class
    weights. Returns 0, or 1 if a position has no finite max, 2 if an index is out of range (the caller's row path
    then answers, with its semantics and errors)."""
    _, n_cls, _ = x.shape
    cb = _block(n_cls)
    weighted = w.size > 0
    xt = np.empty(cb)
    bsm = np.empty(cb)
    wsum = 0.0
    for c in range(n_cls):
        wsum += w[c] if weighted else 1.0
    for o in range(o0, o1):
        xo = x[o]
        for j0 in range(i0, i1, cb):
            nb = min(cb, i1 - j0)
            if n_cls == 2:
                status = _ce_pair(xo, t[o, j0 : j0 + nb], w, ignore, has_ignore, eps, m[o, j0 : j0 + nb],
                                  l1p[o, j0 : j0 + nb], s[o, j0 : j0 + nb], loss[o, j0 : j0 + nb],
                                  wt[o, j0 : j0 + nb], alive[o, j0 : j0 + nb], j0)
                if status:
                    return status
                continue
            if not _position_stats(xo, o, j0, nb, m, s, l1p):
                return 1
            mb, lb = m[o, j0 : j0 + nb], l1p[o, j0 : j0 + nb]
            tb = t[o, j0 : j0 + nb]
            xb = xt[:nb]
            if n_cls <= PICK_FWD:
                xb[:] = 0.0
                for c in range(n_cls):
                    _pick_blk(xo[c, j0 : j0 + nb], tb, c, xb)
            else:  # a strided load per position: less than a pass over the classes
                for j in range(nb):
                    xb[j] = _load(xo[min(max(tb[j], 0), n_cls - 1), j0 + j])
            wb = wt[o, j0 : j0 + nb]
            bad = np.int64(0)
            for j in range(nb):
                k = tb[j]
                out = (k < 0) | (k >= n_cls)
                ign = has_ignore & (k == ignore)
                bad += np.int64(out) - np.int64(out & ign)
                wb[j] = select(ign | out, 0.0, 1.0)
            if weighted:  # apart: the gather would keep the loop above from vectorizing
                for j in range(nb):
                    wb[j] *= w[min(max(tb[j], 0), n_cls - 1)]
            if bad:
                return 2
            lo = loss[o, j0 : j0 + nb]
            if eps == 0.0:  # an ignored position's loss is 0 even where the logit its clamped index reads is -inf
                for j in range(nb):
                    lo[j] = select(has_ignore & (tb[j] == ignore), 0.0, wb[j] * (lb[j] + (mb[j] - xb[j])))
                continue
            bb = bsm[:nb]
            bb[:] = 0.0
            for c in range(n_cls):
                _smooth_blk(xo[c, j0 : j0 + nb], w[c] if weighted else 1.0, mb, bb)
            ab = alive[o, j0 : j0 + nb]
            for j in range(nb):
                k = tb[j]
                ab[j] = select((has_ignore & (k == ignore)) | (k < 0) | (k >= n_cls), 0.0, 1.0)
                lo[j] = select(ab[j] == 0.0, 0.0, (1.0 - eps) * wb[j] * (lb[j] + (mb[j] - xb[j]))
                               + (eps / n_cls) * (wsum * lb[j] + bb[j]))
    return 0


def _ce_bwd_block(xo: np.ndarray, ro: np.ndarray, j0: int, nb: int, mb: np.ndarray, lb: np.ndarray,
                  sb: np.ndarray, pb: np.ndarray, tb: np.ndarray, se: np.ndarray, w: np.ndarray, wsum: float) -> None:
    """The vector pass of one block of :func:`cols_ce_bwd` (overloaded by dtype as :func:`_softmax_bwd_block`)."""
    (_ce_bwd32 if xo.dtype == np.float32 else _ce_bwd16)(xo, ro, j0, nb, mb, lb, sb, pb, tb, se, w, wsum)


@_inline(_CONTRACT)
def _ce_grad_blk(seg: np.ndarray, m: np.ndarray, l1p: np.ndarray, scale: np.ndarray, pm1: np.ndarray,
                 tb: np.ndarray, c: int, se: np.ndarray, wsum: float, wc: float, grad: np.ndarray) -> None:
    """``grad = scale (p - [c == t]) + se (W p - w_c)`` (the second term: label smoothing, ``se = 0`` without); at the
    target ``p - 1``, which is ``pm1 = -s / (1 + s)`` where the target is at the max (``p`` near 1 would cancel) and
    ``p - 1`` from the entry otherwise (``p <= 1/2`` there). ``c < 0``: no one-hot (the caller writes the targets'
    entries)."""
    if wsum == 0.0:  # no smoothing
        if c < 0:
            for j in range(seg.size):
                grad[j] = _encode(scale[j] * _exp_f32out((_load(seg[j]) - m[j]) - l1p[j]), grad)
            return
        for j in range(seg.size):
            d = _load(seg[j]) - m[j]
            e = _exp_f32out(d - l1p[j])
            v = select(tb[j] == c, select(d == 0.0, pm1[j], e - 1.0), e)
            grad[j] = _encode(scale[j] * v, grad)
        return
    for j in range(seg.size):
        d = _load(seg[j]) - m[j]
        e = _exp_f32out(d - l1p[j])
        v = select(tb[j] == c, select(d == 0.0, pm1[j], e - 1.0), e)
        grad[j] = _encode(scale[j] * v + se[j] * (wsum * e - wc), grad)


@_inline(_CONTRACT)
def _ce_grad_blk16(seg: np.ndarray, m: np.ndarray, l1p: np.ndarray, scale: np.ndarray, pm1: np.ndarray,
                   tb: np.ndarray, c: int, se: np.ndarray, wsum: np.float32, wc: np.float32,
                   grad: np.ndarray) -> None:
    if wsum == F32(0.0):
        if c < 0:
            for j in range(seg.size):
                grad[j] = _encode32(scale[j] * _exp32((_load32(seg[j]) - m[j]) - l1p[j]), grad)
            return
        c32 = np.int32(c)
        for j in range(seg.size):
            d = _load32(seg[j]) - m[j]
            e = _exp32(d - l1p[j])
            v = select(tb[j] == c32, select(d == F32(0.0), pm1[j], e - F32(1.0)), e)
            grad[j] = _encode32(scale[j] * v, grad)
        return
    c32 = np.int32(c)
    for j in range(seg.size):
        d = _load32(seg[j]) - m[j]
        e = _exp32(d - l1p[j])
        v = select(tb[j] == c32, select(d == F32(0.0), pm1[j], e - F32(1.0)), e)
        grad[j] = _encode32(scale[j] * v + se[j] * (wsum * e - wc), grad)


@_inline()
def _ce_bwd32(xo: np.ndarray, ro: np.ndarray, j0: int, nb: int, mb: np.ndarray, lb: np.ndarray, sb: np.ndarray,
              pb: np.ndarray, tb: np.ndarray, se: np.ndarray, w: np.ndarray, wsum: float) -> None:
    n_cls = xo.shape[0]
    weighted = w.size > 0
    for c in range(n_cls):
        _ce_grad_blk(xo[c, j0 : j0 + nb], mb, lb, sb, pb, tb, c if n_cls <= PICK_MAX else -1, se, wsum,
                     w[c] if weighted else 1.0, ro[c, j0 : j0 + nb])


@_inline()
def _ce_bwd16(xo: np.ndarray, ro: np.ndarray, j0: int, nb: int, mb: np.ndarray, lb: np.ndarray, sb: np.ndarray,
              pb: np.ndarray, tb: np.ndarray, se: np.ndarray, w: np.ndarray, wsum: float) -> None:
    m32 = np.empty(nb, dtype=np.float32)
    l32 = np.empty(nb, dtype=np.float32)
    s32 = np.empty(nb, dtype=np.float32)
    p32 = np.empty(nb, dtype=np.float32)
    e32 = np.empty(nb, dtype=np.float32)
    t32 = np.empty(nb, dtype=np.int32)
    for j in range(nb):
        m32[j], l32[j], s32[j], p32[j], e32[j] = F32(mb[j]), F32(lb[j]), F32(sb[j]), F32(pb[j]), F32(se[j])
        t32[j] = np.int32(min(max(tb[j], -1), xo.shape[0]))
    n_cls = xo.shape[0]
    weighted = w.size > 0
    for c in range(n_cls):
        _ce_grad_blk16(xo[c, j0 : j0 + nb], m32, l32, s32, p32, t32, c if n_cls <= PICK_MAX else -1, e32, F32(wsum),
                       F32(w[c] if weighted else 1.0), ro[c, j0 : j0 + nb])


if AVAILABLE:

    @_overload(_ce_bwd_block, inline="always")
    def _ce_bwd_block_impl(xo, ro, j0, nb, mb, lb, sb, pb, tb, se, w, wsum):  # unannotated: numba compares signatures
        if xo.dtype == _types.float32:
            return lambda xo, ro, j0, nb, mb, lb, sb, pb, tb, se, w, wsum: _ce_bwd32(xo, ro, j0, nb, mb, lb, sb, pb, tb,
                                                                                     se, w, wsum)
        return lambda xo, ro, j0, nb, mb, lb, sb, pb, tb, se, w, wsum: _ce_bwd16(xo, ro, j0, nb, mb, lb, sb, pb, tb, se,
                                                                                 w, wsum)


@_njit()
def cols_ce_bwd(x: np.ndarray, t: np.ndarray, m: np.ndarray, l1p: np.ndarray, s: np.ndarray, wt: np.ndarray,
                alive: np.ndarray, w: np.ndarray, eps: float, coef: float, g: np.ndarray, grad: np.ndarray, o0: int,
                o1: int, i0: int, i1: int) -> None:
    """``grad = scale (softmax(x) - onehot(t))`` over axis 1, ``scale = coef (1 - eps) wt`` per position (times ``g``
    (O, I) when it is not empty: ``reduction='none'``), plus the label smoothing's ``coef eps / C (W softmax(x) - w)``
    (``W = sum w``) where ``alive``; 0 where ignored; one rounding per entry (see :func:`_ce_grad_blk`)."""
    _, n_cls, _ = x.shape
    cb = _block(n_cls)
    sc = np.empty(cb)
    pm1 = np.empty(cb)
    sev = np.zeros(cb)
    per = g.size > 0
    weighted = w.size > 0
    wsum = 0.0
    if eps > 0.0:
        for c in range(n_cls):
            wsum += w[c] if weighted else 1.0
    for o in range(o0, o1):
        xo = x[o]
        ro = grad[o]
        for j0 in range(i0, i1, cb):
            nb = min(cb, i1 - j0)
            sb, pb, seb = sc[:nb], pm1[:nb], sev[:nb]
            wb, ssb = wt[o, j0 : j0 + nb], s[o, j0 : j0 + nb]
            for j in range(nb):
                sb[j] = coef * (1.0 - eps) * wb[j]
                pb[j] = -ssb[j] / (1.0 + ssb[j])
            if eps > 0.0:
                ab = alive[o, j0 : j0 + nb]
                for j in range(nb):
                    seb[j] = coef * (eps / n_cls) * ab[j]
            if per:
                gb = g[o, j0 : j0 + nb]
                for j in range(nb):
                    sb[j] *= gb[j]
                    seb[j] *= gb[j]
            mb, lb, tb = m[o, j0 : j0 + nb], l1p[o, j0 : j0 + nb], t[o, j0 : j0 + nb]
            _ce_bwd_block(xo, ro, j0, nb, mb, lb, sb, pb, tb, seb, w, wsum)
            if n_cls <= PICK_MAX:
                continue
            for j in range(nb):  # the targets' entries: p - 1 (see _ce_grad_blk)
                if sb[j] == 0.0 and seb[j] == 0.0:
                    continue
                k = tb[j]
                d = _load(xo[k, j0 + j]) - mb[j]
                e = _exp_f32out(d - lb[j])
                v = pb[j] if d == 0.0 else e - 1.0
                smooth = seb[j] * (wsum * e - (w[k] if weighted else 1.0)) if wsum != 0.0 else 0.0
                ro[k, j0 + j] = _encode(sb[j] * v + smooth, ro)


# -- class probabilities (soft labels, label smoothing: ``t' = (1 - eps) y + eps / C``) --------------------------
@_inline(_CONTRACT)
def _prob_sums_blk(seg: np.ndarray, yseg: np.ndarray, wc: float, omeps: float, eps_c: float, m: np.ndarray,
                   a: np.ndarray, b: np.ndarray) -> None:
    """``a += w_c t'_c`` and ``b += w_c t'_c (m - x_c)`` (>= 0, no cancellation; a zero ``w_c t'_c`` adds 0 even
    beside an ``x_c = -inf``, as the row kernels)."""
    for j in range(seg.size):
        tw = wc * (omeps * _load(yseg[j]) + eps_c)
        a[j] += tw
        b[j] += select(tw == 0.0, 0.0, tw * (m[j] - _load(seg[j])))


@_njit()
def cols_ce_prob_fwd(x: np.ndarray, y: np.ndarray, w: np.ndarray, eps: float, m: np.ndarray, l1p: np.ndarray,
                     s: np.ndarray, loss: np.ndarray, tw: np.ndarray, o0: int, o1: int, i0: int, i1: int) -> int:
    """Cross-entropy of class probabilities ``y`` (the layout of ``x``, (O, C, I)) over axis 1: per position ``m``,
    ``l1p = log1p(s)``, ``s``, ``tw = sum_c w_c t'_c`` and ``loss = tw l1p + sum_c w_c t'_c (m - x_c)``. Returns 0, or
    1 if a position has no finite max."""
    _, n_cls, _ = x.shape
    cb = _block(2 * n_cls)
    weighted = w.size > 0
    omeps, eps_c = 1.0 - eps, eps / n_cls
    bb = np.empty(cb)
    for o in range(o0, o1):
        xo, yo = x[o], y[o]
        for j0 in range(i0, i1, cb):
            nb = min(cb, i1 - j0)
            if not _position_stats(xo, o, j0, nb, m, s, l1p):
                return 1
            mb, lb = m[o, j0 : j0 + nb], l1p[o, j0 : j0 + nb]
            ab = tw[o, j0 : j0 + nb]
            ab[:] = 0.0
            bv = bb[:nb]
            bv[:] = 0.0
            for c in range(n_cls):
                _prob_sums_blk(xo[c, j0 : j0 + nb], yo[c, j0 : j0 + nb], w[c] if weighted else 1.0, omeps, eps_c, mb,
                               ab, bv)
            lo = loss[o, j0 : j0 + nb]
            for j in range(nb):
                lo[j] = ab[j] * lb[j] + bv[j]
    return 0


@_inline(_CONTRACT)
def _prob_grad_blk(seg: np.ndarray, yseg: np.ndarray, m: np.ndarray, l1p: np.ndarray, sa: np.ndarray,
                   sc: np.ndarray, wc: float, omeps: float, eps_c: float, grad: np.ndarray) -> None:
    for j in range(seg.size):
        p = _exp_f32out((_load(seg[j]) - m[j]) - l1p[j])
        grad[j] = _encode(sa[j] * p - sc[j] * (wc * (omeps * _load(yseg[j]) + eps_c)), grad)


@_njit()
def cols_ce_prob_bwd(x: np.ndarray, y: np.ndarray, w: np.ndarray, eps: float, m: np.ndarray, l1p: np.ndarray,
                     tw: np.ndarray, coef: float, g: np.ndarray, grad: np.ndarray, o0: int, o1: int, i0: int,
                     i1: int) -> None:
    """``grad = scale (tw softmax(x) - w t')`` over axis 1, ``scale = coef`` per position (times ``g`` (O, I) when it
    is not empty: ``reduction='none'``), one rounding per entry."""
    _, n_cls, _ = x.shape
    cb = _block(3 * n_cls)
    weighted = w.size > 0
    omeps, eps_c = 1.0 - eps, eps / n_cls
    sc = np.empty(cb)
    sa = np.empty(cb)
    per = g.size > 0
    for o in range(o0, o1):
        xo, yo, ro = x[o], y[o], grad[o]
        for j0 in range(i0, i1, cb):
            nb = min(cb, i1 - j0)
            scb, sab, twb = sc[:nb], sa[:nb], tw[o, j0 : j0 + nb]
            for j in range(nb):
                scb[j] = coef
            if per:
                gb = g[o, j0 : j0 + nb]
                for j in range(nb):
                    scb[j] *= gb[j]
            for j in range(nb):
                sab[j] = scb[j] * twb[j]
            mb, lb = m[o, j0 : j0 + nb], l1p[o, j0 : j0 + nb]
            for c in range(n_cls):
                _prob_grad_blk(xo[c, j0 : j0 + nb], yo[c, j0 : j0 + nb], mb, lb, sab, scb,
                               w[c] if weighted else 1.0, omeps, eps_c, ro[c, j0 : j0 + nb])


# -- entry points on raw pointers (``code`` and ``dims`` as :mod:`._numba_columns`'s) ---------------------------
@_njit()
def ptr_cols_ce_fwd(code: int, xa: int, t: np.ndarray, w: np.ndarray, ignore: int, has_ignore: bool, eps: float,
                    stats: np.ndarray, dims: tuple[int, int, int], o0: int, o1: int, i0: int, i1: int) -> int:
    """:func:`cols_ce_fwd` of int64 indices ``t`` (O, I); ``stats`` (5, O, I) float64 gets ``m``, ``l1p``, ``s``,
    ``loss`` and ``wt`` (6 with label smoothing: and ``alive``)."""
    alive = stats[5] if stats.shape[0] > 5 else stats[4]
    if code == 0:
        return cols_ce_fwd(carray(_voidptr(xa), dims, np.float32), t, w, ignore, has_ignore, eps, stats[0], stats[1],
                           stats[2], stats[3], stats[4], alive, o0, o1, i0, i1)
    if code == 1:
        return cols_ce_fwd(carray(_voidptr(xa), dims, np.int16), t, w, ignore, has_ignore, eps, stats[0], stats[1],
                           stats[2], stats[3], stats[4], alive, o0, o1, i0, i1)
    return cols_ce_fwd(carray(_voidptr(xa), dims, np.uint16), t, w, ignore, has_ignore, eps, stats[0], stats[1],
                       stats[2], stats[3], stats[4], alive, o0, o1, i0, i1)


@_njit()
def ptr_cols_ce_bwd(code: int, xa: int, t: np.ndarray, stats: np.ndarray, w: np.ndarray, eps: float, coef: float,
                    g: np.ndarray, gra: int, dims: tuple[int, int, int], o0: int, o1: int, i0: int, i1: int) -> None:
    """:func:`cols_ce_bwd` from the ``stats`` of :func:`ptr_cols_ce_fwd`, ``coef`` and ``g`` (O, I) float64 (empty
    but for ``reduction='none'``)."""
    alive = stats[5] if stats.shape[0] > 5 else stats[4]
    if code == 0:
        cols_ce_bwd(carray(_voidptr(xa), dims, np.float32), t, stats[0], stats[1], stats[2], stats[4], alive, w, eps,
                    coef, g, carray(_voidptr(gra), dims, np.float32), o0, o1, i0, i1)
    elif code == 1:
        cols_ce_bwd(carray(_voidptr(xa), dims, np.int16), t, stats[0], stats[1], stats[2], stats[4], alive, w, eps,
                    coef, g, carray(_voidptr(gra), dims, np.int16), o0, o1, i0, i1)
    else:
        cols_ce_bwd(carray(_voidptr(xa), dims, np.uint16), t, stats[0], stats[1], stats[2], stats[4], alive, w, eps,
                    coef, g, carray(_voidptr(gra), dims, np.uint16), o0, o1, i0, i1)


@_njit()
def ptr_cols_ce_prob_fwd(code: int, xa: int, ya: int, w: np.ndarray, eps: float, stats: np.ndarray,
                         dims: tuple[int, int, int], o0: int, o1: int, i0: int, i1: int) -> int:
    """:func:`cols_ce_prob_fwd` of probabilities at ``ya`` (the dtype and layout of ``x``); ``stats`` (5, O, I) gets
    ``m``, ``l1p``, ``s``, ``loss`` and ``tw``."""
    if code == 0:
        return cols_ce_prob_fwd(carray(_voidptr(xa), dims, np.float32), carray(_voidptr(ya), dims, np.float32), w,
                                eps, stats[0], stats[1], stats[2], stats[3], stats[4], o0, o1, i0, i1)
    if code == 1:
        return cols_ce_prob_fwd(carray(_voidptr(xa), dims, np.int16), carray(_voidptr(ya), dims, np.int16), w, eps,
                                stats[0], stats[1], stats[2], stats[3], stats[4], o0, o1, i0, i1)
    return cols_ce_prob_fwd(carray(_voidptr(xa), dims, np.uint16), carray(_voidptr(ya), dims, np.uint16), w, eps,
                            stats[0], stats[1], stats[2], stats[3], stats[4], o0, o1, i0, i1)


@_njit()
def ptr_cols_ce_prob_bwd(code: int, xa: int, ya: int, w: np.ndarray, eps: float, stats: np.ndarray, coef: float,
                         g: np.ndarray, gra: int, dims: tuple[int, int, int], o0: int, o1: int, i0: int,
                         i1: int) -> None:
    """:func:`cols_ce_prob_bwd` from the ``stats`` of :func:`ptr_cols_ce_prob_fwd`."""
    if code == 0:
        cols_ce_prob_bwd(carray(_voidptr(xa), dims, np.float32), carray(_voidptr(ya), dims, np.float32), w, eps,
                         stats[0], stats[1], stats[4], coef, g, carray(_voidptr(gra), dims, np.float32), o0, o1, i0,
                         i1)
    elif code == 1:
        cols_ce_prob_bwd(carray(_voidptr(xa), dims, np.int16), carray(_voidptr(ya), dims, np.int16), w, eps,
                         stats[0], stats[1], stats[4], coef, g, carray(_voidptr(gra), dims, np.int16), o0, o1, i0, i1)
    else:
        cols_ce_prob_bwd(carray(_voidptr(xa), dims, np.uint16), carray(_voidptr(ya), dims, np.uint16), w, eps,
                         stats[0], stats[1], stats[4], coef, g, carray(_voidptr(gra), dims, np.uint16), o0, o1, i0,
                         i1)
