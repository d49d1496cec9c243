"""Cross-entropy of PyTorch tensors off the CPU (CUDA, XPU, MPS): torch ops in float32, the max split.

The semantics of the CPU kernels (:mod:`._torch_ce`: class indices or probabilities, ``weight``,
``ignore_index``, ``label_smoothing``, every reduction, z-loss, soft-capping) composed of torch ops in
float32 (float64 for float64), keeping the per-row residuals the kernels keep. Tested on the CPU with
``FLOATGUARD_FORCE_DEVICE_PATH``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._core import inf_row_loss
from ._torch_ce import cap_grad, capped
from ._torch_device import device_stats, split_diff
from ._torch_namespace import xp_torch as xpt
from ._torch_rows import bad_target
from ._torch_softmax import LogSumExp, Softmax


def _device_probs(y: torch.Tensor, m0: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``softmax(y) = e^{d} (1 + lo) / (1 + s)`` from the forward's residuals ``m0`` (the row max, 0 on
    rows with no finite max) and ``s`` (R, 1); ``d + lo = y - m0`` exactly (TwoSum) in float32."""
    d, lo = split_diff(y, m0)
    return torch.exp(d) * (1.0 + lo) / (1.0 + s)


def _target_weights(target: torch.Tensor, w: torch.Tensor | None, eps: float, wd: torch.dtype) -> torch.Tensor:
    """Class probabilities ``t`` smoothed and weighted: ``((1 - eps) t + eps / C) w``, in ``wd``."""
    tw = target.detach().to(wd)
    if eps:
        tw = (1 - eps) * tw + eps / tw.shape[1]
    return tw if w is None else tw * w


class _CrossEntropyDevice(torch.autograd.Function):
    r"""Cross-entropy of rows ``(R, C)`` in torch ops for tensors off the CPU: :class:`._torch_ce._CrossEntropy`'s
    semantics (class indices or probabilities, ``weight``, ``ignore_index``, ``label_smoothing``, every
    reduction, z-loss, soft-capping), computed in float32 (float64 for float64 inputs).

    .. math:: -\log \mathrm{softmax}(y)_c = \mathrm{log1p}(s) - (d_c + lo_c), \quad
              d + lo = y - m \ \text{exactly}, \quad s = \sum_{i \ne k} e^{d_i} (1 + lo_i)

    The forward keeps per row the max ``m``, ``s``, ``log1p(s)``, the coefficient of ``softmax`` in the
    gradient and whether the row is live (the CPU kernel's residuals; a row that is not has the gradient 0, NaN where
    its loss is NaN) besides the logits; the backward
    rebuilds ``softmax`` from them in one elementwise pass: ``g (a p - b)``, plus ``2 z log Z p`` for
    the z-loss, times ``sech^2(x / c)`` when capped. Under ``create_graph`` the same formula runs on a
    differentiable ``softmax``, so double backward is exact.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int | None,
        eps: float, reduction: str, z_loss: float, cap: float,
    ) -> torch.Tensor:
        wd = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = capped(x.detach().to(wd), cap)
        rows, n_cls = y.shape
        m, d, lo, _, s, finite = device_stats(y)
        lg = torch.log1p(s)
        logp = (d - lg) + lo  # log_softmax, as device_softmax
        w = None if weight is None else weight.detach().to(wd)
        fin = finite[:, 0]
        index = not target.dtype.is_floating_point
        if index:
            keep = torch.ones_like(fin) if ignore_index is None else target != ignore_index
            if bool((((target < 0) | (target >= n_cls)) & keep).any()):  # one read on the host
                bad = int((((target < 0) | (target >= n_cls)) & keep).nonzero()[0, 0])
                raise bad_target("cross_entropy", target, bad, n_cls)
            idx = torch.where(keep, target, 0).to(torch.int64)
            wt = coef_t = keep.to(wd) if w is None else torch.where(keep, w[idx], 0.0)
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
        if z_loss:  # a row with no finite max: its z-loss is +inf
            lim = torch.abs(m[:, 0])
        else:  # +inf rows: the limit (inf_row_loss); -inf rows +inf, NaN rows NaN
            yd = y.detach()
            if index:
                spread = None if not eps else (eps / n_cls) * (torch.ones_like(yd[0]) if w is None else w)
                inf_loss = inf_row_loss(xpt, yd, yd.gather(1, idx[:, None])[:, 0], (1 - eps) * coef_t, spread)
            else:
                inf_loss = inf_row_loss(xpt, yd, None, None, tw)
            lim = torch.where(m[:, 0] == math.inf, inf_loss, -m[:, 0])
        loss = torch.where(keep, torch.where(fin, loss, lim), 0.0)
        m0 = torch.where(finite, m, 0.0)
        lse = torch.where(alive, m0[:, 0] + lg[:, 0], 0.0)
        z = z_loss * (lse * lse) if z_loss else None
        dead = torch.where(torch.isnan(loss), math.nan, 0.0)[:, None]  # a row not alive: gradient 0, NaN for a NaN loss
        ctx.save_for_backward(x, target, weight)
        ctx.res = (m0, s, lse, coef, alive, dead, keep, wt, den, count, eps, reduction, index, z_loss, cap)
        if reduction == "none":
            out = loss if z is None else loss + z
        elif reduction == "sum":
            out = loss.sum() if z is None else loss.sum() + z.sum()
        else:
            out = loss.sum() / den if z is None else loss.sum() / den + z.sum() / count
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, target, weight = ctx.saved_tensors
        m0, s, lse, coef, alive, dead, keep, wt, den, count, eps, reduction, index, z_loss, cap = ctx.res
        wd = m0.dtype
        graph = torch.is_grad_enabled()  # create_graph: softmax differentiable, the coefficients constants
        xs = (x if graph else x.detach()).to(wd)
        y = capped(xs, cap)
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
        if cap:
            total = total * cap_grad(xs, cap)
        return torch.where(alive[:, None], total, dead).to(x.dtype), *([None] * 7)


def cross_entropy_device(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                         ignore_index: int | None, eps: float, reduction: str, z_loss: float = 0.0,
                         cap: float = 0.0) -> torch.Tensor:
    """:func:`._torch_ce.cross_entropy` for tensors off the CPU (any device): torch ops, float32 math
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
    float32. Ties at the max add their ``1`` each through ``s``. A row with a non-finite max has the
    loss of :func:`.losses.cross_entropy` (``+inf``, NaN, or the limit of a ``+inf`` row).
    :func:`cross_entropy_device` without weight, smoothing or the features.
    """
    return cross_entropy_device(x, target, None, ignore_index, 0.0, reduction)
