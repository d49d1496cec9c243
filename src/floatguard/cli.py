"""The ``floatguard`` command line: ``floatguard <command> [options]`` (demo, run, lint, report).

Each command is one :class:`Command` in :data:`COMMANDS`: its name, a one-line
help, a function adding its options to its subparser, and a handler returning
the exit code. Adding a command is appending one entry; handlers import their
module lazily, so ``floatguard --version`` stays fast.

Exit codes: 0 success, 2 usage error (argparse's convention); a command may
document others (``demo`` exits 1 if a floatguard result fails its check).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``floatguard <name> ...``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


# -- demo ---------------------------------------------------------------------------
def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    """``demo`` takes no options."""


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo()["summary"]
    return 1 if summary["stable_failed"] else 0


# -- lint ---------------------------------------------------------------------------
def _lint_arguments(parser: argparse.ArgumentParser) -> None:
    from .lint.cli import add_arguments

    add_arguments(parser)


def _lint(args: argparse.Namespace) -> int:
    from .lint.cli import run

    return run(args)


# -- run --------------------------------------------------------------------------------
def _run_arguments(parser: argparse.ArgumentParser) -> None:
    from .sanitize.cli import add_arguments

    add_arguments(parser)
    parser.add_argument("--monitor", action="store_true",
                        help="also attach the training monitor (floatguard.monitor.attach_global)")


def _attach_monitor() -> tuple[Any, str | None]:
    """``(handle, None)`` from ``floatguard.monitor.attach_global()``, or ``(None, why not)``."""
    try:
        from . import monitor
    except ImportError as exc:
        return None, f"--monitor needs floatguard.monitor, which cannot be imported ({exc})"
    attach = getattr(monitor, "attach_global", None)
    if attach is None:
        return None, "--monitor needs floatguard.monitor.attach_global(), which this installation does not provide"
    return attach(), None


def _run(args: argparse.Namespace) -> int:
    """The sanitizer runs the script; with ``--monitor`` the training monitor watches it too."""
    from .sanitize.cli import run

    return run(args, attach=_attach_monitor if getattr(args, "monitor", False) else None)


# -- report -----------------------------------------------------------------------------
def _report_arguments(parser: argparse.ArgumentParser) -> None:
    """``floatguard report FILE [-o report.html]``: a monitor's JSONL log, or a findings file of any tool."""
    parser.add_argument("log", metavar="FILE",
                        help="a monitor's JSONL log (Monitor(..., log=PATH)), or the JSON findings of "
                        "`floatguard run --json` or `floatguard lint --format json`")
    parser.add_argument("-o", "--output", default=None,
                        help="HTML file to write (default: the log's name with .html)")
    parser.add_argument("--title", default=None, help="title of the page")
    parser.add_argument("-q", "--quiet", action="store_true", help="no terminal summary")


def _report(args: argparse.Namespace) -> int:
    """Write the HTML report of ``args.log`` and print its summary.

    A monitor log (training curves and findings) renders through
    :mod:`floatguard.monitor.report`; the findings of ``floatguard run --json`` /
    ``report.to_json()`` (``{"events": [...], "first": i}``) or ``floatguard lint --format json``
    through :mod:`floatguard.reporting`. Exit codes: 0 when the report is written (whatever the
    findings), 1 when the file cannot be read or (a monitor log) holds no step.
    """
    from rich.console import Console

    from .monitor.log import is_monitor_log, read_log

    err = Console(stderr=True)
    if not os.path.isfile(args.log):
        err.print(f"floatguard report: no such log file: {args.log}")
        return 1
    from .reporting import events_html, load_events
    from .reporting import print_summary as print_events

    try:
        found = None if is_monitor_log(args.log) else load_events(args.log)
    except (OSError, ValueError) as exc:
        err.print(f"floatguard report: cannot read {args.log}: {exc}")
        return 1
    output = args.output or os.path.splitext(args.log)[0] + ".html"
    if found is not None:
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
    lines = f"{run.skipped} line{'s' if run.skipped != 1 else ''}"
    if not run.steps:
        err.print(f"floatguard report: {args.log} records no training step"
                  + (f" ({lines} skipped: not a valid record)" if run.skipped else ""))
        return 1
    if run.skipped:
        err.print(f"floatguard report: {args.log}: {lines} skipped (cut short, not UTF-8, not JSON, or fields of the "
                  "wrong type); the rest is rendered", soft_wrap=True, markup=False)
    from .monitor.report import print_summary, render_html

    with open(output, "w", encoding="utf-8") as fh:
        fh.write(render_html(run, title=args.title, source=args.log))
    if not args.quiet:
        con = Console(file=sys.stdout)
        print_summary(run.findings, con, steps=len(run.steps))
        con.print(f"report: {output}")
    return 0


COMMANDS: list[Command] = [
    Command("demo", "show each floating-point failure (overflow, underflow, NaN) next to its floatguard cure",
            _demo_arguments, _demo),
    Command("run", "run a Python script with the sanitizer: name the first op that overflows, underflows or "
            "makes NaN", _run_arguments, _run),
    Command("lint", "find numerically unstable expressions in Python source (ruff-style, with --fix)",
            _lint_arguments, _lint),
    Command("report", "render a training-monitor log (JSONL) or a findings file (floatguard run --json, "
            "floatguard lint --format json) as one self-contained HTML page, with a terminal summary",
            _report_arguments, _report),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="floatguard",
        description="Stable, accurate neural-network numerics, and tools that make instability visible.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="<command>")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(handler=cmd.handler)
    return parser


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        return _exit_code(exc.code)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except BrokenPipeError:  # output closed early, e.g. `floatguard demo | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
