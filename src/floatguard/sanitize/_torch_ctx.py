"""Turning the PyTorch sanitizer on and off: mode, module hooks, optimizer hooks, GradScaler, ranks."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..events import Event
from ._core import NumericalError, Session
from ._torch import ModuleTracker, OpSanitizer, StepChecker

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
    first.message = f"rank {first.rank} stopped: {first.message}"
    raise NumericalError(first, session.report)


class TorchContext:
    """Everything the PyTorch side of :func:`~floatguard.sanitize.detect` installs."""

    def __init__(self, session: Session, level: str = "op", *, near_overflow: float | None = 16.0,
                 underflow: bool = True, defer: bool | None = None) -> None:
        self.session = session
        self.level = level
        self.modules = ModuleTracker()
        self.mode: OpSanitizer | None = None
        if level == "op":
            self.mode = OpSanitizer(session, self.modules, near_overflow=near_overflow, underflow=underflow,
                                    defer=defer)
        self.steps = StepChecker(session, self.modules)
        self._handles: list[Any] = []
        self._patched: list[tuple[Any, str, Any]] = []
        self._filter: Any = None
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
                    ev.message += " (made inside a torch.compile'd region, which is checked only at its outputs)"
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

    # -- GradScaler: findings in a scaled backward are the scaler's business ----------------------------
    def _patch_scaler(self) -> None:
        try:
            from torch.amp.grad_scaler import GradScaler
        except ImportError:  # pragma: no cover
            return
        mode = self.mode
        if mode is None:
            return
        orig_scale, orig_update = GradScaler.scale, GradScaler.update

        def scale(scaler: Any, outputs: Any) -> Any:
            if scaler.is_enabled():
                mode.scaled = True
                mode.scaled_reported = False
            return orig_scale(scaler, outputs)

        def update(scaler: Any, new_scale: Any = None) -> Any:
            try:
                return orig_update(scaler, new_scale)
            finally:
                mode.scaled = False

        scale.__wrapped__ = orig_scale  # type: ignore[attr-defined]
        update.__wrapped__ = orig_update  # type: ignore[attr-defined]
        self._patched += [(GradScaler, "scale", orig_scale), (GradScaler, "update", orig_update)]
        GradScaler.scale = scale  # type: ignore[method-assign]
        GradScaler.update = update  # type: ignore[method-assign]

    # -- torch.compile: compiled functions made inside the context are checked at their outputs ---------
    def _patch_compile(self) -> None:
        mode = self.mode
        if mode is None:
            return
        orig = torch.compile

        def wrap(compiled: Any, fn: Any) -> Any:
            if isinstance(compiled, torch.nn.Module) or not callable(compiled):
                return compiled  # modules: checked by the module post-hook
            import functools

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
            if model is None:
                deco = orig(None, *args, **kwargs)
                return lambda fn: wrap(deco(fn), fn)
            return wrap(orig(model, *args, **kwargs), model)

        # torch warns that global module hooks (ours) fire once more for a compiled module: they cope with it
        warnings.filterwarnings("ignore", message=_COMPILE_HOOKS_WARNING, category=UserWarning)
        self._filter = warnings.filters[0]
        compile.__wrapped__ = orig  # type: ignore[attr-defined]
        self._patched.append((torch, "compile", orig))
        torch.compile = compile  # type: ignore[assignment]

    def __enter__(self) -> TorchContext:
        _, world = _world()
        self.distributed = world > 1
        self.session.defer_raise = self.distributed and self.session.action == "raise"
        self.modules.__enter__()
        self._handles = [register_optimizer_step_pre_hook(self._pre_step),
                         register_optimizer_step_post_hook(self._post_step)]
        if self.mode is not None:
            self._patch_scaler()
            self._patch_compile()
            self.modules.on_compiled_output.append(self.mode.check_compiled)
            self.modules.on_compiled_enter.append(self.mode.pause)
            self.modules.on_compiled_exit.append(self.mode.resume)
            self.modules.on_root_exit.append(self.mode.root_exit)
            self.modules.on_root_enter.append(self.mode.reinstate)
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
            for owner, name, orig in reversed(self._patched):
                setattr(owner, name, orig)
            self._patched = []
            if self._filter is not None and self._filter in warnings.filters:
                warnings.filters.remove(self._filter)
                warnings._filters_mutated()  # type: ignore[attr-defined]
            self._filter = None
            self.modules.__exit__(exc_type, exc, tb)
        if exc_type is None and (self.distributed or self.session.pending is not None):
            agree_across_ranks(self.session)
