"""``floatguard run SCRIPT [ARGS...]``: run a script as ``python SCRIPT ARGS`` would, sanitized.

Exit status: the script's own when it fails or calls ``sys.exit`` with a non-zero
code; otherwise 1 when the sanitizer found anything but a ``near_overflow`` warning,
0 when it found nothing. ``--level step --replay``: when a step goes bad, the script
is run again at op level in a new process, which names the op (its findings come
first in the report). ``--json PATH`` writes the report (``{"events": [...],
"first": i}``) whatever the outcome, SIGTERM included (exit status 143): the path is
checked before the script runs (exit status 2 when it cannot be written), a previous
run's file there is removed at the start (so a run killed by SIGKILL leaves none),
and the file is replaced atomically; a write that fails keeps the script's exit status
(1 if it was 0).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import runpy
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import replace
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
    parser.add_argument("--exact", action="store_true",
                        help="with --level op: check every op as it runs, inside torch's own modules too (by "
                        "default those are checked at their outputs and replayed op by op when one goes bad)")
    parser.add_argument("--replay", action="store_true",
                        help="with --level step: when a step goes bad, run the script again at op level (in a new "
                        "process, stopping at the first finding) to name the op; the script must be deterministic "
                        "(seeded), and its side effects happen twice")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a module, like python -m MODULE")
    parser.add_argument("script", nargs="?", help="the Python script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")


def _print_user_traceback(exc: BaseException, script: str | None) -> None:
    """Like Python's own report of an uncaught exception, without floatguard's and runpy's frames.

    A script that does not compile (SyntaxError) shows only the error, as ``python script.py`` does.
    """
    tb = exc.__traceback__
    if script is not None:
        target = os.path.abspath(script)
        t = tb
        while t is not None and os.path.abspath(t.tb_frame.f_code.co_filename) != target:
            t = t.tb_next
        if t is not None:
            traceback.print_exception(type(exc), exc, t, file=sys.stderr)
            return
    ours = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}
    while tb is not None and (os.path.abspath(tb.tb_frame.f_code.co_filename) in ours
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen ")):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


class _Terminated(BaseException):
    """Raised in the script by SIGTERM, so the report is still written."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _prepare_json(path: str) -> str | None:
    """Check that ``path`` can be written and remove a previous run's file there; the problem, or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--json {path}: no such directory {folder!r}"
    if os.path.isdir(path):
        return f"--json {path}: is a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--json {path}: the directory {folder!r} is not writable"
    if os.path.isfile(path) or os.path.islink(path):
        try:
            os.unlink(path)  # a previous run's findings must not pass for this run's
        except OSError as exc:
            return f"--json {path}: cannot remove the previous file ({exc.strerror or exc})"
    return None


def _write_json(report: Any, path: str) -> str | None:
    """Write the report to ``path`` atomically (a temporary file, then a rename); the problem, or None."""
    import tempfile

    text = report.to_json() + "\n"
    if os.path.exists(path) and not os.path.isfile(path):  # a device or a pipe: write through
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            return f"cannot write the report to {path}: {exc.strerror or exc}"
        return None
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".floatguard-", suffix=".json.tmp",
                                   dir=os.path.dirname(os.path.abspath(path)))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        return f"cannot write the report to {path}: {exc.strerror or exc}"
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return None


def run(args: argparse.Namespace, attach: Callable[[], tuple[Any, str | None]] | None = None) -> int:
    """Handler of ``floatguard run``: returns the exit status.

    ``attach``: started once the script is known to exist, before it runs; returns
    ``(companion, None)`` or ``(None, why not)`` (exit status 2). The companion's
    ``close()`` is called after the script and its findings join the report (the
    top-level CLI passes the training monitor for ``--monitor``).
    """
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
    if args.json:
        problem = _prepare_json(args.json)
        if problem is not None:
            print(f"floatguard run: error: {problem}", file=sys.stderr)
            return 2
    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch:
        import torch  # noqa: F401 - the sanitizer hooks into torch before the script imports it
    companion = None
    if attach is not None:
        companion, problem = attach()
        if problem is not None:
            print(f"floatguard run: error: {problem}", file=sys.stderr)
            return 2

    near = args.near_overflow if args.near_overflow else None
    det = detect(args.level, args.action, torch=has_torch, near_overflow=near, underflow=not args.no_underflow,
                 exact=getattr(args, "exact", False))
    old_argv, old_path0 = sys.argv[:], sys.path[0] if sys.path else None
    code = 0
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
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
    except _Terminated:
        code = 128 + signal.SIGTERM
        print("floatguard run: terminated (SIGTERM)", file=sys.stderr)
    except BaseException as exc:  # the script's own failure, reported as Python would
        _print_user_traceback(exc, script)
        code = 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)
        sys.argv = old_argv
        if sys.path and old_path0 is not None and sys.path[0] != old_path0:
            del sys.path[0]
    report = det.report
    if companion is not None:  # its findings join the report (the same record shape)
        close = getattr(companion, "close", None)
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
        problem = _write_json(report, args.json)
        if problem is not None:
            print(f"floatguard run: error: {problem}", file=sys.stderr)
            code = code or 1
    return code


def _replay(args: argparse.Namespace, script: str | None, module: str | None, script_args: list[str],
            report: Any) -> int:
    """Run the script again at op level in a new process; its findings go first in ``report``."""
    import subprocess
    import tempfile

    from ..events import Report

    cmd = [sys.executable, "-m", "floatguard", "run", "--level", "op", "--exact", "--action", "raise"]
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
    report.events[:0] = [replace(e, message=e.message + " (found by replaying the script at op level)")
                         for e in found.events]
    return proc.returncode or 1


def main(argv: list[str] | None = None) -> int:
    """``python -m floatguard.sanitize [options] SCRIPT [ARGS...]``."""
    parser = argparse.ArgumentParser(
        prog="floatguard run", description="Run a Python script as `python SCRIPT ARGS` would, with the sanitizer on.")
    add_arguments(parser)
    ns: Any = parser.parse_args(argv)
    return run(ns)
