"""The elementwise kernels and the BCE's as work for PyTorch's OpenMP team: C callbacks, as :mod:`._numba_team`'s.

:func:`team_flat` runs softplus, log_sigmoid, log1mexp and logaddexp (forward and backward) on chunks of the flat
elements, :func:`team_bce` the BCE from logits on chunks of rows; each calls the kernel the thread pool of
:func:`._torch_rows.run_rows` calls on the same part, on arrays made from the addresses in ``data`` (``carray``: the
pool's array types). An element (a row, for the BCE) is computed alike whatever chunk holds it: the bits are those of
one thread (the BCE's sum too: each chunk returns its compensated pair, which the caller adds with ``math.fsum``).

``data`` is int64: ``[counter, chunks, code, ...]`` then the arguments each callback's docstring lists, a float
argument as its float64 bits (:func:`._torch_rows.team_run`); ``code`` is the storage dtype (0 float32, 1 bfloat16
bits, 3 float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._numba_bits import AVAILABLE, _voidptr, carray
from ._numba_elementwise import (
    FLAT_BLOCK,
    bce_backward,
    bce_forward,
    bce_forward_grad,
    logaddexp_backward,
    logaddexp_forward,
    unary_backward,
    unary_forward,
)

if AVAILABLE:
    import numba

    from ._numba_team import callback, claim_rows, entries_at, rows_at

    @numba.njit(inline="always")
    def _flat_chunk(a: Any, r0: int, r1: int, dt: Any) -> None:
        kind, op = a[3], a[4]
        x, out = entries_at(a[5], r0, r1, dt), entries_at(a[8], r0, r1, dt)
        g = entries_at(a[7], 0, 1, dt) if a[11] == 1 else entries_at(a[7], r0, r1, dt)
        if kind == 0:
            unary_forward(x, out, op)
        elif kind == 1:
            unary_backward(x, g, out, op)
        elif kind == 2:
            logaddexp_forward(x, entries_at(a[6], r0, r1, dt), out)
        else:
            logaddexp_backward(x, entries_at(a[6], r0, r1, dt), g, out, entries_at(a[9], r0, r1, dt))

    @callback
    def team_flat(data: Any) -> None:
        """``[counter, chunks, code, kind, op, x, b, g, out, out2, size, g size]``, in chunks of whole blocks of
        ``FLAT_BLOCK`` elements (``chunks`` at most their number): ``kind`` 0 :func:`unary_forward`
        (``op`` 0 softplus, 1 log_sigmoid, 2 log1mexp) of ``x`` into ``out``, 1 :func:`unary_backward` (``g``: one
        entry for all, or ``size``), 2 :func:`logaddexp_forward` of ``x`` and ``b``, 3 :func:`logaddexp_backward`
        into ``out`` and ``out2``; every array of the storage dtype, ``size`` elements."""
        a = carray(data, (12,), np.int64)
        size = a[10]
        blocks = (size + FLAT_BLOCK - 1) // FLAT_BLOCK  # chunks of whole blocks (``chunks <= blocks``)
        _, b0, b1 = claim_rows(data, a[1], blocks)
        while b0 >= 0:
            r0, r1 = b0 * FLAT_BLOCK, min(b1 * FLAT_BLOCK, size)
            if a[2] == 0:
                _flat_chunk(a, r0, r1, np.float32)
            elif a[2] == 1:
                _flat_chunk(a, r0, r1, np.int16)
            else:
                _flat_chunk(a, r0, r1, np.float64)
            _, b0, b1 = claim_rows(data, a[1], blocks)

    @numba.njit(inline="always")
    def _coef(addr: int, rows: int, r0: int, r1: int, n: int) -> Any:
        """The chunk's part of float64 coefficients of ``rows`` rows: ``(0, 0)`` (none) or ``(1, n)`` whole, else its
        rows (as the pool passes them)."""
        if rows <= 1:
            return carray(_voidptr(addr), (rows, n if rows else 0), np.float64)
        return rows_at(addr, r0, r1, n, np.float64)

    @numba.njit(inline="always")
    def _bce_chunk(a: Any, f: Any, r0: int, r1: int, dt: Any) -> tuple[float, float]:
        kind, n = a[3], a[15]
        x, y = rows_at(a[4], r0, r1, n, dt), rows_at(a[5], r0, r1, n, dt)
        if kind == 1:
            return bce_forward_grad(x, y, f[18], rows_at(a[14], r0, r1, n, dt))
        w, pw = _coef(a[6], a[7], r0, r1, n), _coef(a[8], a[9], r0, r1, n)
        if kind == 0:
            store = a[11] != 0
            out = rows_at(a[10], r0, r1, n, np.float64) if store else carray(_voidptr(a[10]), (0, 0), np.float64)
            return bce_forward(x, y, w, pw, out, store)
        g = _coef(a[12], a[13], r0, r1, n) if a[13] > 1 else carray(_voidptr(a[12]), (1, 1), np.float64)
        bce_backward(x, y, w, pw, g, rows_at(a[14], r0, r1, n, dt), f[18])
        return 0.0, 0.0

    @callback
    def team_bce(data: Any) -> None:
        """``[counter, chunks, code, kind, x, y, w, w rows, pw, pw rows, out, store, g, g rows, grad, n, r, outs, f]``
        over rows ``(r, n)`` of ``x`` and ``y`` (the storage dtype): ``kind`` 0 :func:`bce_forward` (the elements into
        float64 ``out`` with ``store``), 1 :func:`bce_forward_grad` (the gradient into ``grad``, ``f = gs``), 2
        :func:`bce_backward` (into ``grad``, ``g`` float64 ``(r, n)`` or one entry, ``f = div``); ``w`` and ``pw``
        float64 coefficients of ``0``, ``1`` or ``r`` rows; chunk ``i``'s sum, the kernel's compensated pair, into
        ``outs[i]`` (float64 ``(chunks, 2)``)."""
        a = carray(data, (19,), np.int64)
        f = carray(data, (19,), np.float64)
        outs = carray(_voidptr(a[17]), (a[1], 2), np.float64)
        i, r0, r1 = claim_rows(data, a[1], a[16])
        while i >= 0:
            if a[2] == 0:
                outs[i, 0], outs[i, 1] = _bce_chunk(a, f, r0, r1, np.float32)
            elif a[2] == 1:
                outs[i, 0], outs[i, 1] = _bce_chunk(a, f, r0, r1, np.int16)
            else:
                outs[i, 0], outs[i, 1] = _bce_chunk(a, f, r0, r1, np.float64)
            i, r0, r1 = claim_rows(data, a[1], a[16])

    CALLBACKS = {"flat": team_flat.address, "bce": team_bce.address}
else:  # without numba there are no kernels to run
    CALLBACKS = {}

__all__ = ["CALLBACKS"]
