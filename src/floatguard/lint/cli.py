"""``floatguard lint``: the command line of the checker.

``add_arguments`` fills a parser (the ``floatguard`` CLI mounts it as the ``lint``
subcommand), ``run`` executes parsed arguments, ``main`` is ``python -m floatguard.lint``.
Exit status: 0 clean, 1 findings, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, expand
from .rules import all_rules, by_code

__all__ = ["add_arguments", "main", "run"]


def _codes(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the lint options to ``parser``."""
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to check (default: .)")
    parser.add_argument("--fix", action="store_true", help="apply safe fixes in place")
    parser.add_argument("--unsafe-fixes", action="store_true",
                        help="with --fix, also apply fixes that may change behaviour")
    parser.add_argument("--select", type=_codes, default=None, metavar="CODES",
                        help="comma-separated rule codes or prefixes to enable (replaces the configured selection)")
    parser.add_argument("--ignore", type=_codes, default=(), metavar="CODES",
                        help="comma-separated rule codes or prefixes to disable")
    parser.add_argument("--format", choices=("text", "json", "sarif", "github"), default="text",
                        help="output format (default: text)")
    parser.add_argument("--explain", metavar="CODE", help="print the documentation of a rule and exit")
    parser.add_argument("--list-rules", action="store_true", help="list the rules and exit")
    parser.add_argument("--exit-zero", action="store_true", help="exit 0 even when findings are reported")
    parser.add_argument("--no-config", action="store_true", help="ignore [tool.floatguard.lint] in pyproject.toml")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--no-cache", action="store_true",
                        help="check every file again (default: results of unchanged files come from the cache)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="where the cache is kept (default: .floatguard_cache in the project root)")


def run(args: argparse.Namespace) -> int:
    """Execute parsed arguments; returns the exit status."""
    from .engine import lint_paths
    from .output import render

    out, err = sys.stdout, sys.stderr
    if args.explain:
        rule = by_code().get(args.explain.strip().upper())
        if rule is None:
            err.write(f"floatguard lint: error: unknown rule code {args.explain!r}\n")
            return 2
        out.write(rule.explain())
        return 0
    if args.list_rules:
        for r in all_rules():
            tag = f"{r.severity[0].upper()}/{r.confidence[0]}{'' if r.default else ' opt-in'}"
            out.write(f"{r.code}  {r.name:<28} {tag:<10} {r.summary()[:80]}\n")
        return 0
    paths = args.paths or ["."]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        err.write(f"floatguard lint: error: no such file or directory: {', '.join(missing)}\n")
        return 2
    try:
        if args.select is not None:
            expand(args.select)
        expand(args.ignore)
        cache_dir = None
        if not args.no_cache:
            from .cache import default_cache_dir

            cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
        results = lint_paths(paths, select=args.select, ignore=tuple(args.ignore),
                             fix=("unsafe" if args.unsafe_fixes else "safe") if args.fix else None,
                             jobs=args.jobs, use_config=not args.no_config, cache_dir=cache_dir)
    except ConfigError as exc:
        err.write(f"floatguard lint: error: {exc}\n")
        return 2
    events = [e for r in sorted(results, key=lambda r: r.path) for e in r.events]
    fixed = sum(r.fixed for r in results)
    out.write(render(events, args.format, fixed=fixed, unsafe=args.unsafe_fixes))
    out.flush()
    return 1 if events and not args.exit_zero else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m floatguard.lint PATH...``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="floatguard lint",
                                     description="Find numerically unstable code and fix it.")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    return run(args)
