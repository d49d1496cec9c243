"""The rule base class and the finding a rule yields.

A rule is a class in ``floatguard/lint/rules/`` with a ``code``, a ``name``, its
``categories``, the AST node types it looks at (``nodes``) and a ``check`` method.
Its docstring is its documentation, with ruff's headings in this order: ``## What it does``,
``## Why is this bad?``, ``## Example``, ``## Use instead`` (exactly what ``--fix`` writes for the
Example), ``## Fix safety`` and ``## References``; ``floatguard lint --explain CODE`` prints it
(``tests/lint/test_rule_docs.py`` checks the headings and runs the examples).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from .analysis import Context

__all__ = ["Finding", "Fix", "Rule"]


@dataclass(slots=True)
class Fix:
    """Replace the source of ``node`` by ``replacement``; ``imports`` are modules the new text needs.

    ``safe`` fixes keep the meaning (same mathematical function of the same inputs) and are
    applied by ``--fix``; the others need ``--unsafe-fixes``.
    """

    node: ast.AST
    replacement: str
    safe: bool = True
    imports: tuple[str, ...] = ()


@dataclass(slots=True)
class Finding:
    """What a rule reports: the node, one sentence, what to do, and maybe a fix."""

    node: ast.AST
    message: str
    hint: str | None = None
    fix: Fix | None = None


class Rule:
    """Base class of the rules (see the module docstring)."""

    code: ClassVar[str] = ""
    name: ClassVar[str] = ""
    categories: ClassVar[tuple[str, ...]] = ()
    nodes: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    #: "error": inf/NaN (values or gradients) on inputs the code can reach; "warning": digits lost
    severity: ClassVar[str] = "error"
    #: how often a finding was worth a change on code the rule had never seen (benchmarks/lint_precision):
    #: "high" (every finding judged worth a change), "medium" (some were nits or wrong, or too few findings to
    #: judge), "low" (mostly nits or wrong: the rule is opt-in)
    confidence: ClassVar[str] = "high"
    #: in the default selection; False: opt-in (``--select FG107``, ``extend-select``, or ``ALL``)
    default: ClassVar[bool] = True

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:  # pragma: no cover - interface
        """Yield the findings of this rule at ``node``."""
        raise NotImplementedError
        yield

    @classmethod
    def summary(cls) -> str:
        """First line of the documentation."""
        return " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())

    @classmethod
    def explain(cls) -> str:
        """The documentation printed by ``--explain``."""
        doc = inspect.getdoc(cls) or ""
        opt = "default" if cls.default else "opt-in"
        return (f"{cls.code} ({cls.name}) [{', '.join(cls.categories)}] severity={cls.severity} "
                f"confidence={cls.confidence} {opt}\n\n{doc}\n")
