"""The docs site: it builds with ``mkdocs build --strict``, every rule, op and CLI option has its
page, and no internal link is broken. The quick build here stands blank images in for the report
screenshots (``FLOATGUARD_DOCS_NO_SCREENSHOTS=1``); ``make test`` builds the real ones."""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("mkdocs")
pytest.importorskip("material")


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("floatguard_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "FLOATGUARD_DOCS_NO_SCREENSHOTS": "1", "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def _text(page: Path) -> str:
    return _text_of(page.read_text(encoding="utf-8"))


def test_every_rule_has_a_page_with_its_docstring(site: Path) -> None:
    from floatguard.lint.rules import all_rules

    index = _text(site / "rules" / "index.html")
    for rule in all_rules():
        page = site / "rules" / rule.code / "index.html"
        assert page.exists(), rule.code
        text = _text(page)
        assert f"{rule.code} {rule.name}" in text and rule.code in index
        summary = re.sub(r"`+", "", rule.summary())
        assert " ".join(summary.split()) in " ".join(text.split()), rule.code


def test_every_op_has_its_section_and_the_readme_tables(site: Path) -> None:
    import floatguard.ops as ops

    pages = {p: _text(p) for p in (site / "ops").glob("*/index.html")}
    for name in ops.__all__:
        assert any(f"floatguard.{name}(" in t for t in pages.values()), name
    reductions = pages[site / "ops" / "reductions" / "index.html"]
    assert "Accuracy" in reductions and "tested against mpmath" in reductions
    assert "torch.logsumexp" in reductions  # a speed row of README's table


def test_cli_page_lists_every_command_and_option(site: Path) -> None:
    from floatguard.cli import build_parser

    text = _text(site / "cli" / "index.html")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"floatguard {name}" in text
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert flag in text, (name, flag)


def test_guides_pull_in_the_readme_and_the_screenshots(site: Path) -> None:
    sanitizer = (site / "guides" / "sanitizer" / "index.html").read_text(encoding="utf-8")
    monitor = (site / "guides" / "monitor" / "index.html").read_text(encoding="utf-8")
    assert "{{" not in sanitizer + monitor
    assert "floatguard run train.py" in _text_of(sanitizer) and "sanitizer-report.png" in sanitizer
    assert "mon.step(loss)" in _text_of(monitor) and "monitor-report.png" in monitor


def test_no_internal_link_is_broken(site: Path) -> None:
    broken = []
    for page in site.rglob("*.html"):
        if page.name == "404.html":  # served at any depth, so its links are absolute (site_url)
            continue
        for url in re.findall(r'(?:href|src)="([^"]+)"', page.read_text(encoding="utf-8")):
            parts = urlsplit(html.unescape(url))
            if parts.scheme or parts.netloc or not parts.path:
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {url}")
    assert broken == []


def test_docstring_markdown_turns_numpydoc_into_markdown() -> None:
    hooks = _hooks()
    doc = ("``log(x)``, :math:`e^x`.\n\n.. math:: y = x\n\nParameters\n----------\nx : array\n"
           "    The input.\n\nExamples\n--------\n>>> 1 + 1\n2\n")
    md = hooks.docstring_markdown(doc)
    assert "`log(x)`, `e^x`." in md
    assert "```text\ny = x\n```" in md
    assert "- `x` (array): The input." in md
    assert "**Examples**" in md and "```pycon\n>>> 1 + 1\n2\n```" in md


def test_old_style_rule_docstrings_get_headed_code_blocks() -> None:
    md = _hooks().rule_markdown("Why.\n\nBad:\n    y = log(1 + x)\n\nGood:\n    y = log1p(x)\n")
    assert "## Bad\n```python\ny = log(1 + x)\n```" in md and "## Good\n```python\ny = log1p(x)\n```" in md


# -- prose that states what the code does ------------------------------------------------------
def test_documented_monitor_thresholds_match_their_defaults() -> None:
    """Docstrings quote each threshold with its default, ``name`` (value): the value is the code's."""
    import dataclasses

    from floatguard.monitor.rules import Thresholds

    defaults = {f.name: f.default for f in dataclasses.fields(Thresholds) if isinstance(f.default, int | float)}
    quoted = []
    for path in sorted((ROOT / "src" / "floatguard" / "monitor").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for m in re.finditer(r"``(\w+)`` \((-?[0-9.e+-]+)(%?)[:)]", source):
            name, value, percent = m.groups()
            if name in defaults:
                number = float(value) / (100 if percent else 1)
                quoted.append(name)
                assert number == pytest.approx(float(defaults[name]), rel=1e-12), (path.name, name, value)
    assert {"update_high", "update_low", "patience", "chance_window"} <= set(quoted)


def test_readme_rule_counts_match_the_rules() -> None:
    from floatguard.lint.rules import all_rules

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    codes = [r.code for r in all_rules()]
    m = re.search(r"(\d+) rules \(", text)
    assert m is not None and int(m.group(1)) == len(codes)
    opt_in = re.search(r"((?:FG\d{3}, )+FG\d{3} and FG\d{3}) are opt-in", text)
    assert opt_in is not None
    assert re.findall(r"FG\d{3}", opt_in.group(1)) == [r.code for r in all_rules() if not r.default]
