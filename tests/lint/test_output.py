"""The lint output formats render one record: JSON, SARIF, GitHub and text show the same fix edits,
and applying the edits a format shows gives exactly the file ``--fix`` writes (issue 16, section 1)."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from floatguard.events import Edit, Event, Fix, apply_edits
from floatguard.lint import lint_paths, lint_source
from floatguard.lint.output import render, render_github, render_json, render_sarif, render_text

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted((CORPUS / "buggy").glob("*.py"))
LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")
MAX_PASSES = 8

SOURCE = "import numpy as np\n\n\ndef f(x):\n    return np.log(np.sum(np.exp(x)))\n"


def _offset(text: str, line: int, col: int) -> int:
    starts = [0] + [m.end() for m in LINE.finditer(text)]
    return starts[line - 1] + col - 1 if line <= len(starts) else len(text)


def _json_fixes(text: str, code: str) -> list[Fix]:
    """The fixes of the JSON output, read back from the JSON text."""
    return [Fix.from_dict(d["fix"]) for d in json.loads(render_json(lint_source(text, select=[code])))
            if d["fix"] is not None]


def _sarif_fixes(text: str, code: str) -> list[Fix]:
    """The fixes of the SARIF output, read back from its ``artifactChanges`` replacements."""
    (run,) = json.loads(render_sarif(lint_source(text, select=[code])))["runs"]
    out = []
    for res in run["results"]:
        for fx in res.get("fixes", []):
            (change,) = fx["artifactChanges"]
            edits = tuple(Edit(r["deletedRegion"]["startLine"], r["deletedRegion"]["startColumn"],
                               r["deletedRegion"]["endLine"], r["deletedRegion"]["endColumn"],
                               r["insertedContent"]["text"]) for r in change["replacements"])
            out.append(Fix(fx["description"]["text"], fx["properties"]["applicability"], edits))
    return out


def _compose(text: str, fixes: list[Fix]) -> str:
    """What one pass of ``--fix`` makes of ``fixes`` (as documented in lint/engine.fix_source): the fixes whose
    replacement does not overlap an earlier one, outermost first; their import insertions at one place merged
    into one, each ``import`` line once, sorted."""
    chosen: list[Fix] = []
    end = -1
    spans = sorted(fixes, key=lambda f: (_offset(text, f.edits[0].line, f.edits[0].col),
                                         -_offset(text, f.edits[0].end_line, f.edits[0].end_col)))
    for f in spans:
        if _offset(text, f.edits[0].line, f.edits[0].col) >= end:
            chosen.append(f)
            end = max(end, _offset(text, f.edits[0].end_line, f.edits[0].end_col))
    edits = [f.edits[0] for f in chosen]
    inserts: dict[tuple[int, int], list[str]] = {}
    for f in chosen:
        for d in f.edits[1:]:
            assert (d.line, d.col) == (d.end_line, d.end_col) and "import " in d.text  # the imports: insertions
            inserts.setdefault((d.line, d.col), []).append(d.text)
    for (line, col), texts in inserts.items():
        prefix = next((t[: len(t) - len(t.lstrip("\r\n"))] for t in texts if t != t.lstrip("\r\n")), "")
        body = sorted({ln for t in texts for ln in t.lstrip("\r\n").splitlines(keepends=True)})
        edits.append(Edit(line, col, line, col, prefix + "".join(body)))
    return apply_edits(text, edits)


def _apply_shown(text: str, code: str, read: str) -> str:
    """Apply, pass after pass, the fixes a format shows (``read``: json or sarif) until none is left."""
    for _ in range(MAX_PASSES):
        fixes = _json_fixes(text, code) if read == "json" else _sarif_fixes(text, code)
        if not fixes:
            break
        new = _compose(text, fixes)
        try:
            ast.parse(new)
        except SyntaxError:
            break
        if new == text:
            break
        text = new
    return text


def _cases() -> list[tuple[Path, str]]:
    out = []
    for p in FILES:
        codes = sorted({e.code for e in lint_source(p.read_text(), str(p)) if e.fix is not None and e.code})
        out += [(p, c) for c in codes]
    return out


CASES = _cases()


def test_the_corpus_exercises_fixes_of_many_rules() -> None:
    assert len({c for _, c in CASES}) >= 10 and len(CASES) >= 20


@pytest.mark.parametrize("read", ["json", "sarif"])
@pytest.mark.parametrize(("path", "code"), CASES, ids=[f"{p.stem}-{c}" for p, c in CASES])
def test_the_edits_a_format_shows_are_what_fix_writes(tmp_path: Path, path: Path, code: str, read: str) -> None:
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    (res,) = lint_paths([copy], select=(code,), fix="unsafe", use_config=False)
    written = copy.read_text()
    assert res.fixed >= 1 and written != path.read_text()
    assert _apply_shown(path.read_text(), code, read) == written


def test_an_import_a_fix_adds_is_an_edit_in_every_format() -> None:
    (e,) = lint_source("def f(x):\n    return x.exp().sum(-1).log()\n")
    assert e.fix is not None and len(e.fix.edits) == 2
    main, imp = e.fix.edits
    assert imp == Edit(1, 1, 1, 1, "import torch\n\n\n")  # two blank lines before the def, as ruff puts them
    assert (main.line, main.col) == (2, 12) and main.text == "torch.logsumexp(x, dim=-1)"
    (d,) = json.loads(render_json([e]))
    assert [Edit.from_dict(x) for x in d["fix"]["edits"]] == [main, imp]
    (res,) = json.loads(render_sarif([e]))["runs"][0]["results"]
    reps = res["fixes"][0]["artifactChanges"][0]["replacements"]
    assert [(r["deletedRegion"]["startLine"], r["deletedRegion"]["startColumn"], r["insertedContent"]["text"])
            for r in reps] == [(2, 12, main.text), (1, 1, "import torch\n\n\n")]
    text = render_text([e])
    assert '2:12-2:33 -> "torch.logsumexp(x, dim=-1)"' in text and '1:1 + "import torch\\n\\n\\n"' in text
    assert "import torch" in render_github([e])


def test_a_fix_that_rewrites_another_node_keeps_its_own_region() -> None:
    """FG401 is reported at the masked_fill call and rewrites only its fill value: every format gives the edit
    the value's span, not the finding's."""
    src = "import torch\n\n\ndef f(scores, mask):\n    return scores.masked_fill(mask == 0, -1e9)\n"
    (e,) = lint_source(src, select=["FG401"])
    assert e.fix is not None
    main = e.fix.edits[0]
    assert (e.line, e.col, e.end_line, e.end_col) == (5, 12, 5, 47)
    assert (main.line, main.col, main.end_line, main.end_col) == (5, 42, 5, 46) and "finfo" in main.text
    (res,) = json.loads(render_sarif([e]))["runs"][0]["results"]
    region = res["fixes"][0]["artifactChanges"][0]["replacements"][0]["deletedRegion"]
    assert (region["startLine"], region["startColumn"], region["endLine"], region["endColumn"]) == \
        (main.line, main.col, main.end_line, main.end_col)
    assert apply_edits(src, e.fix.edits) == src.replace("-1e9", main.text)
    assert '5:42-5:46 -> "' in render_text([e]) and "5:42-5:46" in render_github([e])


def test_json_is_the_records_and_reads_back() -> None:
    events = lint_source(SOURCE)
    data = json.loads(render_json(events))
    assert [Event.from_dict(d) for d in data] == events
    assert data[0]["end_line"] == 5 and data[0]["fix"]["applicability"] in ("safe", "unsafe")


def test_sarif_region_and_level_come_from_the_fields() -> None:
    (e,) = lint_source(SOURCE)
    (res,) = json.loads(render_sarif([e]))["runs"][0]["results"]
    region = res["locations"][0]["physicalLocation"]["region"]
    assert (region["startLine"], region["startColumn"], region["endLine"], region["endColumn"]) == \
        (e.line, e.col, e.end_line, e.end_col)
    assert res["level"] == {"error": "error", "warning": "warning", "info": "note"}[e.severity]


def test_github_annotation_has_the_span_and_escapes() -> None:
    e = Event(kind="k", source="lint", message="a: b, 100%\nnext", code="FG101", file="a,b.py", line=3, col=2,
              end_line=4, end_col=7)
    (line,) = render_github([e]).splitlines()
    assert line.startswith("::error file=a%2Cb.py,line=3,col=2,endLine=4,endColumn=7,title=FG101 (k)::")
    assert line.endswith("FG101 a: b, 100%25%0Anext")


def test_text_lines_summary_and_unsafe_count() -> None:
    fix = Fix("Replace with `y`", "unsafe", (Edit(1, 1, 1, 2, "y"),))
    e = Event(kind="k", source="lint", message="m", code="FG108", file="a.py", line=1, col=1, fix=fix)
    text = render_text([e])
    assert text.splitlines()[:2] == ["a.py:1:1: FG108 m", '    fix (unsafe): Replace with `y`: 1:1-1:2 -> "y"']
    assert "1 hidden fixes can be enabled with the --unsafe-fixes option" in text
    assert "[*] 1 fixable" in render_text([e], unsafe=True)
    assert render([e], "json") == render_json([e]) and render([e], "sarif") == render_sarif([e])


def test_a_notebook_fix_is_shown_in_cells_and_sarif_leaves_it_out() -> None:
    edits = (Edit(2, 5, 2, 9, "y", cell=3),)
    e = Event(kind="k", source="lint", message="m", code="FG101", file="n.ipynb", line=2, col=5, cell=3,
              fix=Fix("Replace with `y`", "safe", edits))
    assert 'cell 3:2:5-cell 3:2:9 -> "y"' in render_text([e]) and "n.ipynb:cell 3:2:5: FG101 m" in render_text([e])
    (res,) = json.loads(render_sarif([e]))["runs"][0]["results"]
    assert "fixes" not in res and res["message"]["text"].startswith("cell 3:")
