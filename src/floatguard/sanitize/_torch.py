"""The PyTorch op-level sanitizer: a ``TorchDispatchMode`` that checks every op's output.

Design (what keeps it cheaper than ``torch.autograd.detect_anomaly``):

* One fused reduction per float output: ``torch.aminmax`` (a single vectorised pass,
  NaN-propagating) read back as two Python floats; for large contiguous float32/float64
  outputs whose zeros need no judgment, the sum of squares (one BLAS ``dot``, ~1.25x
  faster), which is finite only when no entry is NaN, inf or near the overflow threshold.
  Everything else — input scans, statistics, the user's frame — runs only when that check fails.
* Ops that cannot create a non-finite value from finite inputs (views, copies,
  gathers, factories, ``relu``, ``max``...) are not checked at all; a NaN they pass on
  is caught at the op that made it.
* Backward ops are mapped to their forward op through the autograd sequence number:
  at forward time the mode stores ``(op, module, file, line)`` under the number of the
  node the op created (a dict insert, plus a cached frame walk); in backward,
  ``torch._C._current_autograd_node()`` names the node — no stack is formatted.
* The module path comes from global module pre/post hooks keeping a stack of names.
* Optimizer steps run unchecked op by op; the parameters and optimizer state are
  checked once after each ``step()`` with one reduction pass (see :func:`first_bad`).
* Off the CPU the (min, max) pairs stay on the device (one ``aminmax`` launch per op)
  and are read once per step: at the end of the backward, or of the forward when no
  backward follows (and earlier past 256 ops or 256 MiB of held tensors, and at exit).
  No host synchronisation per op.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..events import Event
from ._core import NumericalError, Session
from ._frames import user_location
from ._hints import hint_for

__all__ = ["ModuleTracker", "OpSanitizer", "StepChecker", "first_bad", "stored_values", "tensor_stats"]

_seq = torch._C._autograd._get_sequence_nr
_is_compiling = torch.compiler.is_compiling
_current_node = torch._C._current_autograd_node
_Tensor = torch.Tensor
_strided = torch.strided
_INF = math.inf
_dot = torch.dot
_DOT_MIN = 16384  # below this size aminmax is as fast (the view and the BLAS call cost a fixed ~1 us)

_FLOAT8 = frozenset(dt for dt in (getattr(torch, n, None) for n in ("float8_e4m3fn", "float8_e5m2",
                                                                    "float8_e4m3fnuz", "float8_e5m2fnuz"))
                    if dt is not None)
_COMPLEX = frozenset({torch.complex32, torch.complex64, torch.complex128})

SKIP, CHECK, CAST = 0, 1, 2
UF_NONE, UF_NONNEG, UF_FLUSH, UF_PROD, UF_CAST = 0, 1, 2, 3, 4

# Ops whose outputs need no check: views and copies, factories and random fills,
# selections and order statistics — none creates inf/NaN from finite inputs.
_SKIP = frozenset({
    "detach", "detach_", "alias", "clone", "contiguous", "lift_fresh", "lift_fresh_copy", "_unsafe_view",
    "_reshape_alias", "view_copy", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
    "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "zero_", "zero", "arange", "linspace",
    "logspace", "eye", "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm",
    "bernoulli", "bernoulli_", "normal", "normal_", "uniform_", "exponential_", "geometric_", "cauchy_",
    "log_normal_", "random_", "multinomial", "native_dropout_mask", "cat", "stack", "index", "index_select",
    "gather", "take", "select_backward", "slice_backward", "diagonal_backward", "as_strided_backward", "embedding",
    "masked_select", "where", "relu", "relu_", "threshold", "threshold_", "threshold_backward", "clamp", "clamp_",
    "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "clip", "clip_", "hardtanh", "hardtanh_",
    "hardtanh_backward", "abs", "abs_", "neg", "neg_", "sign", "sgn", "floor", "ceil", "round", "trunc", "max",
    "min", "amax", "amin", "maximum", "minimum", "fmax", "fmin", "sort", "topk", "argsort", "argmax", "argmin",
    "kthvalue", "median", "nanmedian", "mode", "flip", "roll", "rot90", "repeat", "tile", "constant_pad_nd",
    "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d", "nonzero",
    "_local_scalar_dense", "equal", "resize_", "resize_as_", "set_", "record_stream", "tril", "triu", "tril_",
    "triu_", "max_pool2d_with_indices", "max_pool1d", "max_pool2d", "max_pool3d_with_indices",
    "adaptive_max_pool2d", "im2col", "unfold_copy", "_pin_memory", "isnan", "isinf", "isfinite", "signbit",
    "logical_not", "logical_and", "logical_or", "eq", "ne", "lt", "le", "gt", "ge", "masked_scatter", "_to_dense",
    "_nested_tensor_from_mask", "copy_sparse_to_sparse_", "_foreach_zero_", "_unique2", "unique_dim", "one_hot",
    "_copy_from", "_copy_from_and_resize"
})
_CASTS = {"_to_copy", "copy_", "copy", "to", "_to_copy_"}
_UF_NONNEG = {"exp", "exp_", "exp2", "exp2_", "sigmoid", "sigmoid_", "_softmax", "softmax", "_safe_softmax"}
_UF_FLUSH = {"mul", "mul_", "div", "div_", "pow", "pow_", "mm", "bmm", "addmm", "baddbmm", "matmul", "addmv",
             "mv", "dot", "convolution", "_convolution", "square", "_foreach_mul", "_foreach_div"}
_UF_PROD = {"prod", "cumprod", "cumprod_"}
_DIVLIKE = {"div", "div_", "reciprocal", "reciprocal_", "log", "log_", "log2", "log2_", "log10", "log10_",
            "log1p", "log1p_", "rsqrt", "rsqrt_", "pow", "pow_", "xlogy", "xlogy_", "special_xlogy", "digamma",
            "lgamma", "polygamma", "atanh", "atanh_", "logit", "logit_", "erfinv", "floor_divide", "true_divide",
            "_foreach_div", "_foreach_div_", "_foreach_reciprocal", "_foreach_log", "_foreach_rsqrt"}
_LOGLIKE = {"log", "log_", "log2", "log2_", "log10", "log10_", "xlogy", "special_xlogy", "logit"}
_REDUCTIONS = {"sum", "mean", "mm", "bmm", "addmm", "baddbmm", "matmul", "nansum", "dot", "mv", "addmv",
               "logsumexp", "cumsum", "einsum"}


class _Policy:
    __slots__ = ("base", "check", "divlike", "dot", "is_view", "kw", "mutated", "name", "pos", "reduction", "uf")

    def __init__(self, func: Any) -> None:
        schema = func._schema
        self.name = schema.name if "::" in schema.name else f"aten::{schema.name}"
        base = func._overloadpacket.__name__
        self.base = base
        self.mutated = tuple(i for i, a in enumerate(schema.arguments)
                             if a.alias_info is not None and a.alias_info.is_write)
        tags = getattr(func, "tags", ())
        self.is_view = bool(getattr(func, "is_view", False))
        if base in _CASTS:
            self.check = CAST
        elif (base in _SKIP or getattr(func, "is_view", False) or torch.Tag.nondeterministic_seeded in tags
              or base.startswith("_record_function")):
            self.check = SKIP
        else:
            self.check = CHECK
        self.uf = (UF_NONNEG if base in _UF_NONNEG else UF_FLUSH if base in _UF_FLUSH else
                   UF_PROD if base in _UF_PROD else UF_CAST if base in _CASTS else UF_NONE)
        self.divlike = base in _DIVLIKE
        self.reduction = base in _REDUCTIONS
        # the sum-of-squares check suffices unless an underflow judgment needs the exact minimum (a zero
        # among non-negative outputs); whole-tensor flushes to 0 (UF_FLUSH, UF_CAST) are found from s == 0
        self.dot = self.uf not in (UF_NONNEG, UF_PROD)
        # arguments that carry values (tensors, numbers), not dims or flags
        vals = [(i, a.name, a.kwarg_only) for i, a in enumerate(schema.arguments)
                if str(a.type).rstrip("?").split("[")[0] in ("Tensor", "Scalar", "number", "float", "complex")]
        self.pos = tuple(i for i, _, kw in vals if not kw)
        self.kw = tuple(n for _, n, kw in vals if kw)


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def _flat_tensors(pol: Any, args: Any, kwargs: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """``(label, value)`` of the value arguments: tensors (lists flattened) and numbers."""
    out: list[tuple[str, Any]] = []
    items: list[tuple[str, Any]] = [(f"input{i}", args[i]) for i in pol.pos if i < len(args)]
    if kwargs:
        items += [(k, kwargs[k]) for k in pol.kw if k in kwargs]
    for label, a in items:
        if isinstance(a, _Tensor):
            out.append((label, a))
        elif isinstance(a, (list, tuple)):
            out.extend((f"{label}[{j}]", b) for j, b in enumerate(a) if isinstance(b, _Tensor | float | int))
        elif isinstance(a, float | int) and not isinstance(a, bool):
            out.append((label, a))
    return out


_COMPRESSED = frozenset({torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc})


def stored_values(t: Any) -> Any:
    """The entries a tensor stores, as a strided tensor: ``t`` itself, or the values of a sparse tensor.

    A sparse gradient (``nn.Embedding(..., sparse=True)``) is non-finite exactly where one
    of its stored values is; the entries it does not store are zeros. Nested and other
    layouts give None (not judged).
    """
    layout = t.layout
    if layout is _strided:
        return None if t.is_nested else t
    if layout is torch.sparse_coo:
        return t._values()
    if layout in _COMPRESSED:
        return t.values()
    return None


def tensor_stats(t: Any, prefix: str) -> dict[str, Any]:
    """min/max/absmax over the finite entries, counts of NaN, inf, zeros, subnormals.

    Of a sparse tensor: over its stored values (``stored`` counts them; ``numel`` is the dense size).
    """
    if not isinstance(t, _Tensor):
        return {f"{prefix}.value": float(t)}
    with torch.no_grad():
        x = t.detach()
        if x.device.type == "meta" or (vals := stored_values(x)) is None:
            return {f"{prefix}.numel": x.numel()}
        d: dict[str, Any] = {f"{prefix}.numel": x.numel()}
        if vals is not x:
            d[f"{prefix}.stored"] = vals.numel()
            x = vals
        if x.is_complex():  # real and imaginary parts together
            x = torch.view_as_real(x.resolve_conj() if x.is_conj() else x)
        if x.is_floating_point():
            tiny = torch.finfo(x.dtype).tiny
        else:
            tiny = 0.0
        x = x.to(torch.float64)
        fin = torch.isfinite(x)
        vals = x[fin]
        if vals.numel():
            d[f"{prefix}.min"] = vals.min().item()
            d[f"{prefix}.max"] = vals.max().item()
            d[f"{prefix}.absmax"] = vals.abs().max().item()
        d[f"{prefix}.nan"] = int(torch.isnan(x).sum())
        d[f"{prefix}.inf"] = int(torch.isinf(x).sum())
        d[f"{prefix}.zeros"] = int((x == 0).sum())
        d[f"{prefix}.subnormal"] = int(((x != 0) & (x.abs() < tiny)).sum()) if tiny else 0
    return d


def _nonfinite(v: Any) -> tuple[bool, bool]:
    """(has NaN, has inf) of a tensor or scalar."""
    if isinstance(v, _Tensor):
        if not (v.is_floating_point() or v.is_complex()) or v.numel() == 0:
            return False, False
        if v.dtype in _FLOAT8:  # no isinf for float8_e4m3fn
            v = v.float()
        elif v.is_complex():
            v = torch.view_as_real(v.resolve_conj() if v.is_conj() else v)
        lo, hi = torch.aminmax(v.detach())  # one pass for the common case: a finite input
        if lo.item() > -_INF and hi.item() < _INF:
            return False, False
        return bool(torch.isnan(v).any()), bool(torch.isinf(v).any())
    return v != v, v in (_INF, -_INF)


def _has_zero(v: Any) -> bool:
    if isinstance(v, _Tensor):
        return v.numel() > 0 and bool((v == 0).any())
    return v == 0


def _absmax(v: Any) -> float:
    if isinstance(v, _Tensor):
        if not (v.is_floating_point() or v.is_complex()) or v.numel() == 0:
            return 0.0
        return float(v.detach().abs().max().double())  # float64 values beyond the float32 range stay finite
    return abs(float(v))


def _storage_key(t: Any) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # sparse, nested, fake tensors
        return None


def first_bad(tensors: list[Any]) -> list[int]:
    """Indices of the tensors holding a NaN or inf.

    The common case — all finite — costs one reduction pass over each tensor and one
    read: a NaN or an inf anywhere makes the sum NaN or ±inf (inf − inf is NaN), so
    an all-finite group is proved by one finite total. On the CPU the pass is a plain
    ``sum`` per tensor (the cheapest vectorised read; float16/bfloat16 accumulate in
    float32); on accelerators one fused ``torch._foreach_norm`` launch over the group.
    A total that merely overflows from finite values is re-checked tensor by tensor.
    """
    ts: list[Any] = []
    idx: list[int] = []
    for i, t in enumerate(tensors):
        if isinstance(t, _Tensor) and t.is_floating_point() and t.numel():
            if t.layout is not _strided or t.is_nested:  # sparse gradients: their stored values
                t = stored_values(t)
                if t is None or not t.numel():
                    continue
            ts.append(t.detach())
            idx.append(i)
    if not ts:
        return []
    if len(ts) == 1 and ts[0].numel() == 1:  # a loss: one read, no reduction
        v = ts[0].item()
        return [] if -_INF < v < _INF else [idx[0]]
    with torch.no_grad():
        dev = ts[0].device
        if dev.type == "cpu":
            parts = [t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum() for t in ts]
        else:
            parts = list(torch._foreach_norm(ts, 2.0))
        if len(parts) == 1:
            total = parts[0].item()
        else:
            if len({(p.dtype, p.device) for p in parts}) > 1:
                parts = [p.to(dev, torch.float64) for p in parts]
            total = torch.stack(parts).sum().item()
        if -_INF < total < _INF:
            return []
        return [i for i, t in zip(idx, ts, strict=True)
                if not bool(torch.isfinite(t if t.element_size() > 1 else t.float()).all())]  # float8: no isfinite


def _strip_compiled(name: str) -> str:
    """``_orig_mod.fc1`` -> ``fc1`` (the submodule path inside a ``torch.compile``'d module)."""
    if name == "_orig_mod":
        return ""
    return name.removeprefix("_orig_mod.")


def _outermost_parent(module: torch.nn.Module) -> torch.nn.Module | None:
    """The outermost model holding ``module`` as a (nested) submodule, found in the callers' variables.

    ``model.blocks[3].act(x)`` runs ``act`` outside any other module's forward; the model is
    then a local or global of a frame on the stack (or an attribute of one: ``self.model``).
    Asked only when a finding names such a module; None when no caller holds a parent.
    """
    import sys

    module_type = torch.nn.Module
    cands: dict[int, torch.nn.Module] = {}
    spaces: dict[int, dict[str, Any]] = {}
    f = sys._getframe(1)
    while f is not None:
        spaces.setdefault(id(f.f_globals), f.f_globals)
        loc = f.f_locals
        spaces[id(loc)] = loc
        f = f.f_back
    for ns in spaces.values():
        for v in list(ns.values()):
            tv = type(v)
            if issubclass(tv, module_type):  # type(), not isinstance: no __class__ lookups on proxies
                cands[id(v)] = v
                continue
            try:  # one level into other objects: a trainer's ``self.model``
                attrs = object.__getattribute__(v, "__dict__") if not isinstance(v, type) else None
            except Exception:  # no __dict__ (or a proxy that refuses)
                continue
            if type(attrs) is dict:
                for w in list(attrs.values()):
                    if issubclass(type(w), module_type):
                        cands[id(w)] = w
    best, size = None, 0
    for c in cands.values():
        if c is module:
            continue
        subs = list(c.modules())
        if len(subs) > size and any(m is module for m in subs):
            best, size = c, len(subs)
    return best


class _LazyName(str):
    """A module's name given before knowing whether the module is a submodule of a model (see ``resolve``)."""

    def __new__(cls, name: str, module: torch.nn.Module, root: torch.nn.Module) -> _LazyName:
        self = super().__new__(cls, name)
        self.ref, self.root = weakref.ref(module), weakref.ref(root)
        self.resolved: str | None = None
        return self


class ModuleTracker:
    """A stack of module paths, kept by global forward pre/post hooks.

    For a module of torch itself (``nn.Linear``, ``nn.TransformerEncoderLayer``) the
    user's source line is the same for every op inside it — the line that called the
    module — so it is found once, at the pre-hook, instead of once per op.
    """

    def __init__(self) -> None:
        self._tls = threading.local()  # one stack per thread: module hooks are global, models may run in threads
        self.names: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self.params: dict[int, tuple[weakref.ref[Any], str]] = {}
        self._builtin: dict[type, bool] = {}
        self._handles: list[Any] = []
        self.on_root_exit: list[Any] = []
        self.on_root_enter: list[Any] = []
        self.on_compiled_output: list[Any] = []
        self.on_compiled_enter: list[Any] = []  # around a compiled module's call (the mode steps aside)
        self.on_compiled_exit: list[Any] = []

    def __enter__(self) -> ModuleTracker:
        from torch.nn.modules import module as m

        self._handles = [m.register_module_forward_pre_hook(self._pre),
                         m.register_module_forward_hook(self._post, always_call=True)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._tls = threading.local()

    @property
    def stack(self) -> list[str]:
        """This thread's module paths, outermost first."""
        tls = self._tls
        try:
            return tls.stack  # type: ignore[no-any-return]
        except AttributeError:
            tls.stack, tls.locs = [], []
            return tls.stack  # type: ignore[no-any-return]

    @property
    def locs(self) -> list[tuple[str | None, int | None] | None]:
        """This thread's user (file, line) per module on the stack (None: found per op)."""
        self.stack  # noqa: B018 - creates both lists
        return self._tls.locs  # type: ignore[no-any-return]

    def register(self, root: torch.nn.Module, *, lazy: bool = False) -> None:
        """Name every submodule and parameter of ``root`` (root itself by its class name).

        ``lazy``: ``root`` was called directly, and may be a submodule of a model never
        called here (``model.blocks[3].act(x)``); its names are :class:`_LazyName` until a
        finding needs one (:meth:`resolve` then names it by its path in that model).
        """
        orig = getattr(root, "_orig_mod", None)  # torch.compile(model): name by the model, not the wrapper
        top = type(orig if isinstance(orig, torch.nn.Module) else root).__name__
        for name, mod in root.named_modules():
            name = _strip_compiled(name)
            if mod not in self.names or name or type(self.names[mod]) is _LazyName:
                self.names[mod] = _LazyName(name or top, mod, root) if lazy else name or top
        for name, p in root.named_parameters():
            self.params[id(p)] = (weakref.ref(p), _strip_compiled(name))

    def resolve(self, name: str | None) -> str | None:
        """The module path to report for ``name``: a directly called submodule by its path in its model."""
        if type(name) is not _LazyName:
            return name
        if name.resolved is None:
            mod, root = name.ref(), name.root()
            top = _outermost_parent(root) if root is not None else None
            if top is not None:
                self.register(top)
            elif root is not None:
                self.register(root)  # a root after all: plain names from now on
            name.resolved = str(self.names.get(mod, name)) if mod is not None else str(name)
        return name.resolved

    def param_name(self, p: Any) -> str | None:
        hit = self.params.get(id(p))
        if hit is not None and hit[0]() is p:
            return hit[1]
        return None

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        if _is_compiling():  # traced by torch.compile: no hook in the graph (its region is checked at its outputs)
            return
        stack, locs = self.stack, self._tls.locs
        if not stack:
            for cb in self.on_root_enter:
                cb()
        name = self.names.get(module)
        if name is None:
            if stack:
                name = f"{stack[-1]}.<{type(module).__name__}>"
                self.names[module] = name
            else:
                self.register(module, lazy=True)
                name = self.names[module]
        cls = type(module)
        builtin = self._builtin.get(cls)
        if builtin is None:
            builtin = self._builtin[cls] = cls.__module__.startswith("torch.")
        loc = None
        if builtin:
            parent = locs[-1] if locs else None
            loc = parent if parent is not None else user_location(1)
        stack.append(name)
        locs.append(loc)
        if self.on_compiled_enter and cls.__name__ == "OptimizedModule":
            for cb in self.on_compiled_enter:
                cb()

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if _is_compiling():
            return
        if self.on_compiled_exit and type(module).__name__ == "OptimizedModule":
            for cb in self.on_compiled_exit:
                cb()
        if self.on_compiled_output and type(module).__name__ == "OptimizedModule":
            for cb in self.on_compiled_output:
                cb(f"torch.compile({type(getattr(module, '_orig_mod', module)).__name__})", args, output)
        stack = self.stack
        if stack:
            stack.pop()
            self._tls.locs.pop()
            if not stack:
                for cb in self.on_root_exit:
                    cb(output)

    @property
    def current(self) -> str | None:
        stack = self.stack
        return stack[-1] if stack else None

    def here(self) -> tuple[str | None, str | None, int | None]:
        """(module, file, line) of the op being run: ``current`` and ``location()`` in one look at the stack."""
        try:
            stack, locs = self._tls.stack, self._tls.locs
        except AttributeError:
            return None, *user_location(2)
        if not stack:
            return None, *user_location(2)
        loc = locs[-1]
        if loc is None:
            return stack[-1], *user_location(2)
        return stack[-1], loc[0], loc[1]

    def location(self) -> tuple[str | None, int | None]:
        """The user's (file, line) of the op being run (called from ``__torch_dispatch__``)."""
        locs = self.locs
        loc = locs[-1] if locs else None
        return loc if loc is not None else user_location(2)


class _Candidate:
    """Scattered underflow kept in case a log or a division consumes the zeros."""

    __slots__ = ("event", "ref")

    def __init__(self, t: Any, event: Event) -> None:
        self.ref = weakref.ref(t)
        self.event = event


class OpSanitizer(TorchDispatchMode):
    """Check every op's float outputs; report through ``session``."""

    # torch.compile and this mode, through TorchDispatchMode's own switches: ``ignore_compile_internals``
    # lets torch.compile compile with the mode on the stack (otherwise dynamo falls back to eager for
    # every compiled function called under detect(), changing the numerics it was asked to watch), and
    # TorchDispatchMode's default wraps ``__torch_dispatch__`` in ``torch.compiler.disable``, so dynamo
    # never traces the checks. While a compiled region runs the mode also steps off the stack (``pause``:
    # compiled modules through the module hooks, functions compiled under detect() through the
    # torch.compile wrapper): the region is checked at its outputs, its kernels run unobserved.

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    def __init__(self, session: Session, modules: ModuleTracker, *, near_overflow: float | None = 16.0,
                 underflow: bool = True, defer: bool | None = None, flush_every: int = 256,
                 hold_bytes: int = 256 << 20) -> None:
        super().__init__()
        self.session = session
        self.modules = modules
        self.underflow = underflow
        self.near = near_overflow
        self._pol: dict[Any, _Policy] = {}
        self._thr: dict[torch.dtype, float] = {}
        self._fwd: dict[int, tuple[str, str | None, str | None, int | None]] = {}
        self._last_nr = _seq()
        self._cands: dict[int, _Candidate] = {}
        self._bad: dict[int, weakref.ref[Any]] = {}
        self.paused = 0
        self._popped = False
        self.scaled = False  # inside a GradScaler-scaled backward: findings are warnings
        self.scaled_reported = False
        self.defer_all = bool(defer)
        self.flush_every = flush_every
        self._pending: list[tuple[Any, ...]] = []
        self._pending_uf = False  # a deferred op that may underflow waits for the flush
        self._held_bytes = 0
        self.hold_bytes = hold_bytes
        self._bw_callback = False
        self.checked = 0
        self._internal_errors = 0
        self.compiled_seen = False
        self._init_thresholds()

    # -- pausing: optimizer steps run without the mode ---------------------------------------------
    def pause(self) -> None:
        """Take the mode off the dispatch stack (if it is on top), else just stop checking."""
        from torch.utils._python_dispatch import _get_current_dispatch_mode, _pop_mode

        self.paused += 1
        if self.paused == 1 and _get_current_dispatch_mode() is self:
            _pop_mode()
            self._popped = True

    def resume(self) -> None:
        from torch.utils._python_dispatch import _push_mode

        self.paused = max(0, self.paused - 1)
        if self.paused == 0 and self._popped:
            self._popped = False
            _push_mode(self)

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        """floatguard's own tensor work (flushes, step checks) is never checked."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def reinstate(self) -> None:
        """After an exception skipped :meth:`resume`: put the mode back (called when a model is entered)."""
        if self._popped or self.paused:
            self.paused = 1
            self.resume()

    # -- thresholds -------------------------------------------------------------------------
    def _threshold(self, dt: torch.dtype) -> float:
        thr = self._thr.get(dt)
        if thr is None:
            mx = float(torch.finfo(dt).max)
            thr = mx / self.near if self.near else mx
            if dt not in _COMPLEX and dt not in _FLOAT8:  # _thr holds the dtypes of the fast path only
                self._thr[dt] = thr
        return thr

    def _init_thresholds(self) -> None:
        for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):  # complex, float8: _check_other
            self._threshold(dt)
        # dtypes whose sum-of-squares check is exact for the thresholds: a finite sum bounds |x| by about
        # sqrt(finfo.max), which must lie below the near-overflow threshold (float16's does not)
        self._dot_ok = frozenset(dt for dt in (torch.float32, torch.float64)
                                 if math.sqrt(float(torch.finfo(dt).max)) * 1.01 < self._threshold(dt))

    # -- the hot path ---------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if _is_compiling():  # dynamo tracing through the mode: stay out of the graph
            return func(*args, **kwargs) if kwargs else func(*args)
        out = func(*args, **kwargs) if kwargs else func(*args)
        if self.paused:
            return out
        pol = self._pol.get(id(func))
        if pol is None:
            pol = self._pol[id(func)] = _Policy(func)
        nr = _seq()
        if nr != self._last_nr:  # this op created an autograd node: remember where (for backward)
            self._last_nr = nr
            fwd = self._fwd
            fwd[nr - 1] = (pol.name, *self.modules.here())
            if len(fwd) > 200_000:
                for k in list(fwd)[:100_000]:
                    del fwd[k]
        if pol.check == SKIP:
            if self._cands:
                self._carry(args, out)
            if self._pending_uf and not pol.is_view:  # deferred: a copy of a possible underflow, in order
                sizes: list[int] = []
                self._pending.append((None, func, pol, _hold(out, sizes), None, None, _hold(args, sizes), None,
                                      None))
                self._held_bytes += sum(sizes)
            return out
        if isinstance(out, _Tensor):
            self._check(func, pol, out, args, kwargs)
        elif isinstance(out, (tuple, list)):
            for t in out:
                if isinstance(t, _Tensor):
                    self._check(func, pol, t, args, kwargs)
        return out

    def _check(self, func: Any, pol: _Policy, t: Any, args: Any, kwargs: Any) -> None:
        thr = self._thr.get(t.dtype)
        if thr is None or t.layout is not _strided:  # not a real float tensor
            if t.layout is _strided and (t.dtype in _COMPLEX or t.dtype in _FLOAT8) and t.numel():
                self._guarded(self._check_other, pol, func, pol, t, args, kwargs)
            return
        n = t.numel()
        if n == 0:
            return
        if pol.check == CAST and not self._narrowing(pol, t, args):
            return
        if self.defer_all or not t.is_cpu:
            self._defer(func, pol, t, args, kwargs)
            return
        self.checked += 1
        if n == 1:
            lo = hi = t.item()
        elif n >= _DOT_MIN and pol.dot and t.dtype in self._dot_ok and not self._cands and t.is_contiguous():
            # s = fl(sum x_i^2), one BLAS pass (~1.25x faster than aminmax on large tensors). A NaN or an inf
            # makes s NaN or inf; a finite s bounds every |x_i| by ~sqrt(finfo.max) (1.8e19 in float32), far
            # below any threshold; s == 0 (all zeros, or all below ~1e-23) falls through to the exact check.
            flat = t.view(-1)
            s = _dot(flat, flat).item()
            if 0.0 < s < _INF or (s == 0.0 and not (pol.uf and self.underflow)):
                return
            a, b = torch.aminmax(t)
            lo = a.item()
            hi = b.item()
        else:
            a, b = torch.aminmax(t)
            lo = a.item()
            hi = b.item()
        if -thr <= lo and hi <= thr:
            uf = pol.uf
            if uf and lo <= 0.0 <= hi and self.underflow and (uf in (UF_NONNEG, UF_PROD) or lo == hi == 0.0):
                self._guarded(self._underflow, pol, func, pol, t, args, kwargs)
            if self._cands and pol.reduction and lo <= 0.0 <= hi:
                self._guarded(self._every_term, pol, func, pol, t, args)
            return
        self._guarded(self._slow, pol, func, pol, t, args, kwargs, lo, hi)

    def _check_other(self, func: Any, pol: _Policy, t: Any, args: Any, kwargs: Any) -> None:
        """Complex outputs (through their real view) and float8 outputs (casts: through their source)."""
        if t.dtype in _COMPLEX:
            tag, probe = "complex", torch.view_as_real(t.resolve_conj() if t.is_conj() else t)
        else:
            tag, probe = "fp8", t
            if pol.check == CAST:  # float8_e4m3fn saturates: the values before the cast are the evidence
                src = args[1] if pol.base == "copy_" and len(args) > 1 else args[0] if args else None
                if isinstance(src, _Tensor) and src.is_floating_point() and src.dtype not in _FLOAT8:
                    tag, probe = "fp8_cast", src
            if probe.dtype in _FLOAT8:
                probe = probe.float()
        if self.defer_all or not t.is_cpu:
            self._defer(func, pol, t, args, kwargs, probe=probe, tag=tag)
            return
        self.checked += 1
        with torch.no_grad():
            a, b = torch.aminmax(probe.detach())
        self._judge_other(func, pol, t, args, kwargs, a.item(), b.item(), tag)

    def _judge_other(self, func: Any, pol: _Policy, t: Any, args: Any, kwargs: Any, lo: float, hi: float,
                     tag: str, where: tuple[Any, ...] | None = None) -> None:
        if tag != "fp8_cast":  # complex, or a float8 op that is not a cast: the usual rules on the values
            thr = self._threshold(t.dtype)
            if not (-thr <= lo and hi <= thr):
                self._slow(func, pol, t, args, kwargs, lo, hi, where=where)
            return
        if lo != lo or hi != hi or math.isinf(lo) or math.isinf(hi):
            return  # a NaN/inf source: reported at the op that made it
        fi = torch.finfo(t.dtype)
        mx, amax, dtype = float(fi.max), max(-lo, hi), _dtype_name(t.dtype)
        if amax > mx:
            if bool(torch.isinf(t.float()).any()):
                what = "they became inf"
            elif bool(torch.isnan(t.float()).any()):
                what = f"they became NaN ({dtype} has no inf)"
            else:
                what = f"they were clamped to ±{mx:g} ({dtype} saturates: no inf, no error)"
            ev = self._event("overflow", f"{pol.name} cast values up to {amax:.4g} to {dtype} (max {mx:g}): {what}",
                             pol, t, args, kwargs, where=where)
            self.session.emit(ev)
        elif self.near is not None and amax > mx / self.near:
            ev = self._event("near_overflow", f"{pol.name} cast values up to {amax:.4g} to {dtype}, within "
                             f"{mx / amax:.3g}x of its max {mx:g}", pol, t, args, kwargs, severity="warning",
                             where=where)
            self.session.emit(ev, dedupe=True)
        elif self.underflow and amax > 0.0 and not bool(t.float().any()):
            ev = self._event("underflow", f"{pol.name} flushed every value to exactly 0 (the largest, {amax:.4g}, "
                             f"is below half of {dtype}'s smallest subnormal)", pol, t, args, kwargs, where=where)
            self.session.emit(ev)

    def _guarded(self, fn: Any, pol: _Policy, *args: Any) -> None:
        """Run a slow-path analysis; a bug in it is reported once, never raised into the user's program."""
        try:
            fn(*args)
        except NumericalError:
            raise
        except Exception as exc:  # pragma: no cover - defensive
            if not self._internal_errors:
                warnings.warn(f"floatguard: could not analyse the output of {pol.name} ({type(exc).__name__}: "
                              f"{exc}); the sanitizer goes on without this check", RuntimeWarning, stacklevel=2)
            self._internal_errors += 1

    def _narrowing(self, pol: _Policy, t: Any, args: Any) -> bool:
        src = args[1] if pol.base == "copy_" and len(args) > 1 else args[0] if args else None
        if not isinstance(src, _Tensor):
            return True
        if src.dtype == t.dtype:
            return False
        if not src.is_floating_point():
            return t.dtype == torch.float16
        a, b = torch.finfo(src.dtype), torch.finfo(t.dtype)
        return b.max < a.max or b.smallest_normal > a.smallest_normal

    # -- compiled regions: checked at their outputs ------------------------------------------------
    def check_compiled(self, name: str, inputs: Any, outputs: Any) -> None:
        """Check the tensors a ``torch.compile``'d region returned (its ops are invisible to the mode)."""
        self.compiled_seen = True
        with self.off():
            self._check_compiled(name, inputs, outputs)

    def _check_compiled(self, name: str, inputs: Any, outputs: Any) -> None:
        outs = _flatten(outputs)
        bad = [t for t in outs if isinstance(t, _Tensor) and t.is_floating_point() and t.numel()
               and t.layout is _strided and not bool(torch.isfinite(t.detach()).all())]
        if not bad:
            return
        t = bad[0].detach()
        ins = [a.detach() for a in _flatten(inputs) if isinstance(a, _Tensor) and a.is_floating_point()]
        in_bad = any(not bool(torch.isfinite(a).all()) for a in ins if a.numel())
        has_nan = bool(torch.isnan(t).any())
        kind = "nan" if has_nan else "overflow"
        if in_bad and not self.session.has_error:
            if not has_nan:
                return  # an inf passed along (a mask)
            msg, origin = f"{name} received NaN in its inputs", "propagated"
        elif in_bad or self.session.has_error:
            return  # already reported (an eager-run op inside the region — backend="eager" — or before it)
        else:
            msg, origin = (f"{name} (a torch.compile'd region, checked at its outputs) produced "
                           f"{'NaN' if has_nan else 'inf'} from finite inputs"), "produced"
        file, line = self.modules.location()
        stats = tensor_stats(t, "output")
        for i, a in enumerate(ins[:4]):
            stats.update(tensor_stats(a, f"input{i}"))
        ev = Event(kind=kind, source="sanitize", message=msg, op=name, phase="forward",
                   module=self.modules.resolve(self.modules.current),
                   file=file, line=line, dtype=_dtype_name(t.dtype), shape=list(t.shape), stats=stats, origin=origin,
                   hint=hint_for(kind, None, _dtype_name(t.dtype)) + " To name the op inside the compiled region, "
                   "run it without torch.compile under floatguard.detect().")
        self.session.emit(ev)

    # -- what failed -----------------------------------------------------------------------------
    def _where(self) -> tuple[str, str | None, str | None, str | None, int | None]:
        """(phase, forward_op, module, file, line) of the op being run."""
        node = _current_node()
        if node is not None:
            info = self._fwd.get(node._sequence_nr())
            if info is None:
                return "backward", _node_op(node.name()), None, None, None
            return "backward", info[0], info[1], info[2], info[3]
        file, line = self.modules.location()
        return "forward", None, self.modules.current, file, line

    def _event(self, kind: str, message: str, pol: _Policy, t: Any, args: Any, kwargs: Any, *,
               severity: str = "error", origin: str = "produced", feeds: str | None = None,
               where: tuple[Any, ...] | None = None, extra: dict[str, Any] | None = None) -> Event:
        phase, fwd_op, module, file, line = where or self._where()
        module = self.modules.resolve(module)
        stats: dict[str, Any] = {}
        if extra:
            stats.update(extra)
        if t is not None:
            stats.update(tensor_stats(t, "output"))
        for label, v in _flat_tensors(pol, args, kwargs)[:6]:
            if isinstance(v, _Tensor) and not (v.is_floating_point() or v.is_complex()):
                continue
            stats.update(tensor_stats(v, label))
        dtype = _dtype_name(t.dtype) if t is not None else None
        if (self.paused and where is None) or phase == "optimizer":  # flushes pass the op's own `where`
            phase = "optimizer"
        return Event(kind=kind, source="sanitize", message=message, severity=severity,
                     hint=hint_for(kind, pol.name, dtype, phase=phase, forward_op=fwd_op, feeds=feeds),
                     file=file, line=line, op=pol.name, phase=phase, module=module, dtype=dtype,
                     shape=list(t.shape) if t is not None else None, stats=stats, origin=origin,
                     forward_op=fwd_op if phase == "backward" else None)

    def _slow(self, func: Any, pol: _Policy, t: Any, args: Any, kwargs: Any, lo: float, hi: float,
              where: tuple[Any, ...] | None = None) -> None:
        with torch.no_grad():
            out_nan = lo != lo or hi != hi
            out_inf = not out_nan and (lo == -_INF or hi == _INF)
            inputs = _flat_tensors(pol, args, kwargs)
            mutated = {id(args[i]) for i in pol.mutated if i < len(args) and isinstance(args[i], _Tensor)}
            in_nan = in_inf = False
            nonfinite_inputs: list[Any] = []  # the element-wise judgment needs only these
            for _, v in inputs:
                if isinstance(v, _Tensor) and id(v) in mutated:
                    bad = self._bad.get(id(v))
                    if bad is not None and bad() is v:
                        in_nan = in_nan or out_nan
                        in_inf = True
                    continue
                a, b = _nonfinite(v)
                in_nan, in_inf = in_nan or a, in_inf or b
                if a or b:
                    nonfinite_inputs.append(v)
            if not (out_nan or out_inf):  # near overflow
                if self.near is None or any(_absmax(v) > self._threshold(t.dtype) for _, v in inputs
                                            if id(v) not in mutated):
                    return
                amax = max(abs(lo), abs(hi))
                mx = float(torch.finfo(t.dtype).max)
                ev = self._event("near_overflow",
                                 f"{pol.name} produced {amax:.4g}, within {mx / amax:.3g}x of the "
                                 f"{_dtype_name(t.dtype)} max {mx:.5g}", pol, t, args, kwargs, severity="warning",
                                 where=where)
                self.session.emit(ev, dedupe=True)
                return
            scaled = self.scaled and (where[0] == "backward" if where else _current_node() is not None)
            if scaled and self.scaled_reported:
                return
            self._bad[id(t)] = weakref.ref(t)
            if len(self._bad) > 4096:
                self._bad = {k: r for k, r in self._bad.items() if r() is not None}
            prior = self.session.has_error
            mixed = False  # the inputs held non-finite values, but this op made new ones elsewhere
            if not prior and ((out_nan and in_nan) or (out_inf and (in_inf or in_nan))):
                new_nan, new_inf = _fresh_nonfinite(func, pol, t, args, kwargs, out_nan, out_inf, nonfinite_inputs)
                if new_nan or new_inf:
                    mixed, out_nan, out_inf = True, new_nan, not new_nan
            if not mixed and ((out_nan and in_nan) or (out_inf and (in_inf or in_nan))
                              or (prior and (in_nan or in_inf))):
                if out_inf and not in_nan and not prior:
                    if pol.uf in (UF_NONNEG, UF_PROD) and self.underflow and not pol.mutated:
                        self._underflow(func, pol, t, args, kwargs, where=where)  # exp(-1000) beside a mask
                    return  # an intended inf (a -inf mask, an inf constant) passed along
                what = "NaN" if out_nan else "inf"
                if prior:
                    verb = "passed on" if (in_nan if out_nan else in_inf) else "made from a non-finite input:"
                    ev = self._event("nan" if out_nan else "overflow",
                                     f"{pol.name} {verb} {what}", pol, t, args, kwargs,
                                     severity="info", origin="propagated", where=where)
                else:
                    ev = self._event("nan", f"{pol.name} received NaN in its inputs (not made under the "
                                     "sanitizer: input data, or a tensor computed before it was enabled)",
                                     pol, t, args, kwargs, origin="propagated", where=where)
                self.session.emit(ev)
                return
            dtype = _dtype_name(t.dtype)
            at = " at those positions" if mixed else ""
            if out_nan:
                why = " (inf - inf, 0 * inf or inf / inf)" if in_inf else ""
                kind, msg = "nan", f"{pol.name} produced NaN from NaN-free inputs{at}{why}"
            elif pol.divlike and any(_has_zero(v) for _, v in inputs):
                cand = self._consumed_candidate(inputs)
                if cand is not None:
                    self._emit_candidate(cand, consumer=pol.name)
                kind = "div_by_zero"
                sign = "-inf" if lo == -_INF else "inf"
                if pol.base in _LOGLIKE:
                    msg = f"{pol.name} of an exact 0 gave {sign}"
                else:
                    msg = f"{pol.name} divided by an exact 0 and gave {sign}"
            else:
                mx = float(torch.finfo(t.dtype).max)
                kind, msg = "overflow", f"{pol.name} overflowed: finite inputs{at} gave inf ({dtype} max is {mx:.5g})"
                if mixed:
                    msg += "; the infinities its inputs already held (a -inf mask, say) are not the cause"
            severity = "error"
            if scaled:
                severity = "warning"
                msg += "; the GradScaler skips this step and lowers its scale"
                self.scaled_reported = True
            ev = self._event(kind, msg, pol, t, args, kwargs, severity=severity, where=where)
            if ev.phase == "backward" and ev.forward_op:
                ev.message += f" in the gradient of {ev.forward_op}"
            self.session.emit(ev)

    # -- underflow -----------------------------------------------------------------------------------
    def _exact_nonzero(self, func: Any, pol: _Policy, t: Any, args: Any, kwargs: Any) -> Any:
        """A bool mask (broadcast to ``t``) of where the exact result is not 0, or None if unknown."""
        base = pol.base
        a0 = args[0] if args else None
        if pol.uf == UF_NONNEG:
            if base.startswith("exp") or base.startswith("sigmoid"):
                return (a0 != -_INF) & ~torch.isnan(a0)
            return (a0 != -_INF).expand_as(t) if a0.shape == t.shape else None
        if pol.uf == UF_CAST:
            src = args[1] if base == "copy_" else a0
            return (src != 0) if isinstance(src, _Tensor) else None
        if pol.uf == UF_PROD:
            x = a0
            if base.startswith("cumprod"):
                return (x != 0).to(torch.int64).cumprod(args[1] if len(args) > 1 else kwargs["dim"]) == 1
            if len(args) > 1 or "dim" in kwargs:
                dim = args[1] if len(args) > 1 else kwargs["dim"]
                keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
                return (x != 0).all(dim, keepdim=keep)
            return (x != 0).all()
        if base in ("mul", "mul_", "_foreach_mul", "square"):
            b = args[1] if len(args) > 1 else a0
            return (a0 != 0) & (b != 0)
        if base in ("div", "div_", "_foreach_div"):
            b = args[1] if len(args) > 1 else None
            fin_b = torch.isfinite(b) if isinstance(b, _Tensor) else math.isfinite(b)
            return (a0 != 0) & fin_b
        if t.dtype == torch.float64:
            return None
        try:  # generic: recompute in float64
            def up(v: Any) -> Any:
                return v.to(torch.float64) if isinstance(v, _Tensor) and v.is_floating_point() else v
            exact = func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
            if isinstance(exact, (tuple, list)):
                exact = exact[0]
            return exact != 0 if isinstance(exact, _Tensor) and exact.shape == t.shape else None
        except Exception:
            return None

    def _underflow(self, func: Any, pol: _Policy, t: Any, args: Any, kwargs: Any,
                   where: tuple[Any, ...] | None = None) -> None:
        if pol.mutated and pol.uf != UF_CAST:
            return  # the input is gone: in-place ops are not judged
        with torch.no_grad():
            a0 = args[0] if args else None
            # exp, sigmoid, softmax (no NaN here): exactly 0 only where the input is -inf (a mask); one count
            # of each settles the common case (a causal mask, nothing underflowed)
            if (pol.uf == UF_NONNEG and isinstance(a0, _Tensor) and a0.shape == t.shape
                    and int(torch.count_nonzero(t == 0)) == int(torch.count_nonzero(a0 == -_INF))):
                return
            zero = t == 0
            if not bool(zero.any()):
                return
            nz = self._exact_nonzero(func, pol, t, args, kwargs)
            if nz is None:
                return
            try:
                uf = zero & nz
            except RuntimeError:
                return
            n_uf = int(uf.sum())
            if n_uf == 0:
                return
            whole = bool(zero.all())
            self.session.stats["underflowed_values"] += n_uf
            if whole or pol.uf == UF_PROD:
                what = ("every value" if whole else f"{n_uf} of {t.numel()} values")
                ev = self._event("underflow", f"{pol.name} flushed {what} to exactly 0 (the exact results are "
                                 "not 0)", pol, t, args, kwargs, extra={"underflowed": n_uf}, where=where)
                self.session.emit(ev)
                return
            # scattered: keep it in case a log or a division consumes the zeros
            key = _storage_key(t)
            if key is None:
                return
            ev = self._event("underflow", f"{pol.name} flushed {n_uf} of {t.numel()} values to exactly 0",
                             pol, t, args, kwargs, extra={"underflowed": n_uf}, where=where)
            self._cands[key] = _Candidate(t, ev)
            if len(self._cands) > 64:
                self._cands = {k: c for k, c in self._cands.items() if c.ref() is not None}
                while len(self._cands) > 64:
                    del self._cands[next(iter(self._cands))]

    def _consumed_candidate(self, inputs: list[tuple[str, Any]]) -> _Candidate | None:
        for _, v in inputs:
            if isinstance(v, _Tensor):
                key = _storage_key(v)
                c = self._cands.get(key) if key is not None else None
                if c is not None and c.ref() is not None:
                    return c
        return None

    def _emit_candidate(self, cand: _Candidate, consumer: str, reduction: bool = False) -> None:
        for k in [k for k, c in self._cands.items() if c is cand]:
            del self._cands[k]
        ev = cand.event
        if reduction:
            ev.message += f"; every term of a reduction by {consumer} underflowed, which gave 0"
        else:
            ev.message += f"; {consumer} then takes these zeros"
        ev.hint = hint_for("underflow", ev.op, ev.dtype, phase=ev.phase, forward_op=ev.forward_op, feeds=consumer)
        self.session.emit(ev)

    def _carry(self, args: Any, out: Any) -> None:
        """A copy/selection of an underflowed tensor inherits its record."""
        outs = [out] if isinstance(out, _Tensor) else [o for o in out if isinstance(o, _Tensor)] \
            if isinstance(out, (tuple, list)) else []
        if not outs:
            return
        cand = self._consumed_candidate([("", a) for a in args if isinstance(a, _Tensor)])
        if cand is None:
            return
        for o in outs:
            key = _storage_key(o)
            if key is not None and key not in self._cands and o.is_floating_point():
                with torch.no_grad():
                    if o.numel() and bool((o == 0).any()):
                        self._cands[key] = _Candidate(o, cand.event)
                        cand.ref = weakref.ref(o) if cand.ref() is None else cand.ref

    def _every_term(self, func: Any, pol: _Policy, t: Any, args: Any) -> None:
        cand = self._consumed_candidate([("", a) for a in args if isinstance(a, _Tensor)])
        if cand is None:
            return
        with torch.no_grad():
            if bool((t == 0).any()):
                self._emit_candidate(cand, pol.name, reduction=True)

    # -- deferred checks (CUDA: no host sync per op) ------------------------------------------------------
    def _defer(self, func: Any, pol: _Policy, t: Any, args: Any, kwargs: Any, *, probe: Any = None,
               tag: str | None = None) -> None:
        with torch.no_grad():
            mm = torch.aminmax((t if probe is None else probe).detach())  # one kernel; gathered at the flush
        node = _current_node()
        if node is not None and not self._bw_callback:
            self._bw_callback = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
        if node is not None:
            info = self._fwd.get(node._sequence_nr())
            where = ("backward", *(info or (_node_op(node.name()), None, None, None)))
        else:
            where = ("forward", None, self.modules.current, *self.modules.location())
        # the op's tensors are kept until the flush, with their version counters: judged only if nothing
        # wrote to them since (an in-place op after this one changes the evidence). What they hold is
        # bounded: past `hold_bytes` the flush comes early.
        sizes: list[int] = []
        self._pending.append((mm, func, pol, _hold(t, sizes), t.dtype, where, _hold(args, sizes),
                              _hold(kwargs or {}, sizes), tag))
        self._held_bytes += sum(sizes)
        if pol.uf and self.underflow:
            self._pending_uf = True
        if len(self._pending) >= self.flush_every or self._held_bytes > self.hold_bytes:
            self.flush()

    def root_exit(self, output: Any) -> None:
        """The outermost module returned: flush, unless a backward will follow (it flushes at its end).

        In training that makes one host synchronisation per step (end of backward) on
        the deferred path; in inference, one per forward.
        """
        if self._pending and torch.is_grad_enabled() and any(
                isinstance(t, _Tensor) and t.requires_grad for t in _flatten(output)):
            return
        self.flush()

    def _end_backward(self) -> None:
        self._bw_callback = False
        self.flush()

    def flush(self) -> None:
        """Read the deferred (min, max) pairs once; report the first bad op."""
        if not self._pending:
            return
        with self.off():
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._pending_uf = False
        self._held_bytes = 0
        checks = [p[0] for p in pending if p[0] is not None]
        vals: list[list[float]] = []
        if checks:
            with torch.no_grad():
                # one stack per (dtype, device), one cat, one read: the host synchronisation of this flush
                groups: dict[tuple[Any, Any], list[int]] = {}
                for i, (a, _) in enumerate(checks):
                    groups.setdefault((a.dtype, a.device), []).append(i)
                dev = checks[0][0].device
                parts, order = [], []
                for idx in groups.values():
                    parts.append(torch.stack([x for i in idx for x in checks[i]]).to(dev, torch.float64))
                    order.extend(idx)
                flat = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()
                vals = [[]] * len(checks)
                for k, i in enumerate(order):
                    vals[i] = flat[2 * k: 2 * k + 2]
        self.checked += len(checks)
        it = iter(vals)
        for mm, func, pol, wt, dtype, where, wargs, wkwargs, tag in pending:
            if mm is None:  # a copy made while a possible underflow was pending: carry it, in order
                if self._cands:
                    args, out = _unhold(wargs), _unhold(wt)
                    if args is not _GONE and out is not _GONE:
                        self._carry(args, out)
                continue
            lo, hi = next(it)
            if tag is not None:  # complex or float8
                t, args, kwargs = _unhold(wt), _unhold(wargs), _unhold(wkwargs)
                if not (t is _GONE or args is _GONE or kwargs is _GONE):
                    self._guarded(self._judge_other, pol, func, pol, t, args, kwargs, lo, hi, tag, where)
                continue
            thr = self._threshold(dtype)
            if -thr <= lo and hi <= thr:
                uf = pol.uf
                judge_uf = (uf and lo <= 0.0 <= hi and self.underflow
                            and (uf in (UF_NONNEG, UF_PROD) or lo == hi == 0.0))
                judge_terms = self._cands and pol.reduction and lo <= 0.0 <= hi
                if not (judge_uf or judge_terms):
                    continue
                t, args, kwargs = _unhold(wt), _unhold(wargs), _unhold(wkwargs)
                if t is _GONE or args is _GONE or kwargs is _GONE:
                    continue  # overwritten before the flush: underflow cannot be judged
                if judge_uf:
                    self._guarded(self._underflow, pol, func, pol, t, args, kwargs, where)
                if judge_terms:
                    self._guarded(self._every_term, pol, func, pol, t, args)
                continue
            t, args, kwargs = _unhold(wt), _unhold(wargs), _unhold(wkwargs)
            if t is _GONE or args is _GONE or kwargs is _GONE:
                kind = "nan" if lo != lo or hi != hi else "overflow" if math.isinf(lo) or math.isinf(hi) else None
                if kind is None:
                    continue
                ev = Event(kind=kind, source="sanitize", message=f"{pol.name} produced {kind} (found at a "
                           "deferred check; its tensors were overwritten in place before the check)", op=pol.name,
                           phase=where[0], forward_op=where[1] if where[0] == "backward" else None,
                           module=self.modules.resolve(where[2]), file=where[3], line=where[4],
                           dtype=_dtype_name(dtype),
                           hint=hint_for(kind, pol.name, _dtype_name(dtype), phase=where[0], forward_op=where[1]))
                self.session.emit(ev)
                continue
            self._slow(func, pol, t, args, kwargs, lo, hi, where=where)


def _is_float(v: Any) -> bool:
    return isinstance(v, _Tensor) and (v.is_floating_point() or v.is_complex()) and v.layout is _strided


def _taint(v: Any) -> Any:
    """``v`` with each non-finite entry replaced by NaN (a tensor, a number, or a list of them)."""
    if _is_float(v):
        return torch.where(torch.isfinite(v), v, torch.full((), math.nan, dtype=v.dtype, device=v.device))
    if isinstance(v, float) and not math.isfinite(v):
        return math.nan
    if isinstance(v, (list, tuple)):
        out = [_taint(x) for x in v]
        return out if isinstance(v, list) else tuple(out)
    return v


def _fresh_nonfinite(func: Any, pol: _Policy, t: Any, args: Any, kwargs: Any, out_nan: bool, out_inf: bool,
                     bad_inputs: list[Any]) -> tuple[bool, bool]:
    """(new NaN, new inf): did this op make a NaN / an inf where its inputs held none?

    Run only when the whole-tensor check already found non-finite values in both the
    output and the inputs (``bad_inputs``: the inputs holding some). Element-wise for
    pointwise ops: a NaN where no input is NaN, an inf where every input is finite — the
    inputs known to be finite everywhere do not enter the masks, so a ``-inf`` causal mask
    added to the scores costs a pass over the output and one over the mask. Other ops
    (matmuls, reductions) are run once more with every non-finite input entry replaced by
    NaN: NaN spreads to every output that depends on one, so an inf that remains was made
    from finite values alone. (A NaN cannot be traced that way; for those ops a NaN beside
    input NaNs counts as passed on.)
    """
    if pol.mutated:
        return False, False  # the input was overwritten: propagation cannot be told apart
    kwargs = kwargs or {}
    if torch.Tag.pointwise in getattr(func, "tags", ()):
        tensors = [v for _, v in _flat_tensors(pol, args, kwargs) if isinstance(v, _Tensor)]
        try:
            shape = torch.broadcast_shapes(*[v.shape for v in tensors])
        except RuntimeError:
            shape = None
        if shape == t.shape:
            probe = torch.view_as_real(t) if t.is_complex() else t
            new_nan = new_inf = False
            if out_inf:
                fresh = torch.isinf(probe)
                for v in bad_inputs:
                    if _is_float(v):
                        m = torch.isfinite(v)
                        fresh.logical_and_(m.unsqueeze(-1) if t.is_complex() else m)
                    elif isinstance(v, float):  # an inf scalar: every inf may be its
                        fresh.zero_()
                new_inf = bool(fresh.any())
            if out_nan:
                fresh = torch.isnan(probe)
                for v in bad_inputs:
                    if _is_float(v):
                        m = ~torch.isnan(v)
                        fresh.logical_and_(m.unsqueeze(-1) if t.is_complex() else m)
                    elif isinstance(v, float) and v != v:
                        fresh.zero_()
                new_nan = bool(fresh.any())
            return new_nan, new_inf
    if not out_inf:
        return False, False
    try:
        targs = [_taint(a) if i in pol.pos else a for i, a in enumerate(args)]
        tkw = {k: (_taint(v) if k in pol.kw else v) for k, v in kwargs.items()}
        res = func(*targs, **tkw)
    except Exception:
        return False, False
    cands = [res] if isinstance(res, _Tensor) else [r for r in res if isinstance(r, _Tensor)] \
        if isinstance(res, (tuple, list)) else []
    bad_t = torch.isinf(t)
    return False, any(bool((torch.isinf(r) & bad_t).any()) for r in cands
                      if r.shape == t.shape and r.dtype == t.dtype)


_GONE = object()


class _Held:
    """A tensor kept for a deferred check, with its version counter at the time of the op."""

    __slots__ = ("t", "version")

    def __init__(self, t: Any) -> None:
        self.t = t
        try:
            self.version: int | None = t._version
        except RuntimeError:  # inference tensors have no version counter
            self.version = None


def _hold(value: Any, sizes: list[int]) -> Any:
    """``value`` with every tensor (also inside lists and tuples) wrapped in a :class:`_Held`; sizes noted."""
    if isinstance(value, _Tensor):
        sizes.append(value.numel() * value.element_size())
        return _Held(value)
    if isinstance(value, (list, tuple)):
        if not any(isinstance(v, (_Tensor, list, tuple, dict)) for v in value):
            return value
        held = [_hold(v, sizes) for v in value]
        return held if isinstance(value, list) else tuple(held)
    if isinstance(value, dict):
        return {k: _hold(v, sizes) for k, v in value.items()} if value else value
    return value


def _unhold(value: Any) -> Any:
    """Undo :func:`_hold`; :data:`_GONE` if a tensor was written to since the op."""
    if isinstance(value, _Held):
        t = value.t
        if value.version is not None and t._version != value.version:
            return _GONE
        return t
    if isinstance(value, (list, tuple)):
        out = [_unhold(v) for v in value]
        if any(v is _GONE for v in out):
            return _GONE
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, dict):
        d = {k: _unhold(v) for k, v in value.items()}
        return _GONE if any(v is _GONE for v in d.values()) else d
    return value


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, _Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    return []


def _node_op(node_name: str) -> str:
    """``ExpBackward0`` -> ``aten::exp`` (best effort, for nodes made before the sanitizer started)."""
    base = node_name.split("::")[-1]
    for suffix in ("Backward0", "Backward1", "Backward"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    out = []
    for i, ch in enumerate(base):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "aten::" + "".join(out)


class StepChecker:
    """Step-level checks around ``optimizer.step()``.

    Before the step: the gradients, one fused reduction (a non-finite gradient never
    reaches the parameters). After every ``state_every``-th step (and on request): the
    parameters and the optimizer state, which finite gradients can only corrupt through
    an update that overflows.
    """

    def __init__(self, session: Session, modules: ModuleTracker, *, state_every: int = 16) -> None:
        self.session = session
        self.modules = modules
        self.step = 0
        self.state_every = state_every

    def _name(self, p: Any, i: int) -> str:
        return self.modules.param_name(p) or f"param {i}"

    @staticmethod
    def params(optimizer: Any) -> list[Any]:
        return [p for g in optimizer.param_groups for p in g["params"]]

    def check_grads(self, optimizer: Any) -> Event | None:
        """An event if a gradient of ``optimizer``'s parameters is non-finite (None if all are finite)."""
        params = self.params(optimizer)
        grads = [p.grad for p in params]
        bad = first_bad(grads)
        if not bad:
            return None
        already = self.check_params(optimizer, before=True)
        if already is not None:
            return already
        i = bad[0]
        g = grads[i]
        has_nan = bool(torch.isnan(stored_values(g)).any())
        kind = "nan" if has_nan else "overflow"
        names = ", ".join(self._name(params[j], j) for j in bad[:5]) + (" ..." if len(bad) > 5 else "")
        return Event(kind=kind, source="sanitize", phase="backward", op=None, module=self._name(params[i], i),
                     message=f"the gradient of {names} has {'NaN' if has_nan else 'inf'} "
                     f"({len(bad)} of {len(params)} parameters) before {type(optimizer).__name__}.step()",
                     dtype=_dtype_name(g.dtype), shape=list(g.shape), stats=tensor_stats(g, "grad"),
                     step=self.step, hint="run this step at op level (floatguard.guard replays it, or "
                     "`floatguard run --level op`) to name the op that made it")

    def after_step(self, optimizer: Any) -> Event | None:
        self.step += 1
        if self.state_every and self.step % self.state_every == 0:
            return self.check_params(optimizer)
        return None

    def check_params(self, optimizer: Any, *, before: bool = False) -> Event | None:
        """An event if a parameter or a float optimizer state is non-finite."""
        params = self.params(optimizer)
        states: list[tuple[Any, str, Any]] = []
        for p in params:
            for key, v in optimizer.state.get(p, {}).items():
                if isinstance(v, _Tensor) and v.is_floating_point() and v.numel() > 1:
                    states.append((p, key, v))
        tensors = [p.detach() for p in params] + [v for _, _, v in states]
        bad = first_bad(tensors)
        if not bad:
            return None
        i = bad[0]
        if i < len(params):
            p, what, t, label = params[i], "parameter", params[i].detach(), "param"
        else:
            p, key, t = states[i - len(params)]
            what, label = f"optimizer state {key!r} of", str(key)
        has_nan = bool(torch.isnan(t).any())
        j = next(k for k, q in enumerate(params) if q is p)
        name = self._name(p, j)
        opname = f"{type(optimizer).__name__}.step"
        when = "an earlier" if before else "this"
        return Event(kind="nan" if has_nan else "overflow", source="sanitize", phase="optimizer", op=opname,
                     module=name, message=f"{what} {name} is {'NaN' if has_nan else 'inf'}: {when} "
                     f"{opname} made it so from finite gradients", dtype=_dtype_name(t.dtype), shape=list(t.shape),
                     stats=tensor_stats(t, label), step=self.step, origin="produced",
                     hint="the update overflowed: lower the learning rate, clip gradients "
                     "(torch.nn.utils.clip_grad_norm_), or raise the optimizer's eps")
