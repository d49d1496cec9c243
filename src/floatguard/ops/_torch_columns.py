"""softmax, log_softmax, logsumexp and cross-entropy of PyTorch CPU tensors along a middle axis.

A tensor ``(N, C, H, W)`` reduced over ``dim=1`` (segmentation logits and their ``F.cross_entropy``, a
softmax over channels) is read as ``(O, C, I)`` where it lies: :mod:`._numba_columns` vectorizes over
the ``I`` positions, with no transposing copy of the input or of the gradient (moving the axis last and
back took longer than the loss itself, and AccumulateGrad copied the permuted gradient once more). The
kernels run first, outside autograd; when one reports a position whose max is not finite (or a class
index out of range), the caller takes the row path, which has the semantics and the errors of those
cases. Each op's ``autograd.Function`` then only keeps what its backward kernel reads: the output
(softmax, log_softmax), the input and float64 ``lse`` (logsumexp), the input and per-position
statistics (cross-entropy). Under ``create_graph`` the backward is differentiable torch ops.

float32, bfloat16 and float16 tensors; float64 keeps the row path (its 0.51-ulp table exp).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._torch_rows import PARALLEL_MIN, run_rows, team_for, team_run
from ._torch_sweep import empty_like

CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_EMPTY = np.empty((0, 0))
_kern: Any = None  # the _numba_columns module, False where the kernels cannot run


def _kernels() -> Any:
    global _kern
    if _kern is None:
        from . import _numba_bits

        if _numba_bits.AVAILABLE:
            from . import _numba_columns

            _kern = _numba_columns
        else:
            _kern = False
    return _kern or None


def columns(x: torch.Tensor, axis: int) -> tuple[int, int, int] | None:
    """``(O, C, I)`` of a CPU tensor reduced over ``axis`` (normalized) when the column kernels take it: a middle
    axis (something after it), a kernel dtype, no empty axis, and not the axis of stride 1 (``channels_last``
    ``(N, C, H, W)``: moved last, it is rows already, which the row kernels read with no copy); else None."""
    nd = x.ndim
    if not (0 <= axis < nd - 1) or x.dtype not in CODES or x.layout is not torch.strided or not x.is_cpu:
        return None
    if x.stride(axis) == 1 and x.shape[axis] > 1:
        return None
    shape = x.shape
    dims = (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))
    if 0 in dims or dims[2] == 1:
        return None
    return dims


def _upstream(g: torch.Tensor, den: float, reduction: str, dims: tuple[int, int, int]) -> tuple[float, np.ndarray]:
    """The loss's upstream gradient as the cross-entropy kernels take it: a factor (``g / den`` for a mean, ``g`` for a
    sum) and no array, or 1 and ``g`` per position (O, I) float64 for ``reduction='none'``. A mean over no weight (every
    position ignored, or the targets' weights 0: the loss is NaN) has the factor 0, as the row kernels'."""
    if reduction == "none":
        return 1.0, np.ascontiguousarray(g.detach().to(torch.float64).reshape(dims[0], dims[2]).numpy())
    if reduction == "mean":
        return (float(g) / den if den else 0.0), _EMPTY
    return float(g), _EMPTY


def _run(fn: Any, dims: tuple[int, int, int]) -> list[Any]:
    """``fn(o0, o1, i0, i1)`` over parts of the ``(O, I)`` positions, in threads when the work is large enough: ranges
    of ``O``, or of ``I`` within each ``o`` where ``O`` is smaller than the thread count (a batch of one image)."""
    n_out, n_cls, n_in = dims
    threads = torch.get_num_threads()
    if threads <= 1 or n_out * n_cls * n_in < PARALLEL_MIN:
        return [fn(0, n_out, 0, n_in)]
    if n_out >= threads:
        return run_rows(lambda a, b: fn(a, b, 0, n_in), n_out, n_cls * n_in)
    k = -(-threads // n_out)
    parts = [(o, o + 1, n_in * i // k, n_in * (i + 1) // k) for o in range(n_out) for i in range(k)]
    return [r for chunk in run_rows(lambda a, b: [fn(*p) for p in parts[a:b]], len(parts), n_cls * n_in // k)
            for r in chunk]


def _on_team(kind: str, args: list[Any], dims: tuple[int, int, int], flag: int = 1) -> np.ndarray | None:
    """The callback ``kind`` of :mod:`._numba_team_columns` over the positions of ``dims`` on torch's OpenMP team
    (``data`` ``[0, chunks, *args, k, units, flag]``, returned: its last entry the ``ok`` flag of the forwards, or the
    status of the cross-entropy's, which start at 0); None where one thread does it all or the thread pool of
    :func:`_run` takes it (:func:`._torch_rows.team_for`). Units as in that module: ``k`` pieces of each ``o``'s
    positions, ``k = 1`` unless ``O`` is below four a thread."""
    n_out, n_cls, n_in = dims
    if (on := team_for(n_out * n_cls * n_in, n_out * n_in)) is None:
        return None
    team, threads = on
    k = 1 if n_out >= 4 * threads else min(n_in, -(-4 * threads // n_out))
    return team_run(team, kind, [*args, k, n_out * k, flag], n_out * k, threads)


# -- softmax and log_softmax ---------------------------------------------------------------------------
def softmax_raw(x: torch.Tensor, axis: int, log: bool) -> torch.Tensor | None:
    """softmax (log_softmax with ``log``) of ``x`` over ``axis`` by the column kernels, no autograd (a new contiguous
    tensor); None where they decline."""
    dims = columns(x, axis)
    kern = _kernels() if dims is not None else None
    if kern is None or dims is None:
        return None
    xd = x.detach().contiguous()
    out = empty_like(xd)
    code, xa, oa = CODES[x.dtype], xd.data_ptr(), out.data_ptr()
    if (data := _on_team("cols_softmax_fwd", [code, xa, oa, *dims, int(log)], dims)) is not None:
        return out if data[-1] else None
    if not all(_run(lambda o0, o1, i0, i1: kern.ptr_cols_softmax(code, xa, oa, dims, log, o0, o1, i0, i1), dims)):
        return None
    return out


def softmax_grad(out: torch.Tensor, g: torch.Tensor, axis: int, log: bool) -> torch.Tensor:
    """The gradient of :func:`softmax_raw` from its output (every position with a finite max): the backward kernel;
    under ``create_graph`` differentiable torch ops."""
    if torch.is_grad_enabled():
        wd = torch.float32 if out.dtype != torch.float64 else out.dtype
        o, gw = out.to(wd), g.to(wd)
        if log:
            grad = gw - torch.exp(o) * gw.sum(dim=axis, keepdim=True)
        else:
            grad = o * (gw - (gw * o).sum(dim=axis, keepdim=True))
        return grad.to(out.dtype)
    dims = columns(out, axis)
    kern = _kernels()
    assert dims is not None and kern is not None
    gc = g.to(out.dtype).contiguous()
    grad = empty_like(out)
    code, oa, ga, gra = CODES[out.dtype], out.data_ptr(), gc.data_ptr(), grad.data_ptr()
    if _on_team("cols_softmax_bwd", [code, oa, ga, gra, *dims, int(log)], dims) is not None:
        return grad
    _run(lambda o0, o1, i0, i1: kern.ptr_cols_softmax_bwd(code, oa, ga, gra, dims, log, o0, o1, i0, i1), dims)
    return grad


def softmax(x: torch.Tensor, axis: int, log: bool) -> torch.Tensor | None:
    """softmax (log_softmax with ``log``) of ``x`` over ``axis`` by the column kernels; None where they decline."""
    out = softmax_raw(x, axis, log)
    if out is not None and x.requires_grad and torch.is_grad_enabled():
        return _Computed.apply(x, (out,), (_OUT,), lambda o, g: softmax_grad(o, g, axis, log))
    return out


# -- logsumexp --------------------------------------------------------------------------------------------
def logsumexp_raw(x: torch.Tensor, axis: int) -> np.ndarray | None:
    """float64 logsumexp (O, I) of ``x`` over ``axis`` by the column kernels; None where they decline."""
    dims = columns(x, axis)
    kern = _kernels() if dims is not None else None
    if kern is None or dims is None:
        return None
    xd = x.detach().contiguous()
    lse = np.empty((dims[0], dims[2]))
    code, xa = CODES[x.dtype], xd.data_ptr()
    if (data := _on_team("cols_logsumexp_fwd", [code, xa, lse.ctypes.data, *dims], dims)) is not None:
        return lse if data[-1] else None
    if not all(_run(lambda o0, o1, i0, i1: kern.ptr_cols_logsumexp(code, xa, lse, dims, o0, o1, i0, i1), dims)):
        return None
    return lse


def reduced_shape(shape: Any, axis: int, keepdims: bool) -> list[int]:
    out = list(shape)
    if keepdims:
        out[axis] = 1
    else:
        del out[axis]
    return out


def logsumexp_grad(x: torch.Tensor, lse: np.ndarray, g: torch.Tensor, axis: int) -> torch.Tensor:
    """``g exp(x - lse)`` over ``axis`` (every ``lse`` finite): the backward kernel; under ``create_graph`` the
    softmax in differentiable float64 ops (``x`` then the input itself)."""
    keep = reduced_shape(x.shape, axis, True)
    if torch.is_grad_enabled():
        p = torch.softmax(x.to(torch.float64), dim=axis)
        return (g.to(torch.float64).reshape(keep) * p).to(x.dtype)
    dims = columns(x, axis)
    kern = _kernels()
    assert dims is not None and kern is not None
    xd = x.detach().contiguous()
    g64 = np.ascontiguousarray(g.detach().to(torch.float64).reshape(dims[0], dims[2]).numpy())
    grad = empty_like(xd)
    code, xa, gra = CODES[xd.dtype], xd.data_ptr(), grad.data_ptr()
    if _on_team("cols_logsumexp_bwd", [code, xa, lse.ctypes.data, g64.ctypes.data, gra, *dims], dims) is not None:
        return grad
    _run(lambda o0, o1, i0, i1: kern.ptr_cols_logsumexp_bwd(code, xa, lse, g64, gra, dims, o0, o1, i0, i1), dims)
    return grad


def logsumexp(x: torch.Tensor, axis: int, keepdims: bool) -> torch.Tensor | None:
    """logsumexp of ``x`` over ``axis`` by the column kernels; None where they decline."""
    lse = logsumexp_raw(x, axis)
    if lse is None:
        return None
    out = torch.from_numpy(lse).to(x.dtype).view(reduced_shape(x.shape, axis, keepdims))
    if x.requires_grad and torch.is_grad_enabled():
        return _Computed.apply(x, (out,), (x,), lambda xs, g: logsumexp_grad(xs, lse, g, axis))
    return out


# -- cross-entropy of class indices ------------------------------------------------------------------------
def cross_entropy_raw(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int | None,
                      reduction: str, axis: int, eps: float = 0.0,
                      ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, float, np.ndarray] | None:
    """The loss of class indices ``target`` (the shape of ``x`` without ``axis``, checked by the caller) over ``axis``
    by the column kernels, class ``weight`` (C,) or None, label smoothing ``eps``, and what the backward reads: the
    indices (O, I), the per-position statistics, the mean's divisor and the weights (float64, empty for none); None
    where they decline (the row path answers, with its errors)."""
    dims = columns(x, axis)
    kern = _kernels() if dims is not None else None
    if kern is None or dims is None:
        return None
    xd = x.detach().contiguous()
    t = target.detach().to(torch.int64).contiguous().numpy().reshape(dims[0], dims[2])
    w = np.empty(0) if weight is None else weight.detach().to(torch.float64).contiguous().numpy()
    stats = np.empty((6 if eps else 5, dims[0], dims[2]))
    code, xa = CODES[x.dtype], xd.data_ptr()
    ign, has_ign = (0, False) if ignore_index is None else (int(ignore_index), True)
    data = _on_team("cols_ce_fwd", [code, xa, t.ctypes.data, w.ctypes.data, w.size, ign, int(has_ign), float(eps),
                                    stats.ctypes.data, stats.shape[0], *dims], dims, 0)
    if data is not None:
        status = [int(data[-1])]
    else:
        status = _run(lambda o0, o1, i0, i1: kern.ptr_cols_ce_fwd(code, xa, t, w, ign, has_ign, eps, stats, dims, o0,
                                                                  o1, i0, i1), dims)
    if max(status):
        return None
    loss, wt = stats[3], stats[4]
    den = 1.0
    if reduction == "none":
        out = torch.from_numpy(loss).to(x.dtype).view(target.shape)
    else:
        total = float(loss.sum())
        if reduction == "mean":
            den = float(wt.sum())
            total = total / den if den else math.nan  # a mean over no entry is NaN, as PyTorch's
        out = torch.tensor(total, dtype=x.dtype)
    return out, t, stats, den, w


def cross_entropy_grad(x: torch.Tensor, t: np.ndarray, stats: np.ndarray, den: float, reduction: str,
                       g: torch.Tensor, axis: int, w: np.ndarray, eps: float = 0.0) -> torch.Tensor:
    """The gradient of :func:`cross_entropy_raw`: the backward kernel; under ``create_graph`` differentiable float64
    torch ops (``x`` then the input itself)."""
    dims = columns(x, axis)
    assert dims is not None
    if torch.is_grad_enabled():
        return _grad_graph(x, t, stats, w, eps, g, den, reduction, dims)
    coef, gn = _upstream(g, den, reduction, dims)
    kern = _kernels()
    xd = x.detach().contiguous()
    grad = empty_like(xd)
    code, xa, gra = CODES[xd.dtype], xd.data_ptr(), grad.data_ptr()
    if _on_team("cols_ce_bwd", [code, xa, t.ctypes.data, stats.ctypes.data, stats.shape[0], w.ctypes.data, w.size,
                                float(eps), float(coef), gn.ctypes.data, gn.size, gra, *dims], dims) is not None:
        return grad
    _run(lambda o0, o1, i0, i1: kern.ptr_cols_ce_bwd(code, xa, t, stats, w, eps, coef, gn, gra, dims, o0, o1, i0, i1),
         dims)
    return grad


def cross_entropy(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int | None,
                  reduction: str, axis: int, eps: float = 0.0) -> torch.Tensor | None:
    """Cross-entropy of class indices over ``axis`` by the column kernels (:func:`cross_entropy_raw`); None where they
    decline."""
    got = cross_entropy_raw(x, target, weight, ignore_index, reduction, axis, eps)
    if got is None:
        return None
    out, t, stats, den, w = got
    if x.requires_grad and torch.is_grad_enabled():
        return _Computed.apply(x, (out,), (x,),
                               lambda xs, g: cross_entropy_grad(xs, t, stats, den, reduction, g, axis, w, eps))
    return out


def _grad_graph(x: torch.Tensor, t: np.ndarray, stats: np.ndarray, w: np.ndarray, eps: float, g: torch.Tensor,
                den: float, reduction: str, dims: tuple[int, int, int]) -> torch.Tensor:
    """``coef ((1 - eps) w_t (softmax(x) - onehot(t)) + eps / C alive (W softmax(x) - w))`` over the class axis in
    differentiable float64 ops (double backward)."""
    wd = torch.float64
    n_cls = dims[1]
    x3 = x.to(wd).reshape(dims)
    p = torch.softmax(x3, dim=1)
    hot = torch.zeros_like(p).scatter_(1, torch.from_numpy(t).clamp(0, n_cls - 1)[:, None, :], 1.0)
    if reduction == "none":
        coef = g.to(wd).reshape(dims[0], dims[2])
    else:
        coef = g.to(wd) / den if reduction == "mean" else g.to(wd)
    grad = (coef * (1 - eps) * torch.from_numpy(stats[4]))[:, None, :] * (p - hot)
    if eps:
        wc = torch.ones(n_cls, dtype=wd) if w.size == 0 else torch.from_numpy(w)
        smooth = wc.sum() * p - wc[None, :, None]
        grad = grad + (coef * (eps / n_cls) * torch.from_numpy(stats[5]))[:, None, :] * smooth
    return grad.reshape(x.shape).to(x.dtype)


# -- cross-entropy of class probabilities --------------------------------------------------------------------
def cross_entropy_probs(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, eps: float, reduction: str,
                        axis: int) -> torch.Tensor | None:
    """Cross-entropy of class probabilities ``y`` (the shape and dtype of ``x``) over ``axis`` with label smoothing
    ``eps`` by the column kernels; None where they decline (a position with no finite max: the row path)."""
    dims = columns(x, axis)
    kern = _kernels() if dims is not None else None
    if kern is None or dims is None or y.dtype != x.dtype or y.shape != x.shape:
        return None
    xd = x.detach().contiguous()
    yd = y.detach().contiguous()
    w = np.empty(0) if weight is None else weight.detach().to(torch.float64).contiguous().numpy()
    stats = np.empty((5, dims[0], dims[2]))
    code, xa, ya = CODES[x.dtype], xd.data_ptr(), yd.data_ptr()
    data = _on_team("cols_ce_prob_fwd", [code, xa, ya, w.ctypes.data, w.size, float(eps), stats.ctypes.data, *dims],
                    dims, 0)
    if data is not None:
        status = [int(data[-1])]
    else:
        status = _run(lambda o0, o1, i0, i1: kern.ptr_cols_ce_prob_fwd(code, xa, ya, w, eps, stats, dims, o0, o1, i0,
                                                                       i1), dims)
    if max(status):
        return None
    loss = stats[3]
    den = float(dims[0] * dims[2])  # probabilities: the mean over the positions, as PyTorch's
    if reduction == "none":
        out = torch.from_numpy(loss).to(x.dtype).view(reduced_shape(x.shape, axis, False))
    else:
        total = float(loss.sum())
        out = torch.tensor(total / den if reduction == "mean" else total, dtype=x.dtype)
    if x.requires_grad and torch.is_grad_enabled():
        return _Computed.apply(x, (out,), (x, yd),
                               lambda xs, ys, g: _probs_grad(xs, ys, g, w, eps, stats, den, reduction, axis))
    return out


def _probs_grad(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: np.ndarray, eps: float, stats: np.ndarray,
                den: float, reduction: str, axis: int) -> torch.Tensor:
    """The gradient of :func:`cross_entropy_probs`, ``scale (tw softmax(x) - w t')``: the backward kernel; under
    ``create_graph`` differentiable float64 torch ops."""
    dims = columns(x, axis)
    assert dims is not None
    if torch.is_grad_enabled():
        keep = reduced_shape(x.shape, axis, True)
        wd = torch.float64
        wc = torch.ones(dims[1], dtype=wd) if w.size == 0 else torch.from_numpy(w)
        wc = wc.reshape([-1] + [1] * (x.ndim - axis - 1))
        t = ((1 - eps) * y.to(wd) + eps / dims[1]) * wc
        gw = g.to(wd) / den if reduction == "mean" else g.to(wd)
        gw = gw.reshape(keep) if reduction == "none" else gw
        return (gw * (t.sum(dim=axis, keepdim=True) * torch.softmax(x.to(wd), dim=axis) - t)).to(x.dtype)
    coef, gn = _upstream(g, den, reduction, dims)
    kern = _kernels()
    xd = x.detach().contiguous()
    grad = empty_like(xd)
    code, xa, ya, gra = CODES[xd.dtype], xd.data_ptr(), y.data_ptr(), grad.data_ptr()
    if _on_team("cols_ce_prob_bwd", [code, xa, ya, w.ctypes.data, w.size, float(eps), stats.ctypes.data, float(coef),
                                     gn.ctypes.data, gn.size, gra, *dims], dims) is not None:
        return grad
    _run(lambda o0, o1, i0, i1: kern.ptr_cols_ce_prob_bwd(code, xa, ya, w, eps, stats, coef, gn, gra, dims, o0, o1,
                                                          i0, i1), dims)
    return grad


# -- the autograd Function of an output computed outside autograd ------------------------------------------------
_OUT = object()  # in ``keep``: the output itself


class _Computed(torch.autograd.Function):
    """The output ``holder[0]`` that a column kernel computed before autograd saw it, and its gradient
    ``grad(*kept, g)``: ``keep`` names the tensors the backward reads (the input, the output as ``_OUT``, the class
    probabilities), saved for it (an in-place change of the input in between raises, as for any saved tensor)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, holder: tuple[torch.Tensor], keep: tuple[Any, ...],
                grad: Any) -> torch.Tensor:
        (out,) = holder
        ctx.save_for_backward(*(out if k is _OUT else k for k in keep))
        ctx.grad = grad
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        return ctx.grad(*ctx.saved_tensors, g), None, None, None
