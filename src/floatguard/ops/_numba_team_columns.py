"""The column kernels (softmax, log_softmax, logsumexp, cross-entropy over a middle axis) on torch's OpenMP team.

C callbacks as :mod:`._numba_team`'s, over the ``(O, I)`` positions of an ``(O, C, I)`` tensor read where it lies
(:mod:`._torch_columns`): the work is cut into ``units``, ``k`` pieces of the ``I`` positions of each ``o`` (unit ``u``
is piece ``u % k`` of ``o = u // k``; ``k = 1``, whole ``o``, unless ``O`` is too small to keep every thread busy);
the threads claim chunks of units (:func:`._numba_team.claim_rows`) and run the ``ptr_cols_*`` entry kernel
on each. A position is never split, so the bits are those of one thread.

``data`` is int64: ``[counter, chunks, code, ...]`` then the arguments each callback's docstring lists; ``code`` is
the columns' storage code (0 float32, 1 bfloat16, 2 float16); a float argument is stored as its float64 bits
(:func:`._torch_rows.team_run`). The cross-entropy's arrays: class indices ``t`` int64 ``(O, I)``, class weights
``w`` float64 ``(w size,)``, the statistics float64 ``(n stats, O, I)``, the upstream gradient float64 ``(O, I)``
(``g size`` ``O I``) or none (``(0, 0)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._numba_bits import AVAILABLE, _voidptr, carray
from ._numba_columns import (
    ptr_cols_ce_bwd,
    ptr_cols_ce_fwd,
    ptr_cols_ce_prob_bwd,
    ptr_cols_ce_prob_fwd,
    ptr_cols_logsumexp,
    ptr_cols_logsumexp_bwd,
    ptr_cols_softmax,
    ptr_cols_softmax_bwd,
)

if AVAILABLE:
    import numba

    from ._numba_team import callback, claim_rows

    @numba.njit(inline="always")
    def _span(u: int, k: int, n_in: int) -> tuple[int, int, int, int]:
        """``(o0, o1, i0, i1)`` of unit ``u``: piece ``u % k`` of the positions of ``o = u // k``."""
        o, q = u // k, u % k
        return o, o + 1, n_in * q // k, n_in * (q + 1) // k

    @callback
    def team_cols_softmax_fwd(data: Any) -> None:
        """``[counter, chunks, code, x, out, O, C, I, log, k, units, ok]``: :func:`ptr_cols_softmax`; ``ok`` set to 0
        when a position has no finite max."""
        a = carray(data, (12,), np.int64)
        dims = (a[5], a[6], a[7])
        _, u0, u1 = claim_rows(data, a[1], a[10])
        while u0 >= 0:
            for u in range(u0, u1):
                o0, o1, i0, i1 = _span(u, a[9], a[7])
                if not ptr_cols_softmax(a[2], a[3], a[4], dims, a[8] != 0, o0, o1, i0, i1):
                    a[11] = 0
            _, u0, u1 = claim_rows(data, a[1], a[10])

    @callback
    def team_cols_softmax_bwd(data: Any) -> None:
        """``[counter, chunks, code, out, g, grad, O, C, I, log, k, units]``: :func:`ptr_cols_softmax_bwd`."""
        a = carray(data, (12,), np.int64)
        dims = (a[6], a[7], a[8])
        _, u0, u1 = claim_rows(data, a[1], a[11])
        while u0 >= 0:
            for u in range(u0, u1):
                o0, o1, i0, i1 = _span(u, a[10], a[8])
                ptr_cols_softmax_bwd(a[2], a[3], a[4], a[5], dims, a[9] != 0, o0, o1, i0, i1)
            _, u0, u1 = claim_rows(data, a[1], a[11])

    @callback
    def team_cols_logsumexp_fwd(data: Any) -> None:
        """``[counter, chunks, code, x, lse, O, C, I, k, units, ok]``: :func:`ptr_cols_logsumexp` into float64 ``lse``
        ``(O, I)``; ``ok`` set to 0 when a position has no finite max."""
        a = carray(data, (11,), np.int64)
        dims = (a[5], a[6], a[7])
        lse = carray(_voidptr(a[4]), (a[5], a[7]), np.float64)
        _, u0, u1 = claim_rows(data, a[1], a[9])
        while u0 >= 0:
            for u in range(u0, u1):
                o0, o1, i0, i1 = _span(u, a[8], a[7])
                if not ptr_cols_logsumexp(a[2], a[3], lse, dims, o0, o1, i0, i1):
                    a[10] = 0
            _, u0, u1 = claim_rows(data, a[1], a[9])

    @callback
    def team_cols_logsumexp_bwd(data: Any) -> None:
        """``[counter, chunks, code, x, lse, g, grad, O, C, I, k, units]``: :func:`ptr_cols_logsumexp_bwd`, float64
        ``lse`` and ``g`` ``(O, I)``."""
        a = carray(data, (12,), np.int64)
        dims = (a[7], a[8], a[9])
        lse = carray(_voidptr(a[4]), (a[7], a[9]), np.float64)
        g = carray(_voidptr(a[5]), (a[7], a[9]), np.float64)
        _, u0, u1 = claim_rows(data, a[1], a[11])
        while u0 >= 0:
            for u in range(u0, u1):
                o0, o1, i0, i1 = _span(u, a[10], a[9])
                ptr_cols_logsumexp_bwd(a[2], a[3], lse, g, a[6], dims, o0, o1, i0, i1)
            _, u0, u1 = claim_rows(data, a[1], a[11])

    @numba.njit(inline="always")
    def _arr2(addr: int, rows: int, cols: int, dt: Any) -> Any:
        return carray(_voidptr(addr), (rows, cols), dt)

    @callback
    def team_cols_ce_fwd(data: Any) -> None:
        """``[counter, chunks, code, x, t, w, w size, ignore, has ignore, eps, stats, n stats, O, C, I, k, units,
        status]``: :func:`ptr_cols_ce_fwd`; ``status`` set to a unit's nonzero status (a position with no finite max,
        a class index out of range)."""
        a = carray(data, (18,), np.int64)
        f = carray(data, (18,), np.float64)
        dims = (a[12], a[13], a[14])
        t = _arr2(a[4], a[12], a[14], np.int64)
        w = carray(_voidptr(a[5]), (a[6],), np.float64)
        stats = carray(_voidptr(a[10]), (a[11], a[12], a[14]), np.float64)
        _, u0, u1 = claim_rows(data, a[1], a[16])
        while u0 >= 0:
            for u in range(u0, u1):
                o0, o1, i0, i1 = _span(u, a[15], a[14])
                st = ptr_cols_ce_fwd(a[2], a[3], t, w, a[7], a[8] != 0, f[9], stats, dims, o0, o1, i0, i1)
                if st:
                    a[17] = st
            _, u0, u1 = claim_rows(data, a[1], a[16])

    @callback
    def team_cols_ce_bwd(data: Any) -> None:
        """``[counter, chunks, code, x, t, stats, n stats, w, w size, eps, coef, g, g size, grad, O, C, I, k, units]``:
        :func:`ptr_cols_ce_bwd`."""
        a = carray(data, (19,), np.int64)
        f = carray(data, (19,), np.float64)
        dims = (a[14], a[15], a[16])
        t = _arr2(a[4], a[14], a[16], np.int64)
        stats = carray(_voidptr(a[5]), (a[6], a[14], a[16]), np.float64)
        w = carray(_voidptr(a[7]), (a[8],), np.float64)
        g = _arr2(a[11], a[14], a[16], np.float64) if a[12] else _arr2(a[11], 0, 0, np.float64)
        _, u0, u1 = claim_rows(data, a[1], a[18])
        while u0 >= 0:
            for u in range(u0, u1):
                o0, o1, i0, i1 = _span(u, a[17], a[16])
                ptr_cols_ce_bwd(a[2], a[3], t, stats, w, f[9], f[10], g, a[13], dims, o0, o1, i0, i1)
            _, u0, u1 = claim_rows(data, a[1], a[18])

    @callback
    def team_cols_ce_prob_fwd(data: Any) -> None:
        """``[counter, chunks, code, x, y, w, w size, eps, stats, O, C, I, k, units, status]``:
        :func:`ptr_cols_ce_prob_fwd` (``y`` probabilities of the dtype and layout of ``x``, five statistics)."""
        a = carray(data, (15,), np.int64)
        f = carray(data, (15,), np.float64)
        dims = (a[9], a[10], a[11])
        w = carray(_voidptr(a[5]), (a[6],), np.float64)
        stats = carray(_voidptr(a[8]), (5, a[9], a[11]), np.float64)
        _, u0, u1 = claim_rows(data, a[1], a[13])
        while u0 >= 0:
            for u in range(u0, u1):
                o0, o1, i0, i1 = _span(u, a[12], a[11])
                st = ptr_cols_ce_prob_fwd(a[2], a[3], a[4], w, f[7], stats, dims, o0, o1, i0, i1)
                if st:
                    a[14] = st
            _, u0, u1 = claim_rows(data, a[1], a[13])

    @callback
    def team_cols_ce_prob_bwd(data: Any) -> None:
        """``[counter, chunks, code, x, y, w, w size, eps, stats, coef, g, g size, grad, O, C, I, k, units]``:
        :func:`ptr_cols_ce_prob_bwd`."""
        a = carray(data, (18,), np.int64)
        f = carray(data, (18,), np.float64)
        dims = (a[13], a[14], a[15])
        w = carray(_voidptr(a[5]), (a[6],), np.float64)
        stats = carray(_voidptr(a[8]), (5, a[13], a[15]), np.float64)
        g = _arr2(a[10], a[13], a[15], np.float64) if a[11] else _arr2(a[10], 0, 0, np.float64)
        _, u0, u1 = claim_rows(data, a[1], a[17])
        while u0 >= 0:
            for u in range(u0, u1):
                o0, o1, i0, i1 = _span(u, a[16], a[15])
                ptr_cols_ce_prob_bwd(a[2], a[3], a[4], w, f[7], stats, f[9], g, a[12], dims, o0, o1, i0, i1)
            _, u0, u1 = claim_rows(data, a[1], a[17])

    CALLBACKS = {"cols_softmax_fwd": team_cols_softmax_fwd.address, "cols_softmax_bwd": team_cols_softmax_bwd.address,
                 "cols_logsumexp_fwd": team_cols_logsumexp_fwd.address,
                 "cols_logsumexp_bwd": team_cols_logsumexp_bwd.address, "cols_ce_fwd": team_cols_ce_fwd.address,
                 "cols_ce_bwd": team_cols_ce_bwd.address, "cols_ce_prob_fwd": team_cols_ce_prob_fwd.address,
                 "cols_ce_prob_bwd": team_cols_ce_prob_bwd.address}
else:  # without numba there are no kernels to run
    CALLBACKS = {}

__all__ = ["CALLBACKS"]
