"""Smoke tests of the scripts in ``benchmarks/``: each ``main`` runs (small sizes) and prints its rows."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from rich.table import Table

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _cells(table: Table, col: int) -> list[str]:
    return [str(c) for c in table.columns[col].cells]


def _header(table: Table) -> list[str]:
    return [str(c.header) for c in table.columns]


def _num(cell: str) -> float:
    return math.inf if cell in ("inf", "NaN") else float(cell)


@pytest.fixture
def load() -> Iterator[object]:
    """Import a benchmark script by name; undo its process-wide settings afterwards."""
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    x64 = jax.config.jax_enable_x64
    threads = torch.get_num_threads()
    env = dict(os.environ)
    added = str(BENCH) not in sys.path
    if added:
        sys.path.insert(0, str(BENCH))
    loaded: list[str] = []

    def _load(name: str) -> ModuleType:
        mod_name = f"_floatguard_bench_{name}"
        spec = importlib.util.spec_from_file_location(mod_name, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod  # dataclasses look their module up while the script runs
        loaded.append(mod_name)
        spec.loader.exec_module(mod)
        return mod

    yield _load
    for mod_name in loaded:
        sys.modules.pop(mod_name, None)
    jax.config.update("jax_enable_x64", x64)
    torch.set_num_threads(threads)
    os.environ.clear()
    os.environ.update(env)
    if added:
        sys.path.remove(str(BENCH))


def test_paper_bhh2021_reproduces_the_published_counts(load, capsys) -> None:
    mod = load("paper_bhh2021")
    if not mod.DATA.exists():
        pytest.skip(f"data of the paper not present at {mod.DATA}")
    (table,) = mod.main([])  # the full data set takes about a second
    out = capsys.readouterr().out
    assert "Published (BHH 2021" in out and "Measured here (2500 vectors)" in out
    names = _cells(table, 0)
    overflow = dict(zip(names, _cells(table, 1), strict=True))
    median = dict(zip(names, (_num(c) for c in _cells(table, 2)), strict=True))
    maxerr = dict(zip(names, (_num(c) for c in _cells(table, 3)), strict=True))
    assert len(names) == 9
    assert overflow["LSE unshifted: log(Σ exp x)"] == "475 / 2500"
    assert overflow["LSE shifted (Alg. 2): a + log(Σ exp(x−a))"] == "0 / 2500"
    for name in names:
        if name.startswith("floatguard"):
            assert overflow[name] == "0 / 2500"
            assert maxerr[name] < 2.0  # at most 1 ulp of fp16: below 2u relative
    div = median["softmax shifted, division: exp(x−a) / Σ exp(x−a)"]
    free = median["softmax shifted, division-free: exp(x − lse)"]
    assert div < 1.0 < 2.0 < free < 3.0  # published: about 0.5u against 2.5u


def test_accuracy_quick(load, capsys) -> None:
    mod = load("accuracy")
    t32, t64, issue, grad = mod.main(["--quick"])
    assert "Max error in ulps (float32)" in capsys.readouterr().out
    ops = [op.name for op in mod.OPS]
    assert {"logsumexp", "log_softmax", "softplus", "binary_cross_entropy_with_logits", "logcumsumexp"} <= set(ops)
    for table in (t32, t64):
        assert _cells(table, 0) == ops
        assert _header(table)[1:6] == ["floatguard", "naive", "SciPy / NumPy", "PyTorch", "JAX"]
    assert all(_num(c) <= 1.0 for c in _cells(t32, 1))  # floatguard: <= 1 ulp in float32
    # the issue's cases: floatguard accurate, the peers off by the quoted amounts
    rows = {(r[0], r[1]): r[2:] for r in zip(*(_cells(issue, i) for i in range(7)), strict=True)}
    fg_, _naive, _sp, pt, jx = rows[("log_softmax of [0, −30×50]", "float32")]
    assert _num(fg_) <= 1.0 and _num(pt) > 1e6 and _num(jx) > 1e6
    assert _num(rows[("log_softmax of [0, −30×50]", "float64")][3]) > 1e10
    assert _num(rows[("softplus, x ∈ (20, 37)", "float64")][3]) > 1e5
    assert _num(rows[("softmax of logits spread over ±100", "float32")][3]) > 30
    grads = dict(zip(_cells(grad, 0), _cells(grad, 2), strict=True))
    assert grads["torch.logsumexp"].startswith("nan") and grads["jax.nn.logsumexp"].startswith("nan")
    assert grads["floatguard.logsumexp (torch)"] == grads["floatguard.logsumexp (JAX)"] == "0.0 (all 4)"


def test_gradient_accuracy_quick(load, capsys) -> None:
    mod = load("gradient_accuracy")
    *per_dtype, misses = mod.main(["--quick"])
    assert "Gradient (VJP) error in ulps (float32)" in capsys.readouterr().out
    assert [_header(t)[1] for t in per_dtype] == ["floatguard (torch)"] * 3
    for table in per_dtype:
        assert _cells(table, 0) == [op.name for op in mod.OPS]
        assert not any("✗" in c for c in _cells(table, 1))  # floatguard (torch) within 2 ulp × max(1, κ)
    assert _cells(misses, 3) == ["none: every floatguard gradient is within its bound"]
    pt64 = dict(zip(_cells(per_dtype[2], 0), _cells(per_dtype[2], 2), strict=True))
    assert "✗" in pt64["softplus"]  # the peers' misses are shown (torch's float64 softplus' at large x)


def test_ops_speed_quick(load, capsys) -> None:
    mod = load("ops_speed")
    tables = mod.main(["--quick", "--repeats", "1"])
    assert "np.sum pass" in capsys.readouterr().out
    assert len(tables) == 4  # vector and rows, float32 and float64
    for table in tables:
        assert _cells(table, 0) == [op for op in mod.OPS for _ in range(4)]
        assert _cells(table, 1) == ["naive NumPy", "scipy.special", "torch", "jax.nn (jit)"] * 3
        for col in (2, 3, 4):
            assert all(0 < float(c) < math.inf for c in _cells(table, col))


def test_training_speed_quick(load, capsys) -> None:
    mod = load("training_speed")
    (table,) = mod.main(["--quick", "--rounds", "1"])
    assert "Training speed: floatguard / framework" in capsys.readouterr().out
    assert _header(table) == mod.HEADERS
    sections = _cells(table, 0)
    assert set(sections) == {"training", "latency", "jax"}  # --quick leaves out torch.compile
    ops = set(_cells(table, 1))
    assert {"cross_entropy", "softmax", "log_softmax", "logsumexp", "bce_with_logits", "softplus", "log_sigmoid",
            "logaddexp", "log1mexp", "log_softmax (jit)", "cross_entropy, label_smoothing=0.1",
            "cross_entropy, weight", "cross_entropy, probabilities", "cross_entropy, reduction='none'"} <= ops
    # latency: every op forward (9, and the cross-entropy's 4 other arguments); JAX: 1 shape (--quick) x 3 ops
    # x 2 dtypes x x64 off/on
    assert _cells(table, 2).count("fwd") == 13 + 12
    for section, ratio, target, ok in zip(sections, _cells(table, 7), _cells(table, 8), _cells(table, 9),
                                          strict=True):
        assert 0 < float(ratio) < math.inf
        assert target == ("≤ 2.0" if section == "latency" else "≤ 1.0")
        bound = float(target[2:])
        if float(ratio) != bound:  # a ratio shown as exactly the bound was rounded from either side of it
            assert ok == ("ok" if float(ratio) < bound else "FAIL")


def test_instabilities_quick(load, capsys) -> None:
    mod = load("instabilities")
    (table,) = mod.main(["--quick", "--only", "loss_spike", "adam_eps"])
    assert "Transformer instabilities" in capsys.readouterr().out
    assert _header(table) == mod.HEADERS
    assert _cells(table, 0) == ["adam_eps", "loss_spike"]
    kinds = _cells(table, 1)
    assert kinds[0].startswith("adam_epsilon_dominates")  # raised at the first sampled step where it holds
    assert "loss_spike" in kinds[1]  # the spike comes at step 100: in 40 quick steps the row says it was missed
    assert all(float(c) > 0 for c in _cells(table, 9) + _cells(table, 10))  # final losses, uncured and cured
    assert _cells(table, 11) == ["yes", "yes"]  # the cured runs are silent
    assert mod.loss_shows([1.0] * 5 + [2.0] * 5, [1.0] * 10, spike=False) == 5
    assert mod.loss_shows([1.0, 3.0, 1.0], [1.0, 1.0, 1.0], spike=True) == 1
    assert mod.loss_shows([1.0] * 4, [1.0] * 4, spike=False) is None


def test_linear_cross_entropy_tiny(load, capsys) -> None:
    mod = load("linear_cross_entropy")
    t32, tjax = mod.main(["--tokens", "256", "--hidden", "32", "--vocab", "2000", "--rounds", "1",
                          "--only", "float32", "jax"])
    assert "PyTorch CPU, float32, 256 tokens x 32 hidden x 2000 vocabulary" in capsys.readouterr().out
    assert _cells(t32, 0) == [mod.UNFUSED, "torchtune chunked", "floatguard"]
    assert _cells(t32, 1)[0] == "1" and all(0 < float(c) < math.inf for c in _cells(t32, 1))
    peaks = [_num(c) if c != "n/a" else None for c in _cells(t32, 3)]
    if mod._reset_peak() is None:
        assert peaks == [None] * 3
    else:  # a child's own peak, not its parent's: ru_maxrss (inherited across exec) read 0 here
        assert all(p is not None and p >= 0 for p in peaks) and peaks[0] is not None and peaks[0] > 0
    ok = _cells(t32, 6)[2].split(" / ")
    assert all(v in ("ok", "FAIL") for v in ok) and len(ok) == 2
    assert _cells(tjax, 0) == ["unfused jax.nn", "floatguard"] * 2
    assert _cells(tjax, 1) == ["forward", "forward", "value_and_grad", "value_and_grad"]
    assert all(0 < float(c) < math.inf for c in _cells(tjax, 2))
