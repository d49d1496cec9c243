"""Renderers of lint findings: text, JSON, SARIF 2.1.0 and GitHub workflow annotations.

Each takes the list of :class:`~floatguard.events.Event` and returns a string. A finding's
fix is rendered from its :class:`~floatguard.events.Fix`: every format shows the same edits
(each with its own range, the imports the fix adds among them), the edits ``--fix`` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..events import Event
from .rules import all_rules

__all__ = ["render", "render_github", "render_json", "render_sarif", "render_text"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def _cell(e: Event) -> str:
    """``cell N:`` for a finding in a notebook (its line counts within the cell), as ruff prints it."""
    return f"cell {e.cell}:" if e.cell is not None else ""


def render_text(events: list[Event], *, fixed: int = 0, unsafe: bool = False) -> str:
    """ruff-style ``path:line:col: CODE message`` lines (under a finding with a fix, its edits indented)
    and a summary line."""
    out: list[str] = []
    for e in events:
        out.append(f"{e.location}: {e.code} {e.message}")
        if e.fix is not None:
            out.append(f"    {e.fix.describe()}")
    safe = sum(1 for e in events if e.fix is not None and e.fix.applicability == "safe")
    more = sum(1 for e in events if e.fix is not None and e.fix.applicability == "unsafe")
    if events:
        n = len(events)
        summary = f"Found {n} error{'s' if n != 1 else ''}"
        if fixed:
            summary += f" ({fixed} fixed, {n} remaining)"
        out.append(summary + ".")
        if safe or (more and unsafe):
            out.append(f"[*] {safe + (more if unsafe else 0)} fixable with the --fix option"
                       + (f" ({more} hidden fixes can be enabled with the --unsafe-fixes option)."
                          if more and not unsafe else "."))
        elif more:
            out.append(f"No fixes available ({more} hidden fixes can be enabled with the --unsafe-fixes option).")
    elif fixed:
        out.append(f"Found {fixed} error{'s' if fixed != 1 else ''} ({fixed} fixed, 0 remaining).")
    return "\n".join(out) + ("\n" if out else "")


def render_json(events: list[Event]) -> str:
    """A JSON list of the findings in the shared record shape (:meth:`Event.to_dict`)."""
    return json.dumps([e.to_dict() for e in events], indent=2) + "\n"


def _uri(path: str | None) -> str:
    if not path:
        return "unknown"
    p = Path(path)
    if p.is_absolute():
        return p.as_uri()
    return p.as_posix()


def render_sarif(events: list[Event]) -> str:
    """A SARIF 2.1.0 log with one run, the rule catalogue as ``tool.driver.rules``."""
    from .. import __version__

    rules = list(all_rules())
    index = {r.code: i for i, r in enumerate(rules)}
    driver_rules = [
        {
            "id": r.code,
            "name": r.name,
            "shortDescription": {"text": r.summary()},
            "fullDescription": {"text": r.explain()},
            "help": {"text": r.explain(), "markdown": f"```\n{r.explain()}\n```"},
            "defaultConfiguration": {"level": _LEVEL.get(r.severity, "warning")},
            "properties": {"tags": list(r.categories)},
        }
        for r in rules
    ]
    results = []
    for e in events:
        region: dict[str, int] = {"startLine": e.line or 1, "startColumn": e.col or 1}
        if e.end_line is not None and e.end_col is not None:
            region["endLine"], region["endColumn"] = e.end_line, e.end_col
        loc = {"physicalLocation": {"artifactLocation": {"uri": _uri(e.file)}, "region": region}}
        res: dict[str, object] = {
            "ruleId": e.code or e.kind,
            "level": _LEVEL.get(e.severity, "warning"),
            "message": {"text": f"{_cell(e)} ".lstrip() + e.message + (f" ({e.hint})" if e.hint else "")},
            "locations": [loc],
        }
        if e.code in index:
            res["ruleIndex"] = index[e.code]
        # the same edits --fix applies: the replacement and the imports it adds (SARIF has no notebook cells:
        # a fix counted in cells is shown in the message only)
        if e.fix is not None and all(d.cell is None for d in e.fix.edits):
            res["fixes"] = [{
                "description": {"text": e.fix.title},
                "artifactChanges": [{
                    "artifactLocation": {"uri": _uri(e.file)},
                    "replacements": [{"deletedRegion": {"startLine": d.line, "startColumn": d.col,
                                                        "endLine": d.end_line, "endColumn": d.end_col},
                                      "insertedContent": {"text": d.text}} for d in e.fix.edits],
                }],
                "properties": {"applicability": e.fix.applicability},
            }]
        results.append(res)
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "floatguard", "version": __version__,
                                "informationUri": "https://pypi.org/project/floatguard/", "rules": driver_rules}},
            "results": results,
            "columnKind": "unicodeCodePoints",
        }],
    }
    return json.dumps(log, indent=2) + "\n"


def _gh_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def render_github(events: list[Event]) -> str:
    """GitHub Actions workflow commands (``::error file=...,line=...::message``)."""
    out = []
    for e in events:
        level = {"error": "error", "warning": "warning", "info": "notice"}.get(e.severity, "warning")
        props = [f"file={_gh_escape(e.file or '', True)}", f"line={e.line or 1}", f"col={e.col or 1}"]
        if e.end_line is not None and e.end_col is not None:
            props += [f"endLine={e.end_line}", f"endColumn={e.end_col}"]
        props.append(f"title={_gh_escape(f'{e.code} ({e.kind})', True)}")
        text = f"{_cell(e)} {e.code} {e.message}".lstrip() + (f"\n{e.fix.describe()}" if e.fix is not None else "")
        out.append(f"::{level} {','.join(props)}::{_gh_escape(text)}")
    return "\n".join(out) + ("\n" if out else "")


def render(events: list[Event], fmt: str, *, fixed: int = 0, unsafe: bool = False) -> str:
    """Dispatch on ``fmt`` (``text``, ``json``, ``sarif``, ``github``)."""
    if fmt == "json":
        return render_json(events)
    if fmt == "sarif":
        return render_sarif(events)
    if fmt == "github":
        return render_github(events)
    return render_text(events, fixed=fixed, unsafe=unsafe)
