"""The JSONL log: flushed every step, survives a crash, appended by a resumed run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from floatguard.monitor import Monitor, read_log  # noqa: E402
from floatguard.monitor.log import last_step  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def _setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, torch.randn(32, 8), torch.randint(0, 3, (32,))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_step_is_on_disk_before_the_next(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    model, opt, x, y = _setup()
    mon = Monitor(model, opt, log=log, live=False)
    for t in range(25):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss)
        opt.step()
        steps = [r for r in _lines(log) if r["type"] == "step"]  # read by another handle: flushed
        assert [r["step"] for r in steps] == list(range(t + 1))
        assert steps[-1]["loss"] == pytest.approx(loss.item())
    mon.close()
    recs = _lines(log)
    assert recs[0]["type"] == "start" and recs[0]["layers"] == ["0", "2"] and recs[0]["first_step"] == 0
    assert recs[-1]["type"] == "end" and recs[-1]["step"] == 24
    sampled = [r for r in recs if r["type"] == "step" and "grad" in r]
    assert [r["step"] for r in sampled] == [0, 10, 20]  # per-layer norms on sampled steps
    assert all(len(r["grad"]) == 2 for r in sampled)
    total = math.sqrt(sum(g * g for g in sampled[0]["grad"]))
    assert sampled[0]["grad_norm"] == pytest.approx(total, rel=1e-4)


def test_grad_norms_match_torch(tmp_path: Path) -> None:
    model, opt, x, y = _setup(1)
    mon = Monitor(model, opt, log=tmp_path / "r.jsonl", live=False, detailed=True)
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    mon.step(loss)
    mon.close()
    (rec,) = read_log(tmp_path / "r.jsonl").steps
    want = [math.hypot(model[i].weight.grad.norm().item(), model[i].bias.grad.norm().item()) for i in (0, 2)]
    assert rec["grad"] == pytest.approx(want, rel=1e-4)
    assert set(rec["layer_out"]) == {"0", "2"}  # detailed mode: every layer's output statistics


def test_a_crashed_run_keeps_its_log(tmp_path: Path) -> None:
    log = tmp_path / "crash.jsonl"
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(SRC)!r})
        from floatguard.monitor import Monitor
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = Monitor(model, opt, log={str(log)!r}, live=False)
        x = torch.randn(8, 4)
        for t in range(40):
            opt.zero_grad()
            loss = model(x).pow(2).mean() * (float("nan") if t == 30 else 1.0)
            loss.backward()
            mon.step(loss)
            opt.step()
            if t == 33:
                os._exit(3)  # no close(), no flush at exit: a hard crash
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    run = read_log(log)
    assert [r["step"] for r in run.steps] == list(range(34)) and not run.ended
    assert [(e.kind, e.step) for e in run.findings] == [("nonfinite_loss", 30)]
    assert last_step(log) == 33


def test_a_resumed_run_appends_and_continues_the_numbering(tmp_path: Path) -> None:
    log = tmp_path / "resume.jsonl"
    for session in range(2):
        model, opt, x, y = _setup(session)
        mon = Monitor(model, opt, log=log, live=False)
        for _ in range(12):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            mon.step(loss)
            opt.step()
        mon.close()
    run = read_log(log)
    assert [r["step"] for r in run.steps] == list(range(24))
    assert [s["first_step"] for s in run.starts] == [0, 12] and [s["resumed"] for s in run.starts] == [False, True]


def test_nonfinite_numbers_round_trip(tmp_path: Path) -> None:
    log = tmp_path / "nf.jsonl"
    model, opt, x, _ = _setup()
    mon = Monitor(model, opt, log=log, live=False)
    for v in (1.0, math.inf, math.nan):
        opt.zero_grad()
        (model(x).sum() * v).backward()
        mon.step(torch.tensor(v))
    mon.close()
    losses = [r["loss"] for r in read_log(log).steps]
    assert losses[0] == 1.0 and losses[1] == math.inf and math.isnan(losses[2])
    (e,) = read_log(log).findings
    assert e.kind == "nonfinite_loss" and e.step == 1 and e.stats["last_step"] == 2  # final evidence from `end`


def test_a_cut_last_line_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "cut.jsonl"
    log.write_text('{"type":"start","layers":["a"],"first_step":0}\n{"type":"step","step":0,"loss":1.0,'
                   '"grad_norm":0.5}\n{"type":"step","step":1,"lo')
    run = read_log(log)
    assert [r["step"] for r in run.steps] == [0] and last_step(log) == 0
