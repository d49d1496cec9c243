"""A Hugging Face ``transformers.TrainerCallback`` running the training-health monitor.

::

    from floatguard.monitor.huggingface import MonitorCallback
    cb = MonitorCallback(log="run.jsonl")
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    cb.findings

The monitor is created at ``on_train_begin`` (the Trainer passes its model and
optimizer), records every ``on_pre_optimizer_step`` (after backward, before the
update), and takes the loss from the model's output (``outputs.loss``, captured by
a forward hook). Importing this module imports ``transformers``.
"""

from __future__ import annotations

from typing import Any

from ..events import Event
from ..ops._namespace import OptionalDependencyError
from .core import Monitor

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised without transformers
    raise OptionalDependencyError(
        "floatguard.monitor.huggingface needs transformers: pip install transformers") from exc

__all__ = ["MonitorCallback"]


class MonitorCallback(TrainerCallback):
    """Monitors the Trainer's model and optimizer; options are :class:`Monitor`'s."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if self.monitor is None and model is not None:
            self.monitor = Monitor(model, optimizer, **self.options)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()

    @property
    def findings(self) -> list[Event]:
        """The monitor's findings (empty before training)."""
        return self.monitor.findings if self.monitor is not None else []
