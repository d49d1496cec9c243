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


def _run(args: argparse.Namespace) -> int:
    from .sanitize.cli import run

    return run(args)


# -- report -----------------------------------------------------------------------------
def _report_arguments(parser: argparse.ArgumentParser) -> None:
    from .monitor.cli import add_report_arguments

    add_report_arguments(parser)


def _report(args: argparse.Namespace) -> int:
    from .monitor.cli import run_report

    return run_report(args)


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
