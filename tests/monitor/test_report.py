"""``floatguard report``: the HTML page (checked in headless Chromium) and the terminal summary."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")

from monitor_programs import dead_relu_bias, exploding_lr, healthy_mlp_adam
from rich.console import Console

from floatguard.monitor import read_log
from floatguard.monitor.cli import add_report_arguments, run_report
from floatguard.monitor.report import print_summary, render_html, write_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
                  "--v=0"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is required to check the HTML report and is not installed: "
                    "apt-get install -y chromium (.ci/run installs it)")
    return exe


def _browse(page: Path, tmp: Path, *action: str) -> tuple[str, list[str]]:
    """Open ``page`` in headless Chromium; returns stdout and the console messages it logged."""
    proc = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *action,
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def _report(tmp_path: Path, program=exploding_lr) -> tuple[Path, Path]:
    log = tmp_path / "run.jsonl"
    program(log=log)
    out = tmp_path / "report.html"
    write_report(log, out)
    return log, out


def test_report_renders_in_chromium_without_console_errors(tmp_path: Path) -> None:
    _, page = _report(tmp_path)
    dom, console = _browse(page, tmp_path, "--dump-dom")
    assert console == [], console
    assert dom.count("<svg") >= 4  # loss, gradient norms, update ratios, activations
    assert len(re.findall(r'<path d="M', dom)) >= 5  # drawn lines
    for kind in ("diverging_loss", "exploding_gradient", "nonfinite_loss"):
        assert f'class="mk">{kind}</text>' in dom  # marked on the timeline
    assert "remedy:" in dom and "Lower the learning rate" in dom
    shot = tmp_path / "shot.png"
    _, console = _browse(page, tmp_path, "--window-size=1200,1600", f"--screenshot={shot}")
    assert console == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one


def test_console_errors_would_be_caught(tmp_path: Path) -> None:
    """The check above can fail: a page with a script error is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    _, console = _browse(bad, tmp_path, "--dump-dom")
    assert any("undefinedFunction" in line for line in console)


def test_report_is_self_contained(tmp_path: Path) -> None:
    _, page = _report(tmp_path, dead_relu_bias)
    text = page.read_text()
    assert "<script" not in text and not re.search(r'(src|href)\s*=\s*"(?!#)', text)
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "dead_units" in text and "Update ratio" in text and "Activations" in text


def test_healthy_report_says_so(tmp_path: Path) -> None:
    log = tmp_path / "ok.jsonl"
    healthy_mlp_adam(log=log)
    page = render_html(read_log(log))
    assert "No findings" in page and 'class="mk"' not in page


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_the_report_and_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.jsonl"
    exploding_lr(log=log)
    assert run_report(_args(str(log))) == 0
    assert (tmp_path / "run.html").exists()  # default output: next to the log
    out = capsys.readouterr().out
    assert "3 findings" in out and "exploding_gradient" in out and "remedy" in out
    assert run_report(_args(str(log), "-o", str(tmp_path / "x.html"), "-q")) == 0
    assert capsys.readouterr().out == "" and (tmp_path / "x.html").exists()


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_report(_args(str(tmp_path / "missing.jsonl"))) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"type":"start","layers":[]}\n')
    assert run_report(_args(str(empty))) == 1
    assert "no such log" in capsys.readouterr().err


def test_summary_plain_when_not_a_terminal(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    exploding_lr(log=log)
    path = tmp_path / "summary.txt"
    with open(path, "w") as fh:
        print_summary(read_log(log).findings, Console(file=fh, width=100), steps=60)
    text = path.read_text()
    assert "\x1b[" not in text and "60 steps, 3 findings" in text and "diverging_loss" in text


def test_long_runs_are_decimated(tmp_path: Path) -> None:
    log = tmp_path / "long.jsonl"
    with open(log, "w") as fh:
        fh.write('{"type":"start","layers":["a"],"first_step":0}\n')
        for t in range(20000):
            fh.write(f'{{"type":"step","step":{t},"loss":{1 + (t % 7) / 10},"grad_norm":1.0}}\n')
    page = render_html(read_log(log))
    assert len(page) < 400_000 and os.path.getsize(log) > 1_000_000


# -- findings files of the other tools: one reporter for every event -------------------------------------
def _sanitizer_findings(path: Path) -> None:
    import torch

    from floatguard.sanitize import detect

    with detect(action="record") as d:
        torch.log(torch.softmax(torch.tensor([[0.0, 200.0, 3.0]]), -1))  # L:report_softmax
    path.write_text(d.report.to_json())


def test_report_renders_sanitizer_and_lint_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from floatguard import cli

    san = tmp_path / "sanitize.json"
    _sanitizer_findings(san)
    assert run_report(_args(str(san))) == 0
    out = capsys.readouterr().out
    assert "aten::_softmax" in out and "underflow" in out and "div_by_zero" in out and "log_softmax" in out
    page = (tmp_path / "sanitize.html").read_text()
    line = next(i for i, t in enumerate(Path(__file__).read_text().splitlines(), 1) if "L:report_softmax" in t)
    assert f"test_report.py:{line}" in page and "aten::log" in page and "input0" in page  # where, op, stats table
    assert "<script" not in page and not re.search(r'(src|href)\s*=\s*"(?!#)', page)

    code = tmp_path / "code.py"
    code.write_text("import numpy as np\n\n\ndef lse(x):\n    return np.log(np.sum(np.exp(x)))\n")
    assert cli.main(["lint", "--format", "json", str(code)]) == 1
    lint = tmp_path / "lint.json"
    lint.write_text(capsys.readouterr().out)
    assert run_report(_args(str(lint), "-o", str(tmp_path / "lint.html"))) == 0
    out = capsys.readouterr().out
    assert "FG101" in out and "lint" in out
    page = (tmp_path / "lint.html").read_text()
    assert "code.py:5:12" in page and "floatguard.logsumexp(x)" in page  # where, and the fix
    dom, console = _browse(tmp_path / "lint.html", tmp_path, "--dump-dom")
    assert console == [] and "FG101" in dom


def test_report_refuses_a_findings_file_with_a_foreign_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "bad.json"
    bad.write_text('{"events": [{"kind": "nan", "source": "sanitize", "message": "m", "colour": "red"}]}')
    assert run_report(_args(str(bad))) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "not a list of floatguard events" in err and "unknown field(s) ['colour']" in err
