"""Monitor a training script without changing it: :func:`attach_global`.

``floatguard run --monitor SCRIPT`` calls :func:`attach_global` before running the
script. Everything goes through PyTorch's process-wide hooks:

* global module forward hooks find the model: a module with parameters called at the
  top level (not inside another module's forward) is a candidate; the one sharing
  the most parameters with an optimizer is that optimizer's model (a loop that calls
  two submodules separately gets the larger one monitored);
* the global optimizer step pre-hook creates a :class:`~floatguard.monitor.Monitor`
  for each optimizer on its first step and records every step after backward;
* the loss is the output of a top-level loss module (``nn.CrossEntropyLoss()`` ...)
  or, failing that, the last scalar tensor ``backward()`` was called on
  (``torch.Tensor.backward`` is wrapped while attached); a ``GradScaler`` is
  recognized from ``scale()`` (the unscaled loss is kept) and ``step()`` (a skipped
  step is still recorded).

Detach with :meth:`GlobalMonitor.close`, which also prints a summary.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch
from rich.console import Console

from ..events import Event
from .core import Monitor

__all__ = ["GlobalMonitor", "attach_global"]

_ACTIVE: GlobalMonitor | None = None


class GlobalMonitor:
    """The monitors of every optimizer stepping in this process (see module docstring)."""

    def __init__(self, *, log: str | os.PathLike[str] | None = None, summary: bool = True,
                 console: Console | None = None, **options: Any) -> None:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.log = log
        self.summary = summary
        self.console = console or Console(stderr=True)
        self.options = options
        self.monitors: dict[int, Monitor] = {}
        self._order: list[int] = []
        self._roots: dict[int, weakref.ref[torch.nn.Module]] = {}
        self._depth = 0
        self._loss: torch.Tensor | None = None
        self._loss_from_module = False
        self._scaled: dict[int, torch.Tensor] = {}
        self._stepped: set[int] = set()
        self._closed = False
        self._handles = [
            register_module_forward_pre_hook(self._pre),
            register_module_forward_hook(self._post, always_call=True),
            register_optimizer_step_pre_hook(self._opt_pre),
        ]
        self._orig_backward = torch.Tensor.backward
        attached = self

        def backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            attached._saw_backward(tensor)
            return attached._orig_backward(tensor, *args, **kwargs)

        backward.__doc__ = self._orig_backward.__doc__
        torch.Tensor.backward = backward  # type: ignore[method-assign,assignment]  # torch's stub: fixed arity
        self._patched_scaler = self._patch_scaler()

    # -- model discovery and the loss --------------------------------------------------------
    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        if self._depth == 0 and id(module) not in self._roots and next(module.parameters(), None) is not None:
            self._roots[id(module)] = weakref.ref(module)  # a model candidate (loss modules have no parameters)
        self._depth += 1

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self._depth = max(0, self._depth - 1)
        if (self._depth == 0 and isinstance(module, torch.nn.modules.loss._Loss)
                and isinstance(output, torch.Tensor) and output.numel() == 1):
            self._loss, self._loss_from_module = output, True

    def _saw_backward(self, tensor: torch.Tensor) -> None:
        if tensor.numel() != 1:
            return
        raw = self._scaled.pop(id(tensor), None)
        if raw is not None:  # scaler.scale(loss).backward(): keep the unscaled loss
            self._loss = raw
        elif not self._loss_from_module or self._loss is None:
            self._loss = tensor
        self._loss_from_module = False

    def _patch_scaler(self) -> list[tuple[type, str, Any]]:
        scaler_cls = getattr(getattr(torch, "amp", None), "GradScaler", None)
        if scaler_cls is None:
            return []
        orig_scale, orig_step = scaler_cls.scale, scaler_cls.step
        attached = self

        def scale(scaler: Any, outputs: Any) -> Any:
            out = orig_scale(scaler, outputs)
            if isinstance(outputs, torch.Tensor) and isinstance(out, torch.Tensor) and outputs.numel() == 1:
                attached._scaled[id(out)] = outputs.detach()
            return out

        def step(scaler: Any, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            attached._stepped.discard(id(optimizer))
            mon = attached.monitors.get(id(optimizer))
            if mon is not None and mon.scaler is None:
                mon.scaler = scaler
                mon.state.scaler = True
            out = orig_step(scaler, optimizer, *args, **kwargs)
            if id(optimizer) not in attached._stepped:  # the scaler skipped optimizer.step(): record it anyway
                attached._record(optimizer, scaler)
            return out

        scaler_cls.scale, scaler_cls.step = scale, step
        return [(scaler_cls, "scale", orig_scale), (scaler_cls, "step", orig_step)]

    # -- the step ------------------------------------------------------------------------------
    def _opt_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._stepped.add(id(optimizer))
        self._record(optimizer, None)

    def _record(self, optimizer: torch.optim.Optimizer, scaler: Any) -> None:
        if self._closed:
            return
        self._depth = 0
        mon = self.monitors.get(id(optimizer))
        if mon is None:
            model = self._model_of(optimizer)
            if model is None:
                return
            log = self.log
            if log is not None and self._order:
                root, ext = os.path.splitext(os.fspath(log))
                log = f"{root}.{len(self._order)}{ext}"
            mon = Monitor(model, optimizer, log=log, scaler=scaler, **self.options)
            self.monitors[id(optimizer)] = mon
            self._order.append(id(optimizer))
        loss, self._loss = self._loss, None
        mon.step(loss)

    def _model_of(self, optimizer: torch.optim.Optimizer) -> torch.nn.Module | None:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        best, best_n = None, 0
        for ref in list(self._roots.values()):
            m = ref()
            if m is None:
                continue
            n = sum(1 for p in m.parameters() if id(p) in held)
            if n > best_n:
                best, best_n = m, n
        return best

    # -- end --------------------------------------------------------------------------------------
    @property
    def findings(self) -> list[Event]:
        """The findings of every monitor, in the order the optimizers first stepped."""
        return [e for k in self._order for e in self.monitors[k].findings]

    def close(self) -> list[Event]:
        """Remove every hook and patch, close the monitors (and their logs); print the summary."""
        global _ACTIVE
        if self._closed:
            return self.findings
        self._closed = True
        for h in self._handles:
            h.remove()
        torch.Tensor.backward = self._orig_backward  # type: ignore[method-assign]
        for cls, name, orig in self._patched_scaler:
            setattr(cls, name, orig)
        for k in self._order:
            self.monitors[k].close()
        if _ACTIVE is self:
            _ACTIVE = None
        if self.summary:
            from .report import print_summary

            steps = sum(self.monitors[k].steps for k in self._order)
            print_summary(self.findings, self.console, steps=steps)
        return self.findings

    def __enter__(self) -> GlobalMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attach_global(**options: Any) -> GlobalMonitor:
    """Watch every training loop of this process; returns the handle to :meth:`~GlobalMonitor.close`.

    Options: ``log`` (JSONL path; a second optimizer writes ``<log>.1.jsonl``),
    ``summary`` (print the findings on close, default True), ``console``, and any
    keyword of :class:`~floatguard.monitor.Monitor` (``num_classes``, ``detailed``,
    ``every``, ``thresholds``, ``live``). Only one can be attached at a time.
    """
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("attach_global: a global monitor is already attached; close() it first")
    _ACTIVE = GlobalMonitor(**options)
    return _ACTIVE
