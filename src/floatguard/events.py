"""The one finding record shared by the sanitizer, the monitor and the linter.

Every tool of floatguard reports what it finds as an :class:`Event`, a frozen record built
once with typed fields (a change makes a new event: :func:`dataclasses.replace`). Every
output (terminal, JSON, SARIF, GitHub, HTML) is a renderer of this record, so a new rule
or symptom adds data, not a printer. The JSON form of a run is::

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
``file``       user source file; ``line``/``col`` 1-based line and character column,
               ``end_line``/``end_col`` the end of the span (exclusive column)
``cell``       notebook cell number (from 1) when the lines count within a cell
``op``         the operation (``"aten::exp"``, ``"np.exp"``)
``phase``      ``"forward"``, ``"backward"`` or ``"optimizer"`` (sanitizer), else null
``module``     module path in the model (``"encoder.layers.1.self_attn"``)
``dtype``      dtype name; ``shape`` list of ints
``stats``      mapping of numbers only (min, max, absmax, counts of nan/inf/zeros...)
``step``       training step (monitor), ``rank`` distributed rank
``origin``     sanitizer: ``"produced"`` (this op made the bad value) or
               ``"propagated"`` (it only passed on a bad input), else null
``forward_op`` sanitizer, backward findings: the forward op whose gradient
               failed (``"aten::sqrt"``), else null
``fix``        lint: ``{"title", "applicability", "edits": [{line, col, end_line,
               end_col, cell, text}, ...]}`` — exactly the edits ``--fix`` applies,
               the imports the fix adds among them; else null
``replay``     what the op-level replay of a failed step found, else null
``cause``      the first bad op a replay named, itself an event, else null
``layers``     monitor: the layers involved (beyond ``module``)
``producer``   monitor: the module whose output feeds ``module``
``ranks``      distributed ranks whose values were not finite
``note``       why a finding was closed (the run recovered), else null
=============  ================================================================

Files written before these fields existed (``fix`` as the replacement text, positions,
cell and edits as ``stats`` entries) still read: :meth:`Event.from_dict` maps them.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeAlias, get_args

__all__ = ["SEVERITIES", "SOURCES", "Edit", "Event", "Fix", "Report", "Stat", "apply_edits"]

Severity: TypeAlias = Literal["error", "warning", "info"]
Source: TypeAlias = Literal["sanitize", "monitor", "lint"]
Applicability: TypeAlias = Literal["safe", "unsafe", "display"]
#: a statistic: a number, a flag, or null (not measured)
Stat: TypeAlias = float | int | bool | None

SEVERITIES: tuple[str, ...] = get_args(Severity)
SOURCES: tuple[str, ...] = get_args(Source)
APPLICABILITIES: tuple[str, ...] = get_args(Applicability)


def _int_or_none(owner: str, name: str, v: object) -> None:
    if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
        raise ValueError(f"{owner}: '{name}' must be an integer or null, got {type(v).__name__} {v!r:.40}")


def _str_or_none(owner: str, name: str, v: object, *, required: bool = False) -> None:
    if not isinstance(v, str) and (v is not None or required):
        raise ValueError(f"{owner}: '{name}' must be a string, got {type(v).__name__} {v!r:.40}")


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace the text from ``line:col`` up to ``end_line:end_col`` (1-based lines and character columns, the
    end exclusive) by ``text``; an empty range inserts. ``cell``: the notebook cell the lines count in."""

    line: int
    col: int
    end_line: int
    end_col: int
    text: str
    cell: int | None = None

    def __post_init__(self) -> None:
        for name in ("line", "col", "end_line", "end_col"):
            v = getattr(self, name)
            _int_or_none("Edit", name, v)
            if v is None or v < 1:
                raise ValueError(f"Edit: '{name}' must be a positive integer, got {v!r}")
        if (self.end_line, self.end_col) < (self.line, self.col):
            raise ValueError(f"Edit: the end {self.end_line}:{self.end_col} is before the start {self.line}:{self.col}")
        _str_or_none("Edit", "text", self.text, required=True)
        _int_or_none("Edit", "cell", self.cell)

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "col": self.col, "end_line": self.end_line, "end_col": self.end_col,
                "text": self.text, "cell": self.cell}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Edit:
        if not isinstance(d, Mapping):
            raise ValueError(f"Edit: an edit must be an object, got {type(d).__name__} {d!r:.40}")
        unknown = set(d) - {"line", "col", "end_line", "end_col", "text", "cell"}
        if unknown:
            raise ValueError(f"Edit.from_dict: unknown field(s) {sorted(unknown)}")
        try:
            return cls(d["line"], d["col"], d["end_line"], d["end_col"], d["text"], d.get("cell"))
        except KeyError as exc:
            raise ValueError(f"Edit.from_dict: missing field {exc}") from None


@dataclass(frozen=True, slots=True)
class Fix:
    """A fix as data, as ruff carries it: what it does (``title``), whether ``--fix`` applies it
    (``"safe"``; ``"unsafe"`` needs ``--unsafe-fixes``; ``"display"`` is never applied) and its
    edits of the text: the replacement first, then the insertion of the imports it needs."""

    title: str
    applicability: Applicability
    edits: tuple[Edit, ...]

    def __post_init__(self) -> None:
        _str_or_none("Fix", "title", self.title, required=True)
        if self.applicability not in APPLICABILITIES:
            raise ValueError(f"Fix: 'applicability' must be one of {APPLICABILITIES}, got {self.applicability!r}")
        edits = tuple(self.edits)
        if not edits or not all(isinstance(e, Edit) for e in edits):
            raise ValueError("Fix: 'edits' must be a non-empty sequence of Edit")
        object.__setattr__(self, "edits", edits)

    @property
    def safe(self) -> bool:
        return self.applicability == "safe"

    @property
    def replacement(self) -> str:
        """The text of the main edit (the imports aside)."""
        return self.edits[0].text

    def describe(self) -> str:
        """One line: applicability, title and every edit (``line:col-end_line:end_col -> "text"``,
        ``line:col + "text"`` for an insertion; ``cell N:`` before the lines of a notebook cell)."""
        return f"fix ({self.applicability}): {self.title}: " + "; ".join(_edit_text(d) for d in self.edits)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "applicability": self.applicability,
                "edits": [e.to_dict() for e in self.edits]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fix:
        if not isinstance(d, Mapping):
            raise ValueError(f"Fix: a fix must be an object, got {type(d).__name__} {d!r:.40}")
        unknown = set(d) - {"title", "applicability", "edits"}
        if unknown:
            raise ValueError(f"Fix.from_dict: unknown field(s) {sorted(unknown)}")
        edits = d.get("edits")
        if not isinstance(edits, list):
            raise ValueError(f"Fix: 'edits' must be a list of edits, got {type(edits).__name__}")
        return cls(d.get("title", ""), d.get("applicability", "safe"), tuple(Edit.from_dict(e) for e in edits))


def _at(line: int, col: int, cell: int | None) -> str:
    return f"{f'cell {cell}:' if cell is not None else ''}{line}:{col}"


def _edit_text(d: Edit) -> str:
    where = _at(d.line, d.col, d.cell)
    if (d.line, d.col) != (d.end_line, d.end_col):
        where += f"-{_at(d.end_line, d.end_col, d.cell)}"
        return f"{where} -> {json.dumps(d.text, ensure_ascii=False)}" if d.text else f"{where} deleted"
    return f"{where} + {json.dumps(d.text, ensure_ascii=False)}"


_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    """``text`` with ``edits`` (line/column ranges into ``text``, not overlapping) applied.

    Lines are counted as Python's tokenizer counts them (``\\n``, ``\\r\\n``, ``\\r``);
    insertions at one place go in the given order. A ``ValueError`` when two edits overlap.
    """
    starts = [0]
    for m in _LINE.finditer(text):
        starts.append(m.end())

    def at(line: int, col: int) -> int:
        return min(starts[line - 1] + col - 1, len(text)) if line <= len(starts) else len(text)

    spans = sorted(((at(e.line, e.col), at(e.end_line, e.end_col), k, e.text) for k, e in enumerate(edits)))
    out: list[str] = []
    pos = 0
    for start, end, _, new in spans:
        if start < pos:
            raise ValueError(f"apply_edits: overlapping edits at offset {start}")
        out += [text[pos:start], new]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _plain(v: object) -> Stat:
    """A statistic as a plain Python number (NumPy / torch / JAX scalars by ``.item()``)."""
    if v is None or isinstance(v, bool | int | float):
        return v
    item = getattr(v, "item", None)
    if callable(item) and getattr(v, "ndim", 0) == 0:
        out = item()
        if out is None or isinstance(out, bool | int | float):
            return out
    raise ValueError(f"Event: 'stats' holds numbers only (float, int, bool or null), got {type(v).__name__} "
                     f"{v!r:.40}: give text or names a field of their own")


_STR_FIELDS = ("hint", "code", "file", "op", "phase", "module", "dtype", "origin", "forward_op", "replay",
               "producer", "note")
_INT_FIELDS = ("line", "col", "end_line", "end_col", "cell", "step", "rank")


@dataclass(frozen=True, slots=True)
class Event:
    """One finding: what, where, the evidence, and what to do about it (see the module docstring)."""

    kind: str
    source: Source
    message: str
    severity: Severity = "error"
    hint: str | None = None
    code: str | None = None
    file: str | None = None
    line: int | None = None
    col: int | None = None
    end_line: int | None = None
    end_col: int | None = None
    cell: int | None = None
    op: str | None = None
    phase: str | None = None
    module: str | None = None
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    stats: Mapping[str, Stat] = field(default_factory=dict)
    step: int | None = None
    rank: int | None = None
    origin: str | None = None
    forward_op: str | None = None
    fix: Fix | None = None
    replay: str | None = None
    cause: Event | None = None
    layers: tuple[str, ...] = ()
    producer: str | None = None
    ranks: tuple[int, ...] = ()
    note: str | None = None

    def __post_init__(self) -> None:
        _str_or_none("Event", "kind", self.kind, required=True)
        _str_or_none("Event", "message", self.message, required=True)
        if self.source not in SOURCES:
            raise ValueError(f"Event: 'source' must be one of {SOURCES}, got {self.source!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"Event: 'severity' must be one of {SEVERITIES}, got {self.severity!r}")
        for name in _STR_FIELDS:
            _str_or_none("Event", name, getattr(self, name))
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool) and hasattr(v, "__index__"):
                v = v.__index__()  # a NumPy integer
                object.__setattr__(self, name, v)
            _int_or_none("Event", name, v)
        if not isinstance(self.stats, Mapping):
            raise ValueError(f"Event: 'stats' must be an object of numbers, got {type(self.stats).__name__}")
        object.__setattr__(self, "stats", {str(k): _plain(v) for k, v in self.stats.items()})
        if self.shape is not None:
            if isinstance(self.shape, str | bytes) or not isinstance(self.shape, Iterable):
                raise ValueError(f"Event: 'shape' must be a list of integers or null, got {self.shape!r:.40}")
            object.__setattr__(self, "shape", tuple(_index("shape", s) for s in self.shape))
        object.__setattr__(self, "layers", _strs("layers", self.layers))
        object.__setattr__(self, "ranks", tuple(_index("ranks", r) for r in self.ranks))
        if self.fix is not None and not isinstance(self.fix, Fix):
            raise ValueError(f"Event: 'fix' must be a Fix or None, got {type(self.fix).__name__}")
        if self.cause is not None and not isinstance(self.cause, Event):
            raise ValueError(f"Event: 'cause' must be an Event or None, got {type(self.cause).__name__}")

    @property
    def location(self) -> str:
        """``file:line:col`` as far as known (``"<unknown>"`` when nothing is); in a notebook
        ``file:cell N:line:col`` (the line counts within the cell)."""
        cell = f"cell {self.cell}" if self.cell is not None else None
        parts = [str(p) for p in (self.file, cell, self.line, self.col) if p is not None]
        return ":".join(parts) if parts else "<unknown>"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: tuples become lists, ``fix`` and ``cause`` nested objects."""
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "stats":
                v = dict(v)
            elif f.name in ("shape", "layers", "ranks"):
                v = None if v is None else list(v)
            elif f.name in ("fix", "cause"):
                v = None if v is None else v.to_dict()
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        """Inverse of :meth:`to_dict`; also reads the shape written before the typed fields (``fix`` as text,
        ``stats`` holding positions, cell, edits, the replay's findings). Unknown keys and wrong types are
        refused by name (``ValueError``)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"Event.from_dict: an event must be an object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Event.from_dict: unknown field(s) {sorted(unknown)}")
        kw = dict(d)
        for name in ("kind", "source", "message"):
            if name in kw:
                _str_or_none("Event", name, kw[name], required=True)
        stats = kw.get("stats")
        if stats is not None and not isinstance(stats, Mapping):
            raise ValueError(f"Event: 'stats' must be an object of numbers, got {type(stats).__name__}")
        if "shape" in kw and kw["shape"] is not None and not isinstance(kw["shape"], list):
            raise ValueError(f"Event: 'shape' must be a list of integers or null, got {kw['shape']!r:.40}")
        stats = dict(stats or {})
        fix = kw.get("fix")
        old = not set(kw) & _NEW_FIELDS  # written before the typed fields: positions, cell, edits in stats
        if isinstance(fix, Mapping):
            kw["fix"] = Fix.from_dict(fix)
        elif old and (fix is None or isinstance(fix, str)):
            kw["fix"] = _old_fix(fix, stats, kw)
        if old:
            _old_stats(stats, kw)
        kw["stats"] = stats
        if kw.get("cause") is not None and not isinstance(kw["cause"], Event):
            kw["cause"] = Event.from_dict(kw["cause"])
        for name in ("shape", "layers", "ranks"):
            if isinstance(kw.get(name), list):
                kw[name] = tuple(kw[name])
        try:
            return cls(**kw)
        except TypeError as exc:  # a required field missing
            raise ValueError(f"Event.from_dict: {exc}") from None


def _index(name: str, v: object) -> int:
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise ValueError(f"Event: '{name}' must be a list of integers, got {type(v).__name__} {v!r:.40}")
    return operator.index(v)  # any object with __index__ (checked above)


def _strs(name: str, v: object) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, Iterable) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"Event: '{name}' must be a list of strings, got {v!r:.40}")
    return tuple(v)


# -- the JSON shape written before the typed fields ------------------------------------------------
_NEW_FIELDS = frozenset({"end_line", "end_col", "cell", "replay", "cause", "layers", "producer", "ranks", "note"})
_OLD_FIRST = ("first_op", "first_kind", "first_module", "first_file", "first_line", "first_phase")


def _old_fix(text: str | None, stats: dict[str, Any], kw: dict[str, Any]) -> Fix | None:
    """``fix`` as the replacement text with ``stats["fix_edits"]`` rows ``[line, col, end_line, end_col, text]``."""
    rows = stats.pop("fix_edits", None)
    safe = stats.pop("fix_safe", 1)
    if text is None and not rows:
        return None
    edits: list[Edit] = []
    if isinstance(rows, list):
        for row in rows:
            if not isinstance(row, list) or len(row) != 5:
                raise ValueError(f"Event: an old 'fix_edits' row must be [line, col, end_line, end_col, text], "
                                 f"got {row!r:.40}")
            edits.append(Edit(*row))
    if not edits:  # only the replacement text: the finding's own span, as far as known
        line, col = kw.get("line"), kw.get("col")
        end_line, end_col = stats.get("end_line", line), stats.get("end_col", col)
        if not all(isinstance(v, int) and v >= 1 for v in (line, col, end_line, end_col)):
            return None
        edits.append(Edit(line, col, end_line, end_col, text or ""))  # type: ignore[arg-type]  # checked above
    return Fix(f"Replace with `{edits[0].text}`", "safe" if safe else "unsafe", tuple(edits))


def _old_stats(stats: dict[str, Any], kw: dict[str, Any]) -> None:
    """Move the non-numeric entries of an old ``stats`` into the fields that now hold them."""
    for key, name in (("end_line", "end_line"), ("end_col", "end_col"), ("cell", "cell"), ("replay", "replay"),
                      ("producer", "producer"), ("recovered", "note"), ("layers", "layers"),
                      ("ranks_nonfinite", "ranks")):
        if key in stats and (key in ("end_line", "end_col", "cell") or isinstance(stats[key], str | list)):
            kw.setdefault(name, stats.pop(key))
    if isinstance(stats.get("direction"), str):  # update_ratio: now a flag
        stats["too_high"] = stats.pop("direction") == "high"
    if isinstance(stats.get("pattern"), str):  # oscillating_loss: the message names the pattern
        del stats["pattern"]
    if "first_op" in stats or "first_kind" in stats:
        first = {k: stats.pop(k, None) for k in _OLD_FIRST}
        kw.setdefault("cause", Event(kind=first["first_kind"] or "nan", source="sanitize", message="",
                                     op=first["first_op"], module=first["first_module"], file=first["first_file"],
                                     line=first["first_line"], phase=first["first_phase"]))
    for k, v in stats.items():
        if isinstance(v, str | list | dict):
            raise ValueError(f"Event: 'stats' holds numbers only, got {k!r}: {v!r:.40}")


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


