"""A Hugging Face ``transformers.TrainerCallback`` running the training-health monitor.

::

    from floatguard.monitor.huggingface import MonitorCallback
    cb = MonitorCallback(log="run.jsonl")
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    cb.findings

The monitor is created at ``on_train_begin`` (the Trainer passes its model and
optimizer), records every ``on_pre_optimizer_step`` (after backward, before the
update), and takes the loss from the model's output (``outputs.loss``, captured by
a forward hook). At ``on_log`` the last step's ``floatguard/...`` scalars join the
Trainer's ``logs``, which the ``report_to`` integrations that come after this callback
receive (the Trainer puts its own integrations first: to reach them, insert this
callback at the front, ``trainer.callback_handler.callbacks.insert(0, cb)``). At
``on_train_end`` the monitor prints its summary and the report command. Importing
this module imports ``transformers``.
"""

from __future__ import annotations

from typing import Any

from ..errors import missing
from ..events import Event
from .core import Monitor

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised without transformers
    raise missing("transformers", feature="floatguard.monitor.huggingface") from exc

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

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Add the last step's ``floatguard/...`` scalars to the Trainer's ``logs`` (``report_to`` integrations)."""
        if self.monitor is not None and logs is not None and self.monitor._sinks is not None:
            logs.update(self.monitor._sinks.take())

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()

    @property
    def findings(self) -> list[Event]:
        """The monitor's findings (empty before training)."""
        return self.monitor.findings if self.monitor is not None else []
