"""PyTorch path of :func:`~floatguard.ops.linear_cross_entropy`: token chunks, gradients in the forward.

The (tokens × vocabulary) logits are computed ``chunk`` tokens at a time into one reused buffer
of shape ``(chunk, V)``; each chunk's log-sum-exp is taken with the max shift, and, when a
gradient is wanted for a scalar loss ("mean"/"sum"), the chunk's gradient with respect to its
logits (``softmax - one-hot``, scaled) is formed in the same buffer while it is still in cache
(Liger Kernel's approach). Then ``grad_hidden[chunk] = g @ W`` and ``grad_W += g.T @ h[chunk]``:
three matrix products in all, as the unfused ``F.cross_entropy(h @ W.T, t)`` needs, and the
backward only multiplies the stored gradients by the upstream scalar. A "none" reduction has a
per-token upstream gradient that cannot be folded in beforehand; its backward recomputes each
chunk's logits (four products, Cut Cross-Entropy's approach).

The forward-gradient path saves one product of the four that recomputation in the backward needs
(``tests/ops/test_linear_cross_entropy.py`` counts them), so it is used whenever it applies.

bfloat16 inputs (and float16 on CUDA) keep the three products in their dtype, as the unfused op
does (the BLAS accumulates in float32 and rounds once): the chunk's logits are made in bfloat16
and widened to float32, the log-sum-exp and the gradient of the logits are float32, the gradient
is rounded once to bfloat16 for ``g @ W`` and ``g.T @ h``, and the weight gradient is summed over
the chunks in float32 (the bias gradient too), rounded once at the end. float16 on CPU goes
through float32 products; float64 stays float64.

CUDA tensors take the Triton kernels of :mod:`._lce_triton` when Triton imports (see
``use_triton`` there), else this chunked path.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch

from ._lce_options import Options

__all__ = ["Options", "linear_cross_entropy"]

_CHUNK_ELEMENTS = 1 << 22  # logits per chunk on CPU (16 MiB of float32: within the L3 cache)
_CHUNK_ELEMENTS_CUDA = 1 << 26
_ACC_ROWS = 4096  # vocabulary rows per slice when a low-precision weight gradient joins its float32 sum


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_rows(o: Options, n: int, v: int, device: torch.device) -> int:
    if o.chunk_size is not None:
        return max(1, min(n, o.chunk_size))
    budget = _CHUNK_ELEMENTS_CUDA if device.type == "cuda" else _CHUNK_ELEMENTS
    return max(1, min(n, budget // max(v, 1)))


def _chunk(
    hc: torch.Tensor, wc: torch.Tensor, bc: torch.Tensor | None, tc: torch.Tensor, o: Options,
    bufs: _Buffers, scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss per token of one chunk and, when ``scale`` (per token) is given, the gradient of
    ``sum(scale * loss)`` with respect to the chunk's raw logits, written over ``bufs.x``.

    With a low-precision buffer ``bufs.low`` the logits are one product in the input dtype
    (float32 accumulation inside the BLAS, rounded once, as the unfused product) widened to
    float32; everything after is float32."""
    n, v = hc.shape[0], wc.shape[0]
    x = bufs.x[:n]
    z = x if bufs.low is None else bufs.low[:n]
    if bc is None:
        torch.mm(hc, wc.t(), out=z)
    else:
        torch.addmm(bc, hc, wc.t(), out=z)
    if bufs.low is not None:
        x.copy_(z)
    tbuf = bufs.tanh
    th = None
    if o.softcap is not None and tbuf is not None:
        th = tbuf[:n]
        torch.div(x, o.softcap, out=th).tanh_()
        torch.mul(th, o.softcap, out=x)
    valid = tc != o.ignore_index
    idx = torch.where(valid, tc, torch.zeros_like(tc))[:, None]
    x_t = x.gather(1, idx)[:, 0]
    eps = o.label_smoothing
    mean_x = x.mean(1) if eps else None
    m, at = x.max(1, keepdim=True)
    x.sub_(m).exp_()
    # s' = the sum without the max's own term (exactly 1), so that log Z - x_t = log1p(s') + (m - x_t)
    # keeps its digits when the loss is tiny (a confident correct prediction)
    x.scatter_(1, at, 0.0)
    log1p_s = x.sum(1).log1p_()
    x.scatter_(1, at, 1.0)
    s = log1p_s.exp()
    lse = m[:, 0] + log1p_s
    loss = log1p_s + (m[:, 0] - x_t)
    if mean_x is not None:
        loss = (1 - eps) * loss + eps * (lse - mean_x)
    if o.z_loss:
        loss = loss + o.z_loss * lse.square()
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if scale is None:
        return loss, None
    r = torch.where(valid, scale, torch.zeros_like(scale))
    factor = r / s if not o.z_loss else r * (1 + 2 * o.z_loss * lse) / s
    x.mul_(factor[:, None])  # softmax (times the z-loss factor), scaled
    x.scatter_add_(1, idx, (-(1 - eps) * r)[:, None])
    if eps:
        x.sub_((r * (eps / v))[:, None])
    if th is not None:  # d(cap tanh(z / cap)) / dz = 1 - tanh^2
        th.mul_(th)
        x.addcmul_(x, th, value=-1)
    return loss, x


@dataclass(frozen=True)
class _Buffers:
    """A chunk's reused buffers: logits in the work dtype, ``tanh`` of the soft cap (or None), and
    the logits in the input dtype (low-precision inputs only, else None)."""

    x: torch.Tensor
    tanh: torch.Tensor | None
    low: torch.Tensor | None


def _low_precision(h: torch.Tensor) -> bool:
    """Matrix products in the input dtype: bfloat16 (CPU and CUDA BLAS accumulate it in float32),
    float16 on CUDA (float16 products on CPU are slow: those go through float32)."""
    return h.dtype == torch.bfloat16 or (h.dtype == torch.float16 and h.device.type == "cuda")


def _buffers(o: Options, rows: int, v: int, h: torch.Tensor) -> _Buffers:
    cd, device = _work_dtype(h.dtype), h.device
    return _Buffers(
        torch.empty(rows, v, dtype=cd, device=device),
        torch.empty(rows, v, dtype=cd, device=device) if o.softcap is not None else None,
        torch.empty(rows, v, dtype=h.dtype, device=device) if _low_precision(h) else None,
    )


def _loss_only(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: torch.Tensor, o: Options
               ) -> torch.Tensor:
    """Per-token losses in the work dtype, no gradient."""
    n, v = h.shape[0], w.shape[0]
    cd = _work_dtype(h.dtype)
    pd = h.dtype if _low_precision(h) else cd  # the dtype of the matrix products
    wc, bc = w.to(pd), None if b is None else b.to(pd)
    rows = _chunk_rows(o, n, v, h.device)
    bufs = _buffers(o, rows, v, h)
    out = torch.empty(n, dtype=cd, device=h.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        out[r0:r1], _ = _chunk(h[r0:r1].to(pd), wc, bc, t[r0:r1], o, bufs, None)
    return out


def _grads(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: torch.Tensor, o: Options,
    scale: torch.Tensor, need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-token losses and the gradients of ``sum(scale * loss)`` (work dtype), chunk by chunk."""
    n, v = h.shape[0], w.shape[0]
    cd = _work_dtype(h.dtype)
    low = _low_precision(h)
    pd = h.dtype if low else cd  # the dtype of the matrix products
    wc, bc = w.to(pd), None if b is None else b.to(pd)
    rows = _chunk_rows(o, n, v, h.device)
    bufs = _buffers(o, rows, v, h)
    out = torch.empty(n, dtype=cd, device=h.device)
    gh = torch.empty(n, h.shape[1], dtype=pd, device=h.device) if need[0] else None
    gw = torch.zeros(v, h.shape[1], dtype=cd, device=h.device) if need[1] else None
    gb = torch.zeros(v, dtype=cd, device=h.device) if need[2] else None
    # low precision: each chunk's weight gradient (input dtype) is added to the float32 ``gw`` a
    # slice of the vocabulary at a time, through two small buffers
    sl = min(v, _ACC_ROWS)
    gw_low = torch.empty(sl, h.shape[1], dtype=pd, device=h.device) if low and gw is not None else None
    gw_wide = torch.empty(sl, h.shape[1], dtype=cd, device=h.device) if low and gw is not None else None
    scale = scale.to(cd).expand(n)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        hc = h[r0:r1].to(pd)
        loss, g = _chunk(hc, wc, bc, t[r0:r1], o, bufs, scale[r0:r1])
        out[r0:r1] = loss
        assert g is not None
        if gb is not None:
            gb.add_(g.sum(0))
        gp = g if bufs.low is None else bufs.low[: r1 - r0].copy_(g)  # rounded once, as unfused
        if gh is not None:
            torch.mm(gp, wc, out=gh[r0:r1])
        if gw is not None and gw_low is not None and gw_wide is not None:
            for s0 in range(0, v, sl):
                s1 = min(v, s0 + sl)
                torch.mm(gp[:, s0:s1].t(), hc, out=gw_low[: s1 - s0])
                gw[s0:s1].add_(gw_wide[: s1 - s0].copy_(gw_low[: s1 - s0]))
        elif gw is not None:
            gw.addmm_(gp.t(), hc)
    return out, gh, gw, gb


def _reduce(loss: torch.Tensor, t: torch.Tensor, o: Options) -> tuple[torch.Tensor, torch.Tensor]:
    """The reduced loss and the per-token weight of the reduction (``1/count`` for "mean")."""
    if o.reduction == "none":
        return loss, torch.ones((), dtype=loss.dtype, device=loss.device)
    total = loss.sum()
    if o.reduction == "sum":
        return total, torch.ones((), dtype=loss.dtype, device=loss.device)
    count = (t != o.ignore_index).sum().to(loss.dtype)
    return total / count, 1 / count


def _cast(g: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    if g is None or like is None:
        return None
    return g if g.dtype == like.dtype else g.to(like.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and (for a scalar loss) the gradients; backward scales them."""

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: torch.Tensor, o: Options,
        need: tuple[bool, bool, bool], out_dtype: torch.dtype,
    ) -> torch.Tensor:
        ctx.o, ctx.need = o, need
        if o.reduction == "none":
            ctx.save_for_backward(h, w, b, t)
            return _loss_only(h, w, b, t, o).to(out_dtype)
        # the scale of the reduction is known once the ignored tokens are counted
        count = (t != o.ignore_index).sum().to(_work_dtype(h.dtype))
        scale = 1 / count if o.reduction == "mean" else torch.ones_like(count)
        loss, gh, gw, gb = _grads(h, w, b, t, o, scale, need)
        ctx.grads = (_cast(gh, h), _cast(gw, w), _cast(gb, b))
        return (loss.sum() * scale).to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, go: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        o: Options = ctx.o
        if o.reduction == "none":
            h, w, b, t = ctx.saved_tensors
            _, gh, gw, gb = _grads(h, w, b, t, o, go, ctx.need)
            return _cast(gh, h), _cast(gw, w), _cast(gb, b), None, None, None, None
        grads = ctx.grads  # kept: a retained graph may run this backward again
        # loss.backward(): no scaled copy of the weight's gradient (compiled: no branch on a value, the product)
        if go.numel() == 1 and not torch.compiler.is_compiling() and bool(go == 1):
            return (*grads, None, None, None, None)
        scaled = tuple(None if g is None else g * go.to(g.dtype) for g in grads)
        return (*scaled, None, None, None, None)


def _triton_wanted(h: torch.Tensor) -> bool:
    """A cheap first look (no import): CUDA, or CPU under ``FLOATGUARD_LCE_TRITON=1``, with Triton
    installed; :func:`._lce_triton.use_triton` decides."""
    if os.environ.get("FLOATGUARD_LCE_TRITON", "") == "0":
        return False
    if h.device.type != "cuda" and os.environ.get("FLOATGUARD_LCE_TRITON", "") != "1":
        return False
    return importlib.util.find_spec("triton") is not None


def linear_cross_entropy(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: torch.Tensor, o: Options,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The loss of ``h`` (tokens, hidden) against ``t`` (tokens,), arguments already checked, in ``out_dtype``
    (``h``'s by default; float32 under autocast)."""
    out_dtype = out_dtype or h.dtype
    if _triton_wanted(h):
        from . import _lce_triton

        if _lce_triton.use_triton(h):
            return _lce_triton.linear_cross_entropy(h, w, b, t, o, out_dtype)
    need = (h.requires_grad, w.requires_grad, b is not None and b.requires_grad)
    if torch.is_grad_enabled() and any(need):
        out: torch.Tensor = _LinearCrossEntropy.apply(h, w, b, t, o, need, out_dtype)
        return out
    loss = _loss_only(h, w, b, t, o)
    return _reduce(loss, t, o)[0].to(out_dtype)
