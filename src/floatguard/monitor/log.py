"""The monitor's JSONL log: one JSON object per line, appended and flushed every step.

Records (``"type"``):

``start``    one per session: ``layers`` (names, the order of every per-layer list),
             ``numel``, ``mode``, ``every``, ``num_classes``, ``world_size``,
             ``first_step``, ``thresholds``, ``time``, ``resumed``
``step``     ``step``, ``loss``, ``grad_norm``; per-layer ``grad`` (gradient norms)
             on sampled steps (every step in detailed mode); and when measured:
             ``update`` (‖Δw‖/‖w‖ per layer, null for layers without weights), ``lr``,
             ``act`` (per call site: ``kind``, ``dead``/``saturated`` fractions),
             ``logits`` (``absmax``, ``gap``, ``classes``), ``layer_out`` (detailed:
             mean/std/absmax of each layer's output), ``underflow``, ``scale``,
             ``skipped``, ``ranks`` (per-rank losses under torch.distributed)
``finding``  an :class:`~floatguard.events.Event` as ``to_dict()``, written when it fires
``end``      ``step`` (last) and ``findings`` with their final evidence

Non-finite numbers are written as Python's ``json`` writes them (``NaN``,
``Infinity``), which :func:`read_log` reads back. A resumed run appends a new
``start`` whose ``first_step`` continues the numbering. Lines that do not parse
(the last one of a crashed run may be cut short) are skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..events import Event

__all__ = ["LogWriter", "RunLog", "last_step", "read_log"]


class LogWriter:
    """Appends records to a JSONL file and flushes after each one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def last_step(path: str | os.PathLike[str]) -> int | None:
    """The last ``step`` recorded in ``path`` (reads the file's tail), or None."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return None
    size = p.stat().st_size
    chunk = 1 << 16
    with open(p, "rb") as fh:
        while True:
            start = max(0, size - chunk)
            fh.seek(start)
            lines = fh.read().decode("utf-8", "replace").splitlines()
            if start > 0:
                lines = lines[1:]  # first line may be partial
            for line in reversed(lines):
                rec = _parse(line)
                if rec is not None and rec.get("type") in ("step", "end") and rec.get("step") is not None:
                    return int(rec["step"])
            if start == 0:
                return None
            chunk *= 4


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


@dataclass
class RunLog:
    """A parsed log: every session's ``start``, the steps in order, the findings."""

    starts: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Event] = field(default_factory=list)
    ended: bool = False

    @property
    def layers(self) -> list[str]:
        """Layer names of the last session (the order of per-layer lists)."""
        return list(self.starts[-1].get("layers", [])) if self.starts else []

    def layers_at(self, index: int) -> list[str]:
        """Layer names that apply to ``self.steps[index]``."""
        names: list[str] = []
        for s in self.starts:
            if s.get("first_step", 0) <= self.steps[index]["step"]:
                names = s.get("layers", [])
        return names


def read_log(path: str | os.PathLike[str]) -> RunLog:
    """Parse a monitor log; findings keep their last (``end``) evidence, one per kind and layer."""
    run = RunLog()
    found: dict[tuple[Any, ...], Event] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rec = _parse(line)
            if rec is None:
                continue
            typ = rec.pop("type", None)
            if typ == "start":
                run.starts.append(rec)
            elif typ == "step":
                run.steps.append(rec)
            elif typ == "finding":
                ev = Event.from_dict(rec)
                found.setdefault((ev.kind, ev.module, ev.step), ev)
            elif typ == "closed":  # a finding the run later disproved (the loss left chance): its closing evidence
                ev = Event.from_dict(rec)
                found[(ev.kind, ev.module, ev.step)] = ev
            elif typ == "end":
                run.ended = True
                for d in rec.get("findings", []):
                    ev = Event.from_dict(d)
                    found[(ev.kind, ev.module, ev.step)] = ev
    run.findings = sorted(found.values(), key=lambda e: (e.step if e.step is not None else -1, e.kind))
    return run
