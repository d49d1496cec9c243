"""Jupyter notebooks: code cells checked as one module, findings by cell, fixes written back, IPython kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from floatguard.lint import lint_paths
from floatguard.lint.cli import main


def _cell(kind: str, text: str) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "metadata": {}, "source": text.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


CELLS = [
    _cell("code", "import torch\nimport numpy as np\nx = torch.randn(3)\n%matplotlib inline"),
    _cell("markdown", "# log(sum(exp(x))) is unstable: torch.log(torch.softmax(x, 0))"),
    _cell("code", "p = torch.log(torch.softmax(x, dim=0))\n%timeit x + 1\nfiles = !ls\nfor i in range(2):\n"
                  "    !echo hi\n    q = np.log(np.sum(np.exp(x.numpy())))\ntorch.softmax?"),
    _cell("code", "%%bash\necho log(sum(exp(x)))\n"),
    _cell("code", "%%time\nr = torch.log(torch.sigmoid(x))  # noqa: FG117\ns = torch.log(torch.sigmoid(x))"),
]


def _notebook(tmp_path: Path, cells: list[dict[str, Any]] = CELLS, lang: str = "python",
              name: str = "nb.ipynb") -> Path:
    nb = {"cells": cells, "metadata": {"language_info": {"name": lang}, "kernelspec": {"name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    p = tmp_path / name
    p.write_text(json.dumps(nb, indent=1))
    return p


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_findings_are_located_by_cell_across_ipython_syntax(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nb = _notebook(tmp_path)
    code, out = _run(capsys, "--select", "DEFAULT,FG117", str(nb))  # FG117 (log of sigmoid) is opt-in
    assert code == 1
    # torch and np come from the first cell; magics, shell escapes and help queries are not syntax errors;
    # the markdown and the %%bash cell are not Python; the noqa comment holds
    assert [ln for ln in out.splitlines() if not ln.startswith("    fix ")][:3] == [
        f"{nb}:cell 3:1:5: FG102 log of softmax underflows to -inf when a probability rounds to 0",
        f"{nb}:cell 3:6:9: FG101 log(sum(exp(x))) overflows for large x and underflows for very negative x",
        f"{nb}:cell 5:3:5: FG117 log of sigmoid underflows to -inf for very negative inputs",
    ]
    assert "Found 3 errors." in out
    (res,) = lint_paths([tmp_path], select=("DEFAULT", "FG117"))  # directories: notebooks are walked too
    found = [(e.cell, e.line, e.code) for e in res.events]
    assert found == [(3, 1, "FG102"), (3, 6, "FG101"), (5, 3, "FG117")]
    assert res.events[0].end_line == 1
    assert res.events[0].location == f"{nb}:cell 3:1:5"  # what every reporter (floatguard report) shows


def test_fix_rewrites_only_the_cells_it_fixes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nb = _notebook(tmp_path)
    before = json.loads(nb.read_text())
    code, out = _run(capsys, "--fix", "--select", "DEFAULT,FG117", str(nb))
    assert code == 0 and "3 fixed, 0 remaining" in out
    after = json.loads(nb.read_text())
    src = ["".join(c["source"]) for c in after["cells"]]
    # the notebook's own frameworks' ops: no import added (the first cell is untouched, below)
    assert src[2] == ("p = torch.log_softmax(x, dim=0)\n%timeit x + 1\nfiles = !ls\nfor i in range(2):\n"
                      "    !echo hi\n    q = np.logaddexp.reduce(x.numpy(), axis=None)\ntorch.softmax?")
    assert src[4].endswith("# noqa: FG117\ns = torch.nn.functional.logsigmoid(x)")
    for i in (0, 1, 3):  # untouched: the imports, the markdown and the bash cell
        assert after["cells"][i] == before["cells"][i]
    assert {k: v for k, v in after.items() if k != "cells"} == {k: v for k, v in before.items() if k != "cells"}
    assert _run(capsys, str(nb))[0] == 0


def test_a_fix_import_goes_after_a_cell_magic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nb = _notebook(tmp_path, [_cell("code", "%%time\nlse = x.exp().sum(-1).log()")])  # no import: the fix adds one
    assert _run(capsys, "--fix", str(nb))[0] == 0
    src = "".join(json.loads(nb.read_text())["cells"][0]["source"])
    # the cell magic stays first; a blank line after the import block, as isort/ruff want it
    assert src == "%%time\nimport torch\n\nlse = torch.logsumexp(x, dim=-1)"


def test_unreadable_foreign_and_broken_notebooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r_nb = _notebook(tmp_path, lang="R", name="r.ipynb")
    assert _run(capsys, str(r_nb)) == (0, "")  # not Python: nothing to check
    junk = tmp_path / "junk.ipynb"
    junk.write_text("{not json")
    code, out = _run(capsys, str(junk))
    assert code == 1 and "FG000 cannot read notebook" in out
    broken = _notebook(tmp_path, [_cell("code", "import torch\n"), _cell("code", "y = (1,\n")], name="broken.ipynb")
    code, out = _run(capsys, "--format", "json", str(broken))
    (e,) = json.loads(out)
    assert e["code"] == "FG000" and e["cell"] == 2 and "SyntaxError" in e["message"]


def test_machine_formats_name_the_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nb = _notebook(tmp_path)
    _, out = _run(capsys, "--format", "github", str(nb))
    assert "line=1,col=5,endLine=1" in out.splitlines()[0] and "::cell 3: FG102" in out.splitlines()[0]
    _, out = _run(capsys, "--format", "sarif", str(nb))
    first = json.loads(out)["runs"][0]["results"][0]
    assert first["message"]["text"].startswith("cell 3: log of softmax")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_continued_shell_escape_is_not_a_syntax_error(tmp_path: Path, newline: str) -> None:
    """``!cmd \\`` goes on in the next line (IPython joins them): neither line is Python (issue 11, section 3)."""
    text = newline.join(["!pip install \\", "    numpy \\", "    scipy", "import numpy as np",
                         "if True:", "    !ls \\", "      -l", "    files = !find . \\", "        -name x",
                         "    y = np.log(np.sum(np.exp(np.ones(3))))"])
    nb = _notebook(tmp_path, [_cell("code", text)])
    (res,) = lint_paths([nb])
    assert [(e.code, e.cell, e.line) for e in res.events] == [("FG101", 1, 10)]


def test_a_notebook_fix_is_located_in_cells(tmp_path: Path) -> None:
    nb = _notebook(tmp_path, [_cell("code", "import torch\nx = 1"), _cell("code", "y = torch.log(torch.sigmoid(x))")])
    (res,) = lint_paths([nb], select=("FG117",))
    (e,) = res.events
    assert (e.cell, e.line, e.col, e.end_line) == (2, 1, 5, 1) and e.fix is not None
    assert [(d.cell, d.line, d.col, d.end_line, d.end_col) for d in e.fix.edits] == [(2, 1, 5, 1, 32)]
