"""Losses computed from logits, never from probabilities.

Taking ``log`` of a ``sigmoid`` or ``softmax`` output is the most common source
of NaN losses: the probability rounds to 0 or 1 and its log is ``-inf``. These
losses work on logits with the log-domain identities
``-log(sigmoid(x)) = softplus(-x)`` and ``-log(softmax(x))_c = log1p(s) - d_c``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from . import _namespace as _ns
from ._core import Shifted, inf_row_loss, nan_rows, shifted
from ._namespace import Backend, alias, as_float, check_real, finite, namespace, normalize_axis, quiet
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
    state = _torch_state(logits, targets, weight, protocol=False)  # BCE takes no part in the override protocol
    if state & _AUTOCAST:
        logits, targets, weight, pos_weight = _autocast(logits, targets, weight, pos_weight)
    route = 0 if state & _GENERIC else _fast_bce_plain(logits, targets, weight, pos_weight, reduction)
    if route == 1:
        return _fast_module().bce_plain(logits, targets, reduction)
    if route == 2:
        from . import _torch_elementwise_compile

        return _torch_elementwise_compile.bce(logits, targets, weight, pos_weight, reduction)
    return _bce(logits, targets, weight=weight, pos_weight=pos_weight, reduction=reduction)


@quiet
def _bce(logits: Any, targets: Any, *, weight: Any, pos_weight: Any, reduction: str) -> Any:
    """:func:`binary_cross_entropy_with_logits` off its latency route."""
    func = "binary_cross_entropy_with_logits"
    _check_reduction(reduction, func)
    fast = _fast_bce(logits, targets, weight, pos_weight)
    if fast is not None:
        return fast.binary_cross_entropy_with_logits(logits, targets, weight, pos_weight, reduction)
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
    return bool(xp.issubdtype(a.dtype, xp.integer))


def _fast_torch(logits: Any, target: Any, weight: Any) -> Any:
    """The fused CPU kernels' module when they can take these arguments, else None (the generic path)."""
    torch = sys.modules.get("torch")
    if torch is None or type(logits) is not torch.Tensor or type(target) is not torch.Tensor \
            or _ns.torch_generic_only(torch):
        return None
    if weight is not None and (type(weight) is not torch.Tensor or weight.requires_grad or weight.ndim != 1):
        return None
    if target.requires_grad or logits.device.type != "cpu" or target.device.type != "cpu" or logits.ndim == 0:
        return None
    if logits.layout is not torch.strided or target.layout is not torch.strided:
        return None
    if torch.compiler.is_compiling() or not logits.dtype.is_floating_point or _ns.FORCE_DEVICE_PATH:
        return None
    from . import _torch_losses

    return _torch_losses if _torch_losses.usable(logits) else None


def _device_torch(logits: Any, target: Any, weight: Any) -> Any:
    """:mod:`._torch_losses` when its torch-op composition takes these arguments: tensors off the CPU (CUDA,
    XPU, MPS; any tensor under ``FLOATGUARD_FORCE_DEVICE_PATH``) on one device, eager; else None."""
    torch = sys.modules.get("torch")
    if torch is None or type(logits) is not torch.Tensor or type(target) is not torch.Tensor \
            or _ns.torch_generic_only(torch):
        return None
    if (logits.is_cpu and not _ns.FORCE_DEVICE_PATH) or logits.is_meta or target.device != logits.device \
            or target.requires_grad:  # meta tensors have no values to check: the generic path shapes them
        return None
    if weight is not None and (type(weight) is not torch.Tensor or weight.requires_grad or weight.ndim != 1
                               or weight.device != logits.device):
        return None
    if logits.ndim == 0 or logits.numel() == 0 or not logits.dtype.is_floating_point:
        return None
    if logits.layout is not torch.strided or target.layout is not torch.strided or torch.compiler.is_compiling():
        return None
    from . import _torch_losses

    return _torch_losses


def _compiled_columns(logits: Any, target: Any, weight: Any, axis: int) -> int | None:
    """The normalized class axis when ``torch.compile`` is tracing a cross-entropy of class indices over a middle axis
    that the column kernels take (:mod:`._torch_columns_compile`): CPU tensors, the target of the logits' shape
    without the axis, a 1-D floating weight of ``C`` entries without grad or none; else None."""
    torch = sys.modules.get("torch")
    if torch is None or type(logits) is not torch.Tensor or type(target) is not torch.Tensor \
            or not torch.compiler.is_compiling() or _ns.FORCE_DEVICE_PATH or type(axis) is not int:
        return None
    nd = logits.ndim
    ax = axis + nd if axis < 0 else axis
    if not 0 <= ax < nd - 1 or target.dtype.is_floating_point or target.dtype.is_complex \
            or target.dtype is torch.bool or not target.is_cpu or target.requires_grad:
        return None
    if tuple(target.shape) != tuple(logits.shape[:ax]) + tuple(logits.shape[ax + 1:]):
        return None
    if weight is not None and (type(weight) is not torch.Tensor or weight.ndim != 1 or weight.requires_grad
                               or tuple(weight.shape) != (logits.shape[ax],) or not weight.dtype.is_floating_point
                               or not weight.is_cpu):
        return None
    from . import _torch_columns_compile

    return ax if _torch_columns_compile.usable(logits, ax) else None


def _fast_bce(logits: Any, targets: Any, weight: Any, pos_weight: Any) -> Any:
    """The fused kernels' module for CPU tensors of one shape (weights broadcast to it, no gradient), else None."""
    fast = _fast_torch(logits, targets, None)
    if fast is None or targets.shape != logits.shape or not targets.dtype.is_floating_point or not logits.numel():
        return None
    return fast if _bce_weights_fit(logits, weight, pos_weight) else None


def _bce_weights_fit(logits: Any, weight: Any, pos_weight: Any) -> bool:
    """Whether the kernels take ``weight`` and ``pos_weight``: None, or CPU floating tensors without grad that
    broadcast to ``logits``."""
    for a in (weight, pos_weight):
        if a is None:
            continue
        if type(a) is not type(logits) or a.requires_grad or a.device.type != "cpu" or not a.dtype.is_floating_point:
            return False
        if a.layout is not logits.layout:
            return False
        pairs = zip(a.shape[::-1], logits.shape[::-1], strict=False)
        if a.ndim > logits.ndim or any(s not in (1, t) for s, t in pairs):
            return False
    return True


@functools.cache
def _fast_module() -> Any:
    """:mod:`._torch_losses`, imported once."""
    from . import _torch_losses

    return _torch_losses


def _rows_route(logits: Any, target: Any, axis: Any, dim: Any, reduction: str) -> int:
    """What :func:`cross_entropy`'s two latency routes check alike, before anything else (``quiet``'s
    ``np.errstate`` alone costs more than the kernel): torch CPU float32/float64/bfloat16 rows ``(R, C)`` on the
    last axis, a target tensor without grad, a known reduction. 1: eager (contiguous tensors), 2: under
    ``torch.compile`` (the custom ops), 0: no."""
    torch = sys.modules.get("torch")
    if not (
        torch is not None and type(logits) is torch.Tensor and type(target) is torch.Tensor
        and type(axis) is int and (axis == -1 or axis == 1)
        and (dim is None or (type(dim) is int and axis == -1 and (dim == -1 or dim == 1))) and logits.ndim == 2
        and logits.dtype in (torch.float32, torch.float64, torch.bfloat16) and logits.is_cpu and target.is_cpu
        and not _ns.FORCE_DEVICE_PATH and not target.requires_grad and reduction in _REDUCTIONS
        and logits.layout is torch.strided and target.layout is torch.strided
    ):
        return 0
    if torch.compiler.is_compiling():
        if _ns.torch_generic_only(torch):  # eager calls were sent to the generic path by cross_entropy's entry
            return 0
        from . import _numba_losses

        return 2 if _numba_losses.AVAILABLE else 0
    return int(logits.is_contiguous() and target.is_contiguous() and _fast_module().K.AVAILABLE)


def _fast_plain(logits: Any, target: Any, weight: Any, axis: int, dim: int | None, eps: float,
                ignore_index: Any, reduction: str) -> int:
    """:func:`_rows_route` for the fused kernel of the most common case: int64 class indices ``(R,)``, no
    smoothing; class weights (eager only: 1) a contiguous float32/float64 CPU tensor of ``C`` entries without
    grad."""
    if type(eps) not in (float, int) or eps or not (ignore_index is None or type(ignore_index) is int):
        return 0
    route = _rows_route(logits, target, axis, dim, reduction)
    if not route or target.dtype is not sys.modules["torch"].int64 or target.ndim != 1:
        return 0
    rows, n_cls = logits.shape
    if target.shape[0] != rows:
        return 0
    if weight is None:
        return route
    torch = sys.modules["torch"]
    if route == 1 and (
        type(weight) is torch.Tensor and weight.ndim == 1 and weight.shape[0] == n_cls
        and weight.dtype in (torch.float32, torch.float64) and weight.is_cpu and not weight.requires_grad
        and weight.layout is torch.strided and weight.is_contiguous()
    ):
        return 1
    return 0


def _fast_features(logits: Any, target: Any, weight: Any, axis: int, dim: int | None, eps: Any,
                   ignore_index: Any, reduction: str) -> int:
    """:func:`_rows_route` for class weights, label smoothing or class probabilities (no z-loss or soft-capping):
    int64 indices ``(R,)`` or probabilities of the logits' shape and dtype, a 1-D float32/float64 CPU weight of
    ``C`` entries without grad, ``0 <= label_smoothing <= 1``, no empty axis; anything else takes the checked
    path (and its errors)."""
    if type(eps) not in (float, int) or not 0.0 <= eps <= 1.0:
        return 0
    route = _rows_route(logits, target, axis, dim, reduction)
    if not route or logits.shape[0] == 0 or logits.shape[1] == 0:
        return 0
    torch = sys.modules["torch"]
    if weight is not None and not (
        type(weight) is torch.Tensor and weight.ndim == 1 and weight.shape[0] == logits.shape[1]
        and weight.dtype in (torch.float32, torch.float64) and weight.is_cpu and not weight.requires_grad
        and weight.layout is torch.strided
    ):
        return 0
    if target.dtype is torch.int64:
        ok = (target.ndim == 1 and target.shape[0] == logits.shape[0]
              and (ignore_index is None or type(ignore_index) is int))
    else:
        ok = target.dtype is logits.dtype and target.shape == logits.shape and ignore_index in (None, -100)
    return route if ok else 0


def _fast_bce_plain(logits: Any, targets: Any, weight: Any, pos_weight: Any, reduction: str) -> int:
    """Whether BCE can go straight to the fused kernels (checked before ``quiet``, as :func:`_fast_plain`):
    1 for contiguous CPU tensors of one shape and dtype (float32/float64/bfloat16), no weights, eager; 2 under
    ``torch.compile`` (the custom ops, :func:`_compiled_bce`); 0: no."""
    torch = sys.modules.get("torch")
    if torch is None or type(logits) is not torch.Tensor or type(targets) is not torch.Tensor:
        return 0
    if (
        weight is None and pos_weight is None and logits.dtype is targets.dtype
        and logits.dtype in (torch.float32, torch.float64, torch.bfloat16) and logits.shape == targets.shape
        and logits.is_cpu and targets.is_cpu and not _ns.FORCE_DEVICE_PATH and not targets.requires_grad
        and reduction in _REDUCTIONS
        and logits.layout is torch.strided and targets.layout is torch.strided and logits.is_contiguous()
        and logits.numel() > 0 and targets.is_contiguous() and not torch.compiler.is_compiling()
        and _fast_module().K.AVAILABLE
    ):
        return 1
    return 2 if torch.compiler.is_compiling() and _compiled_bce(torch, logits, targets, weight, pos_weight,
                                                                reduction) else 0


def _compiled_bce(torch: Any, logits: Any, targets: Any, weight: Any, pos_weight: Any, reduction: str) -> bool:
    """Whether the custom ops of :mod:`._torch_elementwise_compile` take a BCE call under ``torch.compile``: what
    :func:`_fast_bce` takes eager (strided CPU tensors of one shape, no grad on the targets and weights)."""
    from . import _numba_losses

    return (
        _numba_losses.AVAILABLE and reduction in _REDUCTIONS and logits.is_cpu and targets.is_cpu
        and not _ns.FORCE_DEVICE_PATH and logits.layout is torch.strided and targets.layout is torch.strided
        and not targets.requires_grad and logits.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and targets.dtype.is_floating_point and targets.shape == logits.shape and logits.numel() > 0
        and ((weight is None and pos_weight is None) or (logits.ndim > 0 and _bce_weights_fit(logits, weight,
                                                                                                pos_weight)))
    )


def _autocast(*arrays: Any) -> tuple[Any, ...]:
    """The arguments of a loss as PyTorch's autocast gives them to its own losses (in an autocast region: see
    :func:`_torch_state`).

    Inside a ``torch.autocast`` region for the device of the first argument (the logits), ``F.cross_entropy`` and
    ``F.binary_cross_entropy_with_logits`` run in float32 on CPU and CUDA alike (their autocast policy, ``fp32``):
    every floating tensor argument but a float64 one is cast to float32, and the loss comes out float32. The
    drop-ins do the same: under autocast a bfloat16 model's loss is a float32 number, not one rounded to 8 bits."""
    torch = sys.modules["torch"]
    if not torch.is_autocast_enabled(arrays[0].device.type):  # a region for another device
        return arrays
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype is not torch.float64
                 else a for a in arrays)


_OVERRIDE, _GENERIC, _AUTOCAST = 1, 2, 4  # the bits of _torch_state


def _torch_state(logits: Any, target: Any, weight: Any, protocol: bool = True) -> int:
    """What a loss call must do before its routes, as bits: 0 for a plain call (and for the arrays of other
    libraries, which never import torch), else

    - ``_OVERRIDE`` (alone; only for an op that takes part in the protocol, ``protocol``): go through
      ``__torch_function__``, PyTorch's override protocol: a ``TorchFunctionMode`` is active (the monitor's probe,
      which reads the logits' log Z) or a tensor argument is a subclass overriding it;
    - ``_GENERIC``: take the generic path (a ``torch.func`` transform or a ``torch.jit`` trace is running, see
      :func:`._namespace.torch_generic_only`, or the logits are a ``FakeTensor``, :func:`._namespace.torch_fake`);
    - ``_AUTOCAST``: an autocast region is active (:func:`_autocast`).

    Three C calls (~0.3 us with the lookups) for a plain call: part of the small call's budget. Nothing is cached
    in this module: a cache filled by the first call, if ``torch.compile`` traced that call, was guarded as empty
    and failed the guard of the second call (a recompile of a function whose first op was ``cross_entropy``)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(logits, torch.Tensor):
        return 0
    # not while torch.export traces: its own function modes are active then, and going through them specialized the
    # exported program's dynamic batch size to the example's
    if protocol and torch.overrides.has_torch_function((logits, target, weight)) \
            and not torch.compiler.is_exporting():
        return _OVERRIDE
    c = torch._C
    state = _GENERIC if c._are_functorch_transforms_active() or c._get_tracing_state() is not None \
        or (type(logits) is not torch.Tensor and _ns.torch_fake(logits)) else 0
    return state | _AUTOCAST if c._is_any_autocast_enabled() else state


def _take_last(be: Backend, x: Any, idx: Any) -> Any:
    """``x[..., idx]`` per row: the entries of ``x``'s last axis at the (valid, non-negative) indices ``idx``.

    ``gather`` on torch: ``take_along_dim`` (array-api-compat's ``take_along_axis``) specialized the dynamic batch
    size of a ``torch.export`` to the example's."""
    if be.name == "torch":
        return x.gather(-1, idx[..., None])[..., 0]
    return be.xp.take_along_axis(x, be.xp.expand_dims(idx, axis=-1), axis=-1)[..., 0]


def _check_weight(be: Backend, weight: Any, n_cls: int, like: Any, func: str) -> Any:
    w = as_float(be, weight, "weight", func)
    if tuple(w.shape) != (n_cls,):
        raise ValueError(
            f"floatguard.{func}: argument 'weight' has shape {tuple(w.shape)}; expected one weight per class, "
            f"shape ({n_cls},)"
        )
    return w


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    dim: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    r"""Cross-entropy of ``target`` under ``softmax(logits)`` along ``axis``, from the logits.

    .. math:: \ell = -\sum_c w_c t_c \log \mathrm{softmax}(x)_c, \qquad
              -\log \mathrm{softmax}(x)_c = \mathrm{log1p}(s) + (m - x_c)

    with ``m`` the row max and ``s`` the sum of ``exp(x_i - m)`` without the max
    term. ``target`` is either integer class indices (shape of ``logits``
    without ``axis``) or class probabilities (shape of ``logits``). PyTorch's
    semantics throughout: with ``label_smoothing`` ``eps`` the target becomes
    ``(1 - eps) t + eps / C``; ``weight`` (one per class) scales each class's
    term, and the "mean" of class indices divides by the sum of the target
    classes' weights (by their count without ``weight``), the "mean" of
    probabilities by the number of rows. Entries whose class is ``ignore_index``
    add 0 and are left out of the mean; a mean over no entry is NaN, as in
    PyTorch. ``dim`` is an alias of ``axis``; the class axis defaults to the last
    (PyTorch's ``F.cross_entropy`` takes dimension 1: pass ``axis=1`` for
    ``(N, C, d1, ...)`` logits, which CPU tensors read in place, see
    ``_torch_columns``). A row whose max is not finite (all ``-inf``, a
    ``+inf``, a NaN) has loss ``+inf`` for a row of ``-inf`` (gradient 0),
    NaN for NaN (gradient NaN, as PyTorch's: a gradient check sees it), and for a
    row holding ``+inf`` (gradient 0) the limit as its ``k`` ``+inf``
    entries share the mass (as :func:`log_softmax`'s limit): ``w_c log k`` where
    the target is one of them, ``+inf`` where a finite entry has target mass
    (PyTorch gives NaN; a cross-entropy is never negative, so never ``-inf``).

    Two cures of output-logit divergence in large-model training, fused in the
    same passes, forward and backward:

    .. math:: x \leftarrow c \tanh(x / c), \qquad
              \ell \leftarrow \ell + z \, (\log Z)^2, \quad \log Z = m + \mathrm{log1p}(s)

    ``softcap`` ``c`` (Gemma 2) caps the logits before everything else (the loss,
    ``log Z`` and the gradient, times ``sech^2(x / c)``, are the capped logits'); a
    positive finite number. ``tanh`` maps ``+-inf`` logits to ``+-c`` (their limit,
    with gradient 0), so a capped row is finite unless it holds a NaN, which
    propagates. ``z_loss`` ``z`` (PaLM; ~1e-4) adds ``z (log Z)^2`` per row, with
    gradient ``2 z log Z softmax``; finite and ``>= 0``. As in Liger Kernel's
    ``lse_square_scale`` (and PaLM/T5X, which have no class weights) the z-loss
    is not scaled by ``weight``, ``label_smoothing`` or the target: it is one
    term per row not ignored, and the "mean" divides its sum by the number of
    those rows (the cross-entropy's sum keeps its own divisor, the sum of the
    target weights); for class probabilities both divide by the number of rows.
    On a row whose max is not finite the z-loss ``z m^2`` is ``+inf``: with
    ``z_loss > 0`` the row's loss is ``+inf`` (NaN for NaN), gradient 0 (NaN for NaN).
    Example: float64 logits ``[100, 0]``, class 0, ``z_loss=1e-4``: ``3.72e-44 + 1.0``
    (the z-loss pulls ``log Z = 100`` toward 0, the cross-entropy alone does not).

    A confident correct prediction gives ``log1p(s)`` to the last bit (the
    loss of a well-trained model is small, and PyTorch's ``log(1 + s)`` rounds
    it to 0 in float32 once it is below 6e-8): for logits ``[0, -30]`` and class
    0 the loss is ``9.36e-14``, where a float32 ``log(sum(exp))`` gives ``0``.

    CPU tensors take fused compiled kernels (one pass per row forward, one
    backward, no (N, C) temporaries; ``floatguard[fast]``); tensors on other devices
    (CUDA, XPU, MPS) a composition of torch ops in float32 (float64 for float64) with
    the same max split and every feature (``_torch_losses.cross_entropy_device``; its
    speed on a GPU is not measured yet); everything else the array-API path below.
    Error: at most 1 ulp for float32/bfloat16/float16 row losses, 2 ulp times the condition number in float64;
    gradients within 2 ulp times their condition number (``benchmarks/gradient_accuracy.py``). On CPU tensors a
    float32/bfloat16 training step writes the gradient in the forward (a mean or a sum: ``g = 1`` and powers of two
    exact, other ``g`` computed again; ``reduction='none'``: ``softmax - onehot`` kept and scaled by each row's
    ``g``, two roundings, within 1.5 ulp).

    Torch tensors follow PyTorch's override protocol (``__torch_function__``): a
    ``TorchFunctionMode`` sees the call as ``floatguard.cross_entropy`` with its
    arguments (the monitor records the logits' log Z this way), a tensor subclass
    may override it.
    """
    state = _torch_state(logits, target, weight)
    if state:
        if state == _OVERRIDE:  # a Tensor subclass or a TorchFunctionMode (the monitor's probe)
            return sys.modules["torch"].overrides.handle_torch_function(
                cross_entropy, tuple(a for a in (logits, target, weight) if a is not None), logits, target, axis=axis,
                weight=weight, reduction=reduction, label_smoothing=label_smoothing, ignore_index=ignore_index,
                dim=dim, z_loss=z_loss, softcap=softcap)
        if state & _AUTOCAST:
            logits, target, weight = _autocast(logits, target, weight)
        if state & _GENERIC:
            return _cross_entropy(logits, target, axis=axis, weight=weight, reduction=reduction,
                                  label_smoothing=label_smoothing, ignore_index=ignore_index, dim=dim, z_loss=z_loss,
                                  softcap=softcap)
    if softcap is None and not z_loss:  # the features off: the latency route as before, no other work
        route = _fast_plain(logits, target, weight, axis, dim, label_smoothing, ignore_index, reduction)
        if route == 1:
            return _fast_module().cross_entropy_plain(logits, target, ignore_index, reduction, weight)
        if route == 2:
            from . import _torch_losses

            return _torch_losses.cross_entropy_compiled(logits, target, ignore_index, reduction)
        route = _fast_features(logits, target, weight, axis, dim, label_smoothing, ignore_index, reduction)
        if route == 1:
            return _fast_module().cross_entropy_features(logits, target, weight, ignore_index,
                                                         float(label_smoothing), reduction)
        if route == 2:
            from . import _torch_losses

            return _torch_losses.cross_entropy_features_compiled(logits, target, weight, ignore_index,
                                                                 float(label_smoothing), reduction)
    return _cross_entropy(logits, target, axis=axis, weight=weight, reduction=reduction,
                          label_smoothing=label_smoothing, ignore_index=ignore_index, dim=dim, z_loss=z_loss,
                          softcap=softcap)


def _check_features(z_loss: Any, softcap: Any, func: str) -> tuple[float, float]:
    """``z_loss`` (finite, >= 0) and ``softcap`` (None, or positive and finite; 0.0 stands for None)."""
    z = check_real(z_loss, "z_loss", func)
    if not (finite(z) and z >= 0.0):
        raise ValueError(f"floatguard.{func}: argument 'z_loss' must be finite and >= 0, got {z_loss!r}")
    if softcap is None:
        return z, 0.0
    cap = check_real(softcap, "softcap", func)
    if not (finite(cap) and cap > 0.0):
        raise ValueError(
            f"floatguard.{func}: argument 'softcap' must be None or a positive finite number, got {softcap!r}"
        )
    return z, cap


@quiet
def _cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    dim: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    """:func:`cross_entropy` off its latency route (checks, the fused kernels' general path, the generic path)."""
    func = "cross_entropy"
    axis = alias(axis, -1, dim, ("axis", "dim"), func)
    _check_reduction(reduction, func)
    zc, cap = _check_features(z_loss, softcap, func)
    label_smoothing = check_real(label_smoothing, "label_smoothing", func)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not hasattr(ignore_index, "__index__")):
        raise TypeError(f"floatguard.{func}: argument 'ignore_index' must be an int or None, got {ignore_index!r}")
    if ignore_index is not None:
        ignore_index = int(ignore_index)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"floatguard.{func}: argument 'label_smoothing' must be in [0, 1], got {label_smoothing!r}")
    if (zc or cap) and _fast_plain(logits, target, weight, axis, None, label_smoothing, ignore_index, reduction) == 2:
        from . import _torch_losses  # under torch.compile: the custom op, with the features

        return _torch_losses.cross_entropy_compiled(logits, target, ignore_index, reduction, zc, cap)
    if not (zc or cap):
        ax = _compiled_columns(logits, target, weight, axis)
        if ax is not None:  # under torch.compile, a class axis in the middle: the column kernels' custom op
            from . import _torch_columns_compile

            return _torch_columns_compile.cross_entropy(logits, target, weight, ignore_index, reduction, ax,
                                                        label_smoothing)
    fast = _fast_torch(logits, target, weight)
    if fast is not None:
        out = _cross_entropy_torch(fast.cross_entropy, logits, target, weight, axis, reduction, label_smoothing,
                                   ignore_index, zc, cap, columns=True)
        if out is not None:
            return out
    dev = _device_torch(logits, target, weight)
    if dev is not None:  # tensors off the CPU: the torch-op composition, every feature
        out = _cross_entropy_torch(dev.cross_entropy_device, logits, target, weight, axis, reduction,
                                   label_smoothing, ignore_index, zc, cap)
        if out is not None:
            return out
    be = namespace(("logits", logits), ("target", target), ("weight", weight), func=func)
    xp = be.xp
    x = as_float(be, logits, "logits", func)
    if x.ndim == 0:
        raise ValueError(f"floatguard.{func}: argument 'logits' is 0-d; it needs a class axis "
                         "(shape (C,) or (N, C, ...))")
    ax = normalize_axis(axis, x.ndim, "axis", func)
    dtype = x.dtype
    # axes as tuples: torch.vmap has no batching rule for moveaxis.int
    rows = xp.moveaxis(xp.astype(x, be.work_dtype(dtype), copy=False), (ax,), (-1,))
    if cap:
        rows = _softcap(be, rows, cap)
    n_cls = rows.shape[-1]
    w = None
    if weight is not None:
        w = xp.astype(_check_weight(be, weight, n_cls, x, func), rows.dtype, copy=False)
    sh = shifted(be, rows)
    batch_shape = tuple(rows.shape[:-1])
    if not hasattr(target, "dtype"):
        target = xp.asarray(target) if be.name != "torch" else xp.asarray(target, device=x.device)
    count = None
    m_row = sh.m[..., 0]
    if _is_integer(be, target):
        _same_shape(target, batch_shape, "target",
                    "integer class indices of the shape of 'logits' without its class axis,", func)
        keep = None if ignore_index is None else target != ignore_index
        if be.compiling():  # torch.compile, torch.export: a runtime assertion in the graph, no branch on values
            bad = (target < 0) | (target >= n_cls)
            if ignore_index is not None:
                bad = bad & (target != ignore_index)
            sys.modules["torch"]._assert_async(~bad.any(), f"floatguard.{func}: argument 'target' has class indices "
                                               f"outside [0, {n_cls}); set ignore_index for padding entries")
        elif be.is_concrete(target):  # a traced target (jax.jit argument) skips the check
            tv = be.host(target)
            bad = (tv < 0) | (tv >= n_cls)
            if ignore_index is not None:
                bad = bad & (tv != ignore_index)
            if bool(bad.any()):
                raise ValueError(
                    f"floatguard.{func}: argument 'target' has class indices outside [0, {n_cls}) "
                    f"(e.g. {int(tv[bad][0])}); set ignore_index for padding entries"
                )
        idx = target if keep is None else xp.where(keep, target, xp.zeros_like(target))
        w_t = None
        if w is not None:
            w_t = xp.reshape(xp.take(w, xp.reshape(idx, (-1,))), idx.shape)
        if label_smoothing:
            nll = _smoothed_nll(be, sh, idx, w, w_t, label_smoothing)
        else:
            lsm = xp.where(sh.finite, sh.d - xp.log1p(sh.s), sh.m + xp.zeros_like(rows))
            nll = -_take_last(be, lsm, idx)
            if w_t is not None:
                nll = w_t * nll
        if zc:
            dead = xp.abs(m_row)
        else:  # +inf rows: the limit (inf_row_loss); -inf rows +inf, NaN rows NaN
            rc = be.stop_gradient(rows)
            cls = (1 - label_smoothing) * (xp.ones_like(m_row) if w_t is None else w_t)
            spread = None
            if label_smoothing:
                spread = (label_smoothing / n_cls) * (xp.ones_like(rc[..., 0, None]) if w is None else w)
            dead = xp.where(m_row == float("inf"), inf_row_loss(xp, rc, _take_last(be, rc, idx), cls, spread), -m_row)
        kept = None if keep is None else keep[..., None]  # an ignored NaN row keeps gradient 0
        nll = xp.where(sh.finite[..., 0], nll, nan_rows(be, rows, sh.m, dead[..., None], kept)[..., 0])
        if keep is not None:
            nll = xp.where(keep, nll, xp.zeros_like(nll))
        if w_t is not None:
            count = xp.sum(w_t if keep is None else xp.where(keep, w_t, xp.zeros_like(w_t)))
        elif keep is not None:
            count = xp.sum(xp.astype(keep, nll.dtype))
    else:
        if ignore_index is not None and ignore_index != -100:
            raise ValueError(
                f"floatguard.{func}: argument 'ignore_index' applies to class indices only; "
                f"'target' holds class probabilities (got ignore_index={ignore_index!r})"
            )
        t = as_float(be, target, "target", func)
        _same_shape(t, tuple(x.shape), "target", "class probabilities of the shape of 'logits',", func)
        t = xp.moveaxis(xp.astype(t, rows.dtype, copy=False), (ax,), (-1,))
        if label_smoothing:
            t = (1 - label_smoothing) * t + label_smoothing / n_cls
        if w is not None:
            t = t * w
        # -sum_i t_i (d_i - l) = T l - sum_i t_i d_i, T = sum_i t_i: under autodiff the cotangent of l = log1p(s)
        # is g T (T summed once, compensated, then one product), not the sum of the C products g t_i (2 to 3.3 ulp
        # off at the max of a dominant row, float32 and float64); 0 * log(0) is 0
        dz = xp.where((t == 0) & xp.isinf(sh.d), xp.zeros_like(sh.d), sh.d)
        big_t = _sum2(be, t)
        nll = big_t * xp.log1p(sh.s[..., 0]) - xp.sum(t * dz, axis=-1)
        if zc:
            dead = xp.abs(m_row)
        else:
            dead = xp.where(m_row == float("inf"), inf_row_loss(xp, be.stop_gradient(rows), None, None, t), -m_row)
        nll = xp.where(sh.finite[..., 0], nll, nan_rows(be, rows, sh.m, dead[..., None])[..., 0])
        keep = None
    if not zc:
        return xp.astype(_reduce(be, nll, reduction, count), dtype, copy=False)
    # log Z on finite rows (0 elsewhere, before squaring: a where after would pass 0 * inf = NaN back)
    live = sh.finite[..., 0] if keep is None else sh.finite[..., 0] & keep
    lse = xp.where(live, xp.where(sh.finite, sh.m, xp.zeros_like(sh.m))[..., 0] + xp.log1p(sh.s[..., 0]),
                   xp.zeros_like(m_row))
    z = zc * (lse * lse)
    if reduction == "none":
        return xp.astype(nll + z, dtype, copy=False)
    rows_kept = None if keep is None else xp.sum(xp.astype(keep, nll.dtype))
    out = _reduce(be, nll, reduction, count) + _reduce(be, z, reduction, rows_kept)
    return xp.astype(out, dtype, copy=False)


def _sum2(be: Backend, v: Any) -> Any:
    """The sum over the last axis of ``v`` as if in twice the working precision, then rounded (Ogita, Rump and
    Oishi's Sum2, pairwise: each level adds neighbours with TwoSum and keeps the sum of their rounding errors).

    For the coefficient ``T = sum_i t_i`` of a soft target's ``log1p(s)``: a plain sum of 21 probabilities was 1.5
    ulp off, which reached the gradient ``T p_j - t_j`` at the max of a dominant row.
    """
    xp = be.xp
    err = xp.zeros_like(v[..., 0])
    while v.shape[-1] > 1:
        if v.shape[-1] % 2:
            v = xp.concat([v, xp.zeros_like(v[..., :1])], axis=-1)
        a, b = v[..., 0::2], v[..., 1::2]
        s = a + b
        bb = s - a
        err = err + xp.sum((a - (s - bb)) + (b - bb), axis=-1)
        v = s
    return v[..., 0] + err


def _smoothed_nll(be: Backend, sh: Shifted, idx: Any, w: Any, w_t: Any, eps: float) -> Any:
    r"""The label-smoothed row loss of class indices ``idx`` from the shifted rows ``sh``:

    .. math:: (1 - \epsilon) w_c (l - d_c) + \frac{\epsilon}{C} \sum_i w_i (l - d_i)
              = A l - (1 - \epsilon) w_c d_c - \frac{\epsilon}{C} \sum_i w_i d_i, \quad
              A = (1 - \epsilon) w_c + \frac{\epsilon}{C} \sum_i w_i

    (``w = 1`` unweighted; ``l = log1p(s)``, ``d_i = x_i - m <= 0``: every term non-negative). Under autodiff the
    cotangent of ``l`` is then ``g A``, one product per row; as the sum over ``C`` classes of the cotangents of
    ``d_i - l`` it was off by up to 11 ulp at the max of a dominant row (float32, ``C = 51``).
    """
    xp = be.xp
    n_cls = sh.d.shape[-1]
    lg = xp.log1p(sh.s[..., 0])
    d_c = _take_last(be, sh.d, idx)
    if w is None:
        return lg - (1 - eps) * d_c - (eps / n_cls) * xp.sum(sh.d, axis=-1)
    coef = (1 - eps) * w_t + (eps / n_cls) * xp.sum(w)
    return coef * lg - (1 - eps) * (w_t * d_c) - (eps / n_cls) * xp.sum(w * sh.d, axis=-1)


def _softcap(be: Backend, x: Any, cap: float) -> Any:
    r"""``cap tanh(x / cap)`` whose derivative under autodiff is ``sech^2(x / cap)`` to a few ulp.

    .. math:: v = |x / c|, \quad e = e^{-2 v}, \quad \tanh v = \frac{1 - e}{1 + e}, \quad
              \frac{d}{dv} \tanh v = \frac{2 e}{1 + e} + \frac{2 e (1 - e)}{(1 + e)^2}

    Autodiff of ``tanh`` gives ``1 - tanh^2``, all of whose digits cancel once ``tanh`` rounds to 1
    (``|x / c| > 19`` in float64; a float32 gradient is off by more than an ulp from ``|x / c| > 10``).
    Differentiated, the quotient above is a sum of two positive terms, accurate everywhere; its value
    is then replaced by the accurate ``tanh v`` through a stop-gradient correction (``tanh v - q`` is
    exact, so the value is ``tanh v``). ``v = s x / c`` with ``s = -1`` for ``x < 0`` and ``+1``
    otherwise (not ``|x|``: its derivative at 0 is 0), so ``+-inf`` give ``+-cap``. A NaN passes
    through a ``where`` around the formula (worked on 0 there), so that its gradient is that of the
    loss (0 on its row), not ``0 * NaN``.
    """
    xp = be.xp
    u = x / cap
    nan = xp.isnan(u)
    one = xp.ones_like(u)
    u0 = xp.where(nan, xp.zeros_like(u), u)
    sign = xp.where(u0 < 0, -one, one)
    v = u0 * sign
    e = xp.exp(-2 * v)
    q = (1 - e) / (1 + e)
    t = q + be.stop_gradient(xp.tanh(v) - q)
    return xp.where(nan, x, cap * (sign * t))


def _cross_entropy_torch(
    kernel: Callable[..., Any], logits: Any, target: Any, weight: Any, axis: int, reduction: str, eps: float,
    ignore_index: int | None, z_loss: float = 0.0, cap: float = 0.0, columns: bool = False,
) -> Any:
    """``kernel`` (the fused CPU kernels, or the device composition) on the rows of torch tensors; None where the
    generic path must answer (it raises the errors). ``columns``: class indices or probabilities along a middle axis,
    without z-loss or cap, go to the column kernels first (no transposing copy, :mod:`._torch_columns`)."""
    func = "cross_entropy"
    ax = normalize_axis(axis, logits.ndim, "axis", func)
    n_cls = logits.shape[ax]
    if weight is not None and (tuple(weight.shape) != (n_cls,) or not weight.dtype.is_floating_point):
        return None
    index = not target.dtype.is_floating_point
    if index:
        if target.dtype.is_complex or target.dtype is sys.modules["torch"].bool:
            return None
        batch = tuple(logits.shape[:ax]) + tuple(logits.shape[ax + 1:])
        if tuple(target.shape) != batch:
            return None
    elif tuple(target.shape) != tuple(logits.shape) or (ignore_index is not None and ignore_index != -100):
        return None
    if columns and ax < logits.ndim - 1 and not (z_loss or cap):
        from . import _torch_columns

        if index:
            out = _torch_columns.cross_entropy(logits, target, weight, ignore_index, reduction, ax, float(eps))
        else:
            out = _torch_columns.cross_entropy_probs(logits, target, weight, float(eps), reduction, ax)
        if out is not None:
            return out
    x = logits if ax == logits.ndim - 1 else logits.movedim(ax, -1)
    x2 = x.reshape(-1, n_cls)
    t2 = target.reshape(-1) if index else (target if ax == target.ndim - 1 else target.movedim(ax, -1)).reshape(
        -1, n_cls)
    out = kernel(x2, t2, weight, ignore_index, eps, reduction, z_loss, cap)
    if reduction == "none":
        out = out.reshape(x.shape[:-1])
    return out
