"""A PyTorch Lightning callback running the training-health monitor.

::

    from floatguard.monitor.lightning import MonitorCallback
    cb = MonitorCallback(num_classes=10, log="run.jsonl")
    lightning.Trainer(callbacks=[cb]).fit(model, data)
    cb.findings

The loss comes from ``on_before_backward``, the step from
``on_before_optimizer_step`` (after backward, before the update, as
:meth:`Monitor.step <floatguard.monitor.Monitor.step>` expects). The statistics go to
the trainer's logger through ``self.log`` (``floatguard/loss``, ``floatguard/grad_norm``...);
at the end of ``fit`` the monitor prints its summary and the report command. Importing this
module imports Lightning (``lightning`` or ``pytorch_lightning``).
"""

from __future__ import annotations

from typing import Any

from ..errors import missing
from ..events import Event
from .core import Monitor

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback  # type: ignore[assignment]  # the same class, older package
    except ImportError as exc:
        raise missing("lightning", feature="floatguard.monitor.lightning") from exc

__all__ = ["MonitorCallback"]


class MonitorCallback(Callback):
    """Monitors the LightningModule and its first optimizer; options are :class:`Monitor`'s."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.monitor: Monitor | None = None
        self._loss: Any = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is None:
            opt = trainer.optimizers[0] if trainer.optimizers else None
            options = dict(self.options)
            user = options.pop("on_scalars", None)

            def to_lightning(vals: dict[str, float]) -> None:  # the trainer's logger (self.log), per step
                if trainer.logger is not None:
                    pl_module.log_dict(vals, on_step=True, on_epoch=False, prog_bar=False, logger=True)
                if user is not None:
                    user(vals)

            self.monitor = Monitor(pl_module, opt, on_scalars=to_lightning, **options)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.monitor is not None:
            self.monitor.step(self._loss)
            self._loss = None

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()

    @property
    def findings(self) -> list[Event]:
        """The monitor's findings (empty before ``fit``)."""
        return self.monitor.findings if self.monitor is not None else []
