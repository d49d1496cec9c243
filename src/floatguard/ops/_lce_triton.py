"""Triton path of :func:`~floatguard.ops.linear_cross_entropy` (CUDA): tiles of tokens × vocabulary.

Cut Cross-Entropy's design (Wijmans et al. 2024), in float32 accumulation throughout:

* forward, one program per block of ``BLOCK_N`` tokens: for each block of ``BLOCK_V`` vocabulary
  entries the tile of logits ``h W^T (+ b)`` is made with ``tl.dot`` over blocks of the hidden
  size (float32 accumulator; float32 operands at ``input_precision="ieee"``, no TF32), soft-capped,
  and folded into an online log-sum-exp (running max ``m``, running sum rescaled by
  ``e^{m_old - m_new}``), the target logit and, with label smoothing, the logit sum. Only
  ``log Z``, ``z_t`` and ``Σ z`` per token leave the kernel;
* backward, one program per (token block, vocabulary block) tile: the logits are recomputed, the
  gradient of the logits ``g = r (softmax (1 + 2 λ log Z) - (1 - ε) onehot - ε / V)`` (times
  ``1 - tanh²`` under a soft cap) is formed in registers, and ``g @ W`` and ``g^T @ h`` are added
  to float32 gradient buffers with atomic adds, a hidden-size block at a time; rounded once to
  the input dtype at the end.

Nothing of size tokens × vocabulary is ever written to memory. float64 inputs take the chunked
torch path. This module imports Triton; :mod:`._lce_torch` asks :func:`use_triton` first.

Tested on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``) against the float64
reference (``tests/ops/test_lce_triton.py``); its speed on a GPU is unmeasured.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl

from ._lce_torch import Options

__all__ = ["ENV", "linear_cross_entropy", "use_triton"]

ENV = "FLOATGUARD_LCE_TRITON"  # "0": never (chunked torch path), "1": also CPU tensors when interpreting
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_triton(h: torch.Tensor) -> bool:
    """Whether the kernels here run for ``h``: on CUDA tensors of float32/bfloat16/float16 unless
    ``FLOATGUARD_LCE_TRITON=0``; on CPU tensors only with ``FLOATGUARD_LCE_TRITON=1`` and
    ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests)."""
    mode = os.environ.get(ENV, "")
    if mode == "0" or h.dtype not in _DTYPES:
        return False
    if h.device.type == "cuda":
        return True
    return mode == "1" and os.environ.get("TRITON_INTERPRET", "") == "1"


@triton.jit
def _tanh(x: Any) -> Any:
    """tanh to a few ulps: ``-expm1(-2|x|) / (2 + expm1(-2|x|))``, with Kahan's ``expm1`` from
    ``exp`` and ``log`` (no cancellation near 0; libdevice is not in the interpreter)."""
    y = -2.0 * tl.abs(x)
    u = tl.exp(y)
    inner = (u != 1.0) & (u != 0.0)
    lu = tl.log(tl.where(inner, u, 0.5))  # (no 0/0 or log 0 in the branch not taken)
    em = tl.where(inner, (u - 1.0) * y / lu, tl.where(u == 0.0, -1.0, y))
    t = -em / (2.0 + em)
    return tl.where(x < 0, -t, t)


@triton.jit
def _tile(h_ptr: Any, w_ptr: Any, b_ptr: Any, rn: Any, mn: Any, rv: Any, mv: Any, H: Any, softcap: Any,
          HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr) -> Any:
    """The (capped) logits of tokens ``rn`` against vocabulary entries ``rv``, and their ``tanh``."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        rh = h0 + tl.arange(0, BLOCK_H)
        mh = rh < H
        a = tl.load(h_ptr + rn[:, None] * H + rh[None, :], mask=mn[:, None] & mh[None, :], other=0.0)
        b = tl.load(w_ptr + rv[:, None] * H + rh[None, :], mask=mv[:, None] & mh[None, :], other=0.0)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + rv, mask=mv, other=0.0).to(tl.float32)[None, :]
    th = acc
    if SOFTCAP:
        th = _tanh(acc / softcap)
        acc = softcap * th
    return acc, th


@triton.jit
def _forward_kernel(h_ptr: Any, w_ptr: Any, b_ptr: Any, t_ptr: Any, lse_ptr: Any, xt_ptr: Any, sx_ptr: Any,
                    N: Any, V: Any, H: Any, softcap: Any,
                    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, SMOOTH: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr) -> None:
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = rn < N
    tgt = tl.load(t_ptr + rn, mask=mn, other=0)
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    xt = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sx = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        rv = v0 + tl.arange(0, BLOCK_V)
        mv = rv < V
        z, _ = _tile(h_ptr, w_ptr, b_ptr, rn, mn, rv, mv, H, softcap, HAS_BIAS, SOFTCAP, UPCAST, BLOCK_N, BLOCK_V,
                     BLOCK_H)
        z = tl.where(mv[None, :], z, float("-inf"))
        xt += tl.sum(tl.where(rv[None, :] == tgt[:, None], z, 0.0), axis=1)
        if SMOOTH:
            sx += tl.sum(tl.where(mv[None, :], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
    tl.store(lse_ptr + rn, m + tl.log(s), mask=mn)
    tl.store(xt_ptr + rn, xt, mask=mn)
    tl.store(sx_ptr + rn, sx, mask=mn)


@triton.jit
def _backward_kernel(h_ptr: Any, w_ptr: Any, b_ptr: Any, t_ptr: Any, lse_ptr: Any, r_ptr: Any,
                     gh_ptr: Any, gw_ptr: Any, gb_ptr: Any,
                     N: Any, V: Any, H: Any, softcap: Any, z_loss: Any, smooth: Any,
                     HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
                     NEED_H: tl.constexpr, NEED_W: tl.constexpr, NEED_B: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr) -> None:
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rv = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mn = rn < N
    mv = rv < V
    z, th = _tile(h_ptr, w_ptr, b_ptr, rn, mn, rv, mv, H, softcap, HAS_BIAS, SOFTCAP, UPCAST, BLOCK_N, BLOCK_V,
                 BLOCK_H)
    tgt = tl.load(t_ptr + rn, mask=mn, other=0)
    lse = tl.load(lse_ptr + rn, mask=mn, other=0.0)
    r = tl.load(r_ptr + rn, mask=mn, other=0.0)  # the loss's weight per token, 0 where ignored
    factor = r * (1.0 + 2.0 * z_loss * lse)
    g = tl.exp(z - lse[:, None]) * factor[:, None]
    g -= tl.where(rv[None, :] == tgt[:, None], ((1.0 - smooth) * r)[:, None], 0.0)
    g -= (r * (smooth / V))[:, None]
    if SOFTCAP:
        g = g * (1.0 - th * th)
    g = tl.where(mn[:, None] & mv[None, :], g, 0.0)
    if NEED_B:
        tl.atomic_add(gb_ptr + rv, tl.sum(g, axis=0), mask=mv)
    gc = g.to(h_ptr.dtype.element_ty)  # the products in the input dtype, as the unfused op
    if UPCAST:
        gc = gc.to(tl.float32)
    for h0 in range(0, H, BLOCK_H):
        rh = h0 + tl.arange(0, BLOCK_H)
        mh = rh < H
        if NEED_H:
            wt = tl.load(w_ptr + rv[:, None] * H + rh[None, :], mask=mv[:, None] & mh[None, :], other=0.0)
            if UPCAST:
                wt = wt.to(tl.float32)
            tl.atomic_add(gh_ptr + rn[:, None] * H + rh[None, :], tl.dot(gc, wt, input_precision="ieee"),
                          mask=mn[:, None] & mh[None, :])
        if NEED_W:
            ht = tl.load(h_ptr + rn[:, None] * H + rh[None, :], mask=mn[:, None] & mh[None, :], other=0.0)
            if UPCAST:
                ht = ht.to(tl.float32)
            tl.atomic_add(gw_ptr + rv[:, None] * H + rh[None, :], tl.dot(tl.trans(gc), ht, input_precision="ieee"),
                          mask=mv[:, None] & mh[None, :])


def _upcast(h: torch.Tensor) -> bool:
    """Whether ``tl.dot`` gets float32 copies of 16-bit tiles: only in Triton's interpreter, whose
    ``tl.dot`` of bfloat16 tiles is wrong in Triton 3.9 (the same values: 16-bit products are exact
    in float32 and the sums are float32 either way); on a GPU the tiles go to ``tl.dot`` as they are."""
    return h.dtype != torch.float32 and os.environ.get("TRITON_INTERPRET", "") == "1"


def _blocks(o: Options, h: torch.Tensor) -> tuple[int, int, int]:
    """Tile sizes (powers of 2, at least 16 for ``tl.dot``): tokens, vocabulary, hidden."""
    bv = 128 if o.chunk_size is None else max(16, triton.next_power_of_2(o.chunk_size))
    return 64, bv, 64 if h.shape[1] >= 64 else max(16, triton.next_power_of_2(h.shape[1]))


def _forward(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: torch.Tensor, o: Options
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``log Z`` and the per-token loss (float32; 0 where ignored)."""
    n, v = h.shape[0], w.shape[0]
    bn, bv, bh = _blocks(o, h)
    lse, xt, sx = (torch.empty(n, dtype=torch.float32, device=h.device) for _ in range(3))
    _forward_kernel[(triton.cdiv(n, bn),)](
        h, w, h if b is None else b, t, lse, xt, sx, n, v, h.shape[1], float(o.softcap or 1.0),
        HAS_BIAS=b is not None, SOFTCAP=o.softcap is not None, SMOOTH=bool(o.label_smoothing), UPCAST=_upcast(h),
        BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh)
    eps = o.label_smoothing
    loss = lse - xt
    if eps:
        loss = (1 - eps) * loss + eps * (lse - sx / v)
    if o.z_loss:
        loss = loss + o.z_loss * lse.square()
    return lse, torch.where(t != o.ignore_index, loss, torch.zeros_like(loss))


def _backward(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: torch.Tensor, o: Options,
              lse: torch.Tensor, r: torch.Tensor, need: tuple[bool, bool, bool]
              ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    n, v, hd = h.shape[0], w.shape[0], h.shape[1]
    bn, bv, bh = _blocks(o, h)
    f32, dev = torch.float32, h.device
    gh = torch.zeros(n, hd, dtype=f32, device=dev) if need[0] else lse  # (an unused pointer where not needed)
    gw = torch.zeros(v, hd, dtype=f32, device=dev) if need[1] else lse
    gb = torch.zeros(v, dtype=f32, device=dev) if need[2] else lse
    _backward_kernel[(triton.cdiv(n, bn), triton.cdiv(v, bv))](
        h, w, h if b is None else b, t, lse, r, gh, gw, gb, n, v, hd, float(o.softcap or 1.0),
        float(o.z_loss), float(o.label_smoothing),
        HAS_BIAS=b is not None, SOFTCAP=o.softcap is not None, UPCAST=_upcast(h),
        NEED_H=need[0], NEED_W=need[1], NEED_B=need[2],
        BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh)
    return (gh.to(h.dtype) if need[0] else None, gw.to(w.dtype) if need[1] else None,
            gb.to(b.dtype) if need[2] and b is not None else None)


def _reduce(loss: torch.Tensor, t: torch.Tensor, o: Options) -> tuple[torch.Tensor, torch.Tensor]:
    """The reduced loss and the per-token weight of the reduction (``1/count`` for "mean")."""
    if o.reduction != "mean":
        return (loss if o.reduction == "none" else loss.sum()), torch.ones((), dtype=loss.dtype, device=loss.device)
    count = (t != o.ignore_index).sum().to(loss.dtype)
    return loss.sum() / count, 1 / count


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward: the kernel's ``log Z`` per token (kept); backward: the tile kernel."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: torch.Tensor, o: Options,
                need: tuple[bool, bool, bool], out_dtype: torch.dtype) -> torch.Tensor:
        lse, loss = _forward(h, w, b, t, o)
        out, scale = _reduce(loss, t, o)
        ctx.o, ctx.need = o, need
        ctx.save_for_backward(h, w, b, t, lse, scale)
        return out.to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, go: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, w, b, t, lse, scale = ctx.saved_tensors
        o: Options = ctx.o
        r = torch.where(t != o.ignore_index, (go.float() * scale).expand(t.shape), 0.0).contiguous()
        gh, gw, gb = _backward(h, w, b, t, o, lse, r, ctx.need)
        return gh, gw, gb, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: torch.Tensor, o: Options,
                         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The loss of ``h`` (tokens, hidden) against ``t`` (tokens,), arguments already checked, in ``out_dtype``
    (``h``'s by default; float32 under autocast)."""
    out_dtype = out_dtype or h.dtype
    h, w, t = h.contiguous(), w.contiguous(), t.contiguous()
    b = None if b is None else b.contiguous()
    need = (h.requires_grad, w.requires_grad, b is not None and b.requires_grad)
    if torch.is_grad_enabled() and any(need):
        out: torch.Tensor = _LinearCrossEntropy.apply(h, w, b, t, o, need, out_dtype)
        return out
    _, loss = _forward(h, w, b, t, o)
    return _reduce(loss, t, o)[0].to(out_dtype)
