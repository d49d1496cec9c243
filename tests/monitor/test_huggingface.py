"""The Hugging Face TrainerCallback (tested when transformers is installed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from floatguard.monitor import read_log  # noqa: E402
from floatguard.monitor.huggingface import MonitorCallback  # noqa: E402


class DeadReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad():
            self.net[0].bias.fill_(-10.0)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def test_trainer_callback_reports_dead_units(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 10)).argmax(1)
    data = [{"x": x[i], "labels": y[i]} for i in range(512)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=60, per_device_train_batch_size=32, learning_rate=1e-3,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=0)
    cb = MonitorCallback(log=tmp_path / "hf.jsonl", live=False)
    transformers.Trainer(model=DeadReLU(), args=args, train_dataset=data, callbacks=[cb]).train()
    dead = [e for e in cb.findings if e.kind == "dead_units"]
    assert [e.module for e in dead] == ["net.1"] and dead[0].stats["producer"] == "net.0"
    run = read_log(tmp_path / "hf.jsonl")
    assert len(run.steps) == 60 and run.ended
    assert all(math.isfinite(r["loss"]) and abs(r["loss"] - math.log(10)) < 0.2 for r in run.steps)
