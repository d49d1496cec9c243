"""Rule documentation that cannot drift: ruff's headings, and a "Use instead" block that is what ``--fix`` writes.

Every rule's docstring (printed by ``floatguard lint --explain CODE``, and the source of its page on the docs
site) has the sections ``## What it does``, ``## Why is this bad?``, ``## Example``, ``## Use instead``,
``## Fix safety`` and ``## References``, in that order. The Example and Use instead blocks are fenced Python:
imports, a blank line, then statements (run inside a loss function, where autograd applies) or a whole
definition. Where the rule has a fix for the Example, Use instead is exactly what ``--fix --unsafe-fixes``
writes for it; where it has none, Use instead is hand-written, and in both cases the rule does not report it.
"""

from __future__ import annotations

import inspect
import re
import textwrap

import pytest

from floatguard.lint import all_rules, fix_source, lint_source
from floatguard.lint.rule import Rule

HEADINGS = ["## What it does", "## Why is this bad?", "## Example", "## Use instead", "## Fix safety",
            "## References"]
WRAPPER = "\n\n\ndef loss_fn(*args):\n"


def sections(doc: str) -> dict[str, str]:
    """The text under each ``## `` heading."""
    parts = re.split(r"^(## .+)$", doc, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}


def code_block(text: str) -> str:
    """The one fenced Python block of a section."""
    found = re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    assert len(found) == 1, f"expected one ```python block, found {len(found)}"
    return found[0]


def split_imports(code: str) -> tuple[list[str], str]:
    lines = code.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith(("import ", "from ")):
        n += 1
    assert n and lines[n].strip() == "", "an example starts with its imports and a blank line"
    return [ln.rstrip("\n") for ln in lines[:n]], "".join(lines[n + 1:])


def wrap(code: str) -> str:
    """The module linted for an example: statements go in a loss function, a definition stays at module level."""
    imports, body = split_imports(code)
    head = "\n".join(imports)
    if body.startswith(("def ", "class ", "@")):
        return f"{head}\n\n\n{body}"
    return head + WRAPPER + textwrap.indent(body, "    ")


def unwrap(module: str, code: str) -> str:
    """:func:`wrap` undone on the fixed module (imports the fix added included)."""
    _, body = split_imports(code)
    if body.startswith(("def ", "class ", "@")):
        head, _, rest = module.partition("\n\n\n")
        return f"{head}\n\n{rest}"
    head, _, rest = module.partition(WRAPPER)
    return f"{head}\n\n{textwrap.dedent(rest)}"


def documented(rule: type[Rule]) -> dict[str, str]:
    return sections(inspect.getdoc(rule) or "")


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.code)
def test_docstring_has_ruffs_headings_in_order(rule: type[Rule]) -> None:
    doc = inspect.getdoc(rule) or ""
    found = re.findall(r"^## .+$", doc, flags=re.MULTILINE)
    assert found == HEADINGS, f"{rule.code}: headings {found}"
    secs = documented(rule)
    assert all(secs[h].strip() for h in HEADINGS), f"{rule.code}: an empty section"
    assert re.search(r"https?://", secs["## References"]), f"{rule.code}: References has no link"
    assert doc.count("```") % 2 == 0  # valid Markdown: every fence closed
    assert rule.explain().count("## ") >= len(HEADINGS)  # --explain prints the whole page


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.code)
def test_example_is_reported_and_use_instead_is_what_fix_writes(rule: type[Rule]) -> None:
    secs = documented(rule)
    example, use = code_block(secs["## Example"]), code_block(secs["## Use instead"])
    src = wrap(example)
    found = [e for e in lint_source(src, select=[rule.code]) if e.code == rule.code]
    assert found, f"{rule.code}: the Example is not reported"
    fixed, n, remaining = fix_source(src, codes=frozenset({rule.code}), unsafe=True)
    safety = secs["## Fix safety"]
    if n:
        assert unwrap(fixed, example) == use, f"{rule.code}: Use instead is not what --fix writes:\n" \
                                              f"{unwrap(fixed, example)}"
        assert not [e for e in remaining if e.code == rule.code], f"{rule.code}: the fix leaves findings"
        assert "no fix" not in safety.lower()
    else:
        assert "no fix" in safety.lower(), f"{rule.code}: no fix for the Example, and Fix safety does not say so"
    assert not [e for e in lint_source(wrap(use), select=[rule.code]) if e.code == rule.code], \
        f"{rule.code}: Use instead is reported"


def test_fix_safety_matches_what_the_fix_is() -> None:
    """A section that calls the Example's fix safe names a fix ``--fix`` applies without ``--unsafe-fixes``."""
    for rule in all_rules():
        secs = documented(rule)
        src = wrap(code_block(secs["## Example"]))
        safe_n = fix_source(src, codes=frozenset({rule.code}))[1]
        any_n = fix_source(src, codes=frozenset({rule.code}), unsafe=True)[1]
        text = secs["## Fix safety"].lower()
        if any_n and safe_n == any_n:
            assert "safe" in text and "unsafe" not in text.split("\n")[0], f"{rule.code}: {text}"
        elif any_n:
            assert "unsafe" in text, f"{rule.code}: the Example's fix needs --unsafe-fixes: {text}"
