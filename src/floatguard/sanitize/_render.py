"""The terminal form of a finding: a rich panel (what, where, the evidence, what to do)."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..events import Event, Report

__all__ = ["event_panel", "print_event", "print_report"]

_STATS = ("min", "max", "absmax", "nan", "inf", "zeros", "subnormal", "numel", "value")
_STYLE = {"error": "red", "warning": "yellow", "info": "blue"}


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


def _stats_table(stats: dict[str, object]) -> Table | None:
    groups: dict[str, dict[str, object]] = {}
    for key, v in stats.items():
        if "." not in key:
            continue
        who, what = key.split(".", 1)
        groups.setdefault(who, {})[what] = v
    if not groups:
        return None
    cols = [c for c in _STATS if any(c in g for g in groups.values())]
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("tensor", justify="left", no_wrap=True)
    for c in cols:
        table.add_column(c, justify="right")
    for who, g in groups.items():
        table.add_row(who, *[_fmt(g[c]) if c in g else "" for c in cols])
    return table


def event_panel(e: Event) -> Panel:
    """A panel: title = kind and op; body = where, tensor, stats table, hint."""
    where = e.op or ("the gradients" if e.phase == "backward" else "the step's result" if e.phase == "forward"
                     else "?")
    title = f"floatguard: {e.kind} in {where}" + (f" (step {e.step})" if e.step is not None and not e.op else "")
    lines = Text()
    lines.append(e.message + "\n", style="bold")
    phase = e.phase or "?"
    if e.phase == "backward" and e.forward_op:
        phase = f"backward (gradient of {e.forward_op})"
    rows = [("where", e.location if e.file else "<unknown>"), ("phase", phase)]
    if e.module:
        rows.append(("module", e.module))
    if e.dtype or e.shape is not None:
        rows.append(("tensor", f"{e.dtype or '?'}{list(e.shape) if e.shape is not None else ''}"))
    if e.origin:
        rows.append(("origin", e.origin))
    if e.rank is not None:
        rows.append(("rank", str(e.rank)))
    if e.step is not None:
        rows.append(("step", str(e.step)))
    for k, v in rows:
        lines.append(f"{k:>7}  ", style="dim")
        lines.append(v + "\n")
    parts: list[object] = [lines]
    table = _stats_table(e.stats)
    if table is not None:
        parts.append(table)
    if e.hint:
        parts.append(Text("\nhint: ", style="bold green") + Text(e.hint))
    return Panel(Group(*parts), title=title, title_align="left", border_style=_STYLE.get(e.severity, "red"))


def _console(stream: TextIO | None) -> Console:
    return Console(file=stream if stream is not None else sys.stderr, width=None if stream is None else 110)


def print_event(e: Event, stream: TextIO | None = None) -> None:
    """Print the panel of one finding (stderr by default)."""
    _console(stream).print(event_panel(e))


def print_report(report: Report, stream: TextIO | None = None, *, limit: int = 3) -> None:
    """The first ``limit`` events as panels, then a one-line count per kind."""
    con = _console(stream)
    first = report.first
    shown = report.events[first:first + limit] if first is not None else []
    for e in shown:
        con.print(event_panel(e))
    counts: dict[str, int] = {}
    for e in report.events:
        counts[f"{e.kind} ({e.severity})"] = counts.get(f"{e.kind} ({e.severity})", 0) + 1
    if counts:
        con.print("floatguard: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
