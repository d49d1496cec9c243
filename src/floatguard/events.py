"""The one finding record shared by the sanitizer, the monitor and the linter.

Every tool of floatguard reports what it finds as an :class:`Event`; every output
(terminal, JSON, SARIF, HTML) is a renderer of this record, so a new rule or
symptom adds data, not a printer. The JSON form of a run is::

    {"events": [{"kind": ..., "source": ..., "message": ..., ...}, ...], "first": 0}

Fields (all JSON-serialisable; absent information is ``null``):

=============  ================================================================
``kind``       what was found: ``"overflow"``, ``"nan"``, ``"underflow"``,
               ``"div_by_zero"``, ``"near_overflow"`` (sanitizer), a symptom
               such as ``"exploding_gradient"`` (monitor), or a rule name such
               as ``"log-sum-exp"`` (lint)
``source``     ``"sanitize"``, ``"monitor"`` or ``"lint"``
``message``    one sentence for a person
``severity``   ``"error"``, ``"warning"`` or ``"info"``
``hint``       what to change, naming the stable alternative
``code``       rule ID for lint findings (``"FG101"``)
``file``       user source file; ``line``/``col`` 1-based line, 1-based column
``op``         the operation (``"aten::exp"``, ``"np.exp"``)
``phase``      ``"forward"`` or ``"backward"`` (sanitizer), else null
``module``     module path in the model (``"encoder.layers.1.self_attn"``)
``dtype``      dtype name; ``shape`` list of ints
``stats``      mapping of numbers (min, max, absmax, counts of nan/inf/zeros...)
``step``       training step (monitor), ``rank`` distributed rank
``fix``        replacement text of an autofix (lint), else null
``origin``     sanitizer: ``"produced"`` (this op made the bad value) or
               ``"propagated"`` (it only passed on a bad input), else null
``forward_op`` sanitizer, backward findings: the forward op whose gradient
               failed (``"aten::sqrt"``), else null
=============  ================================================================
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["SEVERITIES", "SOURCES", "Event", "Report"]

SEVERITIES = ("error", "warning", "info")
SOURCES = ("sanitize", "monitor", "lint")


@dataclass
class Event:
    """One finding: what, where, the evidence, and what to do about it."""

    kind: str
    source: str
    message: str
    severity: str = "error"
    hint: str | None = None
    code: str | None = None
    file: str | None = None
    line: int | None = None
    col: int | None = None
    op: str | None = None
    phase: str | None = None
    module: str | None = None
    dtype: str | None = None
    shape: list[int] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    rank: int | None = None
    fix: str | None = None
    origin: str | None = None
    forward_op: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"Event: 'source' must be one of {SOURCES}, got {self.source!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"Event: 'severity' must be one of {SEVERITIES}, got {self.severity!r}")
        if self.shape is not None:
            self.shape = [int(s) for s in self.shape]

    @property
    def location(self) -> str:
        """``file:line:col`` as far as known (``"<unknown>"`` when nothing is); in a notebook
        ``file:cell N:line:col`` (``stats["cell"]``; the line counts within the cell)."""
        cell = f"cell {self.stats['cell']}" if "cell" in self.stats else None
        parts = [str(p) for p in (self.file, cell, self.line, self.col) if p is not None]
        return ":".join(parts) if parts else "<unknown>"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (numbers in ``stats`` become Python floats/ints)."""
        d = asdict(self)
        d["stats"] = {k: _plain(v) for k, v in self.stats.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Inverse of :meth:`to_dict`; unknown keys are refused by name."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Event.from_dict: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def _plain(v: Any) -> Any:
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if hasattr(v, "item"):  # NumPy / torch / JAX scalars
        return v.item()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return str(v)


@dataclass
class Report:
    """The events of one run, in order; ``first`` indexes the first error (or None)."""

    events: list[Event] = field(default_factory=list)

    @property
    def first(self) -> int | None:
        for i, e in enumerate(self.events):
            if e.severity == "error":
                return i
        return 0 if self.events else None

    def add(self, event: Event) -> None:
        self.events.append(event)

    def to_dict(self) -> dict[str, Any]:
        return {"events": [e.to_dict() for e in self.events], "first": self.first}

    def to_json(self, path: str | None = None, *, indent: int | None = 2) -> str:
        """The JSON text of the report; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=True)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        return cls([Event.from_dict(e) for e in data.get("events", [])])
