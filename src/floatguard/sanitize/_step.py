"""``floatguard.guard(step_fn)``: a cheap check per training step, an op-level replay of a bad one.

On a healthy step the cost is one reduction pass over the gradients (just before
``optimizer.step()``, through a global optimizer pre-hook), a read of the loss, and
saving the RNG states; every ``state_every``-th step the parameters and optimizer
state are checked too, before the update. When the gradients are not finite the step is stopped *before*
the optimizer touches the parameters, the state from before the call is restored
(RNG states, the gradients' references, the GradScaler's scale — and with
``snapshot=True`` copies of parameters, gradients and optimizer state), and the call
is replayed under ``detect(level="op")``, which names the first bad op.

A step skipped by a ``torch.amp.GradScaler`` (passed as ``scaler=``) is replayed the
same way and attributed — which op overflowed float16, in which module — as a warning:
skipping is the scaler's job, not an error.

``step_fn`` should be one training step: code before ``optimizer.step()`` runs twice
when a step is replayed, and gradients accumulated across calls need ``snapshot=True``.
"""

from __future__ import annotations

import contextlib
import functools
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TextIO

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..events import Event, Report
from ._core import ACTIONS, NumericalError, Session
from ._module_tracker import ModuleTracker
from ._numpy import numpy_errstate
from ._step_check import StepChecker
from ._tensor_stats import dtype_name, first_bad, tensor_stats
from ._torch_ctx import TorchContext, _world

__all__ = ["Guarded", "guard"]


class _BadStep(BaseException):
    """Raised from the optimizer pre-hook to stop a bad step before the update."""

    def __init__(self, optimizer: Any) -> None:
        super().__init__("non-finite gradients")
        self.optimizer = optimizer


def _rng_state(host: bool) -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    np_mod = sys.modules.get("numpy") if host else None
    return (torch.get_rng_state(), cuda, random.getstate() if host else None,
            np_mod.random.get_state() if np_mod else None)


def _set_rng_state(state: tuple[Any, ...]) -> None:
    cpu, cuda, py, npst = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    if py is not None:
        random.setstate(py)
    if npst is not None:
        sys.modules["numpy"].random.set_state(npst)


@contextlib.contextmanager
def _op_level(report: Report, *, near_overflow: float | None, underflow: bool) -> Iterator[None]:
    """The replay's sanitizer: every PyTorch op and NumPy ufunc checked, findings only recorded in ``report``.

    What ``detect("op", "record", quiet=True)`` installs, built here from its parts so that
    ``detect`` (which wraps a function in :func:`guard` for ``level="step"``) and this module
    do not import each other.
    """
    session = Session("record", report=report, quiet=True)
    try:
        with numpy_errstate(session, underflow=False), TorchContext(session, "op", near_overflow=near_overflow,
                                                                    underflow=underflow, exact=True):
            yield
    finally:
        session.collect_children()


def _tensors_in(value: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, torch.Tensor)]
    return []


class Guarded:
    """A training step wrapped by :func:`guard`; call it like the step. ``report`` holds the findings."""

    def __init__(self, step_fn: Callable[..., Any], *, action: str = "raise", scaler: Any = None,
                 snapshot: bool = False, near_overflow: float | None = 16.0, underflow: bool = True,
                 stream: TextIO | None = None, quiet: bool = False, report: Report | None = None,
                 state_every: int = 16, host_rng: bool = False) -> None:
        if action not in ACTIONS:
            raise ValueError(f"guard: action must be one of {ACTIONS}, got {action!r}")
        functools.update_wrapper(self, step_fn)
        self.step_fn = step_fn
        self.action = action
        self.scaler = scaler
        self.snapshot = snapshot
        self.host_rng = host_rng
        self.near_overflow = near_overflow
        self.underflow = underflow
        self.report = report if report is not None else Report()
        self.session = Session(action, report=self.report, stream=stream, quiet=quiet)
        self.modules = ModuleTracker()
        self.checker = StepChecker(self.session, self.modules, state_every=state_every)
        self.step = 0
        self.replays = 0
        self._optimizers: list[Any] = []
        self._seen: set[int] = set()  # ids of self._optimizers (held there, so never reused)
        self._stepped = 0
        self._saved: dict[str, Any] = {}

    # -- hooks active during one call -------------------------------------------------------------
    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Before ``optimizer.step()``: the one check per step (and the state check every ``state_every``)."""
        if id(optimizer) not in self._seen:
            self._seen.add(id(optimizer))
            self._optimizers.append(optimizer)
        checker = self.checker
        checker.step += 1
        if checker.state_every and checker.step % checker.state_every == 0:
            # parameters and optimizer state, which finite gradients can only corrupt through an update
            ev = checker.check_params(optimizer, before=True)
            if ev is not None:
                self.session.emit(replace(ev, step=self.step))
        bad = bool(first_bad([p.grad for g in optimizer.param_groups for p in g["params"]]))
        dist, _ = _world()
        if dist is not None:  # every rank stops the step if one rank's gradients are bad
            flag = torch.tensor([1 if bad else 0], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item())
        if bad:
            raise _BadStep(optimizer)
        if self._stepped and not self.snapshot:
            raise RuntimeError(
                "guard: this step calls optimizer.step() more than once (several optimizers, or one stepped "
                "twice); without snapshot=True a bad later step could not undo the earlier updates, and its "
                "replay would apply them again. Pass snapshot=True to guard() (it copies the parameters and "
                "optimizer state before each update), or guard each optimizer's step separately.")
        self._stepped += 1  # the update happens next
        if self.snapshot:  # parameters and optimizer state just before the update
            saved = self._saved
            with torch.no_grad():
                saved.setdefault("params", []).extend(
                    (p, p.detach().clone()) for g in optimizer.param_groups for p in g["params"])
                saved.setdefault("opt", []).append((optimizer, _clone_state(optimizer)))

    # -- saving and restoring ---------------------------------------------------------------------
    def _params(self) -> list[Any]:
        return [p for o in self._optimizers for g in o.param_groups for p in g["params"]]

    def _save(self) -> dict[str, Any]:
        saved: dict[str, Any] = {"rng": _rng_state(self.host_rng)}
        if self.snapshot:  # gradients as they were before the call (accumulation)
            with torch.no_grad():
                saved["grad_values"] = [(p, p.grad.detach().clone() if p.grad is not None else None)
                                        for p in self._params()]
        self._saved = saved
        sc = self.scaler
        if sc is not None and sc.is_enabled():
            if getattr(sc, "_scale", None) is None:  # initialised lazily at the first scale()
                saved["scaler"] = (None, None)
            else:
                saved["scaler"] = (sc._scale.clone(), sc._growth_tracker.clone())
        return saved

    def _restore(self, saved: dict[str, Any]) -> None:
        _set_rng_state(saved["rng"])
        with torch.no_grad():
            for p, v in saved.get("params", []):
                p.copy_(v)
            for o, st in saved.get("opt", []):
                o.load_state_dict(st)
            for p, g in saved.get("grad_values", []):
                p.grad = g.clone() if g is not None else None
        if "scaler" in saved:
            scale, tracker = saved["scaler"]
            if scale is None:
                self.scaler._scale = self.scaler._growth_tracker = None
            else:
                self.scaler._scale.copy_(scale)
                self.scaler._growth_tracker.copy_(tracker)

    def _scaler_skipped(self, saved: dict[str, Any]) -> bool:
        if "scaler" not in saved or self.scaler._scale is None:
            return False
        before = saved["scaler"][0]
        if before is None:
            return float(self.scaler._scale.item()) < float(self.scaler._init_scale)
        return bool((self.scaler._scale < before).item())

    # -- the call -------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        saved = self._save()
        self._stepped = 0
        stopped: _BadStep | None = None
        handle = register_optimizer_step_pre_hook(self._pre)
        try:
            result = self.step_fn(*args, **kwargs)
        except _BadStep as stop:
            stopped = stop
        finally:
            handle.remove()
        self.step += 1
        if stopped is not None:
            return self._replay(saved, stopped.optimizer, None, args, kwargs)
        results = _tensors_in(result)
        loss_bad = first_bad(results) if results else None
        if loss_bad:
            t = results[loss_bad[0]].detach()
            bad = Event(kind="nan" if bool(torch.isnan(t).any()) else "overflow", source="sanitize",
                        message="the step's result (the loss) is not finite", phase="forward",
                        dtype=dtype_name(t.dtype), shape=tuple(t.shape),
                        stats=tensor_stats(t, "loss"), step=self.step - 1)
            if self._stepped and not self.snapshot:  # the update is done: report, cannot replay
                self.session.emit(replace(bad, hint="pass snapshot=True to guard() to restore and replay such steps"))
                return result
            return self._replay(saved, None, bad, args, kwargs)
        if self._scaler_skipped(saved):
            return self._attribute_skip(saved, args, kwargs, result)
        return result

    def _replay(self, saved: dict[str, Any], optimizer: Any, bad: Event | None, args: Any, kwargs: Any) -> Any:
        self._restore(saved)
        self.replays += 1
        scratch = Report()
        final = self.action != "raise"  # warn/record: the replay is the real step
        handles = [] if final else [register_optimizer_step_pre_hook(self._stop_again)]
        result = None
        failed: BaseException | None = None  # the replay raising (an exhausted data iterator): kept, re-raised
        try:
            # _BadStep: stopped again before the update (action="raise"); detect() still exits normally
            with self.modules, _op_level(scratch, near_overflow=self.near_overflow,
                                         underflow=self.underflow), contextlib.suppress(_BadStep):
                result = self.step_fn(*args, **kwargs)
        except BaseException as exc:
            failed = exc
        finally:
            for h in handles:
                h.remove()
        step = self.step - 1
        if bad is None and optimizer is not None:
            self.checker.step = step
            bad = self.checker.check_grads(optimizer)
        if bad is None and failed is not None and _world()[0] is None:  # the replay stopped before the backward
            bad = Event(kind="nan", source="sanitize", message="the step's gradients are not finite "
                        f"(found before {type(optimizer).__name__}.step())", phase="backward")
        if bad is None:
            bad = Event(kind="nan", source="sanitize", message="another rank's gradients are not finite",
                        severity="info", phase="backward")
        found = [e for e in scratch.events if e.severity == "error"]
        others = [e for e in scratch.events if e.severity != "error"]
        if found:
            first = replace(found[0], message=found[0].message + f" (step {step}, found by replaying it at op level)")
        else:
            first = bad
            if bad.severity == "error":
                first = replace(bad, message=bad.message + " (an op-level replay of the step did not reproduce it: "
                                "nondeterministic?)")
        if failed is not None:
            first = replace(first, replay=f"the replay raised {type(failed).__name__}: {failed}",
                            message=first.message + f" (the op-level replay of the step raised "
                            f"{type(failed).__name__})")
        first, *rest = [replace(e, step=step) for e in [first, *found[1:], *others]]
        if failed is not None:
            if final:
                for e in [first, *rest]:
                    self.session.emit(e, dedupe=True)
            else:
                first = replace(first, severity="error")
                self.report.events[:0] = [first, *rest]
                self.session.show(first)
            raise failed
        if final:
            for e in [first, *rest]:
                self.session.emit(e, dedupe=True)
            return result
        for e in rest:
            self.report.add(e)
        self._agree_and_raise(first, named=bool(found))
        return result  # pragma: no cover - _agree_and_raise always raises here

    def _stop_again(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        raise _BadStep(optimizer)

    def _agree_and_raise(self, first: Event, named: bool) -> None:
        """Raise :class:`NumericalError`; across ranks, all raise the best event (an op named by a replay first)."""
        dist, world = _world()
        chosen = first
        if dist is not None:
            gathered: list[Any] = [None] * world
            mine = (0 if named else 1 if first.severity == "error" else 2, first.to_dict())
            dist.all_gather_object(gathered, mine)
            rank = dist.get_rank()
            best = min(range(world), key=lambda r: (gathered[r][0], r))
            if best != rank:
                chosen = Event.from_dict(gathered[best][1])
                chosen = replace(chosen, message=f"rank {best} stopped: {chosen.message}")
                self.report.events.insert(0, chosen)
                raise NumericalError(chosen, self.report)
        chosen = replace(chosen, severity="error")
        self.report.events.insert(0, chosen)
        self.session.show(chosen)
        raise NumericalError(chosen, self.report)

    def _attribute_skip(self, saved: dict[str, Any], args: Any, kwargs: Any, result: Any) -> Any:
        """Replay a step the GradScaler skipped and say which op overflowed (a warning)."""
        scale0 = saved["scaler"][0]
        before = float(scale0.item()) if scale0 is not None else float(self.scaler._init_scale)
        self._restore(saved)
        scratch = Report()
        with _op_level(scratch, near_overflow=self.near_overflow, underflow=False):
            result = self.step_fn(*args, **kwargs)
        hits = [e for e in scratch.events if e.kind in ("overflow", "nan", "div_by_zero")]
        after = float(self.scaler._scale.item())
        if hits:
            ev = hits[0]
            where = f" in module {ev.module}" if ev.module else ""
            ev = replace(ev, message=(f"GradScaler skipped step {self.step - 1} (scale {before:g} -> {after:g}): "
                                      f"{ev.op} made {ev.kind} in {ev.dtype}{where}" +
                                      (f", in the gradient of {ev.forward_op}" if ev.forward_op else "")))
        else:
            ev = Event(kind="overflow", source="sanitize", message=f"GradScaler skipped step {self.step - 1} "
                       f"(scale {before:g} -> {after:g}); the replay found no op (nondeterministic?)")
        self.session.emit(replace(ev, severity="warning", step=self.step - 1))
        return result


def _clone_state(optimizer: Any) -> dict[str, Any]:
    sd = optimizer.state_dict()

    def clone(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.detach().clone()
        if isinstance(v, dict):
            return {k: clone(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clone(x) for x in v]
        return v

    return clone(sd)


def guard(step_fn: Callable[..., Any] | None = None, *, action: str = "raise", scaler: Any = None,
          snapshot: bool = False, near_overflow: float | None = 16.0, underflow: bool = True,
          stream: TextIO | None = None, quiet: bool = False, report: Report | None = None,
          state_every: int = 16, host_rng: bool = False) -> Any:
    """Wrap a training step: check it cheaply, replay a bad step at op level to name the op.

    ``guard(step)`` or ``@guard(action="warn")``. Per call: the gradients are checked
    (one fused reduction) right before ``optimizer.step()``, the returned loss after;
    the parameters and optimizer state every ``state_every`` steps. A bad step is
    stopped before the update, the state restored and the call replayed under
    ``detect(level="op")``; ``action="raise"`` then raises :class:`NumericalError`
    naming the op (the parameters keep their pre-step values), ``"warn"``/``"record"``
    let the replayed step finish as it would have without floatguard.

    Args:
        scaler: a ``torch.amp.GradScaler``: skipped steps are attributed (a warning).
        snapshot: also copy parameters, gradients and optimizer state per call (needed
            for gradient accumulation across calls, and for a step that calls
            ``optimizer.step()`` more than once — several optimizers — which is refused
            with ``RuntimeError`` without it; costs a copy of the model per step).
        host_rng: also save and restore Python's ``random`` and NumPy's global RNG for
            the replay (about 60 µs per step; PyTorch's RNG states are always saved).
    """
    opts = {"action": action, "scaler": scaler, "snapshot": snapshot, "near_overflow": near_overflow,
            "underflow": underflow, "stream": stream, "quiet": quiet, "report": report, "state_every": state_every,
            "host_rng": host_rng}
    if step_fn is None:
        return functools.partial(guard, **opts)
    return Guarded(step_fn, **opts)
