"""JAX path of :func:`~floatguard.ops.linear_cross_entropy`: vocabulary blocks under ``lax.scan``.

Forward: for each block of ``B`` vocabulary entries, the logits of every token against the block
(``(N, B)``, accumulated in float32 for bfloat16/float16/float32 inputs, float64 for float64)
update a running max ``m`` and a running sum ``s`` rescaled by ``exp(m_old - m_new)`` (the online
log-sum-exp), the target logit and, with label smoothing, the logit sum. Only ``log Z`` per token
is kept for the backward (a ``custom_vjp``), which scans the blocks again: it recomputes the
block's logits, forms ``g = r (softmax (1 + 2 λ log Z) - (1 - ε) onehot - ε / V)`` (times
``1 - tanh²`` under a soft cap), adds ``g @ W_block`` to the hidden gradient and writes the
block's weight and bias gradients once (no accumulator over tokens). A vocabulary that is not
a multiple of ``B`` has its last, shorter block done after the scan.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._lce_options import Options

__all__ = ["Options", "linear_cross_entropy"]

_BLOCK_ELEMENTS = 1 << 22  # logits per vocabulary block of the forward (16 MiB of float32)
# logits per token chunk when the gradients are made in the forward (32 MiB of float32): fewer
# additions of the (V, H) weight-gradient carry; value_and_grad at 2048 tokens x 32,000 vocabulary
# 0.86x unfused jax.nn against 0.96x at 1 << 22 (benchmarks/linear_cross_entropy.py)
_GRAD_ELEMENTS = 1 << 23


def _work_dtype(dtype: Any) -> Any:
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _block_size(o: Options, n: int, v: int) -> int:
    if o.chunk_size is not None:
        return max(1, min(v, o.chunk_size))
    return max(1, min(v, _BLOCK_ELEMENTS // max(n, 1)))


def _split(w: Any, b: Any, size: int) -> tuple[tuple[Any, Any, Any], tuple[Any, Any, int] | None]:
    """Weight and bias as ``(blocks, B, ...)`` stacks with each block's offset, and the tail block."""
    v, hd = w.shape
    nb = v // size
    main = (w[: nb * size].reshape(nb, size, hd), b[: nb * size].reshape(nb, size), jnp.arange(nb) * size)
    tail = (w[nb * size:], b[nb * size:], nb * size) if v % size else None
    return main, tail


def _logits(h: Any, wb: Any, bb: Any, o: Options, cd: Any) -> tuple[Any, Any]:
    """Capped logits of every token against one block, and ``tanh`` of the cap (None without one)."""
    z = lax.dot_general(h, wb, (((1,), (1,)), ((), ())), preferred_element_type=cd) + bb.astype(cd)
    if o.softcap is None:
        return z, None
    th = jnp.tanh(z / o.softcap)
    return o.softcap * th, th


def _local(t: Any, off: Any, size: int) -> tuple[Any, Any]:
    """Target index inside the block starting at ``off`` (clipped) and whether it falls there."""
    loc = t - off
    inside = (loc >= 0) & (loc < size)
    return jnp.clip(loc, 0, size - 1), inside


def _online(carry: tuple[Any, Any], z: Any) -> tuple[Any, Any]:
    """One vocabulary block into the running max ``m`` and ``s'``, the running sum of ``exp(z - m)``
    without the max's own term (1): ``log Z = m + log1p(s')`` keeps a tiny loss's digits.

    The block's own term is left out by value (``z == max``; a tie adds its exact 1 back), not by
    ``argmax``: one fused pass over the block instead of two, 0.91x unfused ``jax.nn`` forward
    time at 2048 tokens x 32,000 vocabulary against 1.14x with ``argmax``."""
    m, s1 = carry
    bm = z.max(axis=1)
    top = z == bm[:, None]
    e = jnp.exp(z - bm[:, None])
    rest = jnp.where(top, 0, e).sum(axis=1) + (top.sum(axis=1) - 1).astype(z.dtype)
    grows = bm > m
    s1 = jnp.where(grows, (s1 + 1) * jnp.exp(m - bm) + rest, s1 + (rest + 1) * jnp.exp(jnp.where(grows, 0, bm - m)))
    return jnp.maximum(m, bm), s1


def _stats(h: Any, w: Any, b: Any, t: Any, o: Options) -> tuple[Any, Any, Any]:
    """``log Z``, ``log Z - x_t`` (its digits kept) and the logit sum per token."""
    cd = _work_dtype(h.dtype)
    n, v = h.shape[0], w.shape[0]
    size = _block_size(o, n, v)
    main, tail = _split(w, b, size)

    def step(carry: tuple[Any, ...], blk: tuple[Any, Any, Any]) -> tuple[tuple[Any, ...], None]:
        m, s1, x_t, sum_x = carry
        wb, bb, off = blk
        z, _ = _logits(h, wb, bb, o, cd)
        loc, inside = _local(t, off, wb.shape[0])
        x_t = x_t + jnp.where(inside, jnp.take_along_axis(z, loc[:, None], axis=1)[:, 0], 0)
        if o.label_smoothing:
            sum_x = sum_x + z.sum(axis=1)
        m, s1 = _online((m, s1), z)
        return (m, s1, x_t, sum_x), None

    zeros = jnp.zeros(n, cd)
    carry: tuple[Any, ...] = (jnp.full(n, -jnp.inf, cd), zeros, zeros, zeros)
    carry, _ = lax.scan(step, carry, main)
    if tail is not None:
        carry, _ = step(carry, tail)
    m, s1, x_t, sum_x = carry
    l1p = jnp.log1p(s1)
    return m + l1p, l1p + (m - x_t), sum_x


def _rows(lse: Any, nll: Any, sum_x: Any, t: Any, o: Options, v: int) -> tuple[Any, Any]:
    """Per-token losses (0 where ignored) and the validity mask."""
    eps = o.label_smoothing
    loss = nll
    if eps:
        loss = (1 - eps) * loss + eps * (lse - sum_x / v)
    if o.z_loss:
        loss = loss + o.z_loss * lse**2
    valid = t != o.ignore_index
    return jnp.where(valid, loss, 0), valid


def _token_grads(h: Any, w: Any, b: Any, t: Any, o: Options) -> tuple[Any, Any, Any, Any]:
    """Per-token losses and the gradients of the reduced loss, computed in the forward pass over token
    chunks (all vocabulary entries of a chunk at once): three matrix products, as unfused."""
    cd = _work_dtype(h.dtype)
    n, hd = h.shape
    v = w.shape[0]
    c = max(1, min(n, o.chunk_size if o.chunk_size is not None else _GRAD_ELEMENTS // max(v, 1)))
    valid = t != o.ignore_index
    r = valid.astype(cd)
    if o.reduction == "mean":
        r = r / valid.sum().astype(cd)
    wc = w.astype(cd)
    eps = o.label_smoothing

    def step(carry: tuple[Any, Any], xs: tuple[Any, Any, Any]) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        gw, gb = carry
        hc, tc, rc = xs
        z, th = _logits(hc, w, b, o, cd)
        m, s1 = _online((jnp.full(hc.shape[0], -jnp.inf, cd), jnp.zeros(hc.shape[0], cd)), z)
        l1p = jnp.log1p(s1)
        lse = m + l1p
        loc = jnp.where(tc == o.ignore_index, 0, tc)
        x_t = jnp.take_along_axis(z, loc[:, None], axis=1)[:, 0]
        sum_x = z.sum(axis=1) if eps else None
        loss, _ = _rows(lse, l1p + (m - x_t), sum_x, tc, o, v)
        factor = rc * (1 + 2 * o.z_loss * lse) if o.z_loss else rc
        g = jnp.exp(z - lse[:, None]) * factor[:, None]
        g = g - jnp.where(loc[:, None] == jnp.arange(v)[None, :], ((1 - eps) * rc)[:, None], 0)
        if eps:
            g = g - (rc * (eps / v))[:, None]
        if th is not None:
            g = g * (1 - th * th)
        hcc = hc.astype(cd)
        return (gw + g.T @ hcc, gb + g.sum(axis=0)), (loss, g @ wc)

    nc = n // c
    carry = (jnp.zeros((v, hd), cd), jnp.zeros(v, cd))
    xs = (h[: nc * c].reshape(nc, c, hd), t[: nc * c].reshape(nc, c), r[: nc * c].reshape(nc, c))
    carry, (loss, gh) = lax.scan(step, carry, xs)
    loss, gh = loss.reshape(-1), gh.reshape(-1, hd)
    if n % c:
        carry, (loss_t, gh_t) = step(carry, (h[nc * c:], t[nc * c:], r[nc * c:]))
        loss, gh = jnp.concatenate([loss, loss_t]), jnp.concatenate([gh, gh_t])
    gw, gb = carry
    return loss, gh.astype(h.dtype), gw.astype(w.dtype), gb.astype(b.dtype)


def _reduce(loss: Any, valid: Any, o: Options) -> Any:
    if o.reduction == "none":
        return loss
    if o.reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().astype(loss.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _lce(o: Options, has_bias: bool, h: Any, w: Any, b: Any, t: Any) -> Any:
    lse, nll, sum_x = _stats(h, w, b, t, o)
    loss, valid = _rows(lse, nll, sum_x, t, o, w.shape[0])
    return _reduce(loss, valid, o).astype(h.dtype)


def _lce_fwd(o: Options, has_bias: bool, h: Any, w: Any, b: Any, t: Any) -> tuple[Any, tuple[Any, ...]]:
    if o.reduction != "none":  # a scalar loss: the gradients now, scaled in the backward
        loss, gh, gw, gb = _token_grads(h, w, b, t, o)
        return _reduce(loss, t != o.ignore_index, o).astype(h.dtype), (gh, gw, gb)
    lse, nll, sum_x = _stats(h, w, b, t, o)
    loss, valid = _rows(lse, nll, sum_x, t, o, w.shape[0])
    return _reduce(loss, valid, o).astype(h.dtype), (h, w, b, t, lse)


def _lce_bwd(o: Options, has_bias: bool, res: tuple[Any, ...], go: Any) -> tuple[Any, ...]:
    if o.reduction != "none":
        gh, gw, gb = res
        return (gh * go.astype(gh.dtype), gw * go.astype(gw.dtype),
                gb * go.astype(gb.dtype) if has_bias else jnp.zeros_like(gb), None)
    h, w, b, t, lse = res
    cd = lse.dtype
    n, v = h.shape[0], w.shape[0]
    valid = t != o.ignore_index
    go = go.astype(cd)
    if o.reduction == "mean":
        go = go / valid.sum().astype(cd)
    r = jnp.where(valid, jnp.broadcast_to(go, (n,)), 0)
    factor = r * (1 + 2 * o.z_loss * lse) if o.z_loss else r
    eps = o.label_smoothing
    hc = h.astype(cd)
    size = _block_size(o, n, v)
    main, tail = _split(w, b, size)

    def step(gh: Any, blk: tuple[Any, Any, Any]) -> tuple[Any, tuple[Any, Any]]:
        wb, bb, off = blk
        z, th = _logits(h, wb, bb, o, cd)
        g = jnp.exp(z - lse[:, None]) * factor[:, None]
        loc, inside = _local(t, off, wb.shape[0])
        hit = inside[:, None] & (loc[:, None] == jnp.arange(wb.shape[0])[None, :])
        g = g - jnp.where(hit, ((1 - eps) * r)[:, None], 0)
        if eps:
            g = g - (r * (eps / v))[:, None]
        if th is not None:
            g = g * (1 - th * th)
        gh = gh + g @ wb.astype(cd)
        return gh, ((g.T @ hc).astype(w.dtype), g.sum(axis=0).astype(b.dtype))

    gh, (gw, gb) = lax.scan(step, jnp.zeros(h.shape, cd), main)
    gw, gb = gw.reshape(-1, h.shape[1]), gb.reshape(-1)
    if tail is not None:
        gh, (gw_t, gb_t) = step(gh, tail)
        gw, gb = jnp.concatenate([gw, gw_t]), jnp.concatenate([gb, gb_t])
    return gh.astype(h.dtype), gw, gb if has_bias else jnp.zeros_like(b), None


_lce.defvjp(_lce_fwd, _lce_bwd)


def linear_cross_entropy(h: Any, w: Any, b: Any, t: Any, o: Options) -> Any:
    """The loss of ``h`` (tokens, hidden) against ``t`` (tokens,), arguments already checked."""
    has_bias = b is not None
    return _lce(o, has_bias, h, w, b if has_bias else jnp.zeros((w.shape[0],), h.dtype), t)
