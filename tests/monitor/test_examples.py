"""The monitor's example programs run and find what their docstrings say."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torch")

from rich.console import Console

from floatguard.monitor import attach_global

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_floatguard_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_monitor_basic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    findings = _load("monitor_basic").main(str(tmp_path))
    assert {e.kind for e in findings} >= {"vanishing_gradient", "stuck_at_chance"}
    assert (tmp_path / "monitor_basic.jsonl").exists() and (tmp_path / "monitor_basic.html").exists()
    assert "stuck_at_chance" in capsys.readouterr().out


def test_monitor_unmodified_under_attach_global() -> None:
    g = attach_global(live=False, console=Console(file=io.StringIO()))
    try:
        loss = _load("monitor_unmodified").main(steps=60)
    finally:
        findings = g.close()
    assert abs(loss - 2.3) < 0.2 and "dead_units" in {e.kind for e in findings}
