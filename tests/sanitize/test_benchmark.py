"""Smoke test of ``benchmarks/sanitize_overhead.py --quick``: it runs and its healthy models have no findings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_sanitize_overhead_quick(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()
    spec = importlib.util.spec_from_file_location("_fg_bench_sanitize_overhead", BENCH / "sanitize_overhead.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    try:
        spec.loader.exec_module(mod)
        table = mod.main(["--quick"])
    finally:
        torch.set_num_threads(threads)
    assert "Sanitizer overhead per CPU training step" in capsys.readouterr().out
    cells = {str(c.header): [str(x) for x in c.cells] for c in table.columns}
    assert cells["model"] == ["MLP", "CNN", "Transformer encoder"]
    assert cells["findings"] == ["0", "0", "0"]
    for name in ("floatguard guard (step)", "floatguard detect (op)", "floatguard detect (op, exact)",
                 "torch detect_anomaly"):
        assert all(v.endswith("x") and float(v[:-1]) > 0 for v in cells[name])
    assert all(int(v) > 0 for v in cells["outputs checked/step"])
