"""The PyTorch Lightning callback (tested when Lightning is installed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from floatguard.monitor import read_log  # noqa: E402
from floatguard.monitor.lightning import MonitorCallback  # noqa: E402


class DeadReLU(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad():
            self.net[0].bias.fill_(-10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_lightning_callback_reports_dead_units(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 10)).argmax(1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    cb = MonitorCallback(log=tmp_path / "pl.jsonl", live=False)
    trainer = pl.Trainer(max_steps=60, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                         default_root_dir=tmp_path)
    trainer.fit(DeadReLU(), data)
    dead = [e for e in cb.findings if e.kind == "dead_units"]
    assert [e.module for e in dead] == ["net.1"] and dead[0].stats["producer"] == "net.0"
    run = read_log(tmp_path / "pl.jsonl")
    assert len(run.steps) == 60 and run.ended
    assert all(math.isfinite(r["loss"]) and abs(r["loss"] - math.log(10)) < 0.2 for r in run.steps)
