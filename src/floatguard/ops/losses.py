"""Losses computed from logits, never from probabilities.

Taking ``log`` of a ``sigmoid`` or ``softmax`` output is the most common source
of NaN losses: the probability rounds to 0 or 1 and its log is ``-inf``. These
losses work on logits with the log-domain identities
``-log(sigmoid(x)) = softplus(-x)`` and ``-log(softmax(x))_c = log1p(s) - d_c``.
"""

from __future__ import annotations

from typing import Any

from ._core import shifted
from ._namespace import Backend, alias, as_float, namespace, normalize_axis, quiet
from .elementwise import _softplus

__all__ = ["binary_cross_entropy_with_logits", "cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str, func: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"floatguard.{func}: argument 'reduction' must be one of 'mean', 'sum', 'none', "
            f"got {reduction!r}"
        )


def _reduce(be: Backend, loss: Any, reduction: str, count: Any = None) -> Any:
    xp = be.xp
    if reduction == "none":
        return loss
    total = xp.sum(loss)
    if reduction == "sum":
        return total
    n = count if count is not None else loss.size if be.name != "torch" else loss.numel()
    return total / n


def _same_shape(a: Any, shape: tuple[int, ...], name: str, what: str, func: str) -> None:
    if tuple(a.shape) != shape:
        raise ValueError(
            f"floatguard.{func}: argument {name!r} has shape {tuple(a.shape)}; expected {what} {shape}"
        )


@quiet
def binary_cross_entropy_with_logits(
    logits: Any,
    targets: Any,
    *,
    weight: Any = None,
    pos_weight: Any = None,
    reduction: str = "mean",
) -> Any:
    r"""Binary cross-entropy of ``targets`` under ``sigmoid(logits)``, from the logits.

    .. math:: \ell = w \, [\, p \, y \, \mathrm{softplus}(-x) + (1 - y) \, \mathrm{softplus}(x) \,]

    with ``p`` the ``pos_weight`` (PyTorch's convention). Both terms are
    non-negative for ``0 <= y <= 1``, so nothing cancels: a confident correct
    prediction (``x = 30, y = 1``) gives ``9.36e-14`` to the last bit, where the
    ``max(x, 0) - x y + log(1 + e^{-|x|})`` form of PyTorch is off by ~1e7 ulp in
    float32.

    Parameters
    ----------
    logits, targets : array
        Same shape; targets are probabilities in [0, 1] (soft labels allowed).
    weight : array, optional
        Per-element weight, broadcast to ``logits``.
    pos_weight : array, optional
        Weight of positive examples, broadcast to ``logits`` (usually one per class).
    reduction : {"mean", "sum", "none"}
        As in PyTorch: "mean" divides the sum by the number of elements.
    """
    func = "binary_cross_entropy_with_logits"
    _check_reduction(reduction, func)
    be = namespace(("logits", logits), ("targets", targets), ("weight", weight), ("pos_weight", pos_weight), func=func)
    xp = be.xp
    x = as_float(be, logits, "logits", func)
    y = as_float(be, targets, "targets", func, like=x)
    _same_shape(y, tuple(x.shape), "targets", "the shape of 'logits',", func)
    dtype = x.dtype
    wd = be.work_dtype(dtype)
    xw, yw = xp.astype(x, wd, copy=False), xp.astype(y, wd, copy=False)
    pos = _softplus(xp, -xw)
    neg = _softplus(xp, xw)
    if pos_weight is not None:
        pw = xp.astype(as_float(be, pos_weight, "pos_weight", func, like=x), wd, copy=False)
        pos = pos * _broadcast(be, pw, tuple(x.shape), "pos_weight", func)
    # a zero coefficient drops its term even where the term is +inf (x = -+inf); elsewhere the
    # product stays in the graph, so the gradient with respect to the targets is -x
    pos = xp.where((yw == 0) & xp.isinf(pos), xp.zeros_like(pos), pos)
    neg = xp.where((yw == 1) & xp.isinf(neg), xp.zeros_like(neg), neg)
    loss = yw * pos + (1 - yw) * neg
    if weight is not None:
        w = xp.astype(as_float(be, weight, "weight", func, like=x), wd, copy=False)
        loss = loss * _broadcast(be, w, tuple(x.shape), "weight", func)
    return xp.astype(_reduce(be, loss, reduction), dtype, copy=False)


def _broadcast(be: Backend, a: Any, shape: tuple[int, ...], name: str, func: str) -> Any:
    try:
        return be.xp.broadcast_to(a, shape)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"floatguard.{func}: argument {name!r} has shape {tuple(a.shape)}, which does not "
            f"broadcast to the shape {shape} of 'logits'"
        ) from exc


def _is_integer(be: Backend, a: Any) -> bool:
    xp = be.xp
    if be.name == "torch":
        return not a.dtype.is_floating_point and not a.dtype.is_complex and a.dtype != xp.bool
    if be.name == "numpy":
        return xp.issubdtype(a.dtype, xp.integer)
    return xp.issubdtype(a.dtype, xp.integer)


@quiet
def cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    dim: int | None = None,
) -> Any:
    r"""Cross-entropy of ``target`` under ``softmax(logits)`` along ``axis``, from the logits.

    .. math:: \ell = -\sum_c t_c \log \mathrm{softmax}(x)_c, \qquad
              -\log \mathrm{softmax}(x)_c = \mathrm{log1p}(s) - (x_c - m)

    ``target`` is either integer class indices (shape of ``logits`` without
    ``axis``) or class probabilities (shape of ``logits``). With
    ``label_smoothing`` ``eps`` the target becomes ``(1 - eps) t + eps / C``.
    Entries whose class is ``ignore_index`` add 0 and are left out of the
    mean. ``reduction`` is "mean", "sum" or "none", as in PyTorch. ``dim`` is an alias
    of ``axis``; the class axis defaults to the last (PyTorch's ``F.cross_entropy`` takes
    dimension 1: pass ``axis=1`` for ``(N, C, d1, ...)`` logits).

    A confident correct prediction gives ``log1p(s)`` to the last bit (the
    loss of a well-trained model is small, and PyTorch's ``log(1 + s)`` rounds
    it to 0 in float32 once it is below 6e-8).
    """
    func = "cross_entropy"
    axis = alias(axis, -1, dim, ("axis", "dim"), func)
    _check_reduction(reduction, func)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"floatguard.{func}: argument 'label_smoothing' must be in [0, 1], got {label_smoothing!r}")
    be = namespace(("logits", logits), ("target", target), func=func)
    xp = be.xp
    x = as_float(be, logits, "logits", func)
    ax = normalize_axis(axis, x.ndim, "axis", func)
    dtype = x.dtype
    rows = xp.moveaxis(xp.astype(x, be.work_dtype(dtype), copy=False), ax, -1)
    n_cls = rows.shape[-1]
    sh = shifted(be, rows)
    lsm = xp.where(sh.finite, sh.d - xp.log1p(sh.s), sh.m + xp.zeros_like(rows))
    batch_shape = tuple(rows.shape[:-1])
    if not hasattr(target, "dtype"):
        target = xp.asarray(target) if be.name != "torch" else xp.asarray(target, device=x.device)
    count = None
    if _is_integer(be, target):
        _same_shape(target, batch_shape, "target",
                    "integer class indices of the shape of 'logits' without its class axis,", func)
        keep = None if ignore_index is None else target != ignore_index
        if be.is_concrete(target):
            bad = (target < 0) | (target >= n_cls)
            if keep is not None:
                bad = bad & keep
            if bool(xp.any(bad)):
                raise ValueError(
                    f"floatguard.{func}: argument 'target' has class indices outside [0, {n_cls}) "
                    f"(e.g. {int(target[bad][0])}); set ignore_index for padding entries"
                )
        idx = xp.arange(n_cls, dtype=target.dtype)
        if be.name == "torch":
            idx = idx.to(target.device)
        onehot = idx == xp.expand_dims(target, axis=-1)
        nll = -xp.sum(xp.where(onehot, lsm, xp.zeros_like(lsm)), axis=-1)
        if label_smoothing:
            smooth = -xp.sum(lsm, axis=-1) / n_cls
            nll = (1 - label_smoothing) * nll + label_smoothing * smooth
        if keep is not None:
            nll = xp.where(keep, nll, xp.zeros_like(nll))
            count = xp.sum(xp.astype(keep, nll.dtype))
    else:
        t = as_float(be, target, "target", func)
        _same_shape(t, tuple(x.shape), "target", "class probabilities of the shape of 'logits',", func)
        t = xp.moveaxis(xp.astype(t, rows.dtype, copy=False), ax, -1)
        if label_smoothing:
            t = (1 - label_smoothing) * t + label_smoothing / n_cls
        lsm = xp.where((t == 0) & xp.isinf(lsm), xp.zeros_like(lsm), lsm)  # 0 * log(0) is 0
        nll = -xp.sum(t * lsm, axis=-1)
    return xp.astype(_reduce(be, nll, reduction, count), dtype, copy=False)
