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


def test_lightning_callback_reports_dead_units(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import csv

    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 10)).argmax(1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    cb = MonitorCallback(log=tmp_path / "pl.jsonl", live=False)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(max_steps=60, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                         default_root_dir=tmp_path, log_every_n_steps=1)
    with caplog.at_level("INFO", logger="floatguard.monitor"):
        trainer.fit(DeadReLU(), data)
    with open(Path(logger.log_dir) / "metrics.csv") as fh:  # the trainer's own logger got the statistics
        rows = [r for r in csv.DictReader(fh) if r.get("floatguard/loss")]
    assert len(rows) == 60 and "floatguard/grad_norm/net.0" in rows[0] and "floatguard/findings" in rows[0]
    summary = caplog.records[-1].getMessage()
    assert summary.startswith(f"floatguard monitor: {len(cb.findings)} findings in 60 steps")
    assert "dead_units from step" in summary and "floatguard report" in summary
    dead = [e for e in cb.findings if e.kind == "dead_units"]
    assert [e.module for e in dead] == ["net.1"] and dead[0].producer == "net.0"
    run = read_log(tmp_path / "pl.jsonl")
    assert len(run.steps) == 60 and run.ended
    assert all(math.isfinite(r["loss"]) and abs(r["loss"] - math.log(10)) < 0.2 for r in run.steps)
