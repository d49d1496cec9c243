"""Deferred checks: each op's (min, max) kept on its device and read once per step.

Off the CPU a per-op read would synchronise the host with the device at every op. The
mode instead launches one ``aminmax`` per op, keeps it with the op's tensors (and their
version counters) and reads them all at once at the end of the backward, of the forward
when no backward follows, and earlier past ``flush_every`` ops or ``hold_bytes`` held.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import torch

from ..events import Event
from ._hints import hint_for
from ._op_table import UF_NONNEG, UF_PROD, Policy
from ._tensor_stats import dtype_name, flatten
from ._torch_shims import current_node, node_op, queue_backward_callback

if TYPE_CHECKING:
    from ._core import Session
    from ._module_tracker import ModuleTracker

__all__ = ["DeferredChecks", "hold", "unhold"]

_Tensor = torch.Tensor


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


def hold(value: Any, sizes: list[int]) -> Any:
    """``value`` with every tensor (also inside lists and tuples) wrapped in a :class:`_Held`; sizes noted."""
    if isinstance(value, _Tensor):
        sizes.append(value.numel() * value.element_size())
        return _Held(value)
    if isinstance(value, (list, tuple)):
        if not any(isinstance(v, (_Tensor, list, tuple, dict)) for v in value):
            return value
        held = [hold(v, sizes) for v in value]
        return held if isinstance(value, list) else tuple(held)
    if isinstance(value, dict):
        return {k: hold(v, sizes) for k, v in value.items()} if value else value
    return value


def unhold(value: Any) -> Any:
    """Undo :func:`hold`; :data:`_GONE` if a tensor was written to since the op."""
    if isinstance(value, _Held):
        t = value.t
        if value.version is not None and t._version != value.version:
            return _GONE
        return t
    if isinstance(value, (list, tuple)):
        out = [unhold(v) for v in value]
        if any(v is _GONE for v in out):
            return _GONE
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, dict):
        d = {k: unhold(v) for k, v in value.items()}
        return _GONE if any(v is _GONE for v in d.values()) else d
    return value


class DeferredChecks:
    """The deferred path of :class:`~floatguard.sanitize._op_sanitizer.OpSanitizer` (a mixin)."""

    session: Session
    modules: ModuleTracker
    underflow: bool
    flush_every: int
    hold_bytes: int
    checked: int
    _pending: list[tuple[Any, ...]]
    _pending_uf: bool
    _held_bytes: int
    _bw_callback: bool
    _fwd: dict[int, tuple[str | None, str | None, str | None, int | None]]
    _cands: dict[int, Any]

    if TYPE_CHECKING:
        def off(self) -> contextlib.AbstractContextManager[None]: ...
        def _threshold(self, dt: torch.dtype) -> float: ...
        def _guarded(self, fn: Any, pol: Policy, *args: Any) -> None: ...
        def _judge_other(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any, lo: float, hi: float,
                         tag: str, where: tuple[Any, ...] | None = None) -> None: ...
        def _slow(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any, lo: float, hi: float,
                  where: tuple[Any, ...] | None = None) -> None: ...
        def _underflow(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any,
                       where: tuple[Any, ...] | None = None) -> None: ...
        def _every_term(self, func: Any, pol: Policy, t: Any, args: Any) -> None: ...
        def _carry(self, args: Any, out: Any) -> None: ...

    # -- deferred checks (CUDA: no host sync per op) ------------------------------------------------------
    def _defer(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any, *, probe: Any = None,
               tag: str | None = None) -> None:
        with torch.no_grad():
            mm = torch.aminmax((t if probe is None else probe).detach())  # one kernel; gathered at the flush
        node = current_node()
        if node is not None and not self._bw_callback:
            self._bw_callback = True
            queue_backward_callback(self._end_backward)
        where: tuple[str, str | None, str | None, str | None, int | None]
        if node is not None:
            info = self._fwd.get(node._sequence_nr())
            op = (info[0] if info else None) or node_op(node.name())
            where = ("backward", op, *(info[1:] if info else (None, None, None)))
        else:
            where = ("forward", None, self.modules.current, *self.modules.location())
        # the op's tensors are kept until the flush, with their version counters: judged only if nothing
        # wrote to them since (an in-place op after this one changes the evidence). What they hold is
        # bounded: past `hold_bytes` the flush comes early.
        sizes: list[int] = []
        self._pending.append((mm, func, pol, hold(t, sizes), t.dtype, where, hold(args, sizes),
                              hold(kwargs or {}, sizes), tag))
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
                isinstance(t, _Tensor) and t.requires_grad for t in flatten(output)):
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
                    args, out = unhold(wargs), unhold(wt)
                    if args is not _GONE and out is not _GONE:
                        self._carry(args, out)
                continue
            lo, hi = next(it)
            if tag is not None:  # complex or float8
                t, args, kwargs = unhold(wt), unhold(wargs), unhold(wkwargs)
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
                t, args, kwargs = unhold(wt), unhold(wargs), unhold(wkwargs)
                if t is _GONE or args is _GONE or kwargs is _GONE:
                    continue  # overwritten before the flush: underflow cannot be judged
                if judge_uf:
                    self._guarded(self._underflow, pol, func, pol, t, args, kwargs, where)
                if judge_terms:
                    self._guarded(self._every_term, pol, func, pol, t, args)
                continue
            t, args, kwargs = unhold(wt), unhold(wargs), unhold(wkwargs)
            if t is _GONE or args is _GONE or kwargs is _GONE:
                kind = "nan" if lo != lo or hi != hi else "overflow" if math.isinf(lo) or math.isinf(hi) else None
                if kind is None:
                    continue
                ev = Event(kind=kind, source="sanitize", message=f"{pol.name} produced {kind} (found at a "
                           "deferred check; its tensors were overwritten in place before the check)", op=pol.name,
                           phase=where[0], forward_op=where[1] if where[0] == "backward" else None,
                           module=self.modules.resolve(where[2]), file=where[3], line=where[4],
                           dtype=dtype_name(dtype),
                           hint=hint_for(kind, pol.name, dtype_name(dtype), phase=where[0], forward_op=where[1]))
                self.session.emit(ev)
                continue
            self._slow(func, pol, t, args, kwargs, lo, hi, where=where)
