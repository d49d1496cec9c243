"""PyTorch path of logsumexp, softmax and log_softmax, and its entries in the kernel table (:mod:`._kernels`).

Through the generic array-API code, PyTorch records a dozen ops (masks,
``where``, a gather of the max term) and autograd keeps all their temporaries:
15 to 40 times slower than ``torch.logsumexp`` (``benchmarks/ops_speed.py``).
Here each op is one ``torch.autograd.Function``: the forward runs the same
algorithm (float64, shift by the row max, max term taken out, ``log1p``,
division by ``1 + s``) on in-place native kernels, and the backward is the
analytic gradient, which is also what makes it 0, never NaN, on rows with no
finite entry. Backward formulas use only the saved input and output, in
differentiable torch ops, so double backward works.

The path is split by job:

- :mod:`._torch_softmax`: the autograd Functions (:class:`LogSumExp`, :class:`Softmax`,
  :class:`LogSoftmax`) and the short path of a plain call (:func:`softmax_fast`,
  :func:`logsumexp_fast`) over the numba kernels (:mod:`._numba_fast`, the ``fast`` extra), which read
  CPU tensors' storage in place (bfloat16 and float16 as 16-bit integers, widened in registers),
  compute in float64 and round once into the output;
- :mod:`._torch_sweep`: the same forward in torch ops when the kernels are missing;
- :mod:`._torch_device`: tensors on other devices (:func:`device_softmax`, :func:`device_logsumexp`:
  torch ops, float32 accumulation for 16-bit inputs, float64 for float64);
- :mod:`._torch_custom_ops`: the custom ops that stand for them under ``torch.compile``;
- this module: the registrations in the kernel table, which ``_kernels._load("torch")`` runs by
  importing it, including the elementwise ops of :mod:`._torch_elementwise`.

All functions take rows on the last axis and return results in the input dtype.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import _namespace as _ns
from ._kernels import register
from ._torch_custom_ops import logsumexp_op, logsumexp_rows, softmax_grad_op, softmax_op, softmax_rows
from ._torch_device import device_logsumexp, device_softmax, on_device
from ._torch_softmax import KERNEL_DTYPES, LogSoftmax, LogSumExp, Softmax, logsumexp_fast, plain_call, softmax_fast

__all__ = [
    "KERNEL_DTYPES", "LogSoftmax", "LogSumExp", "Softmax", "device_logsumexp", "device_softmax", "logsumexp_fast",
    "logsumexp_op", "on_device", "softmax_fast", "softmax_grad_op", "softmax_op",
]

# under a torch.func transform or a torch.jit trace, and for fake tensors (no storage: _namespace.torch_fake, checked
# for Tensor subclasses only), the ops take their generic path (_namespace.torch_generic_only);
# the call kernels check it inline, with the C functions bound here (a small call's budget is a few microseconds)
_functorch_active = torch._C._are_functorch_transforms_active
_tracing_state = torch._C._get_tracing_state
_Tensor = torch.Tensor


def _compiled_plain(x: torch.Tensor, axis: Any) -> bool:
    """Whether ``torch.compile`` is tracing a plain call (the last axis of a non-empty strided CPU tensor):
    then the custom op is called straight away, so that Dynamo traces (and guards) a few lines, not the
    generic path (157 guards against 40: its cache lookup took 0.1 ms a call)."""
    return torch.compiler.is_compiling() and plain_call(x, axis)


def _compiled_columns(x: torch.Tensor, axis: Any) -> int | None:
    """The normalized axis when ``torch.compile`` is tracing a call over a middle axis that the column kernels take
    (a float32/bfloat16/float16 CPU tensor, something after the axis): their custom ops
    (:mod:`._torch_columns_compile`) are called then; else None."""
    if not torch.compiler.is_compiling() or type(axis) is not int or _ns.FORCE_DEVICE_PATH:
        return None
    nd = x.ndim
    ax = axis + nd if axis < 0 else axis
    if not 0 <= ax < nd - 1:
        return None
    from . import _torch_columns_compile

    return ax if _torch_columns_compile.usable(x, ax) else None


@register("logsumexp", "torch", stage="call", dtypes=KERNEL_DTYPES)
def _logsumexp_call(x: torch.Tensor, axis: Any, keepdims: Any) -> torch.Tensor | None:
    if _functorch_active() or _tracing_state() is not None or (type(x) is not _Tensor and _ns.torch_fake(x)):
        return None
    if type(keepdims) is bool and _compiled_plain(x, axis):
        lse = logsumexp_rows(x.reshape(-1, x.shape[-1]).contiguous())
        return lse.reshape((*x.shape[:-1], 1) if keepdims else x.shape[:-1])
    ax = _compiled_columns(x, axis) if type(keepdims) is bool else None
    if ax is not None:
        from . import _torch_columns_compile

        return _torch_columns_compile.logsumexp(x, ax, keepdims)
    return logsumexp_fast(x, axis, keepdims)


def _softmax_compiled(x: torch.Tensor, axis: Any, log: bool) -> torch.Tensor | None:
    if _compiled_plain(x, axis):
        return softmax_rows(x.reshape(-1, x.shape[-1]).contiguous(), log).reshape(x.shape)
    ax = _compiled_columns(x, axis)
    if ax is not None:
        from . import _torch_columns_compile

        return _torch_columns_compile.softmax(x, ax, log)
    return None


@register("softmax", "torch", stage="call", dtypes=KERNEL_DTYPES)
def _softmax_call(x: torch.Tensor, axis: Any) -> torch.Tensor | None:
    if _functorch_active() or _tracing_state() is not None or (type(x) is not _Tensor and _ns.torch_fake(x)):
        return None
    out = softmax_fast(x, axis, log=False)  # eager (None while Dynamo traces)
    return _softmax_compiled(x, axis, False) if out is None else out


@register("log_softmax", "torch", stage="call", dtypes=KERNEL_DTYPES)
def _log_softmax_call(x: torch.Tensor, axis: Any) -> torch.Tensor | None:
    if _functorch_active() or _tracing_state() is not None or (type(x) is not _Tensor and _ns.torch_fake(x)):
        return None
    out = softmax_fast(x, axis, log=True)  # eager (None while Dynamo traces)
    return _softmax_compiled(x, axis, True) if out is None else out


def _untransformed(x: torch.Tensor) -> bool:
    return not _ns.torch_generic_only(torch)  # under torch.func or a trace: the generic path


@register("logsumexp", "torch", predicate=_untransformed)
def _logsumexp_rows(rows: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` of rows (R, n) as (R, 1): :class:`LogSumExp`, a custom op under ``torch.compile``."""
    return logsumexp_rows(rows.contiguous()) if torch.compiler.is_compiling() else LogSumExp.apply(rows)


def _has_values(x: torch.Tensor) -> bool:
    # meta tensors (a shape, no values) take the generic path, as tensors under torch.func
    return not x.is_meta and not _ns.torch_generic_only(torch)


def _softmax_rows(rows: torch.Tensor, log: bool) -> torch.Tensor:
    if torch.compiler.is_compiling():  # a custom op: the same code, opaque to Dynamo (contiguous rows in and out)
        return softmax_rows(rows.contiguous(), log)
    return (LogSoftmax if log else Softmax).apply(rows)


@register("softmax", "torch", predicate=_has_values)
def _softmax_kernel(rows: torch.Tensor) -> torch.Tensor:
    return _softmax_rows(rows, False)


@register("log_softmax", "torch", predicate=_has_values)
def _log_softmax_kernel(rows: torch.Tensor) -> torch.Tensor:
    return _softmax_rows(rows, True)


# elementwise ops: a lone CPU tensor goes straight to the fused kernels of ._torch_elementwise (custom ops of
# ._torch_elementwise_compile under torch.compile)
@functools.cache
def _elementwise() -> Any:
    """:mod:`._torch_elementwise` when its numba kernels can run, else None (imported once)."""
    from . import _numba_losses

    if not _numba_losses.AVAILABLE:
        return None
    from . import _torch_elementwise

    return _torch_elementwise


def _fused(x: torch.Tensor) -> Any:
    """:mod:`._torch_elementwise` when ``x`` goes to the fused kernels (a strided CPU tensor, the kernels
    available), else None; while ``torch.compile`` traces, :mod:`._torch_elementwise_compile` (the same
    functions as custom ops). :func:`on_device` inlined: a small call has a few microseconds."""
    if x.is_cpu and x.layout is torch.strided and not _ns.FORCE_DEVICE_PATH and not _functorch_active() \
            and _tracing_state() is None and (type(x) is _Tensor or not _ns.torch_fake(x)):
        if not torch.compiler.is_compiling():
            return _elementwise()
        from . import _numba_losses  # import statements: Dynamo runs them (functools.cache it would trace)

        if _numba_losses.AVAILABLE:
            from . import _torch_elementwise_compile

            return _torch_elementwise_compile
    return None


def _unary(code: int) -> Any:
    def call(x: torch.Tensor) -> torch.Tensor | None:
        kern = _fused(x)
        return None if kern is None else kern.unary(x, code)

    return call


register("softplus", "torch", stage="call", dtypes=KERNEL_DTYPES)(_unary(0))
register("log_sigmoid", "torch", stage="call", dtypes=KERNEL_DTYPES)(_unary(1))
register("log1mexp", "torch", stage="call", dtypes=KERNEL_DTYPES)(_unary(2))


@register("logaddexp", "torch", stage="call", dtypes=KERNEL_DTYPES)
def _logaddexp_call(a: torch.Tensor, b: Any) -> torch.Tensor | None:
    """Two CPU tensors of one shape and dtype: the fused logaddexp kernel."""
    # dtype objects are singletons; a CPU ``a`` (checked by _fused) and ``b.is_cpu``: one device, without
    # building two device objects (0.4 µs of a small call)
    if type(b) is type(a) and b.dtype is a.dtype and b.is_cpu and b.layout is torch.strided and b.shape == a.shape:
        kern = _fused(a)
        if kern is not None:
            return kern.logaddexp(a, b)
    return None
