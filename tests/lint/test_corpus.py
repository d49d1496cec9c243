"""The labelled corpus: buggy programs of the kind posted when a loss goes NaN, and clean ones.

Each expected finding is a ``# expect: FG111`` (or ``# expect: FG117, FG112``) comment on
the line where it must be reported. Recall over all expectations must be >= 90%; no
finding may appear where none is expected (in the buggy files as in the clean ones).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from floatguard.lint import all_rules, lint_source

CORPUS = Path(__file__).parent / "corpus"
EXPECT = re.compile(r"#\s*expect:\s*(.+)$")


def expectations(path: Path) -> set[tuple[int, str]]:
    out = set()
    for i, line in enumerate(path.read_text().splitlines(), 1):
        m = EXPECT.search(line)
        if m:
            out |= {(i, c.strip()) for c in m.group(1).split(",")}
    return out


def found(path: Path) -> set[tuple[int, str]]:
    return {(e.line, e.code) for e in lint_source(path.read_text(), str(path))}  # type: ignore[misc]


BUGGY = sorted((CORPUS / "buggy").glob("*.py"))
CLEAN = sorted((CORPUS / "clean").glob("*.py"))


def test_corpus_is_substantial() -> None:
    total = sum(len(expectations(p)) for p in BUGGY)
    assert len(BUGGY) >= 15 and len(CLEAN) >= 5 and total >= 80
    assert not any(expectations(p) for p in CLEAN)


def test_recall_at_least_90_percent() -> None:
    expected = {(p.name, *e) for p in BUGGY for e in expectations(p)}
    hits = {(p.name, *f) for p in BUGGY for f in found(p)} & expected
    recall = len(hits) / len(expected)
    missed = sorted(expected - hits)
    assert recall >= 0.90, f"recall {recall:.1%}; missed {missed}"


@pytest.mark.parametrize("path", BUGGY + CLEAN, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_unexpected_findings(path: Path) -> None:
    extra = found(path) - expectations(path)
    assert not extra, f"findings where none is expected: {sorted(extra)}"


def test_every_rule_is_exercised_by_the_corpus() -> None:
    codes = {c for p in BUGGY for _, c in expectations(p)}
    assert {r.code for r in all_rules()} <= codes
