"""The one array-namespace layer under every op.

Each op is written once against the array API standard: it asks
:func:`namespace` for the namespace ``xp`` of its inputs (NumPy itself,
``array_api_compat.torch`` or ``jax.numpy``) and uses only ``xp``. The few
things the standard does not cover live here, each as one small function:
stopping gradients, the working dtype, a cumulative log-add-exp, and whether
values may be read eagerly (not under ``jax.jit``).

NumPy is imported eagerly (a hard dependency); PyTorch, array-api-compat and
JAX are imported only when an array of theirs arrives.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import OptionalDependencyError

__all__ = [
    "WIDE_LONGDOUBLE",
    "Backend",
    "OptionalDependencyError",
    "as_float",
    "as_inexact",
    "check_array_like",
    "check_flag",
    "check_real",
    "default_float",
    "finfo_of",
    "is_complex_dtype",
    "jit_on_jax",
    "namespace",
    "promoted_dtype",
    "quiet",
    "torch_fake",
    "torch_fake_mode",
    "torch_generic_only",
]

F = TypeVar("F", bound=Callable[..., Any])

# Tests only: CPU tensors take the path of tensors on other devices (CUDA, XPU, MPS: torch ops in float32,
# no numba kernels), so that it is tested where no GPU is. Read by ._torch_fast and .losses at each call.
FORCE_DEVICE_PATH: bool = os.environ.get("FLOATGUARD_FORCE_DEVICE_PATH", "") not in ("", "0")


# NumPy's long double where it is wider than float64 (else None: it is float64, and work_dtype's float64 covers it);
# work_dtype computes it in itself, and the NumPy kernels (float64 work) decline it
WIDE_LONGDOUBLE = np.dtype(np.longdouble) if np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant else None

# torch.compiler.is_compiling, once torch is imported: at once when it already is (else the first call that
# torch.compile traces would read None here and set it, failing the guard of its own compiled code: a recompile)
_is_compiling: Callable[[], bool] | None = getattr(getattr(sys.modules.get("torch"), "compiler", None), "is_compiling",
                                                  None)


def _torch_compiling() -> bool:
    """Whether ``torch.compile`` is tracing (False before torch is imported); checked on every op call, so the
    function is looked up once."""
    global _is_compiling
    if _is_compiling is None:
        torch = sys.modules.get("torch")
        if torch is None:
            return False
        _is_compiling = torch.compiler.is_compiling
    return bool(_is_compiling())


def torch_generic_only(torch: Any) -> bool:
    """Whether torch ops must take their generic path: a ``torch.func`` transform is running (``grad``, ``vmap``,
    ``jvp``, ``jacrev``, ``jacfwd``, ``hessian``, ``vjp``), or ``torch.jit.trace`` is recording. ``torch`` is the
    imported module (the callers hold a torch tensor).

    Under a transform the tensors are functorch wrappers with no storage of their own, which the fused kernels
    cannot read (``data_ptr`` raises), and the ops' ``torch.autograd.Function`` classes are refused by functorch
    (they have no ``setup_context``, ``vmap`` or ``jvp`` rules); a trace records torch ops only, and the kernels'
    results would enter it as constants (numba refused the traced arguments). Every fast path of a torch op (the
    kernel table's torch kernels, the losses' routes, the device paths) declines then, and the op takes its generic
    path: torch ops, which every transform composes with and a trace records, to the same accuracy. Also under a
    ``FakeTensorMode`` (FLOP counters, memory estimators, shape propagation; :func:`torch_fake_mode`), whose
    tensors have no storage: the kernels read it through ``data_ptr`` (the interpreter crashed) and the generic
    path gives fake results. Three C calls (~0.15 us); ``torch.compile`` folds them to constants while tracing."""
    c = torch._C
    return bool(c._are_functorch_transforms_active()) or c._get_tracing_state() is not None or torch_fake_mode(torch)


def torch_fake(x: Any) -> bool:
    """Whether the tensor ``x`` is a ``FakeTensor`` (a shape and a dtype, no storage). The hot paths ask only for
    Tensor subclasses (``type(x) is not torch.Tensor``: 30 ns, where asking torch for an active ``FakeTensorMode``
    took 0.1 us of a few-microsecond small call)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(x, FakeTensor)


def torch_fake_mode(torch: Any) -> bool:
    """Whether a ``FakeTensorMode`` is active outside ``torch.compile`` (which calls the custom ops' fake versions,
    and cannot trace the question: False while it traces): tensors with a shape and a dtype but no storage."""
    if torch.compiler.is_compiling():
        return False
    c = torch._C
    return c._get_dispatch_mode(c._TorchDispatchModeKey.FAKE) is not None


def quiet(fn: F) -> F:
    """Run the op ``fn`` with NumPy's floating-point warnings off.

    Ops evaluate both sides of a ``where`` on NumPy arrays; the unused side may raise
    floating-point warnings (log of a negative number, say) that say nothing about the
    result: their results, NaN and inf included, are documented and tested instead.
    Not for a PyTorch tensor (no NumPy arithmetic runs on its paths, and entering ``np.errstate``
    costs about 2 µs, the budget of a small call), nor while ``torch.compile`` traces (it cannot
    trace ``np.errstate``; no NumPy runs then).
    """

    @functools.wraps(fn)
    def op(*args: Any, **kwargs: Any) -> Any:
        if (args and type(args[0]).__module__ == "torch") or _torch_compiling():
            return fn(*args, **kwargs)
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return op  # type: ignore[return-value]


def jit_on_jax(*static_argnums: int) -> Callable[[F], F]:
    """Run the pure array function ``fn(be, *args)`` under ``jax.jit`` when ``be`` is JAX's (``be`` and the
    arguments at ``static_argnums`` static), as it is for NumPy and PyTorch.

    jax.nn's ops are jitted: an eager call is one XLA executable, compiled once per shape and dtype (and
    ``jax_enable_x64`` setting), where op by op each of dozens of primitives is dispatched, and compiled
    on its first use of each shape (the log-depth scan of ``logcumsumexp``: ~230 compilations, 8 s for
    one eager call on 256×1000, 0.1 s of run time after). Inside an outer ``jax.jit`` it is inlined. Only
    for functions that read no values (no checks on data, no branch on a value: under jit they would see
    tracers).
    """

    def deco(fn: F) -> F:
        jitted: Any = None

        @functools.wraps(fn)
        def run(be: Backend, *args: Any) -> Any:
            nonlocal jitted
            if be.name != "jax":
                return fn(be, *args)
            if jitted is None:
                import jax

                jitted = jax.jit(fn, static_argnums=(0, *static_argnums))
            return jitted(be, *args)

        return run  # type: ignore[return-value]

    return deco


@dataclass(frozen=True)
class Backend:
    """An array library: its standard namespace and the few extras floatguard needs."""

    name: str  # "numpy", "torch" or "jax"
    xp: Any

    # -- dtypes ---------------------------------------------------------------
    def work_dtype(self, dtype: Any) -> Any:
        """Dtype to compute in: float64 for every float input where available.

        float16, bfloat16 and float32 inputs are computed in float64 and rounded
        once at the end; that is what makes the <= 1 ulp bound hold. JAX
        without ``jax_enable_x64`` has no float64: there float32 is used. NumPy's
        ``longdouble``, where it is wider than float64 (x86: 64-bit significand), is
        computed in itself, as SciPy does (rounding it to float64 lost its extra bits).
        """
        xp = self.xp
        if self.name == "numpy" and dtype == WIDE_LONGDOUBLE:
            return np.longdouble
        if self.name == "jax":
            import jax

            if not jax.config.read("jax_enable_x64"):
                return xp.float32
        return xp.float64

    def stop_gradient(self, x: Any) -> Any:
        """``x`` as a constant for autodiff (identity for NumPy)."""
        if self.name == "torch":
            return x.detach()
        if self.name == "jax":
            import jax

            return jax.lax.stop_gradient(x)
        return x

    def is_concrete(self, x: Any) -> bool:
        """True when values of ``x`` can be read now (false under ``jax.jit`` and for PyTorch's
        meta tensors, which have a shape and dtype but no values)."""
        if self.name == "torch":
            return not x.is_meta and not torch_fake_mode(sys.modules["torch"])
        if self.name != "jax":
            return True
        import jax

        return not isinstance(x, jax.core.Tracer)

    def host(self, x: Any) -> Any:
        """The values of a concrete ``x`` (see :meth:`is_concrete`) in an array whose operators run
        eagerly: NumPy for JAX (under ``jax.jit`` even a captured constant's own ops are traced, and a
        check on their result fails with ``TracerBoolConversionError``); for torch the tensor under its
        ``torch.func`` wrappers (under ``vmap`` a check reads all the batch's values: a ``bool`` of a
        batched tensor raises; not while ``torch.compile`` traces, which sees no wrappers and cannot trace
        the unwrapping); ``x`` itself otherwise."""
        if self.name == "jax":
            return np.asarray(x)
        if self.name == "torch" and not _torch_compiling():
            functorch = sys.modules["torch"]._C._functorch
            while functorch.is_functorch_wrapped_tensor(x):
                x = functorch.get_unwrapped(x)
        return x

    def compiling(self) -> bool:
        """True while ``torch.compile`` traces a torch op: the ops then avoid what it cannot trace
        (NumPy views and compiled kernels, branches on values)."""
        return self.name == "torch" and _torch_compiling()

    def asarray_like(self, value: Any, like: Any) -> Any:
        """A scalar or array-like as an array of ``like``'s dtype and device."""
        xp = self.xp
        if self.name == "torch":
            return xp.asarray(value, dtype=like.dtype, device=like.device)
        return xp.asarray(value, dtype=like.dtype)


_NUMPY = Backend("numpy", np)


class _AccurateJaxNumpy:
    """``jax.numpy`` with an accurate ``log1p`` and a better ``expm1``.

    XLA's float64 ``log1p`` on CPU is off by up to 127 ulp on [-0.5, -0.1]
    and its ``expm1`` by 4 ulp (measured against mpmath), which would leak
    into log1mexp, logsubexp and the ``log1p(s)`` of every log-sum-exp.
    ``log1p`` here uses the classic correction ``log(u) - ((u - 1) - x) / u``
    with ``u = 1 + x`` (the second term is the rounding error of ``u``):
    within 1 ulp. ``expm1`` uses Kahan's ``(u - 1) x / log(u)`` with
    ``u = exp(x)`` for ``|x| < 1``: within 1.9 ulp (limited by XLA's ``exp``,
    1.3 ulp).

    Both are ``jax.custom_jvp`` functions with the analytic derivatives ``exp(x)`` and
    ``1 / (1 + x)`` rather than the derivatives of their corrections (which cancel:
    ``(log(u) - x) / x^2`` in Kahan's ratio near 0).
    """

    def __init__(self, jnp: Any) -> None:
        import jax

        self._jnp = jnp
        self._jax = jax
        self.expm1 = jax.custom_jvp(self._expm1)
        self.expm1.defjvp(lambda primals, tangents: (self.expm1(primals[0]), jnp.exp(primals[0]) * tangents[0]))
        self.log1p = jax.custom_jvp(self._log1p)
        self.log1p.defjvp(lambda primals, tangents: (self.log1p(primals[0]), tangents[0] / (1 + primals[0])))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jnp, name)

    def _log1p(self, x: Any) -> Any:
        jnp = self._jnp
        u = 1 + x
        special = (u == 0) | jnp.isinf(u) | (u == 1)
        safe_u = jnp.where(special, jnp.ones_like(u), u)
        corrected = jnp.log(safe_u) - ((safe_u - 1) - jnp.where(special, jnp.zeros_like(x), x)) / safe_u
        # u == 1: log1p(x) = x to working precision; u == 0 or inf: log(u) is exact (-inf, inf)
        return jnp.where(u == 1, x, jnp.where(special, jnp.log(u), corrected))

    def _expm1(self, x: Any) -> Any:
        jnp = self._jnp
        u = jnp.exp(x)
        um1 = u - 1
        kahan = (jnp.abs(x) < 1) & (u != 1) & (um1 != -1)
        xs = jnp.where(kahan, x, 0.5)  # the unused branch sees a safe value: no NaN gradient
        # the barrier keeps XLA from folding log(exp(xs)) to xs under jit, which drops the correction
        # (the ratio becomes u - 1: expm1(-1.5e-16) 30% off)
        us = self._jax.lax.optimization_barrier(jnp.exp(xs))
        ratio = (us - 1) * xs / jnp.log(us)
        # u == 1: expm1(x) = x to working precision; u - 1 == -1: the limit -1
        return jnp.where(kahan, ratio, jnp.where(u == 1, x, um1))


_JAX_XP: Any = None


def _jax_namespace() -> Any:
    global _JAX_XP
    if _JAX_XP is None:
        import jax.numpy as jnp

        _JAX_XP = _AccurateJaxNumpy(jnp)
    return _JAX_XP


def _backend_of(x: Any) -> Backend | None:
    """Backend owning ``x``, or None for Python scalars / lists."""
    if isinstance(x, (np.ndarray, np.generic)):
        return _NUMPY
    mod = type(x).__module__
    if mod.startswith("torch") and "torch" in sys.modules:
        import torch

        if isinstance(x, torch.Tensor):
            from . import _torch_namespace  # an import statement: see that module

            return _torch_namespace.BACKEND
    if mod.startswith(("jax", "jaxlib")) and "jax" in sys.modules:
        import jax

        if isinstance(x, jax.Array):
            return Backend("jax", _jax_namespace())
    return None


def namespace(*named: tuple[str, Any], func: str) -> Backend:
    """Backend shared by the named array arguments; ``None`` values are ignored.

    Python scalars and lists take the backend of the arrays they come with (NumPy
    when alone). Arrays of two different libraries raise a ``TypeError`` naming
    both arguments.
    """
    found: tuple[str, Backend] | None = None
    for name, value in named:
        if value is None:
            continue
        be = _backend_of(value)
        if be is None:
            if not isinstance(value, (int, float, bool, list, tuple)):
                raise TypeError(
                    f"floatguard.{func}: argument {name!r} must be a NumPy array, "
                    f"a PyTorch tensor or a JAX array, got {type(value).__name__}"
                )
            continue
        if be.name == "torch" and value.layout is not sys.modules["torch"].strided:
            raise TypeError(
                f"floatguard.{func}: argument {name!r} is a tensor of layout {value.layout}; floatguard's ops "
                f"take dense (strided) tensors: pass {name}.to_dense()"
            )
        if found is not None and found[1].name != be.name:
            raise TypeError(
                f"floatguard.{func}: arguments {found[0]!r} ({found[1].name}) and "
                f"{name!r} ({be.name}) come from different array libraries; "
                "convert one so both are the same kind"
            )
        if found is None:
            found = (name, be)
    return found[1] if found is not None else _NUMPY


def _is_float_dtype(be: Backend, dtype: Any) -> bool:
    xp = be.xp
    if be.name == "numpy":  # bfloat16 of ml_dtypes is a NumPy dtype of kind "V"
        return np.issubdtype(dtype, np.floating) or np.dtype(dtype).name == "bfloat16"
    if be.name == "torch":
        return dtype.is_floating_point
    return xp.issubdtype(dtype, xp.floating)


def as_float(be: Backend, x: Any, name: str, func: str, like: Any = None) -> Any:
    """``x`` as a floating array of backend ``be``.

    Python scalars and lists become arrays (of ``like``'s dtype when given, else
    the backend's default float). Integer, boolean and complex arrays are refused
    with a ``TypeError`` that names the argument and says which cast to make:
    floatguard never promotes silently.
    """
    xp = be.xp
    if _backend_of(x) is None:
        check_array_like(x, name, func)
        try:
            if like is not None:
                return be.asarray_like(x, like)
            if be.name == "numpy":
                return np.asarray(x, dtype=np.float64)
            return xp.asarray(x, dtype=xp.float32 if be.name == "jax" else None) * 1.0
        except (ValueError, TypeError, RuntimeError) as exc:
            raise TypeError(
                f"floatguard.{func}: argument {name!r} could not be made an array of floats: {exc}"
            ) from exc
    dtype = x.dtype
    if not _is_float_dtype(be, dtype):
        target = {"numpy": "x.astype(np.float64)", "torch": "x.to(torch.get_default_dtype())",
                  "jax": "x.astype(jnp.float32)"}[be.name]
        raise TypeError(
            f"floatguard.{func}: argument {name!r} must be a real floating-point array, "
            f"got dtype {dtype}; floatguard does not promote silently: cast it first, "
            f"e.g. {target.replace('x', name, 1)}"
        )
    return x


def is_complex_dtype(be: Backend, dtype: Any) -> bool:
    """True for a complex floating dtype of backend ``be``."""
    if be.name == "numpy":
        return np.issubdtype(dtype, np.complexfloating)
    if be.name == "torch":
        return bool(dtype.is_complex)
    return bool(be.xp.issubdtype(dtype, be.xp.complexfloating))


def default_float(be: Backend) -> Any:
    """The float dtype integers and booleans are promoted to: NumPy's float64 (as SciPy),
    ``torch.get_default_dtype()`` (as ``torch.logsumexp``), JAX's default float (float32
    without ``jax_enable_x64``, as ``jax.scipy``)."""
    if be.name == "numpy":
        return np.float64
    if be.name == "torch":
        import torch

        return torch.get_default_dtype()
    import jax

    return jax.dtypes.canonicalize_dtype(np.float64)


def _is_integral_dtype(be: Backend, dtype: Any) -> bool:
    if be.name == "numpy":
        return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)
    if be.name == "torch":
        return not dtype.is_floating_point and not dtype.is_complex
    return bool(be.xp.issubdtype(dtype, be.xp.integer) or be.xp.issubdtype(dtype, be.xp.bool_))


def check_array_like(x: Any, name: str, func: str) -> None:
    """Refuse ``None`` (and other non-numbers) where an array is required: ``np.asarray(None, float)`` is NaN."""
    if x is None or not isinstance(x, (int, float, complex, list, tuple)):
        raise TypeError(
            f"floatguard.{func}: argument {name!r} must be a NumPy array, a PyTorch tensor, a JAX array, "
            f"a number or a list of numbers, got {type(x).__name__}"
        )


def as_array(be: Backend, x: Any, name: str = "x", func: str = "op") -> Any:
    """A Python scalar, list or tuple as an array of backend ``be`` (arrays pass unchanged)."""
    if _backend_of(x) is not None:
        return x
    check_array_like(x, name, func)
    try:
        return np.asarray(x) if be.name == "numpy" else be.xp.asarray(x)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise TypeError(f"floatguard.{func}: argument {name!r} could not be made an array: {exc}") from exc


def promoted_dtype(be: Backend, *values: Any) -> Any:
    """Result dtype of ``values`` (arrays, or Python scalars, which are weak as in NumPy 2),
    made inexact: integer and boolean results become :func:`default_float`. Python lists are
    arrays for NumPy (as in SciPy) and weak like scalars for PyTorch and JAX (they take the
    dtype of the tensor they come with)."""
    xp = be.xp
    args = []
    for v in values:
        if isinstance(v, (list, tuple)) and be.name != "numpy":
            kind = np.asarray(v).dtype.kind
            v = 0j if kind == "c" else 0.0 if kind == "f" else 0
        elif not isinstance(v, (int, float, complex)) and _backend_of(v) is None:
            v = as_array(be, v)
        args.append(v)
    dtype = xp.result_type(*args)
    if _is_integral_dtype(be, dtype):
        return default_float(be)
    return dtype


def as_inexact(be: Backend, x: Any, name: str, func: str) -> Any:
    """``x`` as a real or complex floating array of backend ``be``, the way SciPy, PyTorch and
    JAX take it: Python scalars and lists become arrays, integer and boolean arrays are
    promoted to :func:`default_float`. Other dtypes (strings, objects) raise a ``TypeError``
    naming the argument."""
    x = as_array(be, x, name, func)
    dtype = x.dtype
    if _is_float_dtype(be, dtype) or is_complex_dtype(be, dtype):
        return x
    if _is_integral_dtype(be, dtype):
        return be.xp.astype(x, default_float(be))
    raise TypeError(
        f"floatguard.{func}: argument {name!r} must be a numeric array, got dtype {dtype}"
    )


def finfo_of(be: Backend, dtype: Any) -> Any:
    """``finfo`` of a floating dtype (bfloat16 included)."""
    if be.name == "numpy" and np.dtype(dtype).name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.finfo(dtype)
    return be.xp.finfo(dtype)


def alias(value: Any, default: Any, other: Any, names: tuple[str, str], func: str) -> Any:
    """``other`` (PyTorch's name of the argument: ``dim``, ``keepdim``) as an alias of ``value``.

    ``value`` when ``other`` is None; a ``TypeError`` naming both when both are given.
    """
    if other is None:
        return value
    if value is not default and value != default:
        raise TypeError(f"floatguard.{func}: pass {names[0]!r} or its alias {names[1]!r}, not both")
    return other


def check_flag(value: Any, name: str, func: str) -> bool:
    """``value`` (a bool, NumPy bool, or the int 0 or 1) as a bool; a ``TypeError`` naming it otherwise
    (``keepdims="no"`` is truthy, and PyTorch refuses it too)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"floatguard.{func}: argument {name!r} must be a bool, got {value!r}")


def check_real(value: Any, name: str, func: str) -> float:
    """``value`` (a Python or NumPy real number, not a bool) as a float; a ``TypeError`` naming it otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"floatguard.{func}: argument {name!r} must be a real number, got {value!r}")
    return float(value)


def finite(value: float) -> bool:
    """Whether a float argument is finite, as comparisons: under ``torch.compile(dynamic=True)`` Dynamo traces
    ``float()`` of a constant argument as a symbolic float, on which ``math.isfinite`` breaks the graph
    ("torch.* op returned non-Tensor"), where a comparison is a guard."""
    return -math.inf < value < math.inf


def normalize_axis(axis: int, ndim: int, name: str, func: str) -> int:
    """``axis`` in ``range(ndim)``; a clear ``ValueError`` when out of range."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"floatguard.{func}: argument {name!r} must be an int, got {axis!r}")
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(
            f"floatguard.{func}: argument {name!r}={axis} is out of range for an "
            f"array with {ndim} dimension(s)"
        )
    return int(axis) % max(ndim, 1)


def normalize_axes(axis: Any, ndim: int, name: str, func: str) -> tuple[int, ...]:
    """``axis`` (None, int or tuple of ints) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        axes = tuple(sorted({normalize_axis(a, ndim, name, func) for a in axis}))
        if len(axes) != len(axis):
            raise ValueError(f"floatguard.{func}: argument {name!r}={axis} repeats an axis")
        return axes
    return (normalize_axis(axis, ndim, name, func),)
