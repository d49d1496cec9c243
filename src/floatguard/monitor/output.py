"""Where the monitor is heard: plain log lines, an end-of-run summary, the user's own loggers.

* A terminal gets the live line (:mod:`.live`). Anything else — a batch job whose stderr
  goes to a file, a notebook, CI — gets one plain ``logging`` line per finding, with its
  remedy, on the logger ``"floatguard.monitor"`` (a handler on stderr is added only when
  logging was not configured at all, so a configured application routes the lines itself).
* At the end of training: a summary of the findings and the command that renders the
  report (``floatguard report run.jsonl -o report.html``).
* Statistics and findings also go to the logger the user already has: anything with
  TensorBoard's ``add_scalar(tag, value, step)`` / ``add_text(tag, text, step)`` (a
  ``SummaryWriter``, or a wandb/aim shim), and callables receiving a dict of scalars
  (Lightning's ``self.log_dict``, the Hugging Face ``logs`` of ``on_log``). Scalars are
  named ``floatguard/loss``, ``floatguard/grad_norm``, ``floatguard/grad_norm/<layer>``...
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..events import Event

__all__ = ["LOGGER", "PREFIX", "Sinks", "closed_line", "finding_line", "get_logger", "summary_lines"]

LOGGER = "floatguard.monitor"
PREFIX = "floatguard/"
_LEVEL = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}


def get_logger() -> logging.Logger:
    """The monitor's logger; given a plain stderr handler when logging is not configured anywhere."""
    log = logging.getLogger(LOGGER)
    if not log.hasHandlers():
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(h)
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
    return log


def level_of(ev: Event) -> int:
    return _LEVEL.get(ev.severity, logging.WARNING)


def finding_line(ev: Event) -> str:
    """One line: kind, step, where, what, and the remedy."""
    where = f" in {ev.module}" if ev.module else ""
    line = f"[{ev.kind}] step {ev.step}{where}: {ev.message}"
    return f"{line} | remedy: {ev.hint}" if ev.hint else line


def closed_line(ev: Event) -> str:
    """One line for a finding the run later disproved (``stats['recovered_at']``, why in ``note``)."""
    return f"[{ev.kind}] closed at step {ev.stats.get('recovered_at')}: {ev.note or 'recovered'}"


def summary_lines(findings: Iterable[Event], steps: int, log_path: str | None) -> list[str]:
    """The end-of-training summary: open findings, closed ones, and how to see the report."""
    evs = list(findings)
    open_ = [e for e in evs if "recovered_at" not in e.stats]
    closed = [e for e in evs if "recovered_at" in e.stats]
    if not open_:
        head = f"floatguard monitor: no open finding in {steps} steps"
    else:
        head = f"floatguard monitor: {len(open_)} finding{'s' if len(open_) != 1 else ''} in {steps} steps"
    out = [head + (f" ({len(closed)} closed as recovered)" if closed else "")]
    for e in open_:
        where = f" in {e.module}" if e.module else ""
        out.append(f"  {e.severity}: {e.kind} from step {e.step}{where}: {e.message}")
    for e in closed:
        out.append(f"  recovered: {e.kind} (steps {e.step} to {e.stats['recovered_at']})")
    if log_path:
        out.append(f"  report: floatguard report {_quote(log_path)} -o report.html")
    return out


def _quote(path: str) -> str:
    import shlex

    return shlex.quote(path)


class Sinks:
    """The user's loggers: ``add_scalar``/``add_text`` writers and callables taking a dict of scalars."""

    def __init__(self, writers: Iterable[Any] = (), callbacks: Iterable[Callable[[dict[str, float]], Any]] = ()
                 ) -> None:
        self.writers = []
        for w in writers:
            if not (callable(getattr(w, "add_scalar", None)) and callable(getattr(w, "add_text", None))):
                raise TypeError(f"Monitor: tensorboard= needs an object with add_scalar and add_text "
                                f"(a torch.utils.tensorboard.SummaryWriter), got {type(w).__name__}")
            self.writers.append(w)
        self.callbacks = list(callbacks)
        self.pending: dict[str, float] = {}  # the last step's scalars, for loggers that pull (HF on_log)

    def __bool__(self) -> bool:
        return True

    def scalars(self, step: int, values: dict[str, float]) -> None:
        vals = {PREFIX + k: float(v) for k, v in values.items()
                if v is not None and (k == "loss" or math.isfinite(float(v)))}  # a NaN loss is news
        self.pending = vals
        for w in self.writers:
            for k, v in vals.items():
                w.add_scalar(k, v, step)
        for cb in self.callbacks:
            cb(vals)

    def text(self, step: int, ev: Event, line: str) -> None:
        for w in self.writers:
            w.add_text(f"{PREFIX}findings/{ev.kind}", line, step)

    def step(self, step: int, line: dict[str, Any], events: Sequence[Event], layers: Sequence[str],
             scale: float | None, open_findings: int) -> None:
        """One step's numbers (the log's ``step`` record ``line``) and its findings to the user's loggers."""
        vals: dict[str, Any] = {"loss": line["loss"], "grad_norm": line["grad_norm"]}
        if line.get("lr") is not None:
            vals["lr"] = line["lr"]
        if scale is not None:
            vals["loss_scale"] = scale
        for key in ("grad", "update"):
            if line.get(key):
                name = "grad_norm" if key == "grad" else "update_ratio"
                vals.update({f"{name}/{layer}": v for layer, v in zip(layers, line[key], strict=False)
                             if v is not None})
        vals["findings"] = open_findings
        self.scalars(step, vals)
        for ev in events:
            self.text(step, ev, closed_line(ev) if "recovered_at" in ev.stats else finding_line(ev))

    def take(self) -> dict[str, float]:
        """The scalars recorded since the last call (for a logger that pulls them)."""
        vals, self.pending = self.pending, {}
        return vals
