"""mkdocs hooks: the pages that would drift from the code are generated at build time.

* ``index.md`` and ``install.md``: README's opening and its "Set up" section.
* ``ops/*.md``: one page per op family (the module that defines the op), from the ops'
  docstrings, with README's rows of the ops table, accuracy contract and speed table
  that name the family's ops.
* ``rules/*.md``: one page per linter rule, from the rule class's docstring (what
  ``floatguard lint --explain CODE`` prints), and an index of all rules.
* ``cli.md``: every ``floatguard`` command and option, from the argparse parsers.
* ``img/*.png``: screenshots of the HTML reports, rendered by headless Chromium from a
  fresh run of ``examples/monitor_basic.py`` and of ``floatguard run --json`` on
  ``examples/nan_training.py`` (``docs/screenshots.py``).
* Handwritten pages pull README sections in with ``{{ readme("Section title") }}``.

Nothing here is copied by hand, so ``mkdocs build --strict`` (run by ``make test``)
fails when a rule, op or option changes in a way the docs cannot follow.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

#: Op families by defining module: (page, title, one line on the family).
FAMILIES: dict[str, tuple[str, str, str]] = {
    "reductions": ("reductions", "Reductions", "log-sum-exp and the softmax family, along an axis"),
    "elementwise": ("elementwise", "Elementwise", "log-domain arithmetic and the sigmoid family, entry by entry"),
    "losses": ("losses", "Losses", "cross-entropy and binary cross-entropy on logits"),
    "linear_cross_entropy": ("linear-cross-entropy", "Fused linear cross-entropy",
                             "the LM head and its cross-entropy without the full logits"),
    "products": ("products", "Products", "products and matrix products in the log domain"),
    "safe": ("safe", "Safe log, division and square root", "finite values and gradients at 0"),
}


# -- README --------------------------------------------------------------------------------
def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def readme_section(title: str) -> str:
    """The body of README's section whose heading starts with ``## title`` (without the heading)."""
    m = re.search(rf"^## {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", readme(), flags=re.M | re.S)
    if m is None:
        raise ValueError(f"docs: README.md has no section '## {title}'")
    return m.group(1).strip() + "\n"


def readme_opening() -> str:
    """README up to its first ``##`` section (title, the failures, the cure, the example)."""
    return readme().split("\n## ", 1)[0].strip() + "\n"


def table_rows(section: str) -> tuple[list[str], list[str]]:
    """``(header lines, row lines)`` of the first markdown table of a README section."""
    lines = [ln for ln in readme_section(section).splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append(ln)
    return table[:2], table[2:]


def paragraph(section: str, lead: str) -> str:
    """The paragraph of a README section that starts with ``lead``."""
    for para in readme_section(section).split("\n\n"):
        if para.startswith(lead):
            return para.strip() + "\n"
    raise ValueError(f"docs: README section {section!r} has no paragraph starting {lead!r}")


# -- docstrings (numpydoc and reST spellings) to markdown ----------------------------------------
_SECTION = re.compile(r"^([A-Z][A-Za-z ]+)\n-{3,}$", flags=re.M)


def _inline(text: str) -> str:
    text = re.sub(r":(?:math|func|class|mod|data|meth|attr):`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def docstring_markdown(doc: str) -> str:
    """A numpydoc/reST docstring as markdown: sections as headings, parameters as a list,
    ``.. math::``, literal (``::``) and doctest blocks as code blocks."""
    out: list[str] = []
    lines = doc.splitlines()
    i, in_params = 0, False
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", nxt.strip()):
            in_params = line.strip() in ("Parameters", "Returns", "Raises", "Yields")
            out += ["", f"**{line.strip()}**", ""]
            i += 2
            continue
        if line.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["", "```pycon", *block, "```", ""]
            continue
        if line.strip().startswith(".. math::") or line.rstrip().endswith("::"):
            block = []
            if line.strip().startswith(".. math::"):
                first = line.strip().removeprefix(".. math::").strip()
                block = [" " * 4 + first] if first else []
            else:
                out.append(_inline(line.rstrip()[:-1]))
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            body = inspect.cleandoc("\n".join(block))
            out += ["", "```text", body, "```", ""]
            continue
        if in_params and line and not line.startswith(" "):
            name, _, kind = line.partition(" : ")
            desc = []
            i += 1
            while i < len(lines) and lines[i].startswith(" "):
                desc.append(lines[i].strip())
                i += 1
            kind_text = f" ({_inline(kind.strip())})" if kind.strip() else ""
            out.append(f"- `{name.strip()}`{kind_text}: {_inline(' '.join(desc))}")
            continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out).strip() + "\n"


def rule_markdown(doc: str) -> str:
    """A rule docstring as markdown: ruff's ``## `` headings pass through; the older ``Bad:`` /
    ``Good:`` blocks become headed code blocks."""
    out: list[str] = []
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.fullmatch(r"(Bad|Good|Example|Use instead):\s*", line)
        if m:
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            out += [f"## {m.group(1)}", "```python", inspect.cleandoc("\n".join(block)), "```", ""]
            continue
        out.append(line if line.startswith("```") else _inline(line))
        i += 1
    return "\n".join(out).strip() + "\n"


# -- pages -------------------------------------------------------------------------------------
def _op_families() -> dict[str, list[tuple[str, Callable[..., Any]]]]:
    import floatguard.ops as ops

    families: dict[str, list[tuple[str, Callable[..., Any]]]] = {}
    for name in ops.__all__:
        fn = getattr(ops, name)
        module = getattr(fn, "__module__", "") or ""
        families.setdefault(module.rsplit(".", 1)[-1], []).append((name, fn))
    return families


def _mentions(row: str, names: Iterable[str]) -> bool:
    return any(re.search(rf"`{re.escape(n)}[`(]", row) for n in names)


def ops_pages() -> dict[str, str]:
    """``ops/index.md`` and one page per family."""
    families = _op_families()
    op_head, op_rows = table_rows("The ops")
    speed_head, speed_rows = table_rows("Speed")
    accuracy = paragraph("The ops", "**Accuracy**")
    speed_intro = readme_section("Speed").split("\n\n", 1)[0].strip()
    pages: dict[str, str] = {}
    index = ["# The ops", "", "Each op is written once against the array-API namespace of its input (NumPy, "
             "PyTorch, JAX) and returns the same kind of array.", "", accuracy, "", "| family | ops |", "|---|---|"]
    for module, members in sorted(families.items(), key=lambda kv: list(FAMILIES).index(kv[0])
                                  if kv[0] in FAMILIES else 99):
        slug, title, blurb = FAMILIES.get(module, (module, module.replace("_", " ").capitalize(), ""))
        names = [n for n, _ in members]
        index.append(f"| [{title}]({slug}.md) | {', '.join(f'`{n}`' for n in names)} |")
        page = [f"# {title}", "", f"{blurb}." if blurb else "", "",
                f"Defined in `floatguard.ops.{module}`; import them from `floatguard`.", ""]
        rows = [r for r in op_rows if _mentions(r, names)]
        if rows:
            page += ["## At a glance", "", *op_head, *rows, ""]
        page += ["## Accuracy", "", accuracy, ""]
        srows = [r for r in speed_rows if _mentions(r, names)]
        if srows:
            page += ["## Speed", "", speed_intro, "", *speed_head, *srows, ""]
        for name, fn in members:
            try:
                sig = str(inspect.signature(fn))
            except (TypeError, ValueError):
                sig = "(...)"
            page += [f"## `{name}`", "", "```python", f"floatguard.{name}{sig}", "```", "",
                     docstring_markdown(inspect.getdoc(fn) or ""), ""]
        pages[f"ops/{slug}.md"] = "\n".join(page)
    pages["ops/index.md"] = "\n".join(index) + "\n"
    return pages


def rules() -> list[Any]:
    from floatguard.lint.rules import all_rules

    return list(all_rules())


def rule_pages() -> dict[str, str]:
    """``rules/index.md`` and ``rules/FG???.md``, from the rule classes."""
    pages: dict[str, str] = {}
    index = ["# Linter rules", "", "`floatguard lint PATH...` checks source for these patterns; "
             "`floatguard lint --explain CODE` prints the same text as each page.", "",
             "| code | name | severity | confidence | default | summary |", "|---|---|---|---|---|---|"]
    for r in rules():
        default = "yes" if r.default else "opt-in"
        index.append(f"| [{r.code}]({r.code}.md) | {r.name} | {r.severity} | {r.confidence} | {default} | "
                     f"{_inline(r.summary())} |")
        doc = inspect.getdoc(r) or ""
        head, sep, rest = doc.partition("\n\n## What it does\n")
        if sep and rest.startswith(head.strip()):  # the summary line opens the docstring and "What it does"
            doc = sep.lstrip() + rest
        meta = (f"Severity **{r.severity}**, confidence **{r.confidence}**, categories "
                f"{', '.join(f'`{c}`' for c in r.categories)}; "
                f"{'in the default selection' if r.default else 'opt-in (`extend-select` or `--select ALL`)'}.")
        pages[f"rules/{r.code}.md"] = f"# {r.code} {r.name}\n\n{meta}\n\n{rule_markdown(doc)}"
    pages["rules/index.md"] = "\n".join(index) + "\n"
    return pages


def _option_row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.choices is not None:
        flags += " {" + ", ".join(str(c) for c in action.choices) + "}"
    elif action.option_strings and action.nargs != 0 and action.metavar:
        flags += f" `{action.metavar}`"
    default = action.default
    shown = "" if default in (None, False, (), [], argparse.SUPPRESS) else f"`{default}`"
    help_text = (action.help or "").replace("|", "\\|")
    if "%(" in help_text:
        help_text = help_text % {"prog": "floatguard", "default": default}
    return f"| {flags} | {help_text} | {shown} |"


def cli_page() -> str:
    """Every command of ``floatguard`` and its options, from :func:`floatguard.cli.build_parser`."""
    from floatguard.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal width: make it fixed
    parser = build_parser()
    out = ["# Command line", "", f"`floatguard <command> [options]`: {parser.description or ''}", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out += [f"## `floatguard {name}`", "", p.description or "", "", "```text",
                p.format_usage().strip(), "```", ""]
        rows = [_option_row(a) for a in p._actions if not isinstance(a, argparse._HelpAction)]
        if rows:
            out += ["| argument | meaning | default |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


# -- screenshots ---------------------------------------------------------------------------------
_SHOTS: dict[str, Path] = {}
SCREENSHOTS = ("monitor-report.png", "sanitizer-report.png")
# a 1x1 transparent PNG: stands in for the screenshots when FLOATGUARD_DOCS_NO_SCREENSHOTS=1
_BLANK_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6300010000"
    "0500010d0a2db40000000049454e44ae426082"
)


def screenshots() -> dict[str, Path]:
    """``{"img/NAME.png": path}``, rendered once per process by ``docs/screenshots.py``."""
    if not _SHOTS:
        out = Path(tempfile.mkdtemp(prefix="floatguard-docs-"))
        subprocess.run([sys.executable, str(Path(__file__).with_name("screenshots.py")), str(out)],
                       check=True, cwd=ROOT, timeout=300)
        for png in sorted(out.glob("*.png")):
            _SHOTS[f"img/{png.name}"] = png
    return _SHOTS


# -- mkdocs events -------------------------------------------------------------------------------
def generated_pages() -> dict[str, str]:
    pages = {"index.md": readme_opening(), "install.md": "# Install\n\n" + readme_section("Set up"),
             "cli.md": cli_page()}
    pages.update(ops_pages())
    pages.update(rule_pages())
    return pages


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Put every rule page into the nav, under the rule index."""
    for entry in config.nav or []:
        if isinstance(entry, dict) and "Linter rules" in entry:
            entry["Linter rules"] = ["rules/index.md", *(f"rules/{r.code}.md" for r in rules())]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for uri, text in generated_pages().items():
        files.append(File.generated(config, uri, content=text))
    if os.environ.get("FLOATGUARD_DOCS_NO_SCREENSHOTS") == "1":  # the quick build of tests/test_docs.py
        for name in SCREENSHOTS:
            files.append(File.generated(config, f"img/{name}", content=_BLANK_PNG))
    else:
        for uri, path in screenshots().items():
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace ``{{ readme("Title") }}`` with that README section."""
    return re.sub(r"\{\{\s*readme\(\"([^\"]+)\"\)\s*\}\}", lambda m: readme_section(m.group(1)), markdown)
