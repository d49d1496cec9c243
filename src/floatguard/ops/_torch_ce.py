"""PyTorch CPU cross-entropy: ``torch.autograd.Function``s over the numba kernels.

The generic array-API cross-entropy records a dozen ops per call and keeps their
(N, C) temporaries for autograd. Here the forward is one compiled pass per row
(:mod:`._numba_losses`) that keeps only per-row residuals (row max ``m``,
``log1p(s)`` and the row's coefficients; the logits themselves are the one
(N, C) tensor saved, as PyTorch keeps them too), and the backward is one pass
that writes ``g (a softmax(x) - b)`` in the input dtype. Rows are split over
threads (on torch's OpenMP team, the callbacks of :mod:`._numba_team_ce`; else :func:`._torch_rows.run_rows`).

A backward with ``create_graph=True`` (double backward) uses the same formula in
differentiable torch ops instead, so higher derivatives stay exact.

The z-loss (``z_loss (log Z)^2`` per row) is computed from the residuals
(``log Z = m + log1p(s)``) after the kernels, and enters their backward as a
per-row addition to the coefficient of ``softmax``; soft-capping runs inside
the kernels (``cap > 0``). :func:`cross_entropy_plain` is the common case (class indices, no weight,
no smoothing) with fewer steps; :func:`cross_entropy_features` the latency route of class weights, label
smoothing and probabilities (no ``autograd.Function`` where no gradient is recorded); :mod:`._torch_ce_compile`
holds both as custom ops for ``torch.compile``. A float32/bfloat16 mean or sum whose logits require grad also
writes, in the forward, the gradient of ``loss.backward()`` (``g = 1``) from the exps it already has
(:func:`._numba_ce_plain.ce_plain_forward_grad`, :mod:`._numba_ce_fused` with weights, smoothing or probabilities;
no z-loss or soft-capping), and the backward hands it over: one exp per logit per step, not two.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import _numba_ce as KC
from . import _numba_ce_fused as KF
from . import _numba_losses as K
from ._numba_ce_plain import (
    ce_plain_forward_grad,
    ce_plain_scale_rows,
    ptr_ce_plain_forward,
    ptr_ce_plain_forward_grad,
)
from ._torch_rows import (
    EMPTY,
    PARALLEL_MIN,
    VIEW_CODE,
    bad_target,
    empty_out,
    from_float64,
    fsum_ieee,
    kernel_input,
    numpy_view,
    run_rows,
    scalar,
    team_chunks,
    team_for,
    team_run,
    writes_gradient,
    written_gradient,
)
from ._torch_softmax import STORAGE_CODE, Softmax
from ._torch_sweep import EMPTY_LIKE_MIN


def _team(rows: int, n_cls: int) -> tuple[Any, int] | None:
    """:func:`team_for` rows of ``n_cls`` classes: where they run on torch's OpenMP team (the callbacks of
    :mod:`._numba_team_ce`)."""
    return team_for(rows * n_cls, rows)


def capped(y: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap tanh(y / cap)`` (``cap = 0``: ``y``)."""
    return cap * torch.tanh(y / cap) if cap else y


def cap_grad(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``sech^2(x / cap)``, the derivative of :func:`capped`, as ``4 E / (1 + E)^2`` with
    ``E = exp(-2 |x / cap|)``: accurate where ``tanh`` rounds to 1."""
    e = torch.exp(-2.0 * torch.abs(x / cap))
    return 4.0 * e / (1.0 + e) ** 2


def plain_grad_scale(g: torch.Tensor, count: float, reduction: str) -> tuple[float, np.ndarray]:
    """The upstream gradient of :func:`cross_entropy_plain` as the kernel takes it: one scale (a sum or a
    mean over ``count`` rows; a mean over no row passes no gradient on) or, unreduced, one per row."""
    if reduction == "none":
        return 1.0, g.detach().to(torch.float64).reshape(-1).contiguous().numpy()
    gs = float(g)
    if reduction == "mean":
        gs = gs / count if count else 0.0
    return gs, EMPTY


def reduce_loss(loss: np.ndarray, den: float, reduction: str, z: np.ndarray | None = None,
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


def row_grad(g: torch.Tensor, rows: int, den: float, reduction: str) -> np.ndarray:
    """Upstream gradient per row, float64 (one entry when it is the same for every row)."""
    gd = g.detach().to(torch.float64)
    if reduction == "none":
        return gd.reshape(-1).contiguous().numpy()
    if reduction == "mean":  # a mean over no row (all ignored) has no gradient to pass on
        return np.array([float(gd) / den if den else 0.0])
    return np.array([float(gd)])


def z_rows(z_loss: float, m: np.ndarray, lg: np.ndarray, alive: np.ndarray, loss: np.ndarray,
           kept: np.ndarray | None = None) -> np.ndarray | None:
    """The z-loss ``coef (log Z)^2`` of each row, ``log Z = m + log1p(s)`` (0 on rows ignored or with a
    non-finite max); None without z-loss. On a row not ignored (``kept``, None: every row) with a non-finite
    max the z-loss ``coef m^2 = +inf`` dominates: ``loss`` becomes ``+inf`` there (NaN stays NaN)."""
    if not z_loss:
        return None
    lse = m + lg
    dead = alive == 0 if kept is None else (alive == 0) & kept
    loss[dead & ~np.isnan(loss)] = np.inf
    return np.where(alive > 0, z_loss * (lse * lse), 0.0)


def z_grad(g: torch.Tensor, count: float, reduction: str, z_loss: float, m: np.ndarray, lg: np.ndarray,
            alive: np.ndarray) -> np.ndarray:
    """Per row, the z-loss's addition ``2 coef log Z g_r`` to the coefficient of ``softmax`` in the gradient
    (``g_r`` the upstream gradient of the row's z-loss: ``g / count`` for a mean); empty without z-loss."""
    if not z_loss:
        return EMPTY
    gd = g.detach().to(torch.float64)
    gz: np.ndarray | float
    if reduction == "none":
        gz = gd.reshape(-1).contiguous().numpy()
    elif reduction == "mean":
        gz = float(gd) / count if count else 0.0
    else:
        gz = float(gd)
    return np.where(alive > 0, (2.0 * z_loss) * (m + lg) * gz, 0.0)


Sums = tuple[float, float, float]  # (loss total, den, count) of the rows, in the kernel's order (res_sums)


def index_forward(xn: np.ndarray, tk: torch.Tensor, wn: np.ndarray, ignore_index: int | None, eps: float,
                   cap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Sums]:
    """:func:`._numba_losses.ce_index_forward` over row chunks: ``(loss, m, log1p(s), w_c, alive)`` per row and
    their :data:`Sums` (:func:`._numba_ce.res_sums`: the same for one chunk or several)."""
    rows, n_cls = xn.shape
    tn = tk.numpy()
    ign = -100 if ignore_index is None else int(ignore_index)
    res = np.empty((5, rows))
    if rows * n_cls < PARALLEL_MIN and not cap:  # one thread: no chunks (a small call's cost is mostly this one's)
        bad0, total, den, count = KC.ce_index_forward_res(xn, tn, wn, wn.size > 0, ign, ignore_index is not None,
                                                          eps, res)
        if bad0 >= 0:
            raise bad_target("cross_entropy", tk, bad0, n_cls)
        return res[0], res[1], res[2], res[3], res[4], (total, den, count)
    loss, m, lg, coef, alive = res
    if (on := _team(rows, n_cls)) is not None:
        outs = np.empty(team_chunks(rows, on[1]))
        team_run(on[0], "ce_fwd", [VIEW_CODE[xn.dtype.char], 0, tk.data_ptr(), wn.ctypes.data, wn.size, rows, n_cls,
                                   ign, int(ignore_index is not None), res.ctypes.data, 0, float(eps), 0.0, float(cap),
                                   outs.ctypes.data, xn.ctypes.data], rows, on[1])
        bad_rows = outs[outs >= 0]
        if bad_rows.size:
            raise bad_target("cross_entropy", tk, int(bad_rows[0]), n_cls)
        return loss, m, lg, coef, alive, KC.res_sums(res, tn, ign, ignore_index is not None)

    def fwd(r0: int, r1: int) -> int:
        bad = K.ce_index_forward(xn[r0:r1], tn[r0:r1], wn, wn.size > 0, ign, ignore_index is not None, eps, cap,
                                 loss[r0:r1], m[r0:r1], lg[r0:r1], coef[r0:r1], alive[r0:r1])
        return bad if bad < 0 else bad + r0

    bad = [b for b in run_rows(fwd, rows, n_cls) if b >= 0]
    if bad:
        raise bad_target("cross_entropy", tk, bad[0], n_cls)
    return loss, m, lg, coef, alive, KC.res_sums(res, tn, ign, ignore_index is not None)


def index_forward_grad(xn: np.ndarray, xk: torch.Tensor, tk: torch.Tensor, wn: np.ndarray, ignore_index: int | None,
                       eps: float, reduction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                            Sums, torch.Tensor]:
    """:func:`._numba_ce_fused.ce_index_forward_grad` over row chunks: :func:`index_forward`'s residuals and sums,
    and the gradient of ``loss.backward()`` (a sum, or a mean over the target weights of the rows kept)."""
    rows, n_cls = xn.shape
    tn = tk.numpy()
    ign = -100 if ignore_index is None else int(ignore_index)
    grad = empty_out(xk)
    gn = numpy_view(grad)
    if rows * n_cls < PARALLEL_MIN:  # one thread: the kernel sums the mean's den itself (a small call's cost)
        res = np.empty((5, rows))
        bad0, total, den, count = KF.ce_index_forward_grad_res(xn, tn, wn, wn.size > 0, ign, ignore_index is not None,
                                                               eps, -1.0 if reduction == "mean" else 1.0, res, gn)
        if bad0 >= 0:
            raise bad_target("cross_entropy", tk, bad0, n_cls)
        return res[0], res[1], res[2], res[3], res[4], (total, den, count), grad
    # the check of the indices and the mean's den in the kernel's arithmetic (one pass over the targets), so
    # that chunks give the small call's results bit for bit
    bad0, den = KF.mean_den(tn, wn, wn.size > 0, ign, ignore_index is not None, n_cls)
    if bad0 >= 0:
        raise bad_target("cross_entropy", tk, bad0, n_cls)
    gs = (1.0 / den if den else 0.0) if reduction == "mean" else 1.0
    res = np.empty((5, rows))
    loss, m, lg, coef, alive = res
    if (on := _team(rows, n_cls)) is not None:
        outs = np.empty(team_chunks(rows, on[1]))  # unused: the targets were checked above
        team_run(on[0], "ce_fwd", [VIEW_CODE[xn.dtype.char], 1, tk.data_ptr(), wn.ctypes.data, wn.size, rows, n_cls,
                                   ign, int(ignore_index is not None), res.ctypes.data, grad.data_ptr(), float(eps),
                                   gs, 0.0, outs.ctypes.data, xn.ctypes.data], rows, on[1])
        return loss, m, lg, coef, alive, KC.res_sums(res, tn, ign, ignore_index is not None), grad

    def fwd(r0: int, r1: int) -> None:
        KF.ce_index_forward_grad(xn[r0:r1], tn[r0:r1], wn, wn.size > 0, ign, ignore_index is not None, eps, gs,
                                loss[r0:r1], m[r0:r1], lg[r0:r1], coef[r0:r1], alive[r0:r1], gn[r0:r1])

    run_rows(fwd, rows, n_cls)
    return loss, m, lg, coef, alive, KC.res_sums(res, tn, ign, ignore_index is not None), grad


def weight64(weight: torch.Tensor | None) -> np.ndarray:
    """The class weights as a new float64 NumPy array (empty for none): NumPy's copy of a float32/float64 weight
    costs a fifth of ``Tensor.to``'s, which a small call notices."""
    if weight is None:
        return EMPTY
    if weight.dtype in (torch.float32, torch.float64) and not weight.requires_grad:
        return weight.numpy().astype(np.float64)
    return weight.detach().to(torch.float64).contiguous().numpy()


def rows_forward(xk: torch.Tensor, target: torch.Tensor, wn: np.ndarray, ignore_index: int | None, eps: float,
                 reduction: str, cap: float, fused: bool) -> tuple[Any, ...]:
    """The forward kernels over the rows ``xk`` (:func:`kernel_input`): ``(loss, m, lg, coef, alive, den, count, tk,
    grad, total)`` per row and for the reduction; ``grad`` the gradient of ``loss.backward()`` where ``fused``
    (float32 or bfloat16, a mean or a sum, no soft-capping: :mod:`._numba_ce_fused`), else None; ``total`` the sum
    of ``loss`` (:func:`._numba_ce.res_sums`, :func:`._numba_ce.loss_total`: compensated, as the latency route's)."""
    rows, n_cls = xk.shape
    xn = numpy_view(xk)
    grad = None
    if not target.dtype.is_floating_point:
        tk = target if target.dtype is torch.int64 and target.is_contiguous() else target.to(torch.int64).contiguous()
        if fused:
            loss, m, lg, coef, alive, sums, grad = index_forward_grad(xn, xk, tk, wn, ignore_index, eps, reduction)
        else:
            loss, m, lg, coef, alive, sums = index_forward(xn, tk, wn, ignore_index, eps, cap)
        total, den, count = sums
        return loss, m, lg, coef, alive, den, count, tk, grad, total
    tk = kernel_input(target)
    tn = numpy_view(tk)
    res = np.empty((5, rows))
    loss, m, lg, coef, alive = res
    den = count = float(rows) if rows else float("nan")
    weighted = wn.size > 0
    gs = 1.0 / den if reduction == "mean" else 1.0
    if fused:
        grad = empty_out(xk)
        gn = numpy_view(grad)
    if tn.dtype == xn.dtype and (on := _team(rows, n_cls)) is not None:
        outs = np.empty(team_chunks(rows, on[1]))  # unused: probabilities have no bad row
        team_run(on[0], "ce_fwd", [VIEW_CODE[xn.dtype.char], 3 if fused else 2, tk.data_ptr(), wn.ctypes.data, wn.size,
                                   rows, n_cls, 0, 0, res.ctypes.data, 0 if grad is None else grad.data_ptr(),
                                   float(eps), float(gs), float(cap), outs.ctypes.data, xn.ctypes.data], rows, on[1])
        return loss, m, lg, coef, alive, den, count, tk, grad, KC.loss_total(loss, alive)
    if fused:

        def fwd_p(r0: int, r1: int) -> None:
            KF.ce_prob_forward_grad(xn[r0:r1], tn[r0:r1], wn, weighted, eps, gs, loss[r0:r1], m[r0:r1], lg[r0:r1],
                                    coef[r0:r1], alive[r0:r1], gn[r0:r1])
    else:

        def fwd_p(r0: int, r1: int) -> None:
            K.ce_prob_forward(xn[r0:r1], tn[r0:r1], wn, weighted, eps, cap, loss[r0:r1], m[r0:r1], lg[r0:r1],
                              coef[r0:r1], alive[r0:r1])

    run_rows(fwd_p, rows, n_cls)
    return loss, m, lg, coef, alive, den, count, tk, grad, KC.loss_total(loss, alive)


def loss_out(loss: np.ndarray, den: float, reduction: str, z: np.ndarray | None, count: float,
              dtype: torch.dtype, total: float | None = None) -> torch.Tensor:
    """:func:`reduce_loss` as a tensor of ``dtype``; a sum or mean without z-loss in Python floats (NumPy's
    ``errstate`` costs a small call more than its kernel), with NumPy's ``x / 0``; ``total`` the sum of ``loss``
    where the kernel summed it."""
    if reduction != "none" and z is None:
        total = float(loss.sum()) if total is None else total
        if reduction == "sum":
            return scalar(total, dtype)
        if den:
            return scalar(total / den, dtype)
        return scalar(math.nan if total == 0.0 or total != total else math.copysign(math.inf, total), dtype)
    out = reduce_loss(loss, den, reduction, z, count)
    return from_float64(out, dtype) if reduction == "none" else scalar(float(out), dtype)


class _CrossEntropy(torch.autograd.Function):
    """Cross-entropy of rows ``(R, C)``: class indices ``(R,)`` or probabilities ``(R, C)``; optionally the
    z-loss ``z_loss (log Z)^2`` per row and soft-capped logits ``cap tanh(x / cap)`` (``cap = 0``: none)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int | None,
        eps: float, reduction: str, z_loss: float, cap: float,
    ) -> torch.Tensor:
        xk = kernel_input(x)
        wn = weight64(weight)
        # a training step's loss: the forward also writes the gradient of loss.backward() (see _numba_ce_fused)
        fused = reduction != "none" and writes_gradient(x, ctx.needs_input_grad[0]) and not z_loss and not cap
        loss, m, lg, coef, alive, den, count, tk, ctx.grad, total = rows_forward(xk, target, wn, ignore_index, eps,
                                                                                 reduction, cap, fused)
        kept = None if target.dtype.is_floating_point or ignore_index is None else tk.numpy() != ignore_index
        z = z_rows(z_loss, m, lg, alive, loss, kept)
        ctx.save_for_backward(x, target)
        ctx.res = (xk if x.dtype == torch.float16 else None, tk, wn, m, lg, coef, alive, den, eps, reduction,
                   not target.dtype.is_floating_point, z_loss, cap, count)
        ctx.weight = weight
        return loss_out(loss, den, reduction, z, count, x.dtype, total)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, target = ctx.saved_tensors
        xk, tk, wn, m, lg, coef, alive, den, eps, reduction, index, z_loss, cap, count = ctx.res
        ready = written_gradient(ctx.grad, g)  # the forward's gradient, when it is the one for this g
        ctx.grad = None
        if ready is not None:
            return ready, *([None] * 7)
        if torch.is_grad_enabled():  # create_graph: the same formula in differentiable ops
            grad = _ce_grad_graph(x, target, ctx.weight, g, m, coef, alive, den, eps, reduction, index, z_loss, cap,
                                  count)
            return grad, *([None] * 7)
        xk = xk if xk is not None else x.detach().contiguous()
        out = rows_backward(xk, tk, wn, (m, lg, coef, alive), den, count, g, eps, reduction, z_loss, cap)
        return out.to(x.dtype), *([None] * 7)


def rows_backward(xk: torch.Tensor, tk: torch.Tensor, wn: np.ndarray, res: tuple[np.ndarray, ...], den: float,
                  count: float, g: torch.Tensor, eps: float, reduction: str, z_loss: float, cap: float) -> torch.Tensor:
    """The backward kernels over the rows ``xk`` for the upstream gradient ``g``: ``res`` the forward's ``(m,
    log1p(s), coef, alive)`` per row, ``tk`` its targets (int64 indices, or :func:`kernel_input` probabilities)."""
    m, lg, coef, alive = res
    rows, n_cls = xk.shape
    index = not tk.dtype.is_floating_point
    out = empty_out(xk)
    xn, on, gn = numpy_view(xk), numpy_view(out), row_grad(g, rows, den, reduction)
    zg = z_grad(g, count, reduction, z_loss, m, lg, alive)
    tn = tk.numpy() if index else numpy_view(tk)
    if (index or tn.dtype == xn.dtype) and (team := _team(rows, n_cls)) is not None:
        m, lg, coef, alive = (np.ascontiguousarray(v) for v in res)
        team_run(team[0], "ce_bwd", [VIEW_CODE[xn.dtype.char], 0 if index else 1, tk.data_ptr(), wn.ctypes.data,
                                     wn.size, rows, n_cls, gn.ctypes.data, gn.size, m.ctypes.data, out.data_ptr(),
                                     float(eps), zg.ctypes.data, float(cap), zg.size, xk.data_ptr(), lg.ctypes.data,
                                     coef.ctypes.data, alive.ctypes.data], rows, team[1])
        return out
    kern = K.ce_index_backward if index else K.ce_prob_backward

    def bwd(r0: int, r1: int) -> None:
        gr = gn if gn.size == 1 else gn[r0:r1]
        kern(xn[r0:r1], tn[r0:r1], wn, wn.size > 0, eps, cap, gr, zg if zg.size == 0 else zg[r0:r1], m[r0:r1],
             lg[r0:r1], coef[r0:r1], alive[r0:r1], on[r0:r1])

    run_rows(bwd, rows, n_cls)
    return out


def _ce_grad_graph(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, g: torch.Tensor,
                   m: np.ndarray, coef: np.ndarray, alive: np.ndarray, den: float, eps: float, reduction: str,
                   index: bool, z_loss: float = 0.0, cap: float = 0.0, count: float = 0.0) -> torch.Tensor:
    """The gradient of :class:`_CrossEntropy` in differentiable torch ops (for double backward); rows not ``alive``
    get 0, NaN where the forward's ``m`` is NaN (a NaN loss)."""
    rows, n_cls = x.shape
    wd = torch.float64
    y = capped(x.to(wd), cap) if cap else x
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
    if cap:
        total = total * cap_grad(x.to(wd), cap)
    dead = torch.from_numpy(np.where(np.isnan(m), np.nan, 0.0))[:, None]  # NaN marks a NaN loss (the kernels' m)
    return torch.where(live, total, dead).to(x.dtype)


def cross_entropy_features(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                           ignore_index: int | None, eps: float, reduction: str) -> torch.Tensor:
    """:func:`cross_entropy` without z-loss or soft-capping, from :func:`.losses.cross_entropy`'s latency route
    (contiguous rows ``(R, C)``, checked there): no ``autograd.Function`` where no gradient is recorded."""
    if x.requires_grad and torch.is_grad_enabled():
        return _CrossEntropy.apply(x, target, weight, ignore_index, eps, reduction, 0.0, 0.0)
    rows, n_cls = x.shape
    if target.dtype.is_floating_point and (weight is None or weight.is_contiguous()) and (
            rows * n_cls < PARALLEL_MIN or torch.get_num_threads() <= 1):  # probabilities, one thread: in place
        res = np.empty((5, rows))
        wa, w64 = weight_at(weight)
        total = KC.ptr_ce_prob_forward(STORAGE_CODE[x.dtype], x.data_ptr(), target.data_ptr(), wa, w64, rows,
                                       n_cls, eps, res)
        return loss_out(res[0], float(rows), reduction, None, float(rows), x.dtype, total)
    loss, _, _, _, _, den, count, _, _, total = rows_forward(kernel_input(x), target, weight64(weight), ignore_index,
                                                             eps, reduction, 0.0, False)
    return loss_out(loss, den, reduction, None, count, x.dtype, total)


def cross_entropy(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int | None,
                  eps: float, reduction: str, z_loss: float = 0.0, cap: float = 0.0) -> torch.Tensor:
    """Rows ``x`` (R, C), ``target`` (R,) indices or (R, C) probabilities: the loss (``reduction`` applied),
    plus the z-loss ``z_loss (log Z)^2`` per row, of the logits soft-capped to ``cap tanh(x / cap)`` when
    ``cap > 0``."""
    return _CrossEntropy.apply(x, target, weight, ignore_index, float(eps), reduction, float(z_loss), float(cap))


# -- cross-entropy, the common case: class indices, no smoothing (the latency route) ---------------------
def plain_weight(weight: torch.Tensor | None) -> np.ndarray:
    """Class weights as the plain kernels' array route reads them: float64 (a view of a float64 weight; the
    kernels are compiled for float64 weights alone), :data:`EMPTY` for none."""
    return EMPTY if weight is None else weight.detach().numpy().astype(np.float64, copy=False)


def weight_at(weight: torch.Tensor | None) -> tuple[int, bool]:
    """Class weights as the kernels on tensors' storage take them: ``(address, float64?)``, ``(0, True)`` for
    none (a contiguous float32/float64 tensor, checked by the caller's route)."""
    return (0, True) if weight is None else (weight.data_ptr(), weight.dtype == torch.float64)


def plain_forward(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None,
                  weight: torch.Tensor | None = None) -> tuple[np.ndarray, float, float]:
    """The residuals ``(5, R)`` of :func:`._numba_losses.ce_plain_forward`, the loss sum and the mean's divisor
    (the row count, or the sum of the target weights with class ``weight``: contiguous float32/float64)."""
    res, total, count, _ = _plain_rows(x, target, ignore_index, None, weight)
    return res, total, count


def plain_out(x: torch.Tensor, res: np.ndarray, total: float, count: float, reduction: str) -> torch.Tensor:
    """The loss of :func:`plain_forward`'s rows, reduced as :func:`loss_out` (the mean's divisor ``count``)."""
    return loss_out(res[0], count, reduction, None, count, x.dtype, total)



def plain_forward_grad(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None, reduction: str,
                       weight: torch.Tensor | None = None) -> tuple[np.ndarray, float, float, torch.Tensor]:
    """:func:`plain_forward` of float32/bfloat16 rows that also returns the gradient for an upstream gradient
    of 1 (:func:`._numba_ce_plain.ce_plain_forward_grad`)."""
    res, total, count, grad = _plain_rows(x, target, ignore_index, reduction, weight)
    assert grad is not None
    return res, total, count, grad


def _plain_rows(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None, reduction: str | None,
                weight: torch.Tensor | None) -> tuple[np.ndarray, float, float, torch.Tensor | None]:
    """Both forwards: row chunks over threads, the first bad target raised; with a ``reduction`` the kernel also
    writes the gradient of ``g = 1`` into a new tensor. A small call without gradient reads the tensors in place
    (:func:`._numba_ce_plain.ptr_ce_plain_forward`)."""
    rows, n_cls = x.shape
    res = np.empty((5, rows))
    ign, has = (0, False) if ignore_index is None else (ignore_index, True)
    if rows * n_cls < PARALLEL_MIN or torch.get_num_threads() <= 1:  # one chunk: the tensors read in place
        wa, w64 = weight_at(weight)
        grad = None
        if reduction is None:
            bad, total, count = ptr_ce_plain_forward(STORAGE_CODE[x.dtype], x.data_ptr(), target.data_ptr(), wa, w64,
                                                     rows, n_cls, ign, has, res)
        else:
            grad = torch.empty_like(x) if rows * n_cls < EMPTY_LIKE_MIN else empty_out(x)
            bad, total, count = ptr_ce_plain_forward_grad(
                STORAGE_CODE[x.dtype], x.data_ptr(), target.data_ptr(), wa, w64, rows, n_cls, ign, has, res,
                -1.0 if reduction == "mean" else 1.0, grad.data_ptr())  # -1: the kernel sums the mean's den
        if bad >= 0:
            raise bad_target("cross_entropy", target, bad, n_cls)
        return res, total, count, grad
    xn, tn = numpy_view(x), target.numpy()  # row chunks over threads
    wn = plain_weight(weight)
    grad = None if reduction is None else empty_out(x)
    gn = None if grad is None else numpy_view(grad)
    kept = None
    if wn.size:  # the weights' sum in the one-chunk kernel's order (chunks' partial sums would round otherwise)
        bad, kept = KF.mean_den(tn, wn, True, ign, has, n_cls)
        if bad >= 0:
            raise bad_target("cross_entropy", target, bad, n_cls)
    gs = 1.0
    if reduction == "mean":  # the mean's 1 / den over every chunk
        if kept is None:
            kept = rows if ignore_index is None else int(np.count_nonzero(tn != ignore_index))
        gs = 1.0 / kept if kept else 0.0

    def fwd(r0: int, r1: int) -> tuple[int, float, float]:
        if gn is None:
            b, t, c = K.ce_plain_forward(xn[r0:r1], tn[r0:r1], wn, ign, has, res[:, r0:r1])
        else:
            b, t, c = ce_plain_forward_grad(xn[r0:r1], tn[r0:r1], wn, ign, has, res[:, r0:r1], gs, gn[r0:r1])
        return (b + r0 if b >= 0 else b), t, c

    if (on := _team(rows, n_cls)) is not None:
        outs = np.empty((team_chunks(rows, on[1]), 3))
        team_run(on[0], "ce_plain_fwd", [VIEW_CODE[xn.dtype.char], x.data_ptr(), target.data_ptr(), wn.ctypes.data,
                                         wn.size, rows, n_cls, ign, int(has), res.ctypes.data,
                                         0 if grad is None else grad.data_ptr(), outs.ctypes.data, gs], rows, on[1])
        parts = [(int(b), t, c) for b, t, c in outs.tolist()]
    else:
        parts = run_rows(fwd, rows, n_cls)
    bads = [p[0] for p in parts if p[0] >= 0]
    bad = bads[0] if bads else -1
    total, count = fsum_ieee(p[1] for p in parts), sum(p[2] for p in parts) if kept is None else float(kept)
    if bad >= 0:
        raise bad_target("cross_entropy", target, bad, n_cls)
    return res, total, count, grad


class _CEPlain(torch.autograd.Function):
    """:class:`_CrossEntropy` for class indices without smoothing (class weights or none), with fewer steps.

    A mean or a sum of float32/bfloat16 rows is the backward of a training step
    (``loss.backward()``, ``g = 1``): the forward writes that gradient with the loss (every exp computed
    once), and the backward hands it over when ``g`` is 1 (once: a second backward computes it again).

    Unreduced (``reduction='none'``), the forward writes ``R = softmax(x) - onehot`` (the gradient for ``g_r = 1``,
    0 on ignored rows) in the input dtype, a residual of the size of the log-softmax torch keeps, and the
    backward is ``g_r R``: one multiply per entry instead of every exp again (float32, 256×1000: 1.25 -> 0.89x
    ``F.cross_entropy``'s forward and backward, ``benchmarks/training_speed.py``). ``R`` is rounded once, the
    product once more: within 1.5 ulp (measured 1.43 for ``g_r`` in [0.5, 2)), where the recomputed backward rounds
    once; exact for ``g_r`` a power of two. ``create_graph`` and a second backward take the kernel again.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                ignore_index: int | None, reduction: str) -> torch.Tensor:
        ctx.grad = None
        if writes_gradient(x, ctx.needs_input_grad[0]):  # not in evaluation, nor for logits above 16 MiB
            res, total, count, ctx.grad = plain_forward_grad(x, target, ignore_index, reduction, weight)
        else:
            res, total, count = plain_forward(x, target, ignore_index, weight)
        ctx.save_for_backward(x, target)
        ctx.res = (res, count, reduction, weight)
        return plain_out(x, res, total, count, reduction)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, target = ctx.saved_tensors
        res, count, reduction, weight = ctx.res
        if reduction == "none":
            ready = _scaled_rows(ctx.grad, g, res)
        else:
            ready = written_gradient(ctx.grad, g)  # the forward's gradient, when it is the one for this g
        ctx.grad = None
        if ready is not None:
            return ready, None, None, None, None
        if torch.is_grad_enabled():  # create_graph: the same formula in differentiable ops
            grad = _ce_grad_graph(x, target, weight, g, res[1], res[3], res[4], count, 0.0, reduction, True)
            return grad, None, None, None, None
        gs, gn = plain_grad_scale(g, count, reduction)
        out = plain_backward(x, target, res, gs, gn)
        return out, None, None, None, None


def plain_backward(x: torch.Tensor, target: torch.Tensor, res: np.ndarray, gs: float, gn: np.ndarray) -> torch.Tensor:
    """:func:`._numba_ce_plain.ce_plain_backward` of contiguous rows ``x`` (float32, bfloat16 or float64) and int64
    ``target`` from the forward's residuals ``res`` (float64 ``(5, R)``), the upstream gradient as
    :func:`plain_grad_scale` gives it: one thread, or rows split over threads (torch's OpenMP team, else the pool)."""
    rows, n_cls = x.shape
    out = empty_out(x)
    xn, tn, on = numpy_view(x), target.numpy(), numpy_view(out)
    if rows * n_cls < PARALLEL_MIN:
        K.ce_plain_backward(xn, tn, gs, gn, res, on)
    elif (team := _team(rows, n_cls)) is not None:
        gn = np.ascontiguousarray(gn, dtype=np.float64)
        team_run(team[0], "ce_plain_bwd", [VIEW_CODE[xn.dtype.char], x.data_ptr(), target.data_ptr(), gn.ctypes.data,
                                           gn.size, res.ctypes.data, out.data_ptr(), rows, n_cls, gs], rows, team[1])
    else:
        def bwd(r0: int, r1: int) -> None:
            K.ce_plain_backward(xn[r0:r1], tn[r0:r1], gs, gn if gn.size == 0 else gn[r0:r1], res[:, r0:r1], on[r0:r1])

        run_rows(bwd, rows, n_cls)
    return out


def _scaled_rows(ready: torch.Tensor | None, g: torch.Tensor, res: np.ndarray) -> torch.Tensor | None:
    """``g_r R`` of the residual ``R`` an unreduced forward wrote (in place, :func:`.ce_plain_scale_rows`), or
    None when the kernel must compute the gradient (no ``R``, or ``create_graph``)."""
    if ready is None or torch.is_grad_enabled():
        return None
    gn = g.numpy() if g.dtype == torch.float32 and g.is_contiguous() else plain_grad_scale(g, 0.0, "none")[1]
    gn = gn.reshape(-1)
    rows, n_cls = ready.shape
    if (team := _team(rows, n_cls)) is not None:
        team_run(team[0], "ce_scale_rows", [STORAGE_CODE[ready.dtype], ready.data_ptr(), gn.ctypes.data,
                                            0 if gn.dtype == np.float32 else 3, res.ctypes.data, rows, n_cls],
                 rows, team[1])
    else:
        ce_plain_scale_rows(numpy_view(ready), gn, res)
    return ready


def cross_entropy_plain(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None,
                        reduction: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``x`` (R, C) (contiguous, float32/float64/bfloat16), int64 indices ``target`` (R,) and optional class
    weights (float32/float64 (C,), contiguous, no grad): the loss.

    Without a gradient to record no ``autograd.Function`` is built (its cost exceeds the kernel's at
    small shapes).
    """
    if x.requires_grad and torch.is_grad_enabled():
        return _CEPlain.apply(x, target, weight, ignore_index, reduction)
    res, total, count = plain_forward(x, target, ignore_index, weight)
    return plain_out(x, res, total, count, reduction)
