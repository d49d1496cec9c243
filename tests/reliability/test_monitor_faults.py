"""The monitor never loses a record or stops training (issue 14, section 2).

Promise: a monitor log loses at most its last line (the one a crash cut short); a
resumed run starts on a fresh line; a log that cannot be written (a full disk, a file
size limit) warns once, naming the file, and training goes on with every finding kept
in memory; ``floatguard report`` reads past bad lines and says how many it skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from floatguard.cli import main  # noqa: E402
from floatguard.monitor import Monitor, read_log  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def _train(log: Path | str, steps: int, *, nan_at: int | None = None, seed: int = 0) -> Monitor:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    mon = Monitor(model, opt, log=log, live=False)
    for t in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if t == nan_at:
            loss = loss * float("nan")
        loss.backward()
        mon.step(loss)
        opt.step()
    mon.close()
    return mon


# -- 1. resuming after a torn last line --------------------------------------------------------------
@pytest.mark.parametrize("torn", ['{"type":"step","step":3,"loss":0.5,"gr', '{"type":"st', "x"])
def test_resume_after_a_torn_line_starts_on_a_fresh_line(tmp_path: Path, torn: str) -> None:
    log = tmp_path / "run.jsonl"
    _train(log, 3)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(torn)  # the crash cut the last line short
    _train(log, 2, seed=1)
    lines = log.read_text().splitlines()
    assert torn in lines  # the torn line stays alone on its line: the only loss
    run = read_log(log)
    assert len(run.starts) == 2 and run.starts[1]["resumed"] is True
    assert run.starts[1]["first_step"] == 3  # numbering continues after the last whole step
    assert [r["step"] for r in run.steps] == [0, 1, 2, 3, 4]
    assert run.skipped == 1 and run.ended


# -- 2. a log that cannot be written -------------------------------------------------------------------
def test_dev_full_warns_once_naming_the_file_and_training_goes_on() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = _train("/dev/full", 12, nan_at=10)
    ours = [w for w in caught if "/dev/full" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "training goes on" in str(ours[0].message)
    assert mon.steps == 12
    assert any(e.kind == "nonfinite_loss" and e.step == 10 for e in mon.findings)


def test_an_unopenable_log_is_refused_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"file/run\.jsonl"):
        _train(blocker / "run.jsonl", 1)  # its folder is a file


_FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys, warnings
    sys.path.insert(0, {src!r})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))
    import torch
    from torch import nn
    from floatguard.monitor import Monitor
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    mon = Monitor(model, opt, log={log!r}, live=False)
    for t in range(200):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if t == 190:
            loss = loss * float("nan")
        loss.backward()
        mon.step(loss)
        opt.step()
    found = mon.close()
    print(json.dumps({{"steps": mon.steps, "kinds": [[e.kind, e.step] for e in found]}}))
""")


def test_a_file_size_limit_mid_run_does_not_stop_training(tmp_path: Path) -> None:
    pytest.importorskip("resource")
    log = tmp_path / "run.jsonl"
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK.format(src=str(SRC), log=str(log)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["steps"] == 200
    assert ["nonfinite_loss", 190] in out["kinds"]  # found after the log stopped: kept in memory
    assert proc.stderr.count("cannot write the log") == 1 and str(log) in proc.stderr
    assert 0 < log.stat().st_size <= 6000
    run = read_log(log)  # what was written stays readable: at most the last line is torn
    assert run.steps and run.skipped <= 1
    assert [r["step"] for r in run.steps] == list(range(len(run.steps)))


# -- 3. floatguard report past bad lines -----------------------------------------------------------------
def _report(log: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["report", str(log), "-o", str(log.with_suffix(".html")), "-q"])
    return code, " ".join(capsys.readouterr().err.split())


def test_report_skips_an_invalid_utf8_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.jsonl"
    _train(log, 30, nan_at=25)
    lines = log.read_bytes().splitlines(keepends=True)
    lines[7] = lines[7].replace(b'"step"', b'"st\xffep"')
    log.write_bytes(b"".join(lines))
    code, err = _report(log, capsys)
    assert code == 0, err
    assert "1 line skipped" in err
    run = read_log(log)
    assert run.skipped == 1 and len(run.steps) == 29
    assert any(e.kind == "nonfinite_loss" for e in run.findings)
    assert "nonfinite_loss" in log.with_suffix(".html").read_text(encoding="utf-8")


@pytest.mark.parametrize("bad", ['{"type":"step","step":"x","loss":1.0,"grad_norm":1.0}',
                                 '{"type":"step","step":5,"loss":"big","grad_norm":1.0}',
                                 '{"type":"step","step":5,"loss":1.0,"grad_norm":1.0,"grad":"x"}',
                                 '{"type":"step","step":5,"loss":1.0,"grad_norm":1.0,"act":{"a":1}}',
                                 '{"type":"finding","kind":123,"source":"monitor","message":"m"}',
                                 '{"type":"finding","kind":"k","source":"monitor","message":"m","stats":[1,2]}',
                                 '{"type":"end","findings":[1,2]}',
                                 '{"type":"start","layers":"abc"}', "[1,2,3]", '"text"'])
def test_report_skips_records_of_the_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  bad: str) -> None:
    log = tmp_path / "run.jsonl"
    _train(log, 12)
    lines = log.read_text().splitlines()
    lines.insert(4, bad)
    log.write_text("\n".join(lines) + "\n")
    code, err = _report(log, capsys)
    assert code == 0, err
    assert "1 line skipped" in err
    run = read_log(log)
    assert run.skipped == 1 and [r["step"] for r in run.steps] == list(range(12))
