"""The one reporter of findings: whichever tool made the events, they render here.

* :func:`event_panel` / :func:`print_event` / :func:`print_report`: the terminal form
  of a finding, a rich panel (what, where, the evidence, what to do), used by the
  sanitizer as it runs;
* :func:`load_events`: a findings file — ``{"events": [...], "first": i}`` from
  ``floatguard run --json`` / ``report.to_json()``, or the list of events of
  ``floatguard lint --format json``;
* :func:`print_summary` (a table of all findings, panels of the first errors) and
  :func:`events_html` (one self-contained page): what ``floatguard report`` shows
  for such a file. Monitor logs get their training curves from
  :mod:`floatguard.monitor.report`, which uses the same styles.
"""

from __future__ import annotations

import html
import json
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .events import Event, Report, Stat

__all__ = ["CSS", "detail_rows", "event_panel", "events_html", "fmt_value", "load_events", "print_event",
           "print_report", "print_summary"]

_STATS = ("min", "max", "absmax", "nan", "inf", "zeros", "subnormal", "numel", "value")
_STYLE = {"error": "red", "warning": "yellow", "info": "blue"}


def fmt_value(v: object) -> str:
    """A statistic for a person: 4 significant digits, integers as integers, lists shortened."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v[:6]) + (", ..." if len(v) > 6 else "") + "]"
    return str(v)


def _stats_table(stats: Mapping[str, Stat]) -> Table | None:
    groups: dict[str, dict[str, Stat]] = {}
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
        table.add_row(who, *[fmt_value(g[c]) if c in g else "" for c in cols])
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
    rows += detail_rows(e)
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
    parts: list[RenderableType] = [lines]
    table = _stats_table(e.stats)
    if table is not None:
        parts.append(table)
    if e.hint:
        parts.append(Text("\nhint: ", style="bold green") + Text(e.hint))
    if e.fix is not None:
        parts.append(Text("fix", style="bold green") + Text(e.fix.describe().removeprefix("fix")))
    return Panel(Group(*parts), title=title, title_align="left", border_style=_STYLE.get(e.severity, "red"))


def detail_rows(e: Event) -> list[tuple[str, str]]:
    """The fields a sanitizer's or monitor's finding may add: replay, the op it named, layers, ranks, note."""
    rows: list[tuple[str, str]] = []
    if e.replay:
        rows.append(("replay", e.replay))
    if e.cause is not None:
        c = e.cause
        rows.append(("cause", f"{c.kind} in {c.op or '?'}" + (f" ({c.module})" if c.module else "")
                     + (f" at {c.location}" if c.file else "")))
    if e.layers:
        rows.append(("layers", ", ".join(e.layers[:8]) + (" ..." if len(e.layers) > 8 else "")))
    if e.producer:
        rows.append(("fed by", e.producer))
    if e.ranks:
        rows.append(("ranks", ", ".join(map(str, e.ranks))))
    if e.note:
        rows.append(("note", e.note))
    return rows


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


# -- findings files -------------------------------------------------------------------------------
def load_events(path: str | os.PathLike[str]) -> Report | None:
    """The events of a findings file, or ``None`` when ``path`` is not one (a monitor's JSONL log).

    Raises ``ValueError`` saying what is wrong when the file is neither: empty, not JSON
    (truncated, say), JSON that is not a list of events (``[1, 2, 3]``), or an event whose
    fields are unknown or of the wrong type (``"kind": 123``, ``"stats": [1, 2]``).
    """
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if not text.strip():
        raise ValueError("the file is empty (neither a findings file nor a monitor log)")
    try:
        data = json.loads(text)
    except ValueError as exc:
        first = text.lstrip().split("\n", 1)[0]
        try:
            if isinstance(json.loads(first), dict):
                return None  # JSON lines: a monitor log
        except ValueError:
            pass
        raise ValueError(f"not valid JSON ({exc}): a damaged or truncated findings file") from exc
    if isinstance(data, dict) and "events" not in data:
        return None  # one JSON line: a monitor log
    if isinstance(data, dict):
        items = data["events"]
        if not isinstance(items, list):
            raise ValueError(f"'events' must be a list of events, got {type(items).__name__}")
    elif isinstance(data, list):
        items = data
    else:
        raise ValueError(f"a JSON {type(data).__name__}, not a list of floatguard events")
    events = []
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            raise ValueError(f"event {i} is a {type(d).__name__} ({d!r:.40}), not an object: "
                             "not a list of floatguard events")
        try:  # Event.from_dict names the first field of the wrong type, and reads the older shape too
            events.append(Event.from_dict(d))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"event {i} is not a floatguard event ({exc})") from exc
    return Report(events)


def _where(e: Event) -> str:
    where = e.location if e.file else ""
    bits = [b for b in (e.module, e.phase if e.phase != "forward" else None) if b]
    if e.step is not None:
        bits.append(f"step {e.step}")
    if e.rank is not None:
        bits.append(f"rank {e.rank}")
    return " · ".join([where, *bits]) if where else " · ".join(bits) or "-"


def print_summary(report: Report, console: Console | None = None, *, title: str = "floatguard",
                  panels: int = 3) -> None:
    """One table row per finding, then the panels of the first ``panels`` errors (all findings if none)."""
    con = console or Console()
    events = report.events
    if not events:
        con.print(Text(f"{title}: no findings", style="bold green"))
        return
    table = Table(title=f"{title}: {len(events)} finding{'s' if len(events) != 1 else ''}", title_justify="left")
    for col in ("#", "source", "kind", "op / rule", "where", "what"):
        table.add_column(col, overflow="fold", justify="right" if col == "#" else "left")
    for i, e in enumerate(events):
        table.add_row(str(i), e.source, Text(e.kind, style=_STYLE.get(e.severity, "red")), e.code or e.op or "-",
                      _where(e), e.message)
    con.print(table)
    errors = [e for e in events if e.severity == "error"] or events
    for e in errors[:panels]:
        con.print(event_panel(e))


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1120px;color:#222;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#666}.ok{color:#2e7d32;font-weight:600}
.fig{margin:14px 0 18px}.chart{display:block;width:100%;height:auto;background:#fff}.plot{fill:#fafafa;stroke:#ccc}
.xl{font-size:11px;text-anchor:middle;fill:#555}.empty{font-size:13px;text-anchor:middle;fill:#8a5a00}
.others{fill:#9e9e9e;opacity:.3}.hit{fill:transparent;cursor:pointer}
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;font-size:12px;color:#333;margin:2px 0 0 58px}
.legend i{display:inline-block;width:14px;height:3px;margin-right:5px;vertical-align:middle}
.legend i.oth{height:9px;background:#9e9e9e;opacity:.45}
.marker:target line,.marker:hover line{stroke-width:3;stroke-dasharray:none}.marker:target .mk{font-weight:700}
.card:target,tr:target{outline:2px solid #ffb300;background:#fff8e1}tr.shown td:first-child{font-weight:700}
.num{text-align:right;font-variant-numeric:tabular-nums}
.flist{margin:4px 0;padding-left:20px}.flist a.sev-error{color:#c62828}.flist a.sev-warning{color:#ef6c00}
summary{cursor:pointer;color:#1565c0;margin:6px 0}
.band{fill:#c8e6c9;opacity:.55}.grid{stroke:#e6e6e6}.line{fill:none;stroke-width:1.4}
.ct{font-weight:600;font-size:13px;margin-left:4px}.yt{font-size:10px;text-anchor:end;fill:#555}
.xt{font-size:10px;text-anchor:middle;fill:#555}.yl{font-size:11px;text-anchor:middle;fill:#555}
.lg{font-size:11px;fill:#333}.mk{font-size:10px}.nf{font-size:12px;text-anchor:middle}
.marker line{stroke-dasharray:4 3;stroke-width:1.2}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f5f5f5}
.card{border-left:4px solid #999;padding:8px 12px;margin:10px 0;background:#fafafa}
.card h3{margin:0 0 4px;font-size:15px}.sev-error{border-color:#c62828}.sev-warning{border-color:#ef6c00}
.sev-info{border-color:#1565c0}.ev{font-family:ui-monospace,Menlo,monospace;font-size:12px;color:#444}
.remedy{margin-top:4px}.remedy b{color:#2e7d32}
"""
_SEV_COLOR = {"error": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}


def _stats_html(stats: Mapping[str, Stat]) -> str:
    groups: dict[str, dict[str, Stat]] = {}
    flat: list[str] = []
    for key, v in stats.items():
        if "." in key:
            who, what = key.split(".", 1)
            groups.setdefault(who, {})[what] = v
        else:
            flat.append(f"{html.escape(key)}={html.escape(fmt_value(v))}")
    out = f'<div class="ev">{", ".join(flat)}</div>' if flat else ""
    if groups:
        cols = [c for c in _STATS if any(c in g for g in groups.values())]
        out += ('<table class="ev"><tr><th>tensor</th>' + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
                + "".join(f"<tr><td>{html.escape(who)}</td>"
                          + "".join(f"<td>{html.escape(fmt_value(g[c])) if c in g else ''}</td>" for c in cols)
                          + "</tr>"
                          for who, g in groups.items()) + "</table>")
    return out


def events_html(report: Report, *, title: str | None = None, source: str | None = None) -> str:
    """One self-contained HTML page (no script, nothing loaded) listing the findings of ``report``."""
    events = report.events
    title = title or "floatguard findings"
    counts: dict[str, int] = {}
    for e in events:
        counts[f"{e.kind} ({e.severity})"] = counts.get(f"{e.kind} ({e.severity})", 0) + 1
    sources = sorted({e.source for e in events})
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
             '<meta name="viewport" content="width=device-width,initial-scale=1">'
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{html.escape(source or "")} · {len(events)} finding{"s" if len(events) != 1 else ""}'
             f'{" from " + ", ".join(sources) if sources else ""}</p>']
    if not events:
        parts.append('<p class="ok">No findings.</p></body></html>')
        return "\n".join(parts)
    parts.append("<p>" + ", ".join(f"{html.escape(k)} ×{n}" for k, n in counts.items()) + "</p>")
    parts.append("<h2>Findings</h2><table><tr><th>#</th><th>source</th><th>kind</th><th>op / rule</th>"
                 "<th>where</th><th>what</th></tr>")
    for i, e in enumerate(events):
        parts.append(f'<tr><td><a href="#e{i}">{i}</a></td><td>{e.source}</td>'
                     f'<td style="color:{_SEV_COLOR.get(e.severity)}">{html.escape(e.kind)}</td>'
                     f"<td>{html.escape(e.code or e.op or '-')}</td><td>{html.escape(_where(e))}</td>"
                     f"<td>{html.escape(e.message)}</td></tr>")
    parts.append("</table>")
    for i, e in enumerate(events):
        head = f"{e.kind} in {e.code or e.op}" if (e.code or e.op) else e.kind
        rows = [("where", _where(e))]
        if e.phase == "backward" and e.forward_op:
            rows.append(("phase", f"backward (gradient of {e.forward_op})"))
        if e.dtype or e.shape is not None:
            rows.append(("tensor", f"{e.dtype or '?'}{list(e.shape) if e.shape is not None else ''}"))
        if e.origin:
            rows.append(("origin", e.origin))
        rows += detail_rows(e)
        fix = (f'<div class="remedy"><b>fix</b>{html.escape(e.fix.describe().removeprefix("fix"))}</div>'
               if e.fix is not None else "")
        parts.append(f'<div class="card sev-{e.severity}" id="e{i}"><h3>{html.escape(head)}</h3>'
                     f"<div>{html.escape(e.message)}</div>"
                     + "".join(f'<div class="ev">{k}: {html.escape(v)}</div>' for k, v in rows)
                     + _stats_html(e.stats)
                     + f'<div class="remedy"><b>hint:</b> {html.escape(e.hint or "-")}</div>{fix}</div>')
    parts.append("</body></html>")
    return "\n".join(parts)
