"""Smoke test of ``benchmarks/monitor_overhead.py`` (``--quick``: tiny models, the table's shape)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_monitor_overhead_quick(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("_floatguard_bench_monitor_overhead",
                                                      BENCH / "monitor_overhead.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        (table,) = mod.main(["--quick", "--rounds", "1"])
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("_floatguard_bench_monitor_overhead", None)
        torch.set_num_threads(threads)
    assert "Monitor overhead per training step" in capsys.readouterr().out
    assert [str(c.header) for c in table.columns] == ["workload", "plain ms", "default ms", "default ratio",
                                                     "detailed ms", "detailed ratio"]
    names = [str(c) for c in table.columns[0].cells]
    assert len(names) == 4 and names[0].startswith("MLP") and names[2].startswith("Transformer")
    assert names[3].startswith("Causal LM")  # hand-written attention: the probe's attention statistics
    for col in range(1, 6):
        assert all(0 < float(str(c)) < math.inf for c in table.columns[col].cells)
