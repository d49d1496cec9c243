"""The row kernels of softmax, log_softmax and logsumexp as work for PyTorch's OpenMP team: C callbacks.

``GOMP_parallel(fn, data, k, 0)`` of the OpenMP runtime PyTorch loaded (:func:`._torch_rows.openmp_team`) runs
``fn(data)`` on each of ``k`` threads of torch's own team, the caller among them: the threads of torch's parallel
loops, which spin for a while after each (libgomp's default wait policy), take the work at once, where threads
of floatguard's own pool had to be woken (80-140 us a hand-off on a 2-core VM) and then shared a core with a
spinning OpenMP worker (half speed). Each ``fn`` here is a numba ``cfunc``: the threads claim chunks of rows
from a counter in ``data`` (an atomic add: no GIL, no lock) and run the entry kernel of :mod:`._numba_torch` on
the chunk's first row. A row is never split: the bits are those of one thread.

``data`` is an int64 array: ``[counter, chunks, code, ...]`` then the kernel's addresses and sizes, as each
callback's docstring lists; ``code`` is the storage dtype (0 float32, 1 bfloat16, 2 float16, 3 float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._numba_bits import AVAILABLE, _voidptr, carray, intrinsic
from ._numba_torch import ptr_logsumexp_bwd, ptr_logsumexp_fwd, ptr_softmax_bwd, ptr_softmax_fwd

if AVAILABLE:
    import numba
    from llvmlite import ir
    from numba import types

    @intrinsic
    def _claim(typingctx: Any, data: Any) -> Any:
        """The next chunk: an atomic ``fetch_add(data[0], 1)`` on the int64 counter at the start of ``data``."""

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            ptr = builder.bitcast(args[0], ir.IntType(64).as_pointer())
            return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "monotonic")

        return types.int64(types.voidptr), codegen

    callback = numba.cfunc(types.void(types.voidptr), cache=True, error_model="numpy")  # ``fn(data)`` of GOMP_parallel

    @numba.njit(inline="always")
    def claim_rows(data: Any, chunks: int, r: int) -> tuple[int, int, int]:
        """``(i, r0, r1)``: the next unclaimed chunk ``i`` of ``chunks`` over ``r`` rows and its rows ``[r0, r1)``
        (never empty: ``chunks <= r``), or ``(-1, -1, -1)`` when every chunk is claimed."""
        i = _claim(data)
        if i >= chunks:
            return -1, -1, -1
        return i, r * i // chunks, r * (i + 1) // chunks

    @numba.njit(inline="always")
    def _next(data: Any, chunks: int, r: int) -> tuple[int, int]:
        """The rows ``[r0, r1)`` of the next unclaimed chunk (:func:`claim_rows`), ``(-1, -1)`` when none is left."""
        _, r0, r1 = claim_rows(data, chunks, r)
        return r0, r1

    @numba.njit(inline="always")
    def rows_at(addr: int, r0: int, r1: int, n: int, dt: Any) -> Any:
        """Rows ``[r0, r1)`` of the C-contiguous ``(R, n)`` array of ``dt`` at ``addr``."""
        size = carray(_voidptr(addr), (1,), dt).itemsize
        return carray(_voidptr(addr + r0 * n * size), (r1 - r0, n), dt)

    @numba.njit(inline="always")
    def entries_at(addr: int, r0: int, r1: int, dt: Any) -> Any:
        """Entries ``[r0, r1)`` of the contiguous vector of ``dt`` at ``addr``."""
        size = carray(_voidptr(addr), (1,), dt).itemsize
        return carray(_voidptr(addr + r0 * size), (r1 - r0,), dt)

    @numba.njit(inline="always")
    def _itemsize(code: int) -> int:
        return 4 if code == 0 else (8 if code == 3 else 2)

    @callback
    def team_softmax_fwd(data: Any) -> None:
        """``[counter, chunks, code, x, out, flags, r, n, log, ok]``: :func:`ptr_softmax_fwd`; ``ok`` set to 0 when a
        chunk has a row with no finite max."""
        a = carray(data, (10,), np.int64)
        step = a[7] * _itemsize(a[2])
        r0, r1 = _next(data, a[1], a[6])
        while r0 >= 0:
            if not ptr_softmax_fwd(a[2], a[3] + r0 * step, a[4] + r0 * step, a[5] + r0, r1 - r0, a[7], a[8] != 0):
                a[9] = 0
            r0, r1 = _next(data, a[1], a[6])

    @callback
    def team_softmax_bwd(data: Any) -> None:
        """``[counter, chunks, code, out, g, finite, nf, grad, r, n, log]``: :func:`ptr_softmax_bwd` (``finite``: one
        flag per row, or ``nf = 1`` for all)."""
        a = carray(data, (11,), np.int64)
        step = a[9] * _itemsize(a[2])
        one = a[6] == 1
        r0, r1 = _next(data, a[1], a[8])
        while r0 >= 0:
            ptr_softmax_bwd(a[2], a[3] + r0 * step, a[4] + r0 * step, a[5] + (0 if one else r0), 1 if one else r1 - r0,
                            a[7] + r0 * step, r1 - r0, a[9], a[10] != 0)
            r0, r1 = _next(data, a[1], a[8])

    @callback
    def team_logsumexp_fwd(data: Any) -> None:
        """``[counter, chunks, code, x, lse, r, n]``: :func:`ptr_logsumexp_fwd` (``lse`` float64)."""
        a = carray(data, (7,), np.int64)
        step = a[6] * _itemsize(a[2])
        r0, r1 = _next(data, a[1], a[5])
        while r0 >= 0:
            ptr_logsumexp_fwd(a[2], a[3] + r0 * step, a[4] + 8 * r0, r1 - r0, a[6])
            r0, r1 = _next(data, a[1], a[5])

    @callback
    def team_logsumexp_bwd(data: Any) -> None:
        """``[counter, chunks, code, x, lse, g, grad, r, n]``: :func:`ptr_logsumexp_bwd` (``lse``, ``g`` float64)."""
        a = carray(data, (9,), np.int64)
        step = a[8] * _itemsize(a[2])
        r0, r1 = _next(data, a[1], a[7])
        while r0 >= 0:
            ptr_logsumexp_bwd(a[2], a[3] + r0 * step, a[4] + 8 * r0, a[5] + 8 * r0, a[6] + r0 * step, r1 - r0, a[8])
            r0, r1 = _next(data, a[1], a[7])

    CALLBACKS = {"softmax_fwd": team_softmax_fwd.address, "softmax_bwd": team_softmax_bwd.address,
                 "logsumexp_fwd": team_logsumexp_fwd.address, "logsumexp_bwd": team_logsumexp_bwd.address}
else:  # without numba there are no kernels to run
    CALLBACKS = {}

__all__ = ["CALLBACKS"]
