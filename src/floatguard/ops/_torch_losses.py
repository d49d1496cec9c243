"""PyTorch CPU path of the fused losses: ``torch.autograd.Function``s over the numba kernels.

The generic array-API cross-entropy records a dozen ops per call and keeps their
(N, C) temporaries for autograd. Here the forward is one compiled pass per row
(:mod:`._numba_losses`) that keeps only per-row residuals (row max ``m``,
``log1p(s)`` and the row's coefficients; the logits themselves are the one
(N, C) tensor saved, as PyTorch keeps them too), and the backward is one pass
that writes ``g (a softmax(x) - b)`` in the input dtype. Rows are split over
``torch.get_num_threads()`` threads (the kernels release the GIL).

A backward with ``create_graph=True`` (double backward) uses the same formula in
differentiable torch ops instead, so higher derivatives stay exact.

The z-loss (``z_loss (log Z)^2`` per row) is computed from the residuals
(``log Z = m + log1p(s)``) after the kernels, and enters their backward as a
per-row addition to the coefficient of ``softmax``; soft-capping runs inside
the kernels (``cap > 0``). Under ``torch.compile`` the custom op
``floatguard::cross_entropy_rows`` takes both (``softcap = 0``: none).

Tensors on other devices (CUDA, XPU, MPS) take :func:`cross_entropy_device`, the same
semantics composed of torch ops in float32 (float64 for float64) with the max split, and
per-row residuals as the kernels keep (tested on the CPU with ``FLOATGUARD_FORCE_DEVICE_PATH``).

Inputs: CPU tensors, float32, float64 or bfloat16 (read through their int16
bits); float16 is computed through a float32 copy. Callers check
:func:`usable` first and fall back to the generic path otherwise.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from . import _numba_losses as K

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_PARALLEL_MIN = 1 << 16  # elements below which one thread does it all
_EMPTY = np.empty(0)
_pool: ThreadPoolExecutor | None = None


def usable(x: torch.Tensor) -> bool:
    """True when the compiled kernels can take ``x`` (numba present, CPU, a supported dtype)."""
    return K.AVAILABLE and x.device.type == "cpu" and x.dtype in _DTYPES


def _view(x: torch.Tensor) -> np.ndarray:
    """A NumPy view of a contiguous float32/float64/bfloat16 tensor (bfloat16 as its int16 bits)."""
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy()
    return x.numpy()


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.dtype == torch.float16:
        x = x.float()
    return x.contiguous()


def _grad_input(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The upstream gradient as a contiguous tensor of ``dtype``; one entry when it is an expanded scalar
    (``out.sum().backward()``), which the kernels broadcast (no (N,) copy of one number)."""
    g = g.detach()
    if g.numel() > 1 and all(st == 0 for st in g.stride()):
        g = g.reshape(-1)[:1]
    g = _kernel_input(g)
    return g if g.dtype == dtype else g.to(dtype)


def _chunks(rows: int, cols: int) -> list[tuple[int, int]]:
    threads = torch.get_num_threads()
    if threads <= 1 or rows * cols < _PARALLEL_MIN or rows < 2:
        return [(0, rows)]
    k = min(threads, rows)
    bounds = [rows * i // k for i in range(k + 1)]
    return list(itertools.pairwise(bounds))


def _run(fn: Any, rows: int, cols: int) -> list[Any]:
    """``fn(r0, r1)`` over row chunks, in threads when the work is large enough."""
    global _pool
    parts = _chunks(rows, cols)
    if len(parts) == 1:
        return [fn(0, rows)]
    if _pool is None or _pool._max_workers < len(parts):
        _pool = ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="floatguard")
    return list(_pool.map(lambda p: fn(*p), parts))


def _bad_target(func: str, target: torch.Tensor, row: int, n_cls: int) -> ValueError:
    return ValueError(
        f"floatguard.{func}: argument 'target' has class indices outside [0, {n_cls}) "
        f"(e.g. {int(target.reshape(-1)[row])}); set ignore_index for padding entries"
    )


def _reduce(loss: np.ndarray, den: float, reduction: str, z: np.ndarray | None = None,
            count: float = 0.0) -> np.ndarray:
    """The reduced loss; with the z-loss rows ``z``, their sum (or their mean over the ``count`` rows not
    ignored) is added to the cross-entropy's (whose mean divides by ``den``, the sum of the target weights)."""
    if reduction == "none":
        return loss if z is None else loss + z
    total = loss.sum()
    if reduction != "mean":
        return np.asarray(total if z is None else total + z.sum())
    with np.errstate(invalid="ignore", divide="ignore"):  # every row ignored: 0/0 is NaN, as torch's mean
        return np.asarray(total / den if z is None else total / den + z.sum() / count)


def _row_grad(g: torch.Tensor, rows: int, den: float, reduction: str) -> np.ndarray:
    """Upstream gradient per row, float64 (one entry when it is the same for every row)."""
    gd = g.detach().to(torch.float64)
    if reduction == "none":
        return gd.reshape(-1).contiguous().numpy()
    if reduction == "mean":  # a mean over no row (all ignored) has no gradient to pass on
        return np.array([float(gd) / den if den else 0.0])
    return np.array([float(gd)])


def _z_rows(z_loss: float, m: np.ndarray, lg: np.ndarray, alive: np.ndarray, loss: np.ndarray) -> np.ndarray | None:
    """The z-loss ``coef (log Z)^2`` of each row, ``log Z = m + log1p(s)`` (0 on rows ignored or with a
    non-finite max); None without z-loss. On a row with a non-finite max, where the cross-entropy is
    ``-m``, the z-loss ``coef m^2 = +inf`` dominates: ``loss`` becomes ``|m|`` there (NaN stays NaN)."""
    if not z_loss:
        return None
    lse = m + lg
    np.abs(loss, out=loss, where=alive == 0)  # ignored rows are 0 already
    return np.where(alive > 0, z_loss * (lse * lse), 0.0)


def _z_grad(g: torch.Tensor, count: float, reduction: str, z_loss: float, m: np.ndarray, lg: np.ndarray,
            alive: np.ndarray) -> np.ndarray:
    """Per row, the z-loss's addition ``2 coef log Z g_r`` to the coefficient of ``softmax`` in the gradient
    (``g_r`` the upstream gradient of the row's z-loss: ``g / count`` for a mean); empty without z-loss."""
    if not z_loss:
        return _EMPTY
    gd = g.detach().to(torch.float64)
    gz: np.ndarray | float
    if reduction == "none":
        gz = gd.reshape(-1).contiguous().numpy()
    elif reduction == "mean":
        gz = float(gd) / count if count else 0.0
    else:
        gz = float(gd)
    return np.where(alive > 0, (2.0 * z_loss) * (m + lg) * gz, 0.0)


def _empty(x: torch.Tensor) -> torch.Tensor:
    if x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.empty(tuple(x.shape), dtype=np.float32 if x.dtype == torch.float32 else np.float64))
    return torch.empty(x.shape, dtype=x.dtype)


def _index_forward(xn: np.ndarray, tk: torch.Tensor, wn: np.ndarray, ignore_index: int | None, eps: float,
                   cap: float) -> tuple[np.ndarray, ...]:
    """:func:`._numba_losses.ce_index_forward` over row chunks: ``(loss, m, log1p(s), w_c, alive)`` per row."""
    rows, n_cls = xn.shape
    loss, m, lg, coef, alive = (np.empty(rows) for _ in range(5))
    tn = tk.numpy()
    ign = -100 if ignore_index is None else int(ignore_index)

    def fwd(r0: int, r1: int) -> int:
        bad = K.ce_index_forward(xn[r0:r1], tn[r0:r1], wn, wn.size > 0, ign, ignore_index is not None, eps, cap,
                                 loss[r0:r1], m[r0:r1], lg[r0:r1], coef[r0:r1], alive[r0:r1])
        return bad if bad < 0 else bad + r0

    bad = [b for b in _run(fwd, rows, n_cls) if b >= 0]
    if bad:
        raise _bad_target("cross_entropy", tk, bad[0], n_cls)
    return loss, m, lg, coef, alive


class _CrossEntropy(torch.autograd.Function):
    """Cross-entropy of rows ``(R, C)``: class indices ``(R,)`` or probabilities ``(R, C)``; optionally the
    z-loss ``z_loss (log Z)^2`` per row and soft-capped logits ``cap tanh(x / cap)`` (``cap = 0``: none)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int | None,
        eps: float, reduction: str, z_loss: float, cap: float,
    ) -> torch.Tensor:
        xk = _kernel_input(x)
        rows, n_cls = xk.shape
        xn = _view(xk)
        wn = np.empty(0) if weight is None else weight.detach().to(torch.float64).contiguous().numpy()
        index = not target.dtype.is_floating_point
        if index:
            tk = target.detach().to(torch.int64).contiguous()
            loss, m, lg, coef, alive = _index_forward(xn, tk, wn, ignore_index, eps, cap)
            den = float(coef.sum())
            count = float(rows) if ignore_index is None else float(np.count_nonzero(tk.numpy() != ignore_index))
        else:
            tk = _kernel_input(target)
            tn = _view(tk)
            loss, m, lg, coef, alive = (np.empty(rows) for _ in range(5))

            def fwd_p(r0: int, r1: int) -> None:
                K.ce_prob_forward(xn[r0:r1], tn[r0:r1], wn, weight is not None, eps, cap,
                                  loss[r0:r1], m[r0:r1], lg[r0:r1], coef[r0:r1], alive[r0:r1])

            _run(fwd_p, rows, n_cls)
            den = count = float(rows) if rows else float("nan")
        z = _z_rows(z_loss, m, lg, alive, loss)
        ctx.save_for_backward(x, target)
        ctx.res = (xk if x.dtype == torch.float16 else None, tk, wn, m, lg, coef, alive, den, eps, reduction, index,
                   z_loss, cap, count)
        ctx.weight = weight
        out = _reduce(loss, den, reduction, z, count)
        return torch.from_numpy(out).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, target = ctx.saved_tensors
        xk, tk, wn, m, lg, coef, alive, den, eps, reduction, index, z_loss, cap, count = ctx.res
        rows, n_cls = x.shape
        if torch.is_grad_enabled():  # create_graph: the same formula in differentiable ops
            grad = _ce_grad_graph(x, target, ctx.weight, g, m, coef, alive, den, eps, reduction, index, z_loss, cap,
                                  count)
            return grad, *([None] * 7)
        xk = xk if xk is not None else x.detach().contiguous()
        out = _empty(xk)
        xn, on, gn = _view(xk), _view(out), _row_grad(g, rows, den, reduction)
        zg = _z_grad(g, count, reduction, z_loss, m, lg, alive)
        tn = tk.numpy() if index else _view(tk)
        kern = K.ce_index_backward if index else K.ce_prob_backward

        def bwd(r0: int, r1: int) -> None:
            gr = gn if gn.size == 1 else gn[r0:r1]
            kern(xn[r0:r1], tn[r0:r1], wn, wn.size > 0, eps, cap, gr, zg if zg.size == 0 else zg[r0:r1], m[r0:r1],
                 lg[r0:r1], coef[r0:r1], alive[r0:r1], on[r0:r1])

        _run(bwd, rows, n_cls)
        return out.to(x.dtype), *([None] * 7)


def _ce_grad_graph(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, g: torch.Tensor,
                   m: np.ndarray, coef: np.ndarray, alive: np.ndarray, den: float, eps: float, reduction: str,
                   index: bool, z_loss: float = 0.0, cap: float = 0.0, count: float = 0.0) -> torch.Tensor:
    """The gradient of :class:`_CrossEntropy` in differentiable torch ops (for double backward)."""
    from ._torch_fast import Softmax

    rows, n_cls = x.shape
    wd = torch.float64
    y = cap * torch.tanh(x.to(wd) / cap) if cap else x
    p = Softmax.apply(y).to(wd)
    gr = g.to(wd).reshape(-1, 1) if reduction == "none" else (g.to(wd) / den if reduction == "mean" else g.to(wd))
    w = torch.ones(n_cls, dtype=wd) if weight is None else weight.detach().to(wd)
    live = torch.from_numpy(alive)[:, None] > 0
    if index:
        wt = torch.from_numpy(coef)[:, None]
        a = (1 - eps) * wt + eps * w.sum() / n_cls
        hot = torch.zeros(rows, n_cls, dtype=wd).scatter_(1, target.clamp(0, n_cls - 1).to(torch.int64)[:, None], 1.0)
        grad = a * p - eps / n_cls * w - (1 - eps) * wt * hot
    else:
        tw = ((1 - eps) * target.detach().to(wd) + eps / n_cls) * w
        grad = torch.from_numpy(coef)[:, None] * p - tw
    total = gr * grad
    if z_loss:  # d coef (log Z)^2 = 2 coef log Z softmax, times the z-loss's own upstream gradient
        gz = g.to(wd).reshape(-1, 1) if reduction == "none" else (
            (g.to(wd) / count if count else 0.0 * g.to(wd)) if reduction == "mean" else g.to(wd))
        total = total + gz * (2.0 * z_loss) * torch.logsumexp(y.to(wd), dim=1, keepdim=True) * p
    if cap:  # sech^2(x / cap) = 4 E / (1 + E)^2, E = exp(-2 |x / cap|): accurate where tanh rounds to 1
        e = torch.exp(-2.0 * torch.abs(x.to(wd) / cap))
        total = total * (4.0 * e / (1.0 + e) ** 2)
    return torch.where(live, total, 0.0).to(x.dtype)


def cross_entropy(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int | None,
                  eps: float, reduction: str, z_loss: float = 0.0, cap: float = 0.0) -> torch.Tensor:
    """Rows ``x`` (R, C), ``target`` (R,) indices or (R, C) probabilities: the loss (``reduction`` applied),
    plus the z-loss ``z_loss (log Z)^2`` per row, of the logits soft-capped to ``cap tanh(x / cap)`` when
    ``cap > 0``."""
    return _CrossEntropy.apply(x, target, weight, ignore_index, float(eps), reduction, float(z_loss), float(cap))


# -- cross-entropy, the common case: class indices, no weight, no smoothing (the latency route) ---------
_PLAIN = (torch.float32, torch.float64, torch.bfloat16)


def _plain_forward(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> tuple[np.ndarray, float, float]:
    """The residuals ``(5, R)`` of :func:`._numba_losses.ce_plain_forward`, the loss sum and the row count."""
    rows, n_cls = x.shape
    xn, tn = _view(x), target.numpy()
    res = np.empty((5, rows))
    ign, has = (0, False) if ignore_index is None else (ignore_index, True)
    if rows * n_cls < _PARALLEL_MIN or torch.get_num_threads() <= 1:
        bad, total, count = K.ce_plain_forward(xn, tn, ign, has, res)
    else:
        def fwd(r0: int, r1: int) -> tuple[int, float, float]:
            b, t, c = K.ce_plain_forward(xn[r0:r1], tn[r0:r1], ign, has, res[:, r0:r1])
            return (b + r0 if b >= 0 else b), t, c

        parts = _run(fwd, rows, n_cls)
        bads = [p[0] for p in parts if p[0] >= 0]
        bad = bads[0] if bads else -1
        total, count = math.fsum(p[1] for p in parts), sum(p[2] for p in parts)
    if bad >= 0:
        raise _bad_target("cross_entropy", target, bad, n_cls)
    return res, total, count


def _plain_out(x: torch.Tensor, res: np.ndarray, total: float, count: float, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return torch.from_numpy(res[0]).to(x.dtype, copy=True)
    return _scalar(total if reduction == "sum" else (total / count if count else math.nan), x.dtype)


def _scalar(val: float, dtype: torch.dtype) -> torch.Tensor:
    """A 0-d tensor of ``val`` rounded once to ``dtype``, the cheapest way (``torch.tensor`` costs ~2 us)."""
    if dtype == torch.float32:
        return torch.from_numpy(np.array(val, np.float32))
    if dtype == torch.float64:
        return torch.from_numpy(np.array(val))
    return torch.full((), val, dtype=torch.float64).to(dtype)


class _CEPlain(torch.autograd.Function):
    """:class:`_CrossEntropy` for class indices without weight or smoothing, with fewer steps."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, target: torch.Tensor, ignore_index: int | None,
                reduction: str) -> torch.Tensor:
        res, total, count = _plain_forward(x, target, ignore_index)
        ctx.save_for_backward(x, target)
        ctx.res = (res, count, reduction)
        return _plain_out(x, res, total, count, reduction)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, target = ctx.saved_tensors
        res, count, reduction = ctx.res
        if torch.is_grad_enabled():  # create_graph: the same formula in differentiable ops
            grad = _ce_grad_graph(x, target, None, g, res[1], res[3], res[4], count, 0.0, reduction, True)
            return grad, None, None, None
        rows, n_cls = x.shape
        out = _empty(x)
        if reduction == "none":
            gs, gn = 1.0, g.detach().to(torch.float64).reshape(-1).contiguous().numpy()
        else:
            gs, gn = float(g), _EMPTY
            if reduction == "mean":  # a mean over no row (all ignored) has no gradient to pass on
                gs = gs / count if count else 0.0
        xn, tn, on = _view(x), target.numpy(), _view(out)

        def bwd(r0: int, r1: int) -> None:
            K.ce_plain_backward(xn[r0:r1], tn[r0:r1], gs, gn if gn.size == 0 else gn[r0:r1], res[:, r0:r1], on[r0:r1])

        if rows * n_cls < _PARALLEL_MIN:
            K.ce_plain_backward(xn, tn, gs, gn, res, on)
        else:
            _run(bwd, rows, n_cls)
        return out, None, None, None


def cross_entropy_plain(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None,
                        reduction: str) -> torch.Tensor:
    """Rows ``x`` (R, C) (contiguous, float32/float64/bfloat16) and int64 indices ``target`` (R,): the loss.

    Without a gradient to record no ``autograd.Function`` is built (its cost exceeds the kernel's at
    small shapes).
    """
    if x.requires_grad and torch.is_grad_enabled():
        return _CEPlain.apply(x, target, ignore_index, reduction)
    res, total, count = _plain_forward(x, target, ignore_index)
    return _plain_out(x, res, total, count, reduction)


# -- binary cross-entropy ------------------------------------------------------------------------
def _per_class(a: torch.Tensor | None, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` broadcast to ``shape`` as float64 rows ``(R, C)``, or ``(1, C)`` if it varies along the last axis only."""
    if a is None:
        return np.empty((0, 0))
    a = a.detach().to(torch.float64)
    n = shape[-1] if shape else 1
    if a.ndim <= 1 or all(s == 1 for s in a.shape[:-1]):
        return a.reshape(-1).expand(n).reshape(1, n).contiguous().numpy()
    return a.broadcast_to(shape).reshape(-1, n).contiguous().numpy()


class _BCE(torch.autograd.Function):
    """``w (pw y softplus(-x) + (1 - y) softplus(x))`` elementwise, reduced; gradient with respect to ``x`` only."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, pos_weight: torch.Tensor | None,
        reduction: str,
    ) -> torch.Tensor:
        shape = tuple(x.shape)
        n = shape[-1] if shape else 1
        xk, yk = _kernel_input(x).reshape(-1, n), _kernel_input(y).reshape(-1, n)
        wn, pn = _per_class(weight, shape), _per_class(pos_weight, shape)
        rows = xk.shape[0]
        store = reduction == "none"
        out = np.empty((rows, n) if store else (0, 0))
        xn, yn = _view(xk), _view(yk)

        def fwd(r0: int, r1: int) -> float:
            return K.bce_forward(xn[r0:r1], yn[r0:r1], wn if wn.shape[0] <= 1 else wn[r0:r1],
                                 pn if pn.shape[0] <= 1 else pn[r0:r1], out[r0:r1] if store else out, store)

        total = sum(_run(fwd, rows, n))
        if ctx is not None:  # None: called for the values alone (bce_plain)
            ctx.save_for_backward(x, y)
            ctx.res = (wn, pn, reduction, rows * n)
            ctx.weights = (weight, pos_weight)
        if store:
            return torch.from_numpy(out).reshape(shape).to(x.dtype)
        return _bce_scalar(total, rows * n, reduction, x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, y = ctx.saved_tensors
        wn, pn, reduction, count = ctx.res
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            from .elementwise import sigmoid

            w, pw = ctx.weights
            pos = y * sigmoid(-x) * (1 if pw is None else pw)
            grad = (sigmoid(x) * (1 - y) - pos) * (1 if w is None else w)
            scale = g / count if reduction == "mean" else g
            return (grad * scale).to(x.dtype), None, None, None, None
        shape = tuple(x.shape)
        n = shape[-1] if shape else 1
        xk, yk = _kernel_input(x).reshape(-1, n), _kernel_input(y).reshape(-1, n)
        rows = xk.shape[0]
        if reduction == "none":
            gn = g.detach().to(torch.float64).reshape(-1, n).contiguous().numpy()
        else:
            gn = np.array([[float(g) / count if reduction == "mean" else float(g)]])
        out = _empty(xk)
        xn, yn, on = _view(xk), _view(yk), _view(out)

        def bwd(r0: int, r1: int) -> None:
            K.bce_backward(xn[r0:r1], yn[r0:r1], wn if wn.shape[0] <= 1 else wn[r0:r1],
                           pn if pn.shape[0] <= 1 else pn[r0:r1], gn if gn.size == 1 else gn[r0:r1], on[r0:r1])

        _run(bwd, rows, n)
        return out.reshape(shape).to(x.dtype), None, None, None, None


def binary_cross_entropy_with_logits(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
                                     pos_weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Elementwise BCE from logits ``x`` and targets ``y`` (same shape), ``reduction`` applied."""
    return _BCE.apply(x, y, weight, pos_weight, reduction)


def _bce_scalar(total: float, count: int, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    return _scalar(total if reduction == "sum" else (total / count if count else math.nan), dtype)


_NO_WEIGHT = np.empty((0, 0))


def bce_plain(x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    """:func:`binary_cross_entropy_with_logits` of contiguous float32/float64/bfloat16 ``x`` and ``y`` of one
    shape and dtype, without weights; no ``autograd.Function`` when no gradient is recorded."""
    if x.requires_grad and torch.is_grad_enabled():
        return _BCEPlain.apply(x, y, reduction)
    return _bce_plain_values(x, y, reduction)


def _bce_plain_values(x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    shape = tuple(x.shape)
    n = shape[-1] if shape else 1
    xn, yn = _view(x).reshape(-1, n), _view(y).reshape(-1, n)
    rows = xn.shape[0]
    if reduction == "none" or rows * n >= _PARALLEL_MIN:
        return _BCE.forward(None, x, y, None, None, reduction)
    total = K.bce_forward(xn, yn, _NO_WEIGHT, _NO_WEIGHT, _NO_WEIGHT, False)
    return _bce_scalar(total, rows * n, reduction, x.dtype)


class _BCEPlain(torch.autograd.Function):
    """:class:`_BCE` without weights, with fewer steps (the latency route)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        ctx.reduction = reduction
        return _bce_plain_values(x, y, reduction)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, y = ctx.saved_tensors
        reduction = ctx.reduction
        count = x.numel()
        if torch.is_grad_enabled() or reduction == "none" or count >= _PARALLEL_MIN:
            ctx.res = (_NO_WEIGHT, _NO_WEIGHT, reduction, count)
            ctx.weights = (None, None)
            return *_BCE.backward(ctx, g)[:2], None
        n = x.shape[-1] if x.ndim else 1
        gv = float(g)
        out = _empty(x)
        K.bce_backward(_view(x).reshape(-1, n), _view(y).reshape(-1, n), _NO_WEIGHT, _NO_WEIGHT,
                       np.array([[gv / count if reduction == "mean" else gv]]), _view(out).reshape(-1, n))
        return out, None, None


# -- elementwise ops -------------------------------------------------------------------------------
SOFTPLUS, LOG_SIGMOID, LOG1MEXP = 0, 1, 2


def _flat_run(fn: Any, size: int) -> None:
    _run(fn, size, 1)


_F64 = {torch.float32: False, torch.float64: True}  # the ``f64`` argument of the ``ptr_*`` kernels


def _unary_values(x: torch.Tensor, op: int) -> torch.Tensor:
    f64 = _F64.get(x.dtype)
    if f64 is not None and x.numel() < _PARALLEL_MIN and x.is_contiguous():  # latency: the shortest route
        out = torch.empty_like(x)
        K.ptr_unary(f64, x.data_ptr(), 0, out.data_ptr(), x.numel(), op, False)
        return out
    xk = _kernel_input(x)
    out = _empty(xk)
    xn, on = _view(xk).reshape(-1), _view(out).reshape(-1)
    _flat_run(lambda r0, r1: K.unary_forward(xn[r0:r1], on[r0:r1], op), xn.size)
    return out if out.dtype == x.dtype else out.to(x.dtype)


class _Unary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, op: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.op = op
        return _unary_values(x, op)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, None]:
        (x,) = ctx.saved_tensors
        op = ctx.op
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            from .elementwise import sigmoid

            if op == LOG1MEXP:
                xd = x.to(torch.float64)
                d = torch.where(xd > 0, torch.nan, -1.0 / (torch.expm1(-xd) + 0.0))
            else:
                d = sigmoid(x if op == SOFTPLUS else -x)
            return (g * d).to(x.dtype), None
        f64 = _F64.get(x.dtype)
        if f64 is not None and x.numel() < _PARALLEL_MIN and x.is_contiguous():  # latency: the shortest route
            if g.dtype != x.dtype or g.shape != x.shape or not g.is_contiguous():
                g = _grad_input(g, x.dtype).expand(x.shape).contiguous()
            out = torch.empty_like(x)
            K.ptr_unary(f64, x.data_ptr(), g.data_ptr(), out.data_ptr(), x.numel(), op, True)
            return out, None
        xk = _kernel_input(x)
        gk = _grad_input(g, xk.dtype)
        out = _empty(xk)
        xn, gn, on = _view(xk).reshape(-1), _view(gk).reshape(-1), _view(out).reshape(-1)
        _flat_run(lambda r0, r1: K.unary_backward(xn[r0:r1], gn if gn.size == 1 else gn[r0:r1], on[r0:r1], op),
                  xn.size)
        return out.to(x.dtype), None


def unary(x: torch.Tensor, op: int) -> torch.Tensor:
    """softplus, log_sigmoid or log1mexp of a CPU tensor (``op``), through the compiled kernels."""
    if x.requires_grad and torch.is_grad_enabled():
        return _Unary.apply(x, op)
    return _unary_values(x, op)


def _lae_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    f64 = _F64.get(a.dtype)
    if f64 is not None and a.numel() < _PARALLEL_MIN and a.is_contiguous() and b.is_contiguous():  # latency
        out = torch.empty_like(a)
        K.ptr_logaddexp(f64, a.data_ptr(), b.data_ptr(), out.data_ptr(), a.numel())
        return out
    ak, bk = _kernel_input(a), _kernel_input(b)
    out = _empty(ak)
    an, bn, on = _view(ak).reshape(-1), _view(bk).reshape(-1), _view(out).reshape(-1)
    _flat_run(lambda r0, r1: K.logaddexp_forward(an[r0:r1], bn[r0:r1], on[r0:r1]), an.size)
    return out if out.dtype == a.dtype else out.to(a.dtype)


class _LogAddExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return _lae_values(a, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            from .elementwise import sigmoid

            both = (a == -torch.inf) & (b == -torch.inf)
            sa = torch.where(both, 0.0, sigmoid(torch.where(both, 0.0, a - b)))
            sb = torch.where(both, 0.0, sigmoid(torch.where(both, 0.0, b - a)))
            return (g * sa).to(a.dtype), (g * sb).to(b.dtype)
        ak, bk = _kernel_input(a), _kernel_input(b)
        gk = _grad_input(g, ak.dtype)
        ga, gb = _empty(ak), _empty(ak)
        an, bn, gn = _view(ak).reshape(-1), _view(bk).reshape(-1), _view(gk).reshape(-1)
        gan, gbn = _view(ga).reshape(-1), _view(gb).reshape(-1)
        _flat_run(lambda r0, r1: K.logaddexp_backward(an[r0:r1], bn[r0:r1], gn if gn.size == 1 else gn[r0:r1],
                                                          gan[r0:r1], gbn[r0:r1]),
                  an.size)
        return ga.to(a.dtype), gb.to(b.dtype)


def logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``logaddexp`` of two CPU tensors of one shape and dtype, through the compiled kernels."""
    if (a.requires_grad or b.requires_grad) and torch.is_grad_enabled():
        return _LogAddExp.apply(a, b)
    return _lae_values(a, b)


# -- under torch.compile: the latency route as custom ops ------------------------------------------
# Dynamo cannot trace the kernels (NumPy views, compiled code, a ValueError on values): as custom ops
# they enter the graph whole, run eager's code and keep its checks; the fake versions give the shapes.
@torch.library.custom_op("floatguard::cross_entropy_rows", mutates_args=())
def cross_entropy_op(x: torch.Tensor, target: torch.Tensor, ignore_index: int, has_ignore: bool,
                     reduction: str, z_loss: float = 0.0, softcap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cross_entropy_plain` as a custom op: the loss and the residuals ``(5, R)`` (float64); with
    ``z_loss`` or ``softcap`` (0: none) the general kernel's rows (:func:`_featured_forward`)."""
    x, target = x.contiguous(), target.contiguous()
    if z_loss or softcap:
        return _featured_forward(x, target, ignore_index if has_ignore else None, reduction, z_loss, softcap)
    res, total, count = _plain_forward(x, target, ignore_index if has_ignore else None)
    return _plain_out(x, res, total, count, reduction), torch.from_numpy(res)


def _featured_forward(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None, reduction: str,
                      z_loss: float, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The custom op with z-loss or soft-capping: :func:`._numba_losses.ce_index_forward` (no weight, no
    smoothing), its residuals in the layout of :func:`_plain_forward` (row 0 the cross-entropy alone)."""
    loss, m, lg, coef, alive = _index_forward(_view(x), target, _EMPTY, ignore_index, 0.0, cap)
    res = np.stack([loss, m, lg, coef, alive])
    count = float(coef.sum())  # unweighted: 1 per row not ignored
    z = _z_rows(z_loss, m, lg, alive, loss)
    out = _reduce(loss, count, reduction, z, count)
    return torch.from_numpy(np.asarray(out)).to(x.dtype), torch.from_numpy(res)


@cross_entropy_op.register_fake
def _(x: torch.Tensor, target: torch.Tensor, ignore_index: int, has_ignore: bool,
      reduction: str, z_loss: float = 0.0, softcap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (x.shape[0],) if reduction == "none" else ()
    return x.new_empty(shape), x.new_empty((5, x.shape[0]), dtype=torch.float64)


@torch.library.custom_op("floatguard::cross_entropy_rows_backward", mutates_args=())
def cross_entropy_backward_op(x: torch.Tensor, target: torch.Tensor, res: torch.Tensor, g: torch.Tensor,
                              reduction: str, z_loss: float = 0.0, softcap: float = 0.0) -> torch.Tensor:
    """The gradient of :func:`cross_entropy_op` with respect to ``x`` (upstream ``g``)."""
    x, target = x.contiguous(), target.contiguous()
    rn = res.contiguous().numpy()
    out = _empty(x)
    count = float(rn[3].sum())
    if z_loss or softcap:
        gn = _row_grad(g, x.shape[0], count, reduction)
        zg = _z_grad(g, count, reduction, z_loss, rn[1], rn[2], rn[4])
        K.ce_index_backward(_view(x), target.numpy(), _EMPTY, False, 0.0, softcap, gn, zg, rn[1], rn[2], rn[3],
                            rn[4], _view(out))
        return out
    if reduction == "none":
        gs, gn = 1.0, g.detach().to(torch.float64).reshape(-1).contiguous().numpy()
    else:
        gs, gn = float(g), _EMPTY
        if reduction == "mean":
            gs = gs / count if count else 0.0
    K.ce_plain_backward(_view(x), target.numpy(), gs, gn, rn, _view(out))
    return out


@cross_entropy_backward_op.register_fake
def _(x: torch.Tensor, target: torch.Tensor, res: torch.Tensor, g: torch.Tensor, reduction: str, z_loss: float = 0.0,
      softcap: float = 0.0) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, as the real output


def _ce_op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.args = inputs[4:7]  # reduction, z_loss, softcap
    ctx.save_for_backward(inputs[0], inputs[1], output[1])


def _ce_op_backward(ctx: Any, g: torch.Tensor, _g_res: Any) -> tuple[Any, ...]:
    x, target, res = ctx.saved_tensors
    return cross_entropy_backward_op(x, target, res, g, *ctx.args), *([None] * 6)


cross_entropy_op.register_autograd(_ce_op_backward, setup_context=_ce_op_setup)


def cross_entropy_compiled(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None,
                           reduction: str, z_loss: float = 0.0, softcap: float = 0.0) -> torch.Tensor:
    """:func:`cross_entropy_plain` under ``torch.compile`` (with z-loss and soft-capping: ``softcap`` 0 is none)."""
    return cross_entropy_op(x, target, 0 if ignore_index is None else ignore_index, ignore_index is not None,
                            reduction, float(z_loss), float(softcap))[0]


# -- tensors on other devices (CUDA, XPU, MPS): torch ops in float32, the max split ---------------------
def _capped(y: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap tanh(y / cap)`` (``cap = 0``: ``y``)."""
    return cap * torch.tanh(y / cap) if cap else y


def _device_probs(y: torch.Tensor, m0: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``softmax(y) = e^{d} (1 + lo) / (1 + s)`` from the forward's residuals ``m0`` (the row max, 0 on
    rows with no finite max) and ``s`` (R, 1); ``d + lo = y - m0`` exactly (TwoSum) in float32."""
    d = y - m0
    if y.dtype == torch.float32:
        bb = d - y
        lo = (y - (d - bb)) - (m0 + bb)
        return torch.exp(d) * (1.0 + torch.where(torch.isfinite(lo), lo, 0.0)) / (1.0 + s)
    return torch.exp(d) / (1.0 + s)


def _target_weights(target: torch.Tensor, w: torch.Tensor | None, eps: float, wd: torch.dtype) -> torch.Tensor:
    """Class probabilities ``t`` smoothed and weighted: ``((1 - eps) t + eps / C) w``, in ``wd``."""
    tw = target.detach().to(wd)
    if eps:
        tw = (1 - eps) * tw + eps / tw.shape[1]
    return tw if w is None else tw * w


class _CrossEntropyDevice(torch.autograd.Function):
    r"""Cross-entropy of rows ``(R, C)`` in torch ops for tensors off the CPU: :class:`_CrossEntropy`'s
    semantics (class indices or probabilities, ``weight``, ``ignore_index``, ``label_smoothing``, every
    reduction, z-loss, soft-capping), computed in float32 (float64 for float64 inputs).

    .. math:: -\log \mathrm{softmax}(y)_c = \mathrm{log1p}(s) - (d_c + lo_c), \quad
              d + lo = y - m \ \text{exactly}, \quad s = \sum_{i \ne k} e^{d_i} (1 + lo_i)

    The forward keeps per row the max ``m``, ``s``, ``log1p(s)``, the coefficient of ``softmax`` in the
    gradient and whether the row is live (the CPU kernel's residuals) besides the logits; the backward
    rebuilds ``softmax`` from them in one elementwise pass: ``g (a p - b)``, plus ``2 z log Z p`` for
    the z-loss, times ``sech^2(x / c)`` when capped. Under ``create_graph`` the same formula runs on a
    differentiable ``softmax``, so double backward is exact.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int | None,
        eps: float, reduction: str, z_loss: float, cap: float,
    ) -> torch.Tensor:
        from ._torch_fast import _device_stats

        wd = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = _capped(x.detach().to(wd), cap)
        rows, n_cls = y.shape
        m, d, lo, _, s, finite = _device_stats(y)
        lg = torch.log1p(s)
        logp = (d - lg) + lo  # log_softmax, as device_softmax
        w = None if weight is None else weight.detach().to(wd)
        fin = finite[:, 0]
        index = not target.dtype.is_floating_point
        if index:
            keep = torch.ones_like(fin) if ignore_index is None else target != ignore_index
            if bool((((target < 0) | (target >= n_cls)) & keep).any()):  # one read on the host
                bad = int((((target < 0) | (target >= n_cls)) & keep).nonzero()[0, 0])
                raise _bad_target("cross_entropy", target, bad, n_cls)
            idx = torch.where(keep, target, 0).to(torch.int64)
            wt = keep.to(wd) if w is None else torch.where(keep, w[idx], 0.0)
            loss = -wt * logp.gather(1, idx[:, None])[:, 0]
            coef = wt
            if eps:
                smooth = -(logp if w is None else logp * w).sum(dim=1) / n_cls
                wsum = float(n_cls) if w is None else w.sum()
                loss = (1 - eps) * loss + eps * torch.where(keep, smooth, 0.0)
                coef = (1 - eps) * wt + (eps / n_cls) * wsum * keep.to(wd)
            den, count = wt.sum(), keep.sum().to(wd)
        else:
            keep, wt = torch.ones_like(fin), None
            tw = _target_weights(target, w, eps, wd)
            loss = -torch.where((tw == 0) & torch.isinf(logp), 0.0, tw * logp).sum(dim=1)  # 0 log 0 = 0
            coef = tw.sum(dim=1)
            den = count = torch.tensor(float(rows) if rows else math.nan, dtype=wd, device=x.device)
        alive = fin & keep
        lim = -m[:, 0] if not z_loss else torch.abs(m[:, 0])  # a row with no finite max (its z-loss is +inf)
        loss = torch.where(keep, torch.where(fin, loss, lim), 0.0)
        m0 = torch.where(finite, m, 0.0)
        lse = torch.where(alive, m0[:, 0] + lg[:, 0], 0.0)
        z = z_loss * (lse * lse) if z_loss else None
        ctx.save_for_backward(x, target, weight)
        ctx.res = (m0, s, lse, coef, alive, keep, wt, den, count, eps, reduction, index, z_loss, cap)
        if reduction == "none":
            out = loss if z is None else loss + z
        elif reduction == "sum":
            out = loss.sum() if z is None else loss.sum() + z.sum()
        else:
            out = loss.sum() / den if z is None else loss.sum() / den + z.sum() / count
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        from ._torch_fast import LogSumExp, Softmax

        x, target, weight = ctx.saved_tensors
        m0, s, lse, coef, alive, keep, wt, den, count, eps, reduction, index, z_loss, cap = ctx.res
        wd = m0.dtype
        graph = torch.is_grad_enabled()  # create_graph: softmax differentiable, the coefficients constants
        xs = (x if graph else x.detach()).to(wd)
        y = _capped(xs, cap)
        p = torch.where(alive[:, None], Softmax.apply(y), 0.0) if graph else _device_probs(y, m0, s)
        if graph and z_loss:  # log Z in the graph too: it depends on x
            lse = torch.where(alive, LogSumExp.apply(y)[:, 0], 0.0)
        n_cls = x.shape[1]
        gw = g.to(wd)
        if reduction == "none":
            gr = gz = gw.reshape(-1, 1)
        elif reduction == "mean":  # a mean over no row (all ignored) has no gradient to pass on
            gr = torch.where(den != 0, gw / den, 0.0)
            gz = torch.where(count != 0, gw / count, 0.0)
        else:
            gr = gz = gw
        grad = coef[:, None] * p
        if index:
            if eps:
                keepf = keep.to(wd)[:, None]
                grad = grad - (eps / n_cls) * (keepf if weight is None else keepf * weight.detach().to(wd))
            idx = torch.where(keep, target, 0).to(torch.int64)[:, None]
            grad = grad.scatter_add(1, idx, -((1 - eps) * wt)[:, None])
        else:
            grad = grad - _target_weights(target, None if weight is None else weight.detach().to(wd), eps, wd)
        total = gr * grad
        if z_loss:  # d z (log Z)^2 = 2 z log Z softmax, times the z-loss's own upstream gradient
            total = total + ((2.0 * z_loss) * lse[:, None] * gz) * p
        if cap:  # sech^2(x / cap) = 4 E / (1 + E)^2, E = exp(-2 |x / cap|): accurate where tanh rounds to 1
            e = torch.exp(-2.0 * torch.abs(xs / cap))
            total = total * (4.0 * e / (1.0 + e) ** 2)
        return torch.where(alive[:, None], total, 0.0).to(x.dtype), *([None] * 7)


def cross_entropy_device(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                         ignore_index: int | None, eps: float, reduction: str, z_loss: float = 0.0,
                         cap: float = 0.0) -> torch.Tensor:
    """:func:`cross_entropy` for tensors off the CPU (any device): torch ops, float32 math
    (:class:`_CrossEntropyDevice`). Target values are checked with one read on the host."""
    return _CrossEntropyDevice.apply(x, target, weight, ignore_index, float(eps), reduction, float(z_loss),
                                     float(cap))


def cross_entropy_rows_torch(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None,
                             reduction: str) -> torch.Tensor:
    r"""Cross-entropy of rows ``x`` ``(R, C)`` and int64 class indices in torch ops (any device), float32 math.

    .. math:: \ell_r = \mathrm{log1p}(s) + (m - x_c), \quad m = x_k = \max_i x_i, \quad
              s = \sum_{i \ne k} e^{x_i - m}

    The max term is taken out of the sum (``log1p`` keeps a confident row's small loss to the last
    bit, where ``log(1 + s)`` rounds it to 0 below 6e-8); bfloat16/float16 rows accumulate in
    float32. Ties at the max add their ``1`` each through ``s``. A row with a non-finite max has
    loss ``-m``. :func:`cross_entropy_device` without weight, smoothing or the features.
    """
    return cross_entropy_device(x, target, None, ignore_index, 0.0, reduction)
