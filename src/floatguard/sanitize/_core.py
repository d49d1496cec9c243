"""What every backend of the sanitizer shares: the error, the actions and the session.

A :class:`Session` receives the :class:`~floatguard.events.Event` of each finding and
applies the action: ``"raise"`` prints a panel and raises :class:`NumericalError` at
the first error, ``"warn"`` prints a panel (once per place) and issues a
:class:`NumericalWarning`, ``"record"`` only keeps the event in :attr:`Session.report`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import replace
from typing import Any, TextIO

from ..events import Event, Report

__all__ = ["ACTIONS", "KINDS", "LEVELS", "NumericalError", "NumericalWarning", "Session"]

ACTIONS = ("raise", "warn", "record")
LEVELS = ("op", "step")
KINDS = ("nan", "overflow", "div_by_zero", "underflow", "near_overflow")


class NumericalError(FloatingPointError):
    """A floating-point failure found by the sanitizer.

    ``event`` is the finding that stopped the run (the first error), ``report`` every
    event of the run so far (``report.to_json()`` gives the shared JSON shape).
    """

    def __init__(self, event: Event, report: Report | None = None) -> None:
        self.event = event
        self.report = report if report is not None else Report([event])
        super().__init__(summary(event))

    @property
    def events(self) -> list[Event]:
        """All events of the run (the stopping one included)."""
        return self.report.events

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (DDP, multiprocessing)
        return (NumericalError, (self.event, self.report))


class NumericalWarning(RuntimeWarning):
    """Issued for each finding under ``action="warn"``."""


def summary(e: Event) -> str:
    """One line: what, where (op, phase, module) and the user's source line."""
    where = [e.op or "?"]
    if e.phase == "backward" and e.forward_op:
        where.append(f"backward of {e.forward_op}")
    elif e.phase:
        where.append(e.phase)
    if e.module:
        where.append(f"module {e.module}")
    if e.rank is not None:
        where.append(f"rank {e.rank}")
    loc = f" at {e.location}" if e.file else ""
    return f"{e.kind}: {e.message} [{', '.join(where)}]{loc}"


def _dist_rank() -> int | None:
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except Exception:  # pragma: no cover - a half-initialised process group
        return None
    return None


class Session:
    """The findings of one :func:`~floatguard.sanitize.detect` (or ``guard``, or ``floatguard run``)."""

    def __init__(
        self,
        action: str = "raise",
        *,
        report: Report | None = None,
        stream: TextIO | None = None,
        quiet: bool = False,
        max_propagated: int = 20,
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        self.action = action
        self.report = report if report is not None else Report()
        self.stream = stream
        self.quiet = quiet
        self.max_propagated = max_propagated
        self.counts: Counter[str] = Counter()  # per kind, including deduplicated repeats
        self.stats: Counter[str] = Counter()  # e.g. scattered underflow, ops checked
        self._shown: dict[tuple[Any, ...], Event] = {}
        self._registry: dict[Any, Any] = {}
        self._propagated = 0
        self.defer_raise = False  # distributed: ranks agree before raising
        self.pending: NumericalError | None = None
        # a forked child (a DataLoader worker, say) inherits the session: its findings come
        # back to this process through files in this folder (made only by a child that finds)
        self._pid = os.getpid()
        self._spool = os.path.join(tempfile.gettempdir(), f"floatguard-{self._pid}-{id(self):x}")

    # -- queries ------------------------------------------------------------------
    @property
    def errors(self) -> list[Event]:
        return [e for e in self.report.events if e.severity == "error"]

    @property
    def has_error(self) -> bool:
        return any(e.severity == "error" for e in self.report.events)

    # -- the one entry point ---------------------------------------------------------
    def emit(self, event: Event, *, dedupe: bool = True) -> None:
        """Record ``event`` and apply the action (may raise :class:`NumericalError`).

        A finding at a place already reported (same kind, op, phase, module, file and
        line — a loop) only counts in ``stats["repeats"]`` of the first event (replaced by one that counts it:
        events are frozen).
        """
        if event.rank is None and (rank := _dist_rank()) is not None:
            event = replace(event, rank=rank)
        key = (event.kind, event.op, event.phase, event.file, event.line, event.module, event.severity)
        self.counts[event.kind] += 1
        seen = self._shown.get(key)
        if dedupe and seen is not None:
            again = replace(seen, stats={**seen.stats, "repeats": int(seen.stats.get("repeats") or 0) + 1})
            self._shown[key] = again
            events = self.report.events
            for i in range(len(events) - 1, -1, -1):
                if events[i] is seen:
                    events[i] = again
                    break
            if self.pending is not None and self.pending.event is seen:
                self.pending.event = again
            return
        if event.origin == "propagated" and event.severity != "error":
            self._propagated += 1
            if self._propagated > self.max_propagated:
                self.stats["propagated_not_recorded"] += 1
                return
        self._shown[key] = event
        self.report.add(event)
        if os.getpid() != self._pid:
            self._to_parent(event)
        if self.action == "record" or event.severity == "info":
            return
        if self.action == "raise" and event.severity == "error":
            err = NumericalError(event, self.report)
            if self.defer_raise:
                if self.pending is None:
                    self.pending = err
                return
            self.show(event)
            raise err
        self.show(event)
        if self.action == "warn":
            warnings.warn_explicit(summary(event), NumericalWarning, event.file or "<floatguard>", event.line or 0,
                                   registry=self._registry)

    # -- forked children --------------------------------------------------------------
    def _to_parent(self, event: Event) -> None:
        """In a forked child: append ``event`` (with the child's pid in its stats) to the spool folder."""
        event = replace(event, stats={**event.stats, "pid": os.getpid()})
        try:
            os.makedirs(self._spool, exist_ok=True)
            with open(os.path.join(self._spool, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(event.to_dict(), allow_nan=True) + "\n")
        except OSError:  # pragma: no cover - an unwritable temp folder: the child's panel still shows it
            pass

    def collect_children(self) -> list[Event]:
        """Add to the report the findings made in forked children (DataLoader workers) and return them.

        Called when the session ends; a child's own panel and error were already shown in the child.
        """
        if os.getpid() != self._pid or not os.path.isdir(self._spool):
            return []
        found: list[Event] = []
        for name in sorted(os.listdir(self._spool)):
            with open(os.path.join(self._spool, name), encoding="utf-8") as fh:
                found += [Event.from_dict(json.loads(line)) for line in fh if line.strip()]
        shutil.rmtree(self._spool, ignore_errors=True)
        for e in found:
            self.counts[e.kind] += 1
            self.report.add(e)
        return found

    def show(self, event: Event) -> None:
        """Print the rich panel of ``event`` on stderr (unless quiet)."""
        if self.quiet:
            return
        from ..reporting import print_event

        print_event(event, stream=self.stream)
