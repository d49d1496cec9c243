"""One table of fast kernels per op, keyed by backend and dtype, chosen in one place.

Each op is defined once (:mod:`.reductions`, :mod:`.elementwise`) against the array
namespace of its input; that generic code is the fallback. A backend may attach fast
kernels to an op, as ``torch.library`` attaches a kernel per dispatch key and JAX a
lowering per platform::

    @register("softmax", "torch", stage="rows", dtypes=(torch.float32, ...))
    def _softmax_rows(rows): ...

and the op asks :func:`select` once for the kernel of its input. Two stages:

``"call"``
    The plain call, before any argument work: ``fn(x, *args)`` gets the op's raw
    arguments and returns the result, or None to decline (the op then takes its full path).
    Keyed by the type of ``x`` (exactly ``torch.Tensor``; any ``jax.Array``, tracers
    included), so that a small call costs a dictionary lookup.
``"rows"``
    After the arguments are checked and the reduced axes moved last and flattened:
    ``fn(rows)`` gets a non-empty ``(R, n)`` array and returns the op's value per row
    (``logsumexp``: ``R`` values, in the input dtype or wider; ``softmax`` and
    ``log_softmax``: ``(R, n)`` in the input dtype).

A backend's kernels are registered by the module that holds them (:func:`_load` names them),
imported the first time an array of that backend asks: PyTorch and JAX are imported only
when their arrays arrive.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ._namespace import _torch_compiling

__all__ = ["BACKENDS", "OPS", "Kernel", "kernels", "register", "select", "select_call"]

Stage = Literal["call", "rows"]
F = TypeVar("F", bound=Callable[..., Any])

BACKENDS = ("numpy", "torch", "jax")  # the kernels of each are registered by the module _load imports
OPS = frozenset({
    "logsumexp", "softmax", "log_softmax",  # rows and call kernels
    "softplus", "log_sigmoid", "log1mexp", "logaddexp",  # call kernels (elementwise)
})
# the modules that register a backend's kernels, imported on the first array of that backend
# call kernels: the exact type of x (torch: subclasses such as FakeTensor take the full path), or any
# instance of the array type (jax.Array: its concrete arrays and the tracers of jit, grad and vmap)
_TENSOR_TYPES = {"torch": ("torch", "Tensor", True), "jax": ("jax", "Array", False)}


@dataclass(frozen=True)
class Kernel:
    """A fast kernel of ``op`` on ``backend``: for inputs of one of ``dtypes`` (the backend's own
    dtype objects; None: every dtype) where ``predicate(x)`` holds (None: always)."""

    op: str
    backend: str
    stage: Stage
    fn: Callable[..., Any]
    dtypes: frozenset[Any] | None = None
    predicate: Callable[[Any], bool] | None = None

    def applies(self, x: Any) -> bool:
        """Whether this kernel takes ``x`` (its dtype and predicate)."""
        return (self.dtypes is None or x.dtype in self.dtypes) and (self.predicate is None or self.predicate(x))


_TABLE: dict[tuple[str, str, Stage], list[Kernel]] = {}
_LOADED: set[str] = set()
_CALL: dict[tuple[str, type], tuple[Kernel, ...]] = {}  # (op, type of x) -> its call kernels
_CALL_FN: dict[tuple[str, type, Any], Callable[..., Any] | None] = {}  # (op, type, dtype) -> the chosen kernel


def _check(op: str, backend: str, stage: str) -> None:
    if op not in OPS:
        raise ValueError(f"floatguard kernels: argument 'op' must be one of {sorted(OPS)}, got {op!r}")
    if backend not in BACKENDS:
        raise ValueError(f"floatguard kernels: argument 'backend' must be one of {sorted(BACKENDS)}, got {backend!r}")
    if stage not in ("call", "rows"):
        raise ValueError(f"floatguard kernels: argument 'stage' must be 'call' or 'rows', got {stage!r}")


def register(
    op: str,
    backend: str,
    *,
    stage: Stage = "rows",
    dtypes: Collection[Any] | None = None,
    predicate: Callable[[Any], bool] | None = None,
) -> Callable[[F], F]:
    """Decorator: add the function as a ``stage`` kernel of ``op`` on ``backend`` (tried in the order
    registered; the first that applies is chosen)."""
    _check(op, backend, stage)

    def add(fn: F) -> F:
        _TABLE.setdefault((op, backend, stage), []).append(
            Kernel(op, backend, stage, fn, None if dtypes is None else frozenset(dtypes), predicate))
        _CALL.clear()
        _CALL_FN.clear()
        return fn

    return add


def _load(backend: str) -> None:
    """Import the modules that register ``backend``'s kernels (once)."""
    if backend in _LOADED:
        return
    _LOADED.add(backend)
    # Import statements, not importlib: torch.compile traces an ``import`` (it runs it once while
    # tracing) but breaks the graph on ``importlib.import_module``.
    try:
        if backend == "torch":
            from . import _torch_fast  # noqa: F401
        elif backend == "jax":
            from . import _jax_kernels  # noqa: F401
        else:
            from . import _numpy_fast  # noqa: F401
    except BaseException:
        # not loaded: the error reaches the caller, and the next call tries again (marked loaded, the backend's
        # ops would have taken the generic path for the rest of the process, silently)
        _LOADED.discard(backend)
        raise


def kernels(op: str, backend: str, stage: Stage = "rows") -> tuple[Kernel, ...]:
    """The ``stage`` kernels of ``op`` on ``backend``, in the order they are tried."""
    _check(op, backend, stage)
    _load(backend)
    return tuple(_TABLE.get((op, backend, stage), ()))


def select(op: str, backend: str, x: Any) -> Callable[..., Any] | None:
    """The ``rows`` kernel of ``op`` for the rows ``x`` on ``backend``, or None: the generic path
    (always for empty rows: the kernels need at least one row and one entry per row)."""
    if 0 in tuple(x.shape):
        return None
    if backend == "torch" and _torch_compiling():
        # as in select_call: an import statement, not _load, whose set of loaded backends Dynamo would guard (read
        # empty while it traced the first call of a process, then filled: a recompile at the second call)
        from . import _torch_fast  # noqa: F401

        table: Collection[Kernel] = _TABLE.get((op, "torch", "rows"), ())
    else:
        table = kernels(op, backend)
    for k in table:
        if k.applies(x):
            return k.fn
    return None


def _call_kernels(op: str, x: Any) -> tuple[Kernel, ...]:
    """The call kernels of ``op`` for inputs of the type of ``x`` (none for a library not yet imported),
    remembered for that type (an instance check on one instance holds for every instance of its type)."""
    found: tuple[Kernel, ...] = ()
    for backend, (module, name, exact) in _TENSOR_TYPES.items():
        lib = sys.modules.get(module)
        tp = None if lib is None else getattr(lib, name, None)
        if tp is not None and (type(x) is tp if exact else isinstance(x, tp)):
            found = kernels(op, backend, "call")
    _CALL[(op, type(x))] = found
    return found


def select_call(op: str, x: Any) -> Callable[..., Any] | None:
    """The ``call`` kernel of ``op`` for ``x``, or None: one dictionary lookup on its type and dtype once seen
    (a small call's budget is a few microseconds), else the kernels of its type tried in order.

    While ``torch.compile`` traces, the two caches are neither read nor written: their keys hold types, so Dynamo
    guards them by position, and a later registration (a kernel module imported on first use) clears them, after
    which the compiled function's guard raised ``StopIteration`` (compiling ``logaddexp`` and then ``logsumexp``
    in one process) where it should have failed and recompiled. Nor are the libraries looked up in ``sys.modules``:
    Dynamo traces torch tensors alone (the kernels of others do not apply), and one library missing there (JAX,
    say) made it guard every key of ``sys.modules``: some 3,000 guards, 0.3 ms a call of the compiled function (a
    32×10 ``softplus`` took 320 us against the compiled ``F.softplus``'s 25), and a recompile whenever the program
    imported a module."""
    if _torch_compiling():
        # the import registers the torch kernels (Dynamo runs it while tracing); not _load, whose set of loaded
        # backends, read before and changed after, failed the guard of the first call compiled (one recompile)
        from . import _torch_fast  # noqa: F401

        return next((k.fn for k in _TABLE.get((op, "torch", "call"), ()) if k.applies(x)), None)
    key = (op, type(x), getattr(x, "dtype", None))
    try:
        return _CALL_FN[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable dtype attribute: no kernel takes it
        return None
    found = _CALL.get(key[:2])
    if found is None:
        found = _call_kernels(op, x)
    chosen = next((k.fn for k in found if k.applies(x)), None)
    if all(k.predicate is None for k in found):  # the choice depends on the type and dtype alone
        _CALL_FN[key] = chosen
    return chosen
