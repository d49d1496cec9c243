"""The cross-entropy kernels as work for PyTorch's OpenMP team: C callbacks, as :mod:`._numba_team`'s.

Each callback claims chunks of rows (:func:`._numba_team.claim_rows`) and runs the kernel the thread pool of
:func:`._torch_rows.run_rows` runs on the same rows, on arrays made from the addresses in ``data`` (``carray``;
the same array types as the pool's NumPy views, so the kernels are the ones compiled for it). A kernel's own
result for a chunk (its first bad target, its sums) goes to row ``i`` of an ``outs`` array for chunk ``i``, which
the caller combines in chunk order, as it combines the pool's.

``data`` is int64: ``[counter, chunks, ...]`` then the arguments each callback's docstring lists; the float
arguments (``eps``, ``gs``, ``cap``) are stored as float64 bits (:func:`._torch_rows.team_run`), and ``code`` is
the storage dtype of the rows (0 float32, 1 bfloat16 bits, 3 float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._numba_bits import AVAILABLE, _voidptr, carray
from ._numba_ce import ce_index_backward, ce_index_forward, ce_prob_backward, ce_prob_forward
from ._numba_ce_fused import ce_index_forward_grad, ce_prob_forward_grad
from ._numba_ce_plain import ce_plain_backward, ce_plain_forward, ce_plain_forward_grad, ce_plain_scale_rows

if AVAILABLE:
    import numba

    from ._numba_team import callback, claim_rows, entries_at, rows_at

    @numba.njit(inline="always")
    def _res(addr: int, k: int, r: int, r0: int, r1: int) -> Any:
        """Entries ``[r0, r1)`` of row ``k`` of the float64 ``(5, r)`` residuals at ``addr``."""
        return entries_at(addr, k * r + r0, k * r + r1, np.float64)

    @numba.njit(inline="always")
    def _part(addr: int, size: int, r0: int, r1: int) -> Any:
        """The chunk's part of a float64 per-row vector of ``size`` entries: its rows, or all of it when it has one
        entry for every row (or none)."""
        return entries_at(addr, 0, size, np.float64) if size <= 1 else entries_at(addr, r0, r1, np.float64)

    @numba.njit(inline="always")
    def _plain_fwd(x: Any, a: Any, f: Any, res: Any, r0: int, r1: int, dt: Any) -> Any:
        t, w = entries_at(a[4], r0, r1, np.int64), entries_at(a[5], 0, a[6], np.float64)
        if a[12] != 0:
            return ce_plain_forward_grad(x, t, w, a[9], a[10] != 0, res, f[14], rows_at(a[12], r0, r1, a[8], dt))
        return ce_plain_forward(x, t, w, a[9], a[10] != 0, res)

    @callback
    def team_ce_plain_fwd(data: Any) -> None:
        """``[counter, chunks, code, x, target, w, w size, r, n, ignore, has ignore, res, grad, outs, gs]``:
        :func:`ce_plain_forward` (``grad = 0``) or :func:`ce_plain_forward_grad` (float32 and bfloat16) of the
        rows ``x``, int64 ``target``, float64 class weights ``w``, into ``res`` (float64 ``(5, r)``) and
        ``grad``; chunk ``i``'s ``(bad row or -1, total, count)`` into ``outs[i]`` (float64 ``(chunks, 3)``)."""
        a = carray(data, (15,), np.int64)
        f = carray(data, (15,), np.float64)
        r, n = a[7], a[8]
        res = carray(_voidptr(a[11]), (5, r), np.float64)
        outs = carray(_voidptr(a[13]), (a[1], 3), np.float64)
        i, r0, r1 = claim_rows(data, a[1], r)
        while i >= 0:
            rs = res[:, r0:r1]
            if a[2] == 0:
                b, tot, cnt = _plain_fwd(rows_at(a[3], r0, r1, n, np.float32), a, f, rs, r0, r1, np.float32)
            elif a[2] == 1:
                b, tot, cnt = _plain_fwd(rows_at(a[3], r0, r1, n, np.int16), a, f, rs, r0, r1, np.int16)
            else:
                b, tot, cnt = ce_plain_forward(rows_at(a[3], r0, r1, n, np.float64), entries_at(a[4], r0, r1, np.int64),
                                               entries_at(a[5], 0, a[6], np.float64), a[9], a[10] != 0, rs)
            outs[i, 0] = b + r0 if b >= 0 else b
            outs[i, 1] = tot
            outs[i, 2] = cnt
            i, r0, r1 = claim_rows(data, a[1], r)

    @callback
    def team_ce_plain_bwd(data: Any) -> None:
        """``[counter, chunks, code, x, target, g, g size, res, out, r, n, gs]``: :func:`ce_plain_backward` of the
        rows ``x`` into ``out`` (of their dtype), ``g`` float64 (one entry per row, or none)."""
        a = carray(data, (12,), np.int64)
        f = carray(data, (12,), np.float64)
        r, n = a[9], a[10]
        res = carray(_voidptr(a[7]), (5, r), np.float64)
        i, r0, r1 = claim_rows(data, a[1], r)
        while i >= 0:
            t, rs, g = entries_at(a[4], r0, r1, np.int64), res[:, r0:r1], _part(a[5], a[6], r0, r1)
            if a[2] == 0:
                ce_plain_backward(rows_at(a[3], r0, r1, n, np.float32), t, f[11], g, rs,
                                  rows_at(a[8], r0, r1, n, np.float32))
            elif a[2] == 1:
                ce_plain_backward(rows_at(a[3], r0, r1, n, np.int16), t, f[11], g, rs,
                                  rows_at(a[8], r0, r1, n, np.int16))
            else:
                ce_plain_backward(rows_at(a[3], r0, r1, n, np.float64), t, f[11], g, rs,
                                  rows_at(a[8], r0, r1, n, np.float64))
            i, r0, r1 = claim_rows(data, a[1], r)

    @numba.njit(inline="always")
    def _scale(grad: Any, a: Any, res: Any, r0: int, r1: int) -> None:
        if a[5] == 0:
            ce_plain_scale_rows(grad, entries_at(a[4], r0, r1, np.float32), res)
        else:
            ce_plain_scale_rows(grad, entries_at(a[4], r0, r1, np.float64), res)

    @callback
    def team_ce_scale_rows(data: Any) -> None:
        """``[counter, chunks, code, grad, g, g code, res, r, n]``: :func:`ce_plain_scale_rows` of the rows ``grad``
        (float32 or bfloat16 bits), ``g`` float32 (``g code`` 0) or float64 (3), one entry per row."""
        a = carray(data, (9,), np.int64)
        r, n = a[7], a[8]
        res = carray(_voidptr(a[6]), (5, r), np.float64)
        i, r0, r1 = claim_rows(data, a[1], r)
        while i >= 0:
            if a[2] == 0:
                _scale(rows_at(a[3], r0, r1, n, np.float32), a, res[:, r0:r1], r0, r1)
            else:
                _scale(rows_at(a[3], r0, r1, n, np.int16), a, res[:, r0:r1], r0, r1)
            i, r0, r1 = claim_rows(data, a[1], r)

    @numba.njit(inline="always")
    def _fwd(x: Any, a: Any, f: Any, r0: int, r1: int, dt: Any) -> int:
        """One chunk of :func:`team_ce_fwd` on rows ``x`` of ``dt``; the first bad target's row, or -1."""
        kind, r, n, ign, has = a[3], a[7], a[8], a[9], a[10] != 0
        w = entries_at(a[5], 0, a[6], np.float64)
        weighted = w.size > 0
        loss, m, lg = _res(a[11], 0, r, r0, r1), _res(a[11], 1, r, r0, r1), _res(a[11], 2, r, r0, r1)
        coef, alive = _res(a[11], 3, r, r0, r1), _res(a[11], 4, r, r0, r1)
        t = entries_at(a[4], r0, r1, np.int64)
        if kind == 0:
            return ce_index_forward(x, t, w, weighted, ign, has, f[13], f[15], loss, m, lg, coef, alive)
        if kind == 1:
            ce_index_forward_grad(x, t, w, weighted, ign, has, f[13], f[14], loss, m, lg, coef, alive,
                                  rows_at(a[12], r0, r1, n, dt))
        elif kind == 2:
            ce_prob_forward(x, rows_at(a[4], r0, r1, n, dt), w, weighted, f[13], f[15], loss, m, lg, coef, alive)
        else:
            ce_prob_forward_grad(x, rows_at(a[4], r0, r1, n, dt), w, weighted, f[13], f[14], loss, m, lg, coef, alive,
                                 rows_at(a[12], r0, r1, n, dt))
        return -1

    @callback
    def team_ce_fwd(data: Any) -> None:
        """``[counter, chunks, code, kind, target, w, w size, r, n, ignore, has ignore, res, grad, eps, gs, cap,
        outs, x]``: ``kind`` 0 :func:`ce_index_forward`, 1 :func:`ce_index_forward_grad`, 2 :func:`ce_prob_forward`,
        3 :func:`ce_prob_forward_grad` (grad: float32 and bfloat16) of the rows ``x`` (int64 ``target``, or
        probabilities of the rows' dtype), into the rows of ``res`` (float64 ``(5, r)``: loss, ``m``,
        ``log1p(s)``, coefficient, alive) and ``grad``; chunk ``i``'s first bad row (or -1) into ``outs[i]``
        (float64 ``(chunks,)``)."""
        a = carray(data, (18,), np.int64)
        f = carray(data, (18,), np.float64)
        r, n = a[7], a[8]
        outs = carray(_voidptr(a[16]), (a[1],), np.float64)
        i, r0, r1 = claim_rows(data, a[1], r)
        while i >= 0:
            if a[2] == 0:
                b = _fwd(rows_at(a[17], r0, r1, n, np.float32), a, f, r0, r1, np.float32)
            elif a[2] == 1:
                b = _fwd(rows_at(a[17], r0, r1, n, np.int16), a, f, r0, r1, np.int16)
            else:
                b = _fwd(rows_at(a[17], r0, r1, n, np.float64), a, f, r0, r1, np.float64)
            outs[i] = b + r0 if b >= 0 else b
            i, r0, r1 = claim_rows(data, a[1], r)

    @numba.njit(inline="always")
    def _bwd(x: Any, a: Any, f: Any, r0: int, r1: int, dt: Any) -> None:
        n = a[8]
        w = entries_at(a[5], 0, a[6], np.float64)
        g, zg = _part(a[9], a[10], r0, r1), _part(a[14], a[16], r0, r1)
        m, lg = entries_at(a[11], r0, r1, np.float64), entries_at(a[18], r0, r1, np.float64)
        coef, alive = entries_at(a[19], r0, r1, np.float64), entries_at(a[20], r0, r1, np.float64)
        out = rows_at(a[12], r0, r1, n, dt)
        if a[3] == 0:
            t = entries_at(a[4], r0, r1, np.int64)
            ce_index_backward(x, t, w, w.size > 0, f[13], f[15], g, zg, m, lg, coef, alive, out)
        else:
            ce_prob_backward(x, rows_at(a[4], r0, r1, n, dt), w, w.size > 0, f[13], f[15], g, zg, m, lg, coef, alive,
                             out)

    @callback
    def team_ce_bwd(data: Any) -> None:
        """``[counter, chunks, code, kind, target, w, w size, r, n, g, g size, m, out, eps, zg, cap, zg size, x, lg,
        coef, alive]``: ``kind`` 0 :func:`ce_index_backward`, 1 :func:`ce_prob_backward` of the rows ``x`` into
        ``out`` (of their dtype) from the forward's per-row ``m``, ``log1p(s)``, coefficient and alive flag
        (float64); ``g`` and ``zg`` float64 (one entry per row, one for all, or none)."""
        a = carray(data, (21,), np.int64)
        f = carray(data, (21,), np.float64)
        r, n = a[7], a[8]
        i, r0, r1 = claim_rows(data, a[1], r)
        while i >= 0:
            if a[2] == 0:
                _bwd(rows_at(a[17], r0, r1, n, np.float32), a, f, r0, r1, np.float32)
            elif a[2] == 1:
                _bwd(rows_at(a[17], r0, r1, n, np.int16), a, f, r0, r1, np.int16)
            else:
                _bwd(rows_at(a[17], r0, r1, n, np.float64), a, f, r0, r1, np.float64)
            i, r0, r1 = claim_rows(data, a[1], r)

    CALLBACKS = {"ce_plain_fwd": team_ce_plain_fwd.address, "ce_plain_bwd": team_ce_plain_bwd.address,
                 "ce_fwd": team_ce_fwd.address, "ce_bwd": team_ce_bwd.address,
                 "ce_scale_rows": team_ce_scale_rows.address}
else:  # without numba there are no kernels to run
    CALLBACKS = {}

__all__ = ["CALLBACKS"]
