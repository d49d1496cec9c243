"""The options of :class:`~floatguard.monitor.Monitor`, as one typed value: :class:`MonitorConfig`.

``Monitor(model, optimizer, every=5, log="run.jsonl")`` and
``Monitor(model, optimizer, config=MonitorConfig(every=5, log="run.jsonl"))`` are the same
monitor: the keyword options of :class:`Monitor` are the fields below, checked once here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .rules import Thresholds

__all__ = ["MonitorConfig", "ScalarWriter"]


class ScalarWriter(Protocol):
    """What the monitor needs of a ``torch.utils.tensorboard.SummaryWriter``."""

    def add_scalar(self, tag: str, value: float, step: int, /) -> Any: ...

    def add_text(self, tag: str, text: str, step: int, /) -> Any: ...


@dataclass(frozen=True)
class MonitorConfig:
    """Every option of :class:`~floatguard.monitor.Monitor` but the model and its optimizer.

    Attributes:
        num_classes: C for ``stuck_at_chance``; inferred from the class dimension
            that cross_entropy receives when not given.
        log: path of the JSONL log (appended; a resumed run continues the numbering).
        detailed: per-layer statistics every step (gradient norms, update ratios,
            activations and each layer's output statistics) instead of every ``every``.
        every: sampling period of the costlier statistics (default 10; 1 if detailed);
            at least 1.
        scaler: a ``torch.amp.GradScaler`` in use (``fp16_overflow``); its skipped steps
            are not reported as ``nonfinite_gradient``.
        thresholds: a :class:`~floatguard.monitor.rules.Thresholds` overriding defaults.
        live: live status line; None = on when stderr is a terminal. Without it (a batch
            job, stderr to a file) each finding is one plain line with its remedy on the
            ``logging`` logger ``"floatguard.monitor"``; ``Monitor.close`` ends with a summary
            and the command that renders the report.
        rank: distributed rank (default: ``torch.distributed``'s, or 0).
        tensorboard: a ``torch.utils.tensorboard.SummaryWriter`` (or any object with
            ``add_scalar`` and ``add_text``, or a list of them): the loss, gradient norms
            (per layer on sampled steps) and update ratios as scalars under ``floatguard/``,
            each finding as text.
        on_scalars: a callable receiving each step's ``{"floatguard/...": value}`` dict
            (Lightning's ``log_dict``; the callbacks use it).
        replay: when the loss (or a gradient) turns NaN/inf, re-run that step under the
            sanitizer (:func:`floatguard.detect`) and put its first bad op, module and line
            into the finding. ``True`` replays the model's forward with the inputs of that
            step (the parameters are still those of the step: ``step()`` comes before
            ``optimizer.step()``); a callable (``lambda: loss_fn(model(xb), yb)``) replays
            forward, loss and backward. Free until it fires: a reference to the forward's
            inputs and the RNG state (for dropout) are kept each step, nothing is computed.
    """

    num_classes: int | None = None
    log: str | os.PathLike[str] | None = None
    detailed: bool = False
    every: int | None = None
    scaler: Any = None
    thresholds: Thresholds | None = None
    live: bool | None = None
    rank: int | None = None
    tensorboard: ScalarWriter | Sequence[ScalarWriter] | None = None
    on_scalars: Callable[[dict[str, float]], Any] | None = None
    replay: bool | Callable[[], Any] = False

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"Monitor: 'every' must be >= 1, got {self.every}")

    @property
    def period(self) -> int:
        """Steps between sampled steps: ``every``, or 1 in detailed mode and 10 otherwise."""
        return int(self.every) if self.every is not None else (1 if self.detailed else 10)

    @property
    def writers(self) -> list[ScalarWriter]:
        """``tensorboard`` as a list."""
        tb = self.tensorboard
        if tb is None:
            return []
        return list(tb) if isinstance(tb, list | tuple) else [tb]  # type: ignore[list-item]
