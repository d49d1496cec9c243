"""The linter never writes a wrong fix or damages a file (issue 14, section 1).

Promise: ``floatguard lint --fix`` leaves every file either as it was or with exactly the
fixed expressions replaced (and the imports they need added); every other byte stays
as it was; a file it cannot check is reported as ``FG000`` and the run goes on.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from floatguard.lint import fix_source, lint_paths, lint_source
from floatguard.lint.engine import lint_file
from floatguard.lint.fixes import split_lines
from floatguard.lint.output import render_json, render_sarif

NAIVE = "np.log(np.exp(z).sum())"
FIXED = "np.logaddexp.reduce(z, axis=None)"  # NumPy's own op: no import added
# a fix that adds an import: `log`/`exp` imported from NumPy by name, the fix spells `numpy.logaddexp`
NAIVE_FROM = "log(exp(z).sum())"
FIXED_FROM = "numpy.logaddexp.reduce(z, axis=None)"


def _run_fn(src: str, name: str, *args: object) -> Any:  # what the executed code returns: anything
    ns: dict[str, Any] = {}
    exec(compile(src, "<t>", "exec"), ns)
    return ns[name](*args)


# -- 1. line mapping: lines are counted as ast counts them ------------------------------------------------

@pytest.mark.parametrize("sep", ["\x0c", "\x85", "\u2028", "\x0b", "\x1c"])
def test_a_line_break_python_does_not_count_does_not_shift_the_fix(sep: str) -> None:
    # the odd character sits in a comment (and a form feed also on a line of its own, as in the issue)
    src = (f"import numpy as np\n\nk = 1  # a{sep}b\n" + ("\x0c\n" if sep == "\x0c" else "")
           + f"\ndef f(z):\n    return {NAIVE}\n")
    new, n, left = fix_source(src)
    assert n == 1 and not left
    assert f"return {FIXED}\n" in new
    z = np.array([1.0, 700.0, -3.0])
    assert np.allclose(_run_fn(new, "f", z), np.logaddexp.reduce(z))
    (ev,) = lint_source(src)
    assert ev.line == src.split("\n").index(f"    return {NAIVE}") + 1
    assert ev.fix is not None and ev.fix.replacement == FIXED
    assert json.loads(render_json([ev]))[0]["fix"]["edits"][0]["text"] == FIXED


def test_noqa_is_read_on_the_line_ast_reports() -> None:
    src = f"import numpy as np\n\x0c\ndef f(z):\n    a = {NAIVE}  # noqa: FG101\n    return {NAIVE}\n"
    assert [e.line for e in lint_source(src)] == [5]


def test_split_lines_matches_the_tokenizer() -> None:
    src = "a = 1\r\nb = 2\rc = 3  # \x0c\x85\u2028\u2029\x1d\nd = 4"
    lines = split_lines(src)
    assert "".join(lines) == src and len(lines) == 4
    assert [n.lineno for n in ast.parse(src).body] == [1, 2, 3, 4]


# -- 2. byte fidelity: fixes are edits of the original text -----------------------------------------------

def test_form_feed_before_a_def_and_a_final_cr_are_kept(tmp_path: Path) -> None:
    src = f"from numpy import exp, log\r\x0c\rdef f(z):\r    return {NAIVE_FROM}\r"  # a CR-only file
    f = tmp_path / "cr.py"
    f.write_bytes(src.encode())
    (res,) = lint_paths([f], fix="safe")
    assert res.fixed == 1
    # the added import in isort's place (`import numpy` before `from numpy import ...`), with the file's line end
    assert f.read_bytes() == (f"import numpy\rfrom numpy import exp, log\r\x0c\rdef f(z):\r"
                              f"    return {FIXED_FROM}\r").encode()


def _apply_sarif(src: str, sarif: str) -> str:
    """Apply a SARIF log's replacements (1-based lines as ast counts them, character columns) to ``src``."""
    lines = split_lines(src)
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln))

    def off(line: int, col: int) -> int:
        return starts[line - 1] + col - 1 if line <= len(lines) else len(src)

    reps = []
    for res in json.loads(sarif)["runs"][0]["results"]:
        for fx in res.get("fixes", []):
            for ch in fx["artifactChanges"]:
                for r in ch["replacements"]:
                    d = r["deletedRegion"]
                    reps.append((off(d["startLine"], d["startColumn"]), off(d["endLine"], d["endColumn"]),
                                 r["insertedContent"]["text"]))
    for a, b, text in sorted(reps, reverse=True):
        src = src[:a] + text + src[b:]
    return src


@pytest.mark.parametrize("src", [
    f"import numpy as np\n\x0c\ndef f(z):\n    return {NAIVE}\n",
    "import torch\r\n\r\ndef f(x, t):\r\n    y = torch.sigmoid(x)\r\n"
    "    return torch.nn.functional.binary_cross_entropy(y, t)",
    '"""doc."""\nimport torch\n\ndef f(h):\n    return torch.log(torch.sigmoid(h))  # é\n',
])
def test_sarif_fixes_are_the_edits_fix_writes(src: str) -> None:
    events = lint_source(src)
    assert any(e.fix for e in events)
    expected, n, _ = fix_source(src, unsafe=True)  # SARIF carries the unsafe fixes too
    assert n >= 1
    assert _apply_sarif(src, render_sarif(events)) == expected


_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nl=_ENDS, bom=st.booleans(), latin=st.booleans(), final=st.booleans(), tabs=st.booleans(),
       odd=st.lists(st.sampled_from(["\x0c", "\u2028", "\x85", "\x0b", "é"]), max_size=3))
def test_fuzz_fix_changes_only_the_fixed_spans(tmp_path: Path, nl: str, bom: bool, latin: bool, final: bool,
                                               tabs: bool, odd: list[str]) -> None:
    if latin:
        bom = False
        odd = [c for c in odd if c in "\x0c\x0bé"]
    ind = "\t" if tabs else "    "
    comment = "# " + "".join(odd) + " x"
    body = [*(["# -*- coding: latin-1 -*-"] if latin else []), "from numpy import exp, log", comment,
            *(["\x0c"] if "\x0c" in odd else []), "def f(z):", f"{ind}{comment}", f"{ind}a = {NAIVE_FROM}",
            f"{ind}return a + 0.0  {comment}"]
    text = nl.join(body) + (nl if final else "")
    enc = "latin-1" if latin else "utf-8"
    data = ("\ufeff" if bom else "").encode("utf-8") + text.encode(enc)
    f = tmp_path / "fz.py"
    f.write_bytes(data)
    (res,) = lint_paths([f], fix="safe", use_config=False)
    new = f.read_bytes()
    assert res.fixed == 1, res.events
    compile(new, "fz.py", "exec")
    # every byte outside the fix and the import it adds is as it was
    assert f"import numpy{nl}".encode() in new
    assert new.replace(f"import numpy{nl}".encode(), b"", 1).replace(FIXED_FROM.encode(), NAIVE_FROM.encode()) == data
    (again,) = lint_paths([f], fix="safe", use_config=False)
    assert again.fixed == 0 and f.read_bytes() == new
    z = np.array([0.5, 30.0, -2.0])
    before = _run_fn(data.decode(enc).lstrip("\ufeff"), "f", z)
    after = _run_fn(new.decode(enc).lstrip("\ufeff"), "f", z)
    assert type(before) is type(after) and np.allclose(before, after)


# -- 3. no LibCST: --fix works from the text alone --------------------------------------------------------

def test_fix_needs_no_libcst(tmp_path: Path) -> None:
    f = tmp_path / "a.py"
    f.write_text(f"import numpy as np\n\ndef f(z):\n    return {NAIVE}\n")
    code = ("import sys; sys.modules['libcst'] = None\n"  # `import libcst` raises ImportError
            "from floatguard.lint.cli import main\nraise SystemExit(main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(f), "--fix", "--no-config"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert FIXED in f.read_text() and "1 fixed, 0 remaining" in out.stdout


# -- 4. recursion: one FG000 for the file, the run goes on ------------------------------------------------

@pytest.mark.parametrize("terms", [1000, 3000])
def test_a_deeply_nested_file_is_one_fg000_and_the_rest_goes_on(tmp_path: Path, terms: int) -> None:
    deep = tmp_path / "a_deep.py"
    deep_src = "import torch\n\ndef f(a):\n    return " + "a+" * terms + "torch.log(torch.sum(torch.exp(a)))\n"
    deep.write_text(deep_src)
    ok = tmp_path / "b_ok.py"
    ok.write_text(f"import numpy as np\n\ndef f(z):\n    return {NAIVE}\n")
    # Python's default limit (another test's import, torch._dynamo say, may have raised it in this process)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        # ALL: FG403 (opt-in) walks the long sum recursively, the way that once hit the limit
        res = {Path(r.path).name: r for r in lint_paths([tmp_path], fix="safe", use_config=False, jobs=1,
                                                        select=("ALL",))}
    finally:
        sys.setrecursionlimit(limit)
    assert [e.code for e in res["a_deep.py"].events] == ["FG000"]
    assert "deeply" in res["a_deep.py"].events[0].message or "SyntaxError" in res["a_deep.py"].events[0].message
    assert deep.read_text() == deep_src  # not rewritten
    assert res["b_ok.py"].fixed == 1 and FIXED in ok.read_text()


# -- 5. links: written through to the target --------------------------------------------------------------

BUGGY = f"import numpy as np\n\n\ndef f(z):\n    return {NAIVE}\n"


def test_fix_through_a_symlink_fixes_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real.py"
    target.write_text(BUGGY)
    target.chmod(0o640)
    (tmp_path / "sub").mkdir()
    link = tmp_path / "sub" / "link.py"
    link.symlink_to(target)
    (res,) = lint_paths([link], fix="safe", use_config=False)
    assert res.fixed == 1
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert FIXED in target.read_text() and target.stat().st_mode & 0o777 == 0o640


def test_fix_of_a_hard_linked_file_keeps_the_links(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text(BUGGY)
    b = tmp_path / "b.py"
    os.link(a, b)
    (res,) = lint_paths([a], fix="safe", use_config=False)
    assert res.fixed == 1
    assert os.path.samefile(a, b) and a.stat().st_nlink == 2 and FIXED in b.read_text()


# -- 6. an edit between reading and writing is never lost -------------------------------------------------

def test_an_edit_made_while_fixing_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import floatguard.lint.engine as engine

    f = tmp_path / "a.py"
    f.write_text(BUGGY)
    user = BUGGY + "# typed in the editor meanwhile\n"
    real = engine.fix_source

    def slow_fix(*args: object, **kwargs: object) -> object:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        f.write_text(user)  # the editor saves while the fixes are being computed
        return out

    monkeypatch.setattr(engine, "fix_source", slow_fix)
    res = lint_file(f, fix="safe")
    assert f.read_text() == user
    assert res.fixed == 0 and res.events[0].code == "FG000" and "changed on disk" in res.events[0].message


def test_an_edit_of_the_same_size_is_caught_by_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import floatguard.lint.engine as engine

    f = tmp_path / "a.py"
    f.write_text(BUGGY)
    st = f.stat()
    user = BUGGY.replace("z", "w")
    real = engine.fix_source

    def slow_fix(*args: object, **kwargs: object) -> object:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        f.write_text(user)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # an editor that keeps the time stamp
        return out

    monkeypatch.setattr(engine, "fix_source", slow_fix)
    res = lint_file(f, fix="safe")
    assert f.read_text() == user and res.fixed == 0


# -- 9. notebooks: IPython syntax only where a statement starts --------------------------------------------

def _nb(tmp_path: Path, *cells: str) -> Path:
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": c.splitlines(keepends=True)} for c in cells],
          "metadata": {"language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    p = tmp_path / "nb.ipynb"
    p.write_text(json.dumps(nb))
    return p


def test_a_percent_continuing_an_expression_is_not_a_magic(tmp_path: Path) -> None:
    nb = _nb(tmp_path, "import torch\na, b = 7, 3\ny = (a\n% b)\nz = [1 +\n  2\n  %b]\n%time x = 1",
             "w = torch.log(torch.sigmoid(a))")
    (res,) = lint_paths([nb], use_config=False, select=("FG117",))
    assert [(e.code, e.cell, e.line) for e in res.events] == [("FG117", 2, 1)]


def test_shell_escape_continuation_lines_are_not_python(tmp_path: Path) -> None:
    nb = _nb(tmp_path, "import torch\n!pip install \\\n    torch \\\n    numpy\nx = torch.randn(3)\n"
                       "if x.sum() > 0:\n    !echo a \\\n      b\n    y = torch.log(torch.sigmoid(x))")
    (res,) = lint_paths([nb], use_config=False, select=("FG117",))
    assert [(e.code, e.line) for e in res.events] == [("FG117", 9)]
    fixed = nb.read_text()
    lint_paths([nb], fix="safe", use_config=False, select=("FG117",))
    cell = "".join(json.loads(nb.read_text())["cells"][0]["source"])
    assert "!pip install \\\n    torch \\\n    numpy\n" in cell and "!echo a \\\n      b\n" in cell
    assert nb.read_text() != fixed and "logsigmoid" in cell
