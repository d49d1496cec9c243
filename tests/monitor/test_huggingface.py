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


class Integration(transformers.TrainerCallback):
    """Stands for a ``report_to`` integration: it receives the Trainer's ``logs`` at ``on_log``."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_trainer_callback_reports_dead_units(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 10)).argmax(1)
    data = [{"x": x[i], "labels": y[i]} for i in range(512)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=60, per_device_train_batch_size=32, learning_rate=1e-3,
        report_to=[], save_strategy="no", logging_strategy="steps", logging_steps=20, use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, seed=0)
    cb = MonitorCallback(log=tmp_path / "hf.jsonl", live=False)
    sink = Integration()
    with caplog.at_level("INFO", logger="floatguard.monitor"):
        transformers.Trainer(model=DeadReLU(), args=args, train_dataset=data, callbacks=[cb, sink]).train()
    logged = [d for d in sink.logs if "floatguard/loss" in d]
    assert len(logged) == 3 and all(math.isfinite(d["floatguard/grad_norm"]) for d in logged)
    assert any(r.getMessage().startswith("[dead_units] step") for r in caplog.records)  # heard off a terminal
    summary = caplog.records[-1].getMessage()  # on_train_end: the summary and the report command
    assert summary.startswith(f"floatguard monitor: {len(cb.findings)} findings in 60 steps")
    assert "dead_units from step" in summary and "floatguard report" in summary
    dead = [e for e in cb.findings if e.kind == "dead_units"]
    assert [e.module for e in dead] == ["net.1"] and dead[0].producer == "net.0"
    run = read_log(tmp_path / "hf.jsonl")
    assert len(run.steps) == 60 and run.ended
    assert all(math.isfinite(r["loss"]) and abs(r["loss"] - math.log(10)) < 0.2 for r in run.steps)
