"""PyTorch path of logsumexp, softmax and log_softmax: same formulas, native kernels, analytic backward.

Through the generic array-API code, PyTorch records a dozen ops (masks,
``where``, a gather of the max term) and autograd keeps all their temporaries:
15 to 40 times slower than ``torch.logsumexp`` (``benchmarks/ops_speed.py``).
Here each op is one ``torch.autograd.Function``: the forward runs the same
algorithm (float64, shift by the row max, max term taken out, ``log1p``,
division by ``1 + s``) on in-place native kernels, and the backward is the
analytic gradient, which is also what makes it 0, never NaN, on rows with no
finite entry. Backward formulas use only the saved input and output, in
differentiable torch ops, so double backward works.

All functions take rows on the last axis and return results in the input dtype.
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


def _compiled(x: torch.Tensor, out: torch.Tensor | None, log: bool = False) -> Any:
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


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised output like ``x``; on the CPU allocated by NumPy, which asks the kernel for
    huge pages (torch does not): first-touch page faults of a 32 MiB output cost torch ~10 ms."""
    if x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES:
        import numpy as np

        return torch.from_numpy(np.empty(tuple(x.shape), dtype=_NUMPY_DTYPES[x.dtype]))
    return torch.empty_like(x)


def _limit(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Softmax of rows with a non-finite max: mass shared by +inf entries, 0 for -inf rows, NaN for NaN rows."""
    at_max = (x.to(torch.float64) == m).to(torch.float64)
    w = at_max / at_max.sum(dim=-1, keepdim=True).clamp_min(1.0)
    w = torch.where(m > 0, w, 0.0)
    return torch.where(torch.isnan(m), m, w)


def _sweep_rows(x: torch.Tensor, out: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``out`` (compiled kernels when available, else :func:`_sweep`); row max and ``finite``."""
    nonfinite = _compiled(x, out, log)
    if nonfinite is None:
        m, finite, _ = _sweep(x, out, log=log)
        return m, finite
    if not nonfinite:
        return x.new_zeros(x.shape[0], dtype=torch.float64), x.new_ones(x.shape[0], dtype=torch.bool)
    m = x.detach().max(dim=-1).values.to(torch.float64)
    return m, torch.isfinite(m)


def _lse_forward(x: torch.Tensor) -> torch.Tensor:
    """``m + log1p(s)`` per row, as a column ``(R, 1)`` in the input dtype."""
    lse = _compiled(x, None)
    if lse is None:
        m, finite, s = _sweep(x)
        lse = torch.where(finite, m + torch.log1p(s), m)
    return lse[:, None].to(x.dtype)


def _softmax_forward(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax (``e / (1 + s)``) or log_softmax (``d - log1p(s)``) of the rows, and ``finite`` ``(R, 1)``."""
    out = _empty_like(x)
    m, finite = _sweep_rows(x, out, log=log)
    if not bool(finite.all()):
        m, finite = m[:, None], finite[:, None]
        w = _limit(x, m)
        if log:
            lim = torch.where(w > 0, torch.log(w.clamp_min(1e-300)), -torch.inf)
            w = torch.where(torch.isnan(w), w, lim)
        out = torch.where(finite, out, w.to(x.dtype))
    return out, finite.reshape(-1, 1)


def _softmax_grad(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``p * (g - sum(g p))``, 0 on rows with no finite max."""
    p = torch.where(finite, out.to(torch.float64), 0.0)
    gw = g.to(torch.float64)
    return (p * (gw - (gw * p).sum(dim=-1, keepdim=True))).to(out.dtype)


def _log_softmax_grad(out: torch.Tensor, finite: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g - p sum(g)``, 0 on rows with no finite max."""
    p = torch.where(finite, torch.exp(out.to(torch.float64)), 0.0)
    gw = g.to(torch.float64)
    grad = gw - p * gw.sum(dim=-1, keepdim=True)
    return torch.where(finite, grad, 0.0).to(out.dtype)


class LogSumExp(torch.autograd.Function):
    """``m + log1p(s)`` per row; gradient ``softmax(x)`` (0 on rows with no finite max)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = _lse_forward(x)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        # the gradient is softmax(x), through Softmax so that double backward is exact too
        x, out = ctx.saved_tensors
        p = torch.where(torch.isfinite(out), Softmax.apply(x), 0.0)
        return g * p


class Softmax(torch.autograd.Function):
    """``e / (1 + s)`` per row; gradient ``p * (g - sum(g p))``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out, finite = _softmax_forward(x, log=False)
        ctx.save_for_backward(out, finite)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return _softmax_grad(*ctx.saved_tensors, g)


class LogSoftmax(torch.autograd.Function):
    """``d - log1p(s)`` per row; gradient ``g - p sum(g)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out, finite = _softmax_forward(x, log=True)
        ctx.save_for_backward(out, finite)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return _log_softmax_grad(*ctx.saved_tensors, g)


# -- under torch.compile ------------------------------------------------------------------
# Dynamo cannot trace the forward passes above (NumPy views, compiled kernels, branches on
# values). As custom ops they enter the compiled graph whole and run the same code, with
# the same analytic backward; their fake versions give Dynamo the output shapes.


@torch.library.custom_op("floatguard::logsumexp_rows", mutates_args=())
def logsumexp_op(x: torch.Tensor) -> torch.Tensor:
    """:class:`LogSumExp` as a custom op: rows ``(R, n)`` to ``(R, 1)``."""
    return _lse_forward(x)


@logsumexp_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], 1))


def _lse_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0], output)


def _lse_backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    x, out = ctx.saved_tensors
    return g * torch.where(torch.isfinite(out), softmax_op(x, False)[0], 0.0)


logsumexp_op.register_autograd(_lse_backward, setup_context=_lse_setup)


@torch.library.custom_op("floatguard::softmax_rows", mutates_args=())
def softmax_op(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`Softmax` (or :class:`LogSoftmax` with ``log``) as a custom op; also returns ``finite``."""
    return _softmax_forward(x.contiguous(), log)  # a contiguous output, as the fake one


@softmax_op.register_fake
def _(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, as the real output
    return out, torch.empty((x.shape[0], 1), dtype=torch.bool, device=x.device)


def _softmax_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.log = inputs[1]
    ctx.save_for_backward(*output)


def _softmax_backward(ctx: Any, g: torch.Tensor, _g_finite: Any) -> tuple[torch.Tensor, None]:
    grad = _log_softmax_grad if ctx.log else _softmax_grad
    return grad(*ctx.saved_tensors, g), None


softmax_op.register_autograd(_softmax_backward, setup_context=_softmax_setup)
