"""The Monitor's API, its statistics, and the rules on constructed histories."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from monitor_programs import healthy_mlp_adam, train  # noqa: E402
from rich.console import Console  # noqa: E402
from torch import nn  # noqa: E402

from floatguard.monitor import Monitor, Thresholds  # noqa: E402
from floatguard.monitor.live import LiveLine  # noqa: E402
from floatguard.monitor.rules import HISTORY, _oscillation  # noqa: E402


def _step(model: nn.Module, opt: torch.optim.Optimizer | None, mon: Monitor, x: torch.Tensor,
          y: torch.Tensor) -> list:
    if opt is not None:
        opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    new = mon.step(loss)
    if opt is not None:
        opt.step()
    return new


def test_api_and_lifecycle() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="every"):
        Monitor(model, every=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with Monitor(model, opt, live=False) as mon:
        assert _step(model, opt, mon, x, y) == [] and mon.steps == 1
        bad = _step(model, opt, mon, x * math.nan, y)
        assert [e.kind for e in bad] == ["nonfinite_loss"] and mon.findings == bad
        assert bad[0].to_dict()["kind"] == "nonfinite_loss" and "Monitor(" in repr(mon)
    with pytest.raises(RuntimeError, match="closed"):
        mon.step(torch.tensor(1.0))
    assert model._forward_pre_hooks == {} and opt._optimizer_step_pre_hooks == {}  # hooks removed


def test_without_optimizer_and_with_unused_layers() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = Net()
    mon = Monitor(model, live=False)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for _ in range(30):
        model.zero_grad()
        _step(model, None, mon, x, y)
    mon.close()
    assert mon.findings == []  # a layer without gradient is not a vanishing gradient


def test_thresholds_apply() -> None:
    assert healthy_mlp_adam().findings == []
    torch.manual_seed(20)
    from monitor_programs import C, D, _data, mlp

    model = mlp([D, 64, 64, C], nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = train(model, opt, _data(20), F.cross_entropy, steps=80,
                monitor={"thresholds": Thresholds(update_high=1e-4)})
    assert [e.kind for e in mon.findings] == ["update_ratio"]


def test_num_classes_inferred_from_the_loss() -> None:
    model = nn.Linear(5, 7)
    mon = Monitor(model, live=False)
    _step(model, None, mon, torch.randn(4, 5), torch.randint(0, 7, (4,)))
    mon.close()
    assert mon.state.num_classes == 7
    assert Monitor(nn.Linear(2, 2), num_classes=3, live=False).state.num_classes == 3


def test_float32_norm_overflow_is_not_a_nonfinite_gradient() -> None:
    model = nn.Linear(4, 1)
    mon = Monitor(model, live=False)
    for _ in range(5):
        model.zero_grad()
        (model(torch.ones(2, 4)).sum() * 1e25).backward()  # entries ~1e25: squares overflow float32
        mon.step(torch.tensor(1.0))
    mon.close()
    want = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in model.parameters()))
    assert math.isfinite(want) and mon.state.gnorm[-1] == pytest.approx(want, rel=1e-6)
    assert [e.kind for e in mon.findings] == ["exploding_gradient"]


def test_sparse_gradients_are_measured_and_judged() -> None:
    """nn.Embedding(sparse=True): the norm is the dense gradient's, and a NaN in it is found at its step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, opt, live=False)
    x = torch.tensor([[1, 1]] * 8 + [[2, 3]] * 8)  # repeated indices: the COO gradient is uncoalesced
    y = torch.randint(0, 3, (16,))
    for t in range(8):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        g = model[0].weight.grad
        assert g.layout is torch.sparse_coo and not g.is_coalesced()
        want = math.sqrt(sum(p.grad.to_dense().double().pow(2).sum().item() for p in model.parameters()))
        if t == 5:
            bad = g.coalesce()
            model[0].weight.grad = torch.sparse_coo_tensor(bad.indices(), bad.values() * math.nan, bad.shape,
                                                             check_invariants=True)
        new = mon.step(torch.tensor(1.0))
        if t < 5:
            assert new == [] and mon.state.gnorm[-1] == pytest.approx(want, rel=1e-5)
        if t != 5:
            opt.step()
    mon.close()
    (e,) = [f for f in mon.findings if f.kind == "nonfinite_gradient"]
    assert e.step == 5 and e.module == "0" and e.layers == ("0",) and "Embedding" in e.message


def test_update_ratio_estimate_matches_the_exact_ratio() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = Monitor(model, opt, live=False, every=1)
    x, y = torch.randn(64, 512), torch.randint(0, 2, (64,))
    _step(model, opt, mon, x, y)
    w0 = model[0].weight.detach().clone()
    _step(model, opt, mon, x, y)  # the update of this step is reported with the next one
    exact = ((model[0].weight - w0).norm() / model[0].weight.norm()).item()
    _step(model, opt, mon, x, y)
    mon.close()
    sample = mon.state.samples[-1]
    assert sample["update"][0] == pytest.approx(exact, rel=0.1)  # a 16k-entry subset of 262k


def test_history_is_bounded() -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, live=False)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    for _ in range(HISTORY + 50):
        _step(model, opt, mon, x, y)
    assert len(mon.state.loss) == HISTORY and mon.steps == HISTORY + 50


# -- the loss-curve detectors on constructed curves ------------------------------------------------
def test_oscillation_detector() -> None:
    rng = np.random.default_rng(0)
    noise = 1.0 + 0.3 * rng.standard_normal(60)  # minibatch noise around a plateau
    assert _oscillation(np.abs(noise), 3, 2.3) is None
    catapult = np.tile(np.r_[1.0, 0.8, 0.6, 0.45, 0.4, 12.0, 15.0, 2.0, 1.0, 1.0], 6)
    got = _oscillation(catapult, 3, 1.0)
    assert got is not None and got["rebounds"] >= 3
    flip = np.tile([0.5, 1.5], 30) + 0.01 * rng.standard_normal(60)
    got = _oscillation(flip, 3, 1.0)
    assert got is not None  # caught as rebounds of the 3-step median or as alternation
    small_flip = np.tile([0.85, 1.15], 30)  # too small to rebound, but strictly alternating
    got = _oscillation(small_flip, 3, 0.5)
    assert got is not None and got["pattern"] == "alternating"
    converged = 0.01 * np.abs(1 + rng.standard_normal(60))  # large relative noise at a tiny loss
    assert _oscillation(converged, 3, 2.3) is None
    falling = np.linspace(2.0, 0.5, 60)
    assert _oscillation(falling, 3, 2.0) is None


# -- the live status line ------------------------------------------------------------------------------
def test_live_line_off_when_not_a_terminal() -> None:
    con = Console(file=io.StringIO())
    line = LiveLine(console=con)
    assert not line.enabled
    line.update(1, 0.5, 1.0)
    line.close()
    assert con.file.getvalue() == ""
    assert not Monitor(nn.Linear(2, 2)).__dict__["_live"].enabled  # pytest's stderr is not a terminal


def test_live_line_on_a_terminal() -> None:
    con = Console(file=io.StringIO(), force_terminal=True, width=100)
    line = LiveLine(console=con, interval=0.0)
    assert line.enabled
    line.update(7, 0.25, 1.5)
    line.close()
    out = con.file.getvalue()
    assert "step 7" in out and "loss 0.25" in out and "0 findings" in out
