"""Recall on the GRIST benchmark: how many of its 79 real numerical bugs ``floatguard lint`` reports on the right line.

GRIST (Yan et al., "Exposing Numerical Bugs in Deep Learning via Gradient Back-Propagation", FSE 2021) collected
63 deep-learning programs (TensorFlow 1.x and PyTorch) with 79 bugs that turn a tensor into NaN or inf. Its
checkout is not part of this repository; ``bugs.jsonl`` next to this script says, for each bug, which line of
which original (non-``_grist``) file holds it and why it fails, one JSON object a line::

    {"id": "9a", "subject": "ID_9", "path": "scripts/study_case/ID_9/soips7.py", "line": 28,
     "source": "<the stripped source line>", "op": "log", "why": "..."}

The script lints every original ``.py`` file of the subjects in-process (:func:`floatguard.lint.lint_paths`, no
``pyproject.toml`` settings: the defaults, test files quiet), and counts a bug as found when a finding lies on
its line. The line is found again by its stripped source within the file (the occurrence nearest ``line``),
falling back to ``line``; a finding anywhere inside the statement that holds the line counts (a multi-line
expression is one statement). Where the bug's ``why`` says two lines are equally its place (the ``exp`` that
overflows and the division that turns inf/inf into NaN on a later line), ``also`` holds the stripped source of
the second line, and a finding in either statement counts. It prints recall per op kind and overall for the
default selection and for ``ALL``, the misses with ``-v``, and how many other findings the linter gave in the
bugs' files and in the rest of the subjects.

    python benchmarks/grist/run.py [--root /tmp/grist] [--select DEFAULT|ALL] [-v]

Without ``--select`` both selections are shown.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from floatguard.lint import lint_paths

HERE = Path(__file__).resolve().parent
BUGS = HERE / "bugs.jsonl"
CLONE = "git clone https://github.com/Jacob-yen/GRIST"
SELECTIONS = ("DEFAULT", "ALL")


@dataclass(frozen=True)
class Bug:
    """One row of ``bugs.jsonl``."""

    id: str
    subject: str
    path: str
    line: int
    source: str
    op: str
    why: str
    also: str | None = None  # where ``why`` says the line is ambiguous: the stripped source of the other line


def load_bugs(path: Path = BUGS) -> list[Bug]:
    """The bugs, in file order."""
    return [Bug(**json.loads(row)) for row in path.read_text().splitlines() if row.strip()]


def locate(bug: Bug, lines: list[str], source: str | None = None) -> int:
    """The line of ``bug`` in ``lines`` now: its stripped source (or ``source``) nearest its recorded line, else
    that line."""
    want = bug.source if source is None else source
    hits = [i for i, text in enumerate(lines, 1) if text.strip() == want]
    return min(hits, key=lambda i: abs(i - bug.line)) if hits else bug.line


def statement_span(tree: ast.Module | None, line: int) -> tuple[int, int]:
    """First and last line of the innermost simple statement (or compound statement's header) holding ``line``."""
    if tree is None:
        return line, line
    spans = [(line, line)]
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            end = node.end_lineno or node.lineno
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                end = max(node.lineno, body[0].lineno - 1)  # a compound statement: only its header
            if node.lineno <= line <= end:
                spans.append((node.lineno, end))
    return min(spans[1:] or spans, key=lambda s: s[1] - s[0])


def subject_files(root: Path, subjects: set[str]) -> list[Path]:
    """The original ``.py`` files of ``subjects`` (GRIST's instrumented ``*_grist.py`` copies left out)."""
    out: list[Path] = []
    for subject in sorted(subjects):
        out += sorted(p for p in (root / "scripts" / "study_case" / subject).rglob("*.py")
                      if not p.name.endswith("_grist.py"))
    return out


@dataclass
class Outcome:
    """What one selection found: the bugs found (id -> codes), other findings in bug files and elsewhere."""

    found: dict[str, list[str]]
    other_in_bug_files: Counter[str]
    other_elsewhere: Counter[str]


def evaluate(root: Path, bugs: list[Bug], select: str) -> Outcome:
    """Lint the subjects with ``select`` and match the findings to ``bugs``."""
    files = subject_files(root, {b.subject for b in bugs})
    results = lint_paths(files, select=(select,), use_config=False, jobs=2)
    by_file: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for res in results:
        rel = Path(res.path).resolve().relative_to(root.resolve()).as_posix()
        by_file[rel] += [(e.line, e.code) for e in res.events if e.line is not None and e.code is not None]
    found: dict[str, list[str]] = {}
    used: set[tuple[str, int, str]] = set()
    spans: dict[str, tuple[list[str], ast.Module | None]] = {}
    for bug in bugs:
        if bug.path not in spans:
            text = (root / bug.path).read_text(encoding="utf-8", errors="replace")
            try:
                tree: ast.Module | None = ast.parse(text)
            except SyntaxError:
                tree = None
            spans[bug.path] = (text.splitlines(), tree)
        lines, tree = spans[bug.path]
        where = [statement_span(tree, locate(bug, lines))]
        if bug.also is not None:
            where.append(statement_span(tree, locate(bug, lines, bug.also)))
        hits = [(ln, code) for ln, code in by_file.get(bug.path, []) if any(lo <= ln <= hi for lo, hi in where)]
        if hits:
            found[bug.id] = sorted({code for _, code in hits})
            used |= {(bug.path, ln, code) for ln, code in hits}
    bug_files = {b.path for b in bugs}
    other_in, other_out = Counter[str](), Counter[str]()
    for rel, events in by_file.items():
        for ln, code in events:
            if (rel, ln, code) in used:
                continue
            (other_in if rel in bug_files else other_out)[code] += 1
    return Outcome(found, other_in, other_out)


def report(bugs: list[Bug], select: str, out: Outcome, verbose: bool) -> None:
    """Print recall per op kind and overall, the misses (``verbose``) and the other findings."""
    per_op: dict[str, list[Bug]] = defaultdict(list)
    for b in bugs:
        per_op[b.op].append(b)
    print(f"\n== --select {select}")
    print(f"{'op':<6} {'found':>5} / {'bugs':<4} recall")
    for op, group in sorted(per_op.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        n = sum(b.id in out.found for b in group)
        print(f"{op:<6} {n:>5} / {len(group):<4} {n / len(group):6.1%}")
    total = sum(b.id in out.found for b in bugs)
    print(f"{'all':<6} {total:>5} / {len(bugs):<4} {total / len(bugs):6.1%}")
    codes = Counter(c for cs in out.found.values() for c in cs)
    print("bugs found by rule: " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())))
    print(f"other findings in the bugs' files: {sum(out.other_in_bug_files.values())} "
          f"({', '.join(f'{c} {n}' for c, n in sorted(out.other_in_bug_files.items())) or '-'})")
    print(f"findings in the subjects' other files: {sum(out.other_elsewhere.values())} "
          f"({', '.join(f'{c} {n}' for c, n in sorted(out.other_elsewhere.items())) or '-'})")
    if verbose:
        for b in bugs:
            if b.id not in out.found:
                print(f"  miss ID-{b.id} [{b.op}] {b.path}:{b.line}: {b.source}\n      why: {b.why}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/grist"), help="the GRIST checkout")
    parser.add_argument("--select", choices=SELECTIONS, help="one selection (default: both)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the bugs not found")
    args = parser.parse_args(argv)
    if not (args.root / "scripts" / "study_case").is_dir():
        print(f"no GRIST checkout at {args.root}: get it with\n    {CLONE} {args.root}", file=sys.stderr)
        return 2
    bugs = load_bugs()
    missing = sorted({b.path for b in bugs if not (args.root / b.path).is_file()})
    if missing:
        print(f"the checkout at {args.root} lacks {len(missing)} of the bugs' files, e.g. {missing[0]}; "
              f"get a fresh one with\n    {CLONE}", file=sys.stderr)
        return 2
    print(f"GRIST: {len(bugs)} bugs in {len({b.subject for b in bugs})} subjects ({args.root})")
    for select in (args.select,) if args.select else SELECTIONS:
        report(bugs, select, evaluate(args.root, bugs, select), args.verbose)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
