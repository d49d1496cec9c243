"""``attach_global``: a monitor on a script that was not written for it (``floatguard run --monitor``)."""

from __future__ import annotations

import io
import runpy
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.modules import module as module_mod  # noqa: E402
from torch.optim import optimizer as optimizer_mod  # noqa: E402

from floatguard.monitor import attach_global, read_log  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def _global_hooks() -> tuple[int, int, int]:
    return (len(module_mod._global_forward_pre_hooks), len(module_mod._global_forward_hooks),
            len(optimizer_mod._global_optimizer_pre_hooks))


def test_unmodified_script_is_diagnosed_and_everything_is_restored(tmp_path: Path) -> None:
    before, backward = _global_hooks(), torch.Tensor.backward
    con = Console(file=io.StringIO(), width=120)
    g = attach_global(log=tmp_path / "run.jsonl", live=False, console=con)
    try:
        runpy.run_path(str(EXAMPLES / "monitor_unmodified.py"), run_name="__main__")
    finally:
        findings = g.close()
    assert _global_hooks() == before and torch.Tensor.backward is backward
    kinds = {e.kind for e in findings}
    assert "dead_units" in kinds and kinds <= {"dead_units", "stuck_at_chance", "vanishing_gradient", "update_ratio"}
    dead = {e.module: e for e in findings if e.kind == "dead_units"}
    assert dead["1"].producer == "0" and dead["1"].stats["dead_fraction"] == 1.0
    run = read_log(tmp_path / "run.jsonl")
    assert len(run.steps) == 150 and run.ended
    assert run.steps[0]["loss"] == pytest.approx(2.3, abs=0.1)  # the loss came from nn.CrossEntropyLoss
    assert "dead_units" in con.file.getvalue()  # the summary printed on close


def test_functional_loss_and_grad_scaler_skips(tmp_path: Path) -> None:
    """The loss from backward(), the unscaled one under a GradScaler, and skipped steps still recorded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    x, y = torch.randn(64, 20) * 1e5, torch.randint(0, 4, (64,))  # raw inputs overflow float16
    g = attach_global(live=False, console=_quiet())
    try:
        for _ in range(25):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    finally:
        findings = g.close()
    (mon,) = g.monitors.values()
    assert mon.steps == 25 and mon.scaler is scaler  # every skipped step was recorded
    assert {e.kind for e in findings} == {"fp16_overflow", "nonfinite_loss"}


def test_loss_is_the_unscaled_one(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(16, 8)
    losses = []
    g = attach_global(log=tmp_path / "s.jsonl", live=False, summary=False)
    try:
        for _ in range(5):
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            losses.append(loss.item())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    finally:
        g.close()
    logged = [r["loss"] for r in read_log(tmp_path / "s.jsonl").steps]
    assert logged == pytest.approx(losses, rel=1e-6)


def test_only_one_global_monitor() -> None:
    g = attach_global(live=False, summary=False)
    try:
        with pytest.raises(RuntimeError, match="already attached"):
            attach_global()
    finally:
        g.close()
    attach_global(live=False, summary=False).close()  # attachable again after close
