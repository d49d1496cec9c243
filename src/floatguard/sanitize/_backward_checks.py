"""Backward checks at autograd nodes: the mode stays off the dispatch stack while backward runs.

Under the op-level mode every aten op of the backward crosses into Python (~15 us on a
CPU); a do-nothing mode in backward alone costs ~15% of a training step. The default op
level (not ``exact=True``) instead takes the mode off the stack for the backward run by
``torch.autograd.backward`` / ``torch.autograd.grad`` (``Tensor.backward`` included),
after putting one post-hook on each autograd node of the graph (a walk from the roots):
one Python call per node, not per backward op. The hook checks the gradients the node
produced with the mode's own fast check (a sum of squares or a min/max). A gradient
that is non-finite, near the dtype's max, or all zeros from non-zero incoming gradients
makes the hook run the node once more under the mode, from the same incoming gradients
and the node's saved tensors (still held: hooks run before the engine releases them):
the mode then names the first bad backward op, its forward op, module and line exactly
as it does in an every-op backward, and the replay's result is discarded. A node whose
replay fails (a custom ``autograd.Function``, whose backward may have side effects, is
never replayed) is reported at the node.

Not done this way (the mode stays on in backward, every op checked as it runs):
``detect(exact=True)``, gradients off the CPU (the deferred path), the deferred path on
the CPU, a backward under a graph made with saved-tensor hooks (activation checkpointing
recomputes on unpack, once), batched gradients (``is_grads_batched``), and backward
calls that do not go through ``torch.autograd.backward``/``grad``. Scattered underflow
inside a gradient (a few entries flushed to 0, the rest not) is judged op by op only
there: a node's check sees its outputs, not which entries the exact result had non-zero.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..events import Event
from ._hints import hint_for
from ._tensor_stats import COMPLEX, dtype_name, tensor_stats
from ._torch_shims import current_dispatch_mode, current_node, node_op, pop_mode, push_mode

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._module_tracker import ModuleTracker
    from ._op_sanitizer import OpSanitizer

__all__ = ["BackwardChecks"]

_Tensor = torch.Tensor
_strided = torch.strided
_sparse_coo = torch.sparse_coo
_dot = torch.dot
_INF = math.inf
_DOT_MIN = 16384
_PyNode = torch.autograd.function.BackwardCFunction
# nodes whose backward only moves, reshapes or masks values: they cannot make a non-finite gradient
_PASS_THROUGH = frozenset(f"{n}Backward0" for n in (
    "T", "View", "UnsafeView", "Transpose", "Permute", "Expand", "Select", "Slice", "Clone", "Reshape",
    "ReshapeAlias", "Squeeze", "Unsqueeze", "Cat", "Split", "SplitWithSizes", "Unbind", "Stack", "Threshold",
    "Alias", "Detach", "Flatten", "Narrow", "Contiguous", "Neg", "Relu", "Sum", "Roll", "Flip")) | {
    "SqueezeBackward1", "SqueezeBackward2", "UnsqueezeBackward1", "SelectBackward1", "SumBackward1",
    "torch::autograd::AccumulateGrad", "torch::autograd::GraphRoot", "torch::autograd::CopySlices"}


def _roots(tensors: Any) -> list[Any]:
    """The autograd nodes of the tensors backward starts from."""
    if isinstance(tensors, _Tensor):
        tensors = (tensors,)
    elif not isinstance(tensors, (tuple, list)):
        return []
    out = []
    for t in tensors:
        if isinstance(t, _Tensor):
            fn = t.grad_fn
            if fn is not None:
                out.append(fn)
    return out


def _dense(g: Any, n: int) -> Any:
    """``g``'s ``n`` values as one contiguous 1-D view (a weight's gradient is often transposed), or None."""
    if g.is_contiguous():
        return g.view(-1)
    expect = 1
    for size, stride in sorted(zip(g.shape, g.stride(), strict=True), key=lambda p: p[1]):
        if size != 1 and stride != expect:
            return None
        expect *= size
    return g.as_strided((n,), (1,), g.storage_offset())


class BackwardChecks:
    """Checks the backward at autograd nodes while the mode is off the stack (see the module doc)."""

    def __init__(self, mode: OpSanitizer, modules: ModuleTracker) -> None:
        self.mode = mode
        self.modules = modules
        self.replays = 0
        self.saved_hooks_seen = False  # a forward made under saved-tensor hooks (checkpointing): every-op backward
        self._nodes: dict[int, Any] = {}
        self._kinds: dict[str, bool] = {}  # node class name -> its gradients need a check

    # -- the backward entry points (called by the patched torch.autograd.backward / grad) ---------------------
    def run(self, orig: Callable[..., Any], tensors: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``orig(*args, **kwargs)`` (a backward from ``tensors``) with the mode off and hooks on its nodes."""
        mode = self.mode
        if (mode.paused or mode.replaying or mode.defer_all or self.saved_hooks_seen or kwargs.get("is_grads_batched")
                or current_node() is not None or current_dispatch_mode() is not mode):
            self.saved_hooks_seen = False
            return orig(*args, **kwargs)
        roots = _roots(tensors)
        if not roots or not all(t.is_cpu for t in (tensors if isinstance(tensors, (tuple, list)) else (tensors,))
                                if isinstance(t, _Tensor)):
            return orig(*args, **kwargs)  # (off the CPU: the deferred path checks the backward op by op)
        handles = self._install(roots)
        mode.pause()
        mode.in_backward = True
        try:
            return orig(*args, **kwargs)
        finally:
            mode.in_backward = False
            mode.resume()
            for h in handles:
                h.remove()
            self._nodes.clear()

    def _install(self, roots: list[Any]) -> list[Any]:
        """A post-hook on every node reachable from ``roots`` whose gradients need a check."""
        nodes = self._nodes
        kinds = self._kinds
        seen: set[int] = set()
        stack = list(roots)
        handles = []
        post = self._post
        while stack:
            node = stack.pop()
            key = id(node)
            if key in seen:
                continue
            seen.add(key)
            name = node.name()
            check = kinds.get(name)
            if check is None:
                check = kinds[name] = name not in _PASS_THROUGH
            if check:
                nodes[key] = node
                handles.append(node.register_hook(_Hook(post, key)))
            for nxt, _ in node.next_functions:
                if nxt is not None and id(nxt) not in seen:
                    stack.append(nxt)
        return handles

    # -- the hook ---------------------------------------------------------------------------------------------
    def _post(self, key: int, grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
        for i, g in enumerate(grad_inputs):
            if g is None or any(g is o for o in grad_outputs) or any(g is h for h in grad_inputs[:i]):
                continue  # an incoming gradient passed on as it is (add): checked where it was made
            if self._suspect(g, grad_outputs):
                node = self._nodes.get(key)
                if node is not None:
                    self._replay(node, grad_outputs, g)
                return

    def _suspect(self, g: Any, grad_outputs: tuple[Any, ...]) -> bool:
        """Would the mode look closer at this gradient? (One fused reduction, as the mode's own check.)"""
        mode = self.mode
        if g.layout is not _strided:
            if g.layout is not _sparse_coo:
                return False
            g = g._values()
        dt = g.dtype
        thr = mode._thr.get(dt)
        if thr is None:
            if dt not in COMPLEX:
                return False
            g = torch.view_as_real(g.resolve_conj() if g.is_conj() else g)
            thr = mode._threshold(dt)
        n = g.numel()
        if n == 0:
            return False
        mode.checked += 1
        with torch.no_grad():
            if n == 1:
                lo = hi = g.item()
            elif n >= _DOT_MIN and dt in mode._dot_ok and (flat := _dense(g, n)) is not None:
                s = _dot(flat, flat).item()
                if 0.0 < s < _INF:  # as the mode's check: a finite sum of squares bounds every |x| far below thr
                    return False
                if s == 0.0:
                    lo = hi = 0.0 if not bool(g.any()) else 1.0
                else:  # NaN or inf in the sum: the values themselves may still be finite (large)
                    a, b = torch.aminmax(g)
                    lo, hi = a.item(), b.item()
            else:
                a, b = torch.aminmax(g)
                lo, hi = a.item(), b.item()
        if not (-thr <= lo and hi <= thr):
            return True
        if lo == hi == 0.0 and mode.underflow:  # all zeros: from non-zero incoming gradients?
            return any(isinstance(o, _Tensor) and o.layout is _strided and o.is_floating_point() and bool(o.any())
                       for o in grad_outputs)
        return False

    def _replay(self, node: Any, grad_outputs: tuple[Any, ...], bad: Any) -> None:
        """Run ``node`` again under the mode: it names the op (else a finding at the node)."""
        mode, session = self.mode, self.mode.session
        before = len(session.report.events)
        had_error = session.has_error
        failed = isinstance(node, _PyNode)
        if not failed:
            self.replays += 1
            paused, popped = mode.paused, mode._popped
            mode.paused, mode._popped = 0, False
            push_mode(mode)
            try:
                node(*grad_outputs)
            except Exception as exc:  # NumericalError included: raised below, once the mode is back off
                from ._core import NumericalError

                if isinstance(exc, NumericalError):
                    raise
                failed = True
            finally:
                pop_mode()
                mode.paused, mode._popped = paused, popped
        if len(session.report.events) > before or (session.has_error and not had_error):
            return
        if not failed:
            return  # the replay judged it: near the max, or zeros the exact result has too
        with torch.no_grad():
            dense = bad._values() if bad.layout is _sparse_coo else bad
            if bool(torch.isfinite(dense).all()):
                return
            kind = "nan" if bool(torch.isnan(dense).any()) else "overflow"
        if had_error:
            return  # passed on from the first finding
        info = mode._fwd.get(node._sequence_nr())
        fwd_op = (info[0] if info else None) or node_op(node.name())
        module, file, line = info[1:] if info else (None, None, None)
        ev = Event(kind=kind, source="sanitize", phase="backward", op=node.name(), forward_op=fwd_op,
                   module=self.modules.resolve(module), file=file, line=line, dtype=dtype_name(bad.dtype),
                   shape=tuple(bad.shape), stats=tensor_stats(bad, "output"),
                   message=f"the backward of {fwd_op} ({node.name()}) produced {'NaN' if kind == 'nan' else 'inf'} "
                   "(checked at its autograd node; its ops could not be replayed one by one)",
                   hint=hint_for(kind, None, dtype_name(bad.dtype), phase="backward", forward_op=fwd_op)
                   + " Run under floatguard.detect(exact=True) to check every backward op as it runs.")
        session.emit(ev)


class _Hook:
    """A node's post-hook: ``post(key, grad_inputs, grad_outputs)`` (no reference to the node itself)."""

    __slots__ = ("key", "post")

    def __init__(self, post: Callable[[int, tuple[Any, ...], tuple[Any, ...]], None], key: int) -> None:
        self.post = post
        self.key = key

    def __call__(self, grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
        self.post(self.key, grad_inputs, grad_outputs)
