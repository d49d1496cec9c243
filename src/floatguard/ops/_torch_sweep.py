"""The PyTorch path of softmax, log_softmax and logsumexp without the numba storage kernels: torch ops.

The forward runs the algorithm of the other backends (float64, shift by the row max, max term
taken out, ``log1p``, division by ``1 + s``) block by block on in-place native kernels
(:func:`_sweep`), or through the compiled NumPy kernels on the tensors' memory when they can take the
dtype (:func:`compiled_sweep`). Rows with no finite max get their limits (:func:`fix_limits`): the mass
shared by the ``+inf`` entries, 0 for ``-inf`` rows, NaN for NaN rows.
"""

from __future__ import annotations

from typing import Any

import torch

from ._core import blocks

BLOCK = 1 << 18  # float64 elements per block: 2 MiB, reused for every block


def _sweep(x: torch.Tensor, out: torch.Tensor | None = None, log: bool = False) -> tuple[torch.Tensor, ...]:
    """Row max ``m``, ``finite`` and ``s = sum_{i != k} exp(x_i - m)`` of rows ``x`` (R, n), in float64.

    With ``out``, also writes softmax (``e / (1 + s)``) or log_softmax
    (``d - log1p(s)``) into it, in the same sweep when rows fit in a block.
    Works block by block in one reused float64 buffer: no full-size temporaries.
    """
    x = x.detach()
    r, n = x.shape
    mx, k = x.max(dim=-1)
    m = mx.to(torch.float64)
    finite = torch.isfinite(m)
    m0 = torch.where(finite, m, 0.0)
    s = torch.zeros(r, dtype=torch.float64, device=x.device)
    size = min(BLOCK, max(r * n, 1))
    buf = torch.empty(size, dtype=torch.float64, device=x.device)
    dbuf = torch.empty(size, dtype=torch.float64, device=x.device) if (out is not None and log) else buf
    one_sweep = n <= BLOCK
    for r0, r1, c0, c1 in blocks(r, n, BLOCK):
        rows, cols = r1 - r0, c1 - c0
        d = dbuf[: rows * cols].view(rows, cols)
        d.copy_(x[r0:r1, c0:c1]).sub_(m0[r0:r1, None])
        e = buf[: rows * cols].view(rows, cols)
        torch.exp(d, out=e)
        kk = k[r0:r1] - c0
        inside = (kk >= 0) & (kk < cols)
        rows_in = torch.nonzero(inside).squeeze(-1) if not one_sweep else torch.arange(rows, device=x.device)
        e[rows_in, kk[rows_in]] = 0.0
        part = e.sum(dim=-1)
        s[r0:r1] += part
        if out is not None and one_sweep:
            sb = torch.where(finite[r0:r1], part, 0.0)[:, None]
            if log:
                out[r0:r1].copy_(d.sub_(torch.log1p(sb)))
            else:
                e[rows_in, kk[rows_in]] = 1.0
                out[r0:r1].copy_(e.div_(1.0 + sb))  # BHH's division form, rounded once
    s = torch.where(finite, s, 0.0)
    if out is not None and not one_sweep:  # long rows: a second sweep writes the output
        log1p_s = torch.log1p(s)
        for r0, r1, c0, c1 in blocks(r, n, BLOCK):
            d = buf[: c1 - c0].view(1, -1)
            d.copy_(x[r0:r1, c0:c1]).sub_(m0[r0:r1, None])
            if log:
                out[r0:r1, c0:c1].copy_(d.sub_(log1p_s[r0:r1, None]))
            else:
                out[r0:r1, c0:c1].copy_(d.exp_().div_(1.0 + s[r0:r1, None]))
    return m, finite, s


_NUMPY_DTYPES = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}


def compiled_sweep(x: torch.Tensor, out: torch.Tensor | None, log: bool = False) -> Any:
    """The same sweep through floatguard's compiled NumPy kernels, for CPU tensors, when available.

    Returns None when not applicable (no numba, a GPU tensor, bfloat16); else, with ``out``, whether
    some row has a non-finite max (``out`` filled), without ``out``, the float64 logsumexp per row.
    The tensors share memory with the NumPy views (``Tensor.numpy()``): no copy.
    """
    import numpy as np

    from . import _numpy_fast

    if x.device.type != "cpu" or x.dtype not in _NUMPY_DTYPES or x.shape[-1] == 0:
        return None
    if _numpy_fast._kernels_for(np.dtype(_NUMPY_DTYPES[x.dtype])) is None:
        return None
    xn = x.detach().contiguous().numpy()
    if out is None:
        return torch.from_numpy(_numpy_fast.logsumexp_rows(xn))
    return _numpy_fast.softmax_rows(xn, out.numpy(), log)


EMPTY_LIKE_MIN = 1 << 17  # entries from which empty_like asks NumPy (huge pages)


def empty_like(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised output like ``x``; on the CPU allocated by NumPy, which asks the kernel for
    huge pages (torch does not): first-touch page faults of a 32 MiB output cost torch ~10 ms.
    Small outputs (under 1 MiB) come from torch, which is quicker to call."""
    if x.numel() >= EMPTY_LIKE_MIN and x.is_cpu and x.dtype in _NUMPY_DTYPES:
        import numpy as np

        return torch.from_numpy(np.empty(tuple(x.shape), dtype=_NUMPY_DTYPES[x.dtype]))
    return torch.empty_like(x)



def _limit(x: torch.Tensor, m: torch.Tensor, log: bool) -> torch.Tensor:
    """Softmax (or, with ``log``, log_softmax) of rows with a non-finite max ``m`` (R, 1), float64: mass
    shared by +inf entries, 0 for -inf rows, NaN for NaN rows."""
    at_max = (x.to(torch.float64) == m).to(torch.float64)
    w = at_max / at_max.sum(dim=-1, keepdim=True).clamp_min(1.0)
    w = torch.where(m > 0, w, 0.0)
    w = torch.where(torch.isnan(m), m, w)
    if log:
        lim = torch.where(w > 0, torch.log(w.clamp_min(1e-300)), -torch.inf)
        w = torch.where(torch.isnan(w), w, lim)
    return w


def fix_limits(x: torch.Tensor, out: torch.Tensor, finite: torch.Tensor, log: bool,
               m: torch.Tensor | None = None) -> torch.Tensor:
    """``out`` with the rows where ``finite`` (R, 1) is False replaced by their limits; ``m`` the float64
    row max (R, 1) when the caller has it."""
    if m is None:
        m = x.detach().max(dim=-1, keepdim=True).values.to(torch.float64)
    return torch.where(finite, out, _limit(x, m, log).to(x.dtype))


def _sweep_rows(x: torch.Tensor, out: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``out`` (compiled kernels when available, else :func:`_sweep`); row max and ``finite``."""
    nonfinite = compiled_sweep(x, out, log)
    if nonfinite is None:
        m, finite, _ = _sweep(x, out, log=log)
        return m, finite
    if not nonfinite:
        return x.new_zeros(x.shape[0], dtype=torch.float64), x.new_ones(x.shape[0], dtype=torch.bool)
    m = x.detach().max(dim=-1).values.to(torch.float64)
    return m, torch.isfinite(m)


def lse_forward(x: torch.Tensor) -> torch.Tensor:
    """``m + log1p(s)`` per row, as a column ``(R, 1)`` in the input dtype."""
    lse = compiled_sweep(x, None)
    if lse is None:
        m, finite, s = _sweep(x)
        lse = torch.where(finite, m + torch.log1p(s), m)
    return lse[:, None].to(x.dtype)


def softmax_forward(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax (``e / (1 + s)``) or log_softmax (``d - log1p(s)``) of the rows, and ``finite`` ``(R, 1)``."""
    out = empty_like(x)
    m, finite = _sweep_rows(x, out, log=log)
    if not bool(finite.all()):
        out = fix_limits(x, out, finite[:, None], log, m[:, None])
    return out, finite.reshape(-1, 1)

