"""The command line: exit codes, noqa, configuration, output formats, fixes written safely."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from floatguard.events import Event
from floatguard.lint import fix_source, lint_paths, lint_source
from floatguard.lint.cli import main
from floatguard.lint.rules import all_rules

BUGGY = """\
import torch
import torch.nn.functional as F


def loss_fn(logits, z, y):
    # the log-partition, written by hand
    lse = torch.log(torch.sum(torch.exp(logits), dim=-1))   # keep this comment
    logp = torch.log(F.softmax(logits, dim=-1))
    ell = torch.log(1 - torch.exp(z))
    return lse, logp, ell
"""
CLEAN = "import torch\n\n\ndef f(x):\n    return torch.logsumexp(x, dim=-1)\n"
LINE = re.compile(r"^(?P<path>.+):(?P<line>\d+):(?P<col>\d+): (?P<code>FG\d{3}) .+$")


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- exit status and text format ------------------------------------------------------------------

def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.py", BUGGY)
    good = write(tmp_path, "good.py", CLEAN)
    assert run_cli(capsys, str(good))[0] == 0
    code, out, _ = run_cli(capsys, str(bad))
    assert code == 1
    rows = [LINE.match(line) for line in out.splitlines() if line.startswith(str(bad))]
    assert [(m["line"], m["code"]) for m in rows if m] == [("7", "FG101"), ("8", "FG102"), ("9", "FG108")]
    assert rows[0] is not None and rows[0]["col"] == "11"
    assert run_cli(capsys, str(bad), "--exit-zero")[0] == 0
    for argv in (["--select", "FG999", str(bad)], [str(tmp_path / "missing.py")], ["--format", "xml", str(bad)],
                 ["--explain", "FG999"], ["--bogus"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert err


def test_select_and_ignore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.py", BUGGY)
    _, out, _ = run_cli(capsys, str(bad), "--select", "FG102,FG108")
    assert {m["code"] for m in map(LINE.match, out.splitlines()) if m} == {"FG102", "FG108"}
    _, out, _ = run_cli(capsys, str(bad), "--ignore", "FG1")
    assert run_cli(capsys, str(bad), "--ignore", "FG1")[0] == 0


def test_explain_prints_the_rule_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--explain", "fg101")
    assert code == 0
    assert out.startswith("FG101 (log-sum-exp)")
    for heading in ("## What it does", "## Why is this bad?", "## Example", "## Use instead", "## Fix safety"):
        assert f"\n{heading}\n" in out, heading
    assert out.index("## Example") < out.index("## Use instead")
    assert "torch.logsumexp" in out.split("## Use instead")[1]
    code, out, _ = run_cli(capsys, "--list-rules")
    assert code == 0 and len(out.splitlines()) == len(all_rules())


def test_module_entry_point(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.py", BUGGY)
    proc = subprocess.run([sys.executable, "-m", "floatguard.lint", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"{bad}:7:11: FG101" in proc.stdout


# -- noqa and configuration -------------------------------------------------------------------------

def test_noqa() -> None:
    src = (
        "import numpy as np\n"
        "a = np.log(1 + x)  # noqa\n"
        "b = np.log(1 + x)  # noqa: FG106\n"
        "c = np.log(1 + x)  # NOQA:FG101,FG106\n"
        "d = np.log(1 + x)  # noqa: FG101\n"
        "e = np.log(1 + x)\n"
    )
    assert [e.line for e in lint_source(src)] == [5, 6]


def test_pyproject_config_found_walking_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "pyproject.toml", """
[project]
name = "demo"

[tool.floatguard.lint]
ignore = ["FG108"]

[tool.floatguard.lint.per-file-ignores]
"tests/*" = ["FG1"]
""")
    src = write(tmp_path, "pkg/sub/model.py", BUGGY)
    test = write(tmp_path, "tests/test_model.py", BUGGY)
    _, out, _ = run_cli(capsys, str(src), str(test))
    codes = {(m["path"], m["code"]) for m in map(LINE.match, out.splitlines()) if m}
    assert codes == {(str(src), "FG101"), (str(src), "FG102")}
    # the command line replaces the configured selection
    _, out, _ = run_cli(capsys, "--select", "FG108", str(src))
    assert "FG108" not in out  # still ignored by the configuration
    _, out, _ = run_cli(capsys, "--no-config", str(src))
    assert "FG108" in out


def test_pyproject_select_and_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "pyproject.toml", '[tool.floatguard.lint]\nselect = ["FG102"]\n')
    src = write(tmp_path, "m.py", BUGGY)
    _, out, _ = run_cli(capsys, str(src))
    assert {m["code"] for m in map(LINE.match, out.splitlines()) if m} == {"FG102"}
    write(tmp_path, "pyproject.toml", '[tool.floatguard.lint]\nselct = ["FG102"]\n')
    from floatguard.lint.config import _load, find_config

    _load.cache_clear()
    find_config.cache_clear()
    code, _, err = run_cli(capsys, str(src))
    assert code == 2 and "selct" in err


# -- formats -----------------------------------------------------------------------------------------

def test_json_is_a_list_of_shared_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.py", BUGGY)
    code, out, _ = run_cli(capsys, str(bad), "--format", "json")
    data = json.loads(out)
    assert code == 1 and isinstance(data, list) and len(data) == 3
    first = data[0]
    assert {"code", "kind", "file", "line", "col", "message", "hint", "fix"} <= set(first)
    assert (first["code"], first["kind"], first["source"], first["line"]) == ("FG101", "log-sum-exp", "lint", 7)
    assert first["fix"]["edits"][0]["text"] == "torch.logsumexp(logits, dim=-1)"
    assert Event.from_dict(first).to_dict() == first


def test_sarif_structure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.py", BUGGY)
    _, out, _ = run_cli(capsys, str(bad), "--format", "sarif")
    log = json.loads(out)
    assert log["version"] == "2.1.0" and "sarif" in log["$schema"]
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "floatguard"
    ids = [r["id"] for r in driver["rules"]]
    assert len(ids) == len(set(ids)) == len(all_rules())
    for r in driver["rules"]:
        assert r["shortDescription"]["text"] and r["defaultConfiguration"]["level"] in ("none", "note", "warning",
                                                                                       "error")
    assert len(run["results"]) == 3
    for res in run["results"]:
        assert res["ruleId"] == ids[res["ruleIndex"]]
        assert res["level"] in ("none", "note", "warning", "error") and res["message"]["text"]
        (loc,) = res["locations"]
        phys = loc["physicalLocation"]
        assert phys["artifactLocation"]["uri"].endswith("bad.py")
        region = phys["region"]
        assert region["startLine"] >= 1 and region["startColumn"] >= 1
        assert (region["endLine"], region["endColumn"]) >= (region["startLine"], region["startColumn"])
        for fix in res.get("fixes", []):
            (change,) = fix["artifactChanges"]
            assert change["replacements"][0]["insertedContent"]["text"]


def test_github_annotations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.py", BUGGY)
    _, out, _ = run_cli(capsys, str(bad), "--format", "github")
    lines = out.splitlines()
    assert len(lines) == 3
    pat = re.compile(r"^::error file=[^,]+,line=(\d+),col=(\d+),endLine=\d+,endColumn=\d+,"
                     r"title=FG\d{3} \(.+\)::FG\d{3} ")
    assert all(pat.match(line) for line in lines), lines
    assert pat.match(lines[0]).group(1, 2) == ("7", "11")  # type: ignore[union-attr]


# -- fixes -------------------------------------------------------------------------------------------

def test_fix_round_trip_keeps_comments_and_formatting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.py", BUGGY)
    code, out, _ = run_cli(capsys, str(bad), "--fix")
    new = bad.read_text()
    # the two safe fixes use torch's own ops; FG108 has no torch op, so its fix adds floatguard: unsafe
    assert code == 1, out
    assert "2 fixed, 1 remaining" in out and "--unsafe-fixes" in out
    assert "lse = torch.logsumexp(logits, dim=-1)   # keep this comment" in new
    assert "    # the log-partition, written by hand\n" in new
    assert "logp = F.log_softmax(logits, dim=-1)" in new
    assert "ell = torch.log(1 - torch.exp(z))" in new
    assert "floatguard" not in new  # a safe fix adds no dependency
    assert new.startswith("import torch\nimport torch.nn.functional as F\n\n")
    ast.parse(new)
    assert [e.code for e in lint_source(new)] == ["FG108"]
    # untouched lines are byte for byte the same
    old_lines, new_lines = BUGGY.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    assert [a == b for a, b in zip(old_lines, new_lines, strict=True)] == [True] * 6 + [False, False] + [True] * 2
    code, out, _ = run_cli(capsys, str(bad), "--fix", "--unsafe-fixes")
    new = bad.read_text()
    assert code == 0, out
    assert "1 fixed, 0 remaining" in out
    assert "ell = floatguard.log1mexp(z)" in new
    assert lint_source(new) == []


def test_unsafe_fixes_need_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = "import torch\nimport torch.nn.functional as F\n\n\ndef loss_fn(x, y):\n    p = F.softmax(x, dim=1)\n" \
          "    return torch.log(p)\n"
    f = write(tmp_path, "u.py", src)
    code, out, _ = run_cli(capsys, str(f), "--fix")
    assert code == 1 and f.read_text() == src and "--unsafe-fixes" in out
    code, out, _ = run_cli(capsys, str(f), "--fix", "--unsafe-fixes")
    assert code == 0 and "return F.log_softmax(x, dim=1)" in f.read_text()


def test_fix_adds_the_imports_it_needs() -> None:
    src = "from torch import log, sigmoid\n\n\ndef f(z):\n    return log(sigmoid(z))\n"
    new, n, remaining = fix_source(src)
    assert n == 1 and remaining == []
    assert "import torch.nn.functional" in new and "return torch.nn.functional.logsigmoid(z)" in new
    ns: dict = {}
    exec(compile(new, "<fixed>", "exec"), ns)
    import torch

    assert torch.isfinite(ns["f"](torch.tensor([-200.0]))).all()


def test_fix_preserves_crlf(tmp_path: Path) -> None:
    src = BUGGY.replace("\n", "\r\n")
    f = tmp_path / "crlf.py"
    f.write_bytes(src.encode())
    lint_paths([f], fix="safe")
    data = f.read_bytes()
    assert b"torch.logsumexp" in data and data.count(b"\r\n") == data.count(b"\n")


def test_syntax_error_reported_and_left_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "import torch\ny = torch.log(torch.sum(torch.exp(x))\n"
    f = write(tmp_path, "broken.py", text)
    code, out, _ = run_cli(capsys, str(f), "--fix")
    assert code == 1
    m = LINE.match(out.splitlines()[0])
    assert m is not None and m["code"] == "FG000" and "SyntaxError" in out
    assert f.read_text() == text


def test_fix_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path, "bad.py", BUGGY)

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    (res,) = lint_paths([f], fix="safe")  # reported for this file; the run goes on
    assert res.fixed == 0 and res.events[0].code == "FG000" and "disk full" in res.events[0].message
    assert any(e.code == "FG101" for e in res.events)  # the findings still on disk
    assert f.read_text() == BUGGY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.py"]  # no temporary file left behind


def test_fix_keeps_file_mode(tmp_path: Path) -> None:
    f = write(tmp_path, "bad.py", BUGGY)
    f.chmod(0o640)
    lint_paths([f], fix="safe")
    assert f.stat().st_mode & 0o777 == 0o640 and "logsumexp" in f.read_text()


# -- walking, parallelism, integrations ---------------------------------------------------------------

def test_directories_parallel_equals_serial_and_skips_venvs(tmp_path: Path) -> None:
    for i in range(20):
        write(tmp_path, f"pkg/m{i}.py", BUGGY if i % 2 else CLEAN)
    write(tmp_path, ".venv/lib/x.py", BUGGY)
    write(tmp_path, "pkg/__pycache__/y.py", BUGGY)
    serial = lint_paths([tmp_path], jobs=1)
    parallel = lint_paths([tmp_path], jobs=2)
    key = sorted((r.path, e.line, e.code) for r in serial for e in r.events)
    assert key == sorted((r.path, e.line, e.code) for r in parallel for e in r.events)
    assert len(serial) == 20 and len(key) == 30


def test_parallel_lint_forks_only_without_threaded_libraries() -> None:
    """Forking a process with JAX's or PyTorch's thread pools can deadlock the children."""
    from floatguard.lint.engine import _start_method

    methods = ["fork", "spawn", "forkserver"]
    assert _start_method(methods, {"numpy", "libcst"}) == "fork"
    assert _start_method(methods, {"numpy", "jax"}) == "forkserver"
    assert _start_method(methods, {"torch"}) == "forkserver"
    assert _start_method(["spawn"], {"jax"}) is None  # the platform's default
    code = "import jax, floatguard.lint.engine as e; print(e._start_method(['fork', 'forkserver']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "forkserver"


def test_flake8_plugin() -> None:
    from floatguard.lint.flake8 import Plugin

    tree = ast.parse(BUGGY)
    rows = list(Plugin(tree, "bad.py", BUGGY.splitlines(keepends=True)).run())
    assert [(r[0], r[1], r[2][:5]) for r in rows] == [(7, 10, "FG101"), (8, 11, "FG102"), (9, 10, "FG108")]


def test_pre_commit_hook_definition() -> None:
    yaml = pytest.importorskip("yaml")
    hooks = yaml.safe_load((Path(__file__).parents[2] / ".pre-commit-hooks.yaml").read_text())
    ids = {h["id"]: h for h in hooks}
    assert {"floatguard-lint", "floatguard-lint-fix"} <= set(ids)
    for h in hooks:
        assert h["language"] == "python" and h["types_or"] == ["python", "pyi", "jupyter"] and "lint" in h["entry"]
    assert "--fix" in ids["floatguard-lint-fix"]["args"]
