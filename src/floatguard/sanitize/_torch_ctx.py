"""Turning the PyTorch sanitizer on and off: mode, module hooks, optimizer hooks, GradScaler, ranks."""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import replace
from typing import Any, cast

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..events import Event
from ._backward_checks import BackwardChecks
from ._core import NumericalError, Session
from ._module_checks import ModuleChecks
from ._module_tracker import ModuleTracker
from ._op_sanitizer import OpSanitizer
from ._step_check import StepChecker

__all__ = ["TorchContext", "agree_across_ranks"]

_COMPILE_HOOKS_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks on modules"


def _world() -> tuple[Any, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist, dist.get_world_size()
    return None, 1


def agree_across_ranks(session: Session, local_bad: bool | None = None) -> None:
    """All ranks learn whether any rank found an error; if one did, every rank raises.

    One ``all_reduce`` of a flag (and, only when a rank failed, an ``all_gather_object``
    of the events), so a finding on one rank stops all of them at the same point instead
    of leaving the others blocked in the next collective.
    """
    dist, world = _world()
    if dist is None:
        if session.pending is not None:
            err, session.pending = session.pending, None
            session.show(err.event)
            raise err
        return
    bad = session.pending is not None if local_bad is None else local_bad
    flag = torch.tensor([1 if bad else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not int(flag.item()):
        return
    mine = session.pending.event.to_dict() if session.pending is not None else None
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    first = next((Event.from_dict(e) for e in gathered if e is not None), None)
    if first is None:  # pragma: no cover - a rank flagged without an event
        first = Event(kind="nan", source="sanitize", message="a rank found a non-finite value")
    if session.pending is not None:
        err, session.pending = session.pending, None
        session.show(err.event)
        raise err
    first = replace(first, message=f"rank {first.rank} stopped: {first.message}")
    raise NumericalError(first, session.report)


# -- process-wide patches: GradScaler.scale/update and torch.compile ------------------------------------------
# Installed when the first op-level context enters (in any thread) and restored when the last one exits,
# whatever the order contexts exit in (threads): a reference count, under a lock. The wrappers act for the
# op-level contexts active in the calling thread only, and are plain pass-throughs elsewhere.
_patch_lock = threading.Lock()
_patch_users = 0
_patch_originals: list[tuple[Any, str, Any, Any]] = []  # (owner, name, original, our wrapper)
_patch_filter: Any = None
_active = threading.local()


def _modes() -> list[OpSanitizer]:
    """The op-level sanitizers active in the calling thread, innermost last."""
    modes: list[OpSanitizer] | None = getattr(_active, "modes", None)
    if modes is None:
        modes = _active.modes = []
    return modes


def _acquire_patches(mode: OpSanitizer) -> None:
    global _patch_users, _patch_filter
    _modes().append(mode)
    with _patch_lock:
        _patch_users += 1
        if _patch_users > 1:
            return
        _patch_originals.clear()
        from torch.amp.grad_scaler import GradScaler

        orig_scale, orig_update = GradScaler.scale, GradScaler.update
        scale, update = _scaler_wrappers(orig_scale, orig_update)
        _patch_originals.extend([(GradScaler, "scale", orig_scale, scale),
                                 (GradScaler, "update", orig_update, update)])
        orig_compile = torch.compile
        _patch_originals.append((torch, "compile", orig_compile, _compile_wrapper(orig_compile)))
        autograd = torch.autograd
        _patch_originals.extend([(autograd, "backward", autograd.backward, _backward_wrapper(autograd.backward, 0)),
                                 (autograd, "grad", autograd.grad, _backward_wrapper(autograd.grad, 1))])
        for owner, name, _, ours in _patch_originals:
            setattr(owner, name, ours)
        # torch warns that global module hooks (ours) fire once more for a compiled module: they cope with it
        warnings.filterwarnings("ignore", message=_COMPILE_HOOKS_WARNING, category=UserWarning)
        _patch_filter = warnings.filters[0]


def _release_patches(mode: OpSanitizer) -> None:
    global _patch_users, _patch_filter
    modes = _modes()
    for i in range(len(modes) - 1, -1, -1):
        if modes[i] is mode:
            del modes[i]
            break
    with _patch_lock:
        _patch_users -= 1
        if _patch_users > 0:
            return
        for owner, name, orig, ours in reversed(_patch_originals):
            if getattr(owner, name, None) is ours:  # someone else patched it since: leave theirs in place
                setattr(owner, name, orig)
        _patch_originals.clear()
        filters = cast(list[Any], warnings.filters)  # a list at runtime; typeshed says Sequence
        if _patch_filter is not None and _patch_filter in filters:
            filters.remove(_patch_filter)
            warnings._filters_mutated()  # type: ignore[attr-defined]
        _patch_filter = None


def _scaler_wrappers(orig_scale: Any, orig_update: Any) -> tuple[Any, Any]:
    """GradScaler.scale/update: findings in a scaled backward are the scaler's business (warnings)."""

    def scale(scaler: Any, outputs: Any) -> Any:
        if scaler.is_enabled():
            for mode in _modes():
                mode.scaled = True
                mode.scaled_reported = False
        return orig_scale(scaler, outputs)

    def update(scaler: Any, new_scale: Any = None) -> Any:
        try:
            return orig_update(scaler, new_scale)
        finally:
            for mode in _modes():
                mode.scaled = False

    scale.__wrapped__ = orig_scale  # type: ignore[attr-defined]
    update.__wrapped__ = orig_update  # type: ignore[attr-defined]
    return scale, update


def _backward_wrapper(orig: Any, kind: int) -> Any:
    """torch.autograd.backward (``kind`` 0) / grad (1): the mode steps off the stack, nodes are hooked instead."""

    @functools.wraps(orig)
    def run(*args: Any, **kwargs: Any) -> Any:
        modes = _modes()
        checks = modes[-1].backward_checks if modes else None
        if checks is None:
            return orig(*args, **kwargs)
        tensors = args[0] if args else kwargs.get("tensors" if kind == 0 else "outputs")
        return checks.run(orig, tensors, args, kwargs)

    return run


def _compile_wrapper(orig: Any) -> Any:
    """torch.compile: functions compiled inside a context are checked at their outputs."""

    def wrap(compiled: Any, fn: Any, mode: OpSanitizer) -> Any:
        if isinstance(compiled, torch.nn.Module) or not callable(compiled):
            return compiled  # modules: checked by the module post-hook
        name = f"torch.compile({getattr(fn, '__qualname__', getattr(fn, '__name__', 'fn'))})"

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            with mode.off():  # the compiled code runs without the mode: dynamo never meets its frames
                out = compiled(*args, **kwargs)
            if not mode.paused:
                mode.check_compiled(name, (args, kwargs), out)
            return out

        return checked

    def compile(model: Any = None, *args: Any, **kwargs: Any) -> Any:
        modes = _modes()
        if not modes:  # no context in this thread: torch.compile as it is
            return orig(model, *args, **kwargs)
        mode = modes[-1]
        if model is None:
            deco = orig(None, *args, **kwargs)
            return lambda fn: wrap(deco(fn), fn, mode)
        return wrap(orig(model, *args, **kwargs), model, mode)

    compile.__wrapped__ = orig  # type: ignore[attr-defined]
    return compile


class TorchContext:
    """Everything the PyTorch side of :func:`~floatguard.sanitize.detect` installs."""

    def __init__(self, session: Session, level: str = "op", *, near_overflow: float | None = 16.0,
                 underflow: bool = True, defer: bool | None = None, exact: bool = False) -> None:
        self.session = session
        self.level = level
        self.modules = ModuleTracker()
        self.mode: OpSanitizer | None = None
        self.boundaries: ModuleChecks | None = None
        if level == "op":
            self.mode = OpSanitizer(session, self.modules, near_overflow=near_overflow, underflow=underflow,
                                    defer=defer)
            if not exact:
                self.boundaries = ModuleChecks(self.mode, self.modules)
                self.mode.backward_checks = BackwardChecks(self.mode, self.modules)
        self.steps = StepChecker(session, self.modules)
        self._handles: list[Any] = []
        self._patched_mode: OpSanitizer | None = None
        self._mode_entered = False
        self.distributed = False

    # -- optimizer hooks ----------------------------------------------------------------------------
    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        mode = self.mode
        if mode is not None:
            mode.pause()  # until the post-hook: the step is checked as a whole, after it ran
            mode.flush()
        if mode is None or (mode.compiled_seen and not self.session.has_error):
            ev = self.steps.check_grads(optimizer)
            if ev is not None:
                if mode is not None:  # gradients made by compiled backward code
                    ev = replace(ev, message=ev.message + " (made inside a torch.compile'd region, which is checked "
                                 "only at its outputs)")
                self.session.emit(ev)
        if self.distributed or self.session.pending is not None:  # every rank, once per step
            agree_across_ranks(self.session)

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            checked = self.steps.state_every and (self.steps.step + 1) % self.steps.state_every == 0
            ev = self.steps.after_step(optimizer)
            if ev is not None:
                self.session.emit(ev)
            if (checked and self.distributed) or self.session.pending is not None:
                agree_across_ranks(self.session)
        finally:
            if self.mode is not None:
                self.mode.resume()

    def __enter__(self) -> TorchContext:
        _, world = _world()
        self.distributed = world > 1
        self.session.defer_raise = self.distributed and self.session.action == "raise"
        self.modules.__enter__()
        self._handles = [register_optimizer_step_pre_hook(self._pre_step),
                         register_optimizer_step_post_hook(self._post_step)]
        if self.mode is not None:
            _acquire_patches(self.mode)
            self._patched_mode = self.mode
            self.modules.on_compiled_output.append(self.mode.check_compiled)
            self.modules.on_compiled_enter.append(self.mode.pause)
            self.modules.on_compiled_exit.append(self.mode.resume)
            self.modules.on_root_exit.append(self.mode.root_exit)
            self.modules.on_root_enter.append(self.mode.reinstate)
            if self.boundaries is not None:
                self.boundaries.install()
            self.mode.__enter__()
            self._mode_entered = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.mode is not None and self._mode_entered:
                self._mode_entered = False
                if self.mode._popped:  # an optimizer step raised between pause() and resume()
                    self.mode.paused = 1
                    self.mode.resume()
                self.mode.__exit__(exc_type, exc, tb)
                if exc_type is None:
                    self.mode.flush()
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
            if self._patched_mode is not None:
                mode, self._patched_mode = self._patched_mode, None
                _release_patches(mode)
            self.modules.__exit__(exc_type, exc, tb)
        if exc_type is None and (self.distributed or self.session.pending is not None):
            agree_across_ranks(self.session)
