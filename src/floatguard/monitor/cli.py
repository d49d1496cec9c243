"""``floatguard report FILE [-o report.html]``: render findings as HTML and summarize them.

``FILE`` is a training monitor's JSONL log (training curves and findings), or a
findings file of any floatguard tool: ``floatguard run --json`` / ``report.to_json()``
(``{"events": [...], "first": i}``) or ``floatguard lint --format json``.

Exit codes: 0 when the report is written (whatever the findings), 1 when the file
cannot be read or (a monitor log) holds no step, 2 for usage errors (argparse).
"""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console

__all__ = ["add_report_arguments", "run_report"]


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``floatguard report``."""
    parser.add_argument("log", metavar="FILE",
                        help="a monitor's JSONL log (Monitor(..., log=PATH)), or the JSON findings of "
                        "`floatguard run --json` or `floatguard lint --format json`")
    parser.add_argument("-o", "--output", default=None,
                        help="HTML file to write (default: the log's name with .html)")
    parser.add_argument("--title", default=None, help="title of the page")
    parser.add_argument("-q", "--quiet", action="store_true", help="no terminal summary")


def _is_monitor_log(path: str) -> bool:
    """Whether ``path`` starts with a monitor record (JSON lines tolerate a bad line further on)."""
    import json

    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except ValueError:
                    return False
                return isinstance(rec, dict) and rec.get("type") in ("start", "step", "finding", "closed", "end")
    return False


def run_report(args: argparse.Namespace) -> int:
    """Write the HTML report and print the summary; returns the exit code."""
    from .log import read_log
    from .report import print_summary, render_html

    err = Console(stderr=True)
    if not os.path.isfile(args.log):
        err.print(f"floatguard report: no such log file: {args.log}")
        return 1
    from ..reporting import events_html, load_events
    from ..reporting import print_summary as print_events

    try:
        found = None if _is_monitor_log(args.log) else load_events(args.log)
    except (OSError, ValueError) as exc:
        err.print(f"floatguard report: cannot read {args.log}: {exc}")
        return 1
    if found is not None:
        output = args.output or os.path.splitext(args.log)[0] + ".html"
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(events_html(found, title=args.title, source=args.log))
        if not args.quiet:
            con = Console(file=sys.stdout)
            print_events(found, con)
            con.print(f"report: {output}")
        return 0
    try:
        run = read_log(args.log)
    except (OSError, ValueError) as exc:
        err.print(f"floatguard report: cannot read {args.log}: {exc}")
        return 1
    skipped = (f" ({run.skipped} line{'s' if run.skipped != 1 else ''} skipped: not a valid record)"
               if run.skipped else "")
    if not run.steps:
        err.print(f"floatguard report: {args.log} records no training step{skipped}")
        return 1
    if skipped:
        err.print(f"floatguard report: {args.log}: {run.skipped} line{'s' if run.skipped != 1 else ''} skipped "
                  "(cut short, not UTF-8, not JSON, or fields of the wrong type); the rest is rendered",
                  soft_wrap=True, markup=False)
    output = args.output or os.path.splitext(args.log)[0] + ".html"
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(render_html(run, title=args.title, source=args.log))
    if not args.quiet:
        con = Console(file=sys.stdout)
        print_summary(run.findings, con, steps=len(run.steps))
        con.print(f"report: {output}")
    return 0
