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
(the last one of a crashed run may be cut short; bad bytes; fields of the wrong
type) are skipped and counted (:attr:`RunLog.skipped`).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..events import Event

__all__ = ["LogWriter", "RunLog", "is_monitor_log", "last_step", "read_log"]


class LogWriter:
    """Appends records to a JSONL file and flushes after each one.

    Appending to a log whose last line was cut short (a crashed run) starts on a fresh
    line, so the torn line stays the only loss. A write that fails (a full disk, a file
    size limit, ``/dev/full``) never stops training: it warns once, naming the file,
    and the log stops there (the monitor's findings stay complete in memory).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.failed: OSError | None = None
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = _ends_torn(self.path)
            self._fh: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        except OSError as exc:
            raise OSError(exc.errno, f"Monitor: cannot open the log {str(self.path)!r}: {exc.strerror or exc}") \
                from exc
        if torn:
            self._put("\n")

    def write(self, record: dict[str, Any]) -> None:
        self._put(json.dumps(record, separators=(",", ":")) + "\n")

    def _put(self, text: str) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write(text)
            self._fh.flush()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.failed = exc
        fh, self._fh = self._fh, None
        warnings.warn(f"floatguard monitor: cannot write the log {str(self.path)!r} ({exc.strerror or exc}); "
                      "training goes on, the log stops here (Monitor.findings stays complete)",
                      RuntimeWarning, stacklevel=4)
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()  # its unwritten buffer may fail again

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError as exc:
                self._fh = None
                self._fail(exc)


def _ends_torn(path: Path) -> bool:
    """Whether ``path`` exists and its last byte is not a newline (a line cut short)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:
        return False


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


def is_monitor_log(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with a monitor record (JSON lines tolerate a bad line further on)."""
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except ValueError:
                    return False
                return isinstance(rec, dict) and rec.get("type") in ("start", "step", "finding", "closed", "end")
    return False


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
    skipped: int = 0  # lines that were not a valid record (a torn last line, bad bytes, wrong types)

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
    """Parse a monitor log; findings keep their last (``end``) evidence, one per kind and layer.

    A line that is not a record — cut short by a crash, not UTF-8, not JSON, or a record
    whose fields have the wrong types (``"step": "x"``) — is skipped and counted in
    :attr:`RunLog.skipped`; the rest of the log is read.
    """
    run = RunLog()
    found: dict[tuple[Any, ...], Event] = {}
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                rec = _parse(raw.decode("utf-8"))
            except UnicodeDecodeError:
                rec = None
            if rec is None or not _take(run, found, rec):
                run.skipped += 1
    run.findings = sorted(found.values(), key=lambda e: (e.step if e.step is not None else -1, e.kind))
    return run


def _is_num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _valid_step(rec: dict[str, Any]) -> bool:
    if not _is_int(rec.get("step")) or not _is_num(rec.get("loss")) or not _is_num(rec.get("grad_norm")):
        return False
    for key in ("grad", "update"):
        if key in rec and not (isinstance(rec[key], list) and all(_is_num(v) for v in rec[key])):
            return False
    for key in ("act", "logits", "layer_out", "underflow"):
        if key in rec and not isinstance(rec[key], dict):
            return False
    if not all(isinstance(a, dict) for a in rec.get("act", {}).values()):
        return False
    return _is_num(rec.get("lr"))


def _valid_start(rec: dict[str, Any]) -> bool:
    layers = rec.get("layers", [])
    return (isinstance(layers, list) and all(isinstance(n, str) for n in layers)
            and _is_int(rec.get("first_step", 0)) and isinstance(rec.get("thresholds", {}), dict))


def _event(d: Any) -> Event:
    """An event read back from the log; ValueError when its fields have the wrong types."""
    if not isinstance(d, dict):
        raise ValueError("an event is not a JSON object")
    ev = Event.from_dict(d)
    texts = (ev.kind, ev.message)
    optional = (ev.hint, ev.module, ev.op, ev.file, ev.phase)
    if (not all(isinstance(t, str) for t in texts) or not all(t is None or isinstance(t, str) for t in optional)
            or not isinstance(ev.stats, dict) or not (ev.step is None or _is_int(ev.step))
            or not (ev.line is None or _is_int(ev.line))):
        raise ValueError("an event with fields of the wrong type")
    return ev


def _take(run: RunLog, found: dict[tuple[Any, ...], Event], rec: dict[str, Any]) -> bool:
    """Add one record to ``run``; False when it is not a valid record (the caller counts it)."""
    typ = rec.pop("type", None)
    try:
        if typ == "start":
            if not _valid_start(rec):
                return False
            run.starts.append(rec)
        elif typ == "step":
            if not _valid_step(rec):
                return False
            run.steps.append(rec)
        elif typ == "finding":
            ev = _event(rec)
            found.setdefault((ev.kind, ev.module, ev.step), ev)
        elif typ == "closed":  # a finding the run later disproved (the loss left chance): its closing evidence
            ev = _event(rec)
            found[(ev.kind, ev.module, ev.step)] = ev
        elif typ == "end":
            evs = [_event(d) for d in rec.get("findings", [])]
            run.ended = True
            for ev in evs:
                found[(ev.kind, ev.module, ev.step)] = ev
        else:
            return False
    except (TypeError, ValueError, KeyError, AttributeError):  # an event with fields of the wrong type
        return False
    return True
