"""``floatguard run SCRIPT [ARGS...]``: run a script as ``python SCRIPT ARGS`` would, sanitized.

Exit status: the script's own when it fails or calls ``sys.exit`` with a non-zero
code; otherwise 1 when the sanitizer found anything but a ``near_overflow`` warning,
0 when it found nothing. ``--level step --replay``: when a step goes bad, the script
is run again at op level in a new process, which names the op (its findings come
first in the report). ``--json PATH`` writes the report (``{"events": [...],
"first": i}``) whatever the outcome.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys
import traceback
from typing import Any

from ._core import ACTIONS, LEVELS, NumericalError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``floatguard run``; everything after SCRIPT goes to the script."""
    parser.add_argument("--level", choices=LEVELS, default="op",
                        help="op: check every op (default); step: only gradients/parameters per optimizer step")
    parser.add_argument("--action", choices=ACTIONS, default="raise",
                        help="at a finding: raise (stop; default), warn (print and go on), record (only collect)")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH")
    parser.add_argument("--near-overflow", type=float, default=16.0, metavar="F",
                        help="warn when a value comes within a factor F of its dtype's max (default 16; 0: off)")
    parser.add_argument("--no-underflow", action="store_true", help="do not judge underflow")
    parser.add_argument("--replay", action="store_true",
                        help="with --level step: when a step goes bad, run the script again at op level (in a new "
                        "process, stopping at the first finding) to name the op; the script must be deterministic "
                        "(seeded), and its side effects happen twice")
    parser.add_argument("--monitor", action="store_true",
                        help="also attach the training monitor (floatguard.monitor.attach_global)")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a module, like python -m MODULE")
    parser.add_argument("script", nargs="?", help="the Python script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")


def _attach_monitor() -> tuple[Any, str | None]:
    """``(handle, None)`` from ``floatguard.monitor.attach_global()``, or ``(None, why not)``."""
    try:
        from .. import monitor
    except ImportError as exc:
        return None, f"--monitor needs floatguard.monitor, which cannot be imported ({exc})"
    attach = getattr(monitor, "attach_global", None)
    if attach is None:
        return None, "--monitor needs floatguard.monitor.attach_global(), which this installation does not provide"
    return attach(), None


def _print_user_traceback(exc: BaseException, script: str | None) -> None:
    """Like Python's own report of an uncaught exception, without floatguard's and runpy's frames."""
    tb = exc.__traceback__
    if script is not None:
        target = os.path.abspath(script)
        t = tb
        while t is not None and os.path.abspath(t.tb_frame.f_code.co_filename) != target:
            t = t.tb_next
        tb = t or tb
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Handler of ``floatguard run``: returns the exit status."""
    from ._detect import detect

    script: str | None = args.script
    module: str | None = getattr(args, "module", None)
    script_args: list[str] = list(args.args or [])
    if module is not None and script is not None:
        script_args = [script, *script_args]
        script = None
    if script is None and module is None:
        print("floatguard run: error: give a SCRIPT to run (or -m MODULE)", file=sys.stderr)
        return 2
    if script is not None and not os.path.isfile(script):
        print(f"floatguard run: error: can't open file {script!r}: no such file", file=sys.stderr)
        return 2
    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch:
        import torch  # noqa: F401 - the sanitizer hooks into torch before the script imports it
    monitor = None
    if args.monitor:
        monitor, problem = _attach_monitor()
        if problem is not None:
            print(f"floatguard run: error: {problem}", file=sys.stderr)
            return 2

    near = args.near_overflow if args.near_overflow else None
    det = detect(args.level, args.action, torch=has_torch, near_overflow=near, underflow=not args.no_underflow)
    old_argv, old_path0 = sys.argv[:], sys.path[0] if sys.path else None
    code = 0
    try:
        if script is not None:
            sys.argv = [script, *script_args]
            sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        else:
            sys.argv = [module or "", *script_args]
            sys.path.insert(0, os.getcwd())
        with det:
            if script is not None:
                runpy.run_path(script, run_name="__main__")
            else:
                runpy.run_module(module or "", run_name="__main__", alter_sys=True)
    except NumericalError:
        code = 1  # its panel is printed already
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:  # the script's own failure, reported as Python would
        _print_user_traceback(exc, script)
        code = 1
    finally:
        sys.argv = old_argv
        if sys.path and old_path0 is not None and sys.path[0] != old_path0:
            del sys.path[0]
    report = det.report
    if monitor is not None:  # its findings join the report (the same record shape)
        close = getattr(monitor, "close", None)
        found = close() if close is not None else None
        for e in found or []:
            report.add(e)
    errors = [e for e in report.events if e.severity == "error"]
    if errors and args.level == "step" and getattr(args, "replay", False):
        code = max(code, _replay(args, script, module, script_args, report))
        errors = [e for e in report.events if e.severity == "error"]
    if errors and code == 0:
        code = 1
    if report.events and args.action != "raise":
        from ..reporting import print_report

        print_report(report, limit=1 if args.action == "record" else 0)
    if args.json:
        report.to_json(args.json)
    return code


def _replay(args: argparse.Namespace, script: str | None, module: str | None, script_args: list[str],
            report: Any) -> int:
    """Run the script again at op level in a new process; its findings go first in ``report``."""
    import subprocess
    import tempfile

    from ..events import Report

    cmd = [sys.executable, "-m", "floatguard", "run", "--level", "op", "--action", "raise"]
    cmd += ["--near-overflow", str(args.near_overflow or 0)] + (["--no-underflow"] if args.no_underflow else [])
    print("floatguard: a step went bad; replaying the script at op level to name the op (--replay)",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="floatguard-replay-") as tmp:
        path = os.path.join(tmp, "replay.json")
        target = ["-m", module] if module is not None else [script or ""]
        proc = subprocess.run([*cmd, "--json", path, *target, *script_args], check=False)
        found = Report()
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                found = Report.from_json(fh.read())
    named = [e for e in found.events if e.severity == "error"]
    if not named:
        print("floatguard: the op-level replay found nothing (is the script deterministic? seed it)", file=sys.stderr)
        return 0
    for e in found.events:
        e.message += " (found by replaying the script at op level)"
    report.events[:0] = found.events
    return proc.returncode or 1


def main(argv: list[str] | None = None) -> int:
    """``python -m floatguard.sanitize [options] SCRIPT [ARGS...]``."""
    parser = argparse.ArgumentParser(
        prog="floatguard run", description="Run a Python script as `python SCRIPT ARGS` would, with the sanitizer on.")
    add_arguments(parser)
    ns: Any = parser.parse_args(argv)
    return run(ns)
