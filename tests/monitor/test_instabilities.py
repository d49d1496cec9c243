"""The instabilities of transformer training (issue 15): each kind fires on its proxy, the cured run is silent.

The proxies are in ``instability_programs.py`` (the benchmark ``benchmarks/instabilities.py``
runs them longer). Each runs once per test process.
"""

from __future__ import annotations

import functools
import json
import math

import pytest

torch = pytest.importorskip("torch")

import instability_programs as ip  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from test_programs import _check_record  # noqa: E402

from floatguard.events import Event  # noqa: E402
from floatguard.monitor import Monitor  # noqa: E402
from floatguard.monitor.probe import Probe  # noqa: E402

CONSEQUENCES = {"stuck_at_chance", "stalled_loss"}  # what an untrained (stalled) proxy may also show


@functools.cache
def _run(name: str, cured: bool) -> ip.Run:
    proxy = next(p for p in ip.PROXIES if p.name == name)
    return proxy.run(cured=cured, steps=proxy.steps)


def _one(name: str) -> Event:
    proxy = next(p for p in ip.PROXIES if p.name == name)
    found = _run(name, False).monitor.findings
    mine = [e for e in found if e.kind == proxy.kind]
    assert mine, f"{proxy.kind} missed; found {[e.kind for e in found]}"
    assert {e.kind for e in found} <= {proxy.kind} | CONSEQUENCES, [e.kind for e in found]
    for e in found:
        _check_record(e)
    return mine[0]


@pytest.mark.parametrize("proxy", ip.PROXIES, ids=lambda p: p.name)
def test_the_cured_run_is_silent(proxy: ip.Proxy) -> None:
    mon = _run(proxy.name, True).monitor
    assert mon.findings == [], [f"{e.kind}@{e.step}: {e.message}" for e in mon.findings]


def test_attention_logit_growth_names_the_module_and_the_collapse() -> None:
    e = _one("attention")
    assert e.module is not None and e.module.startswith("blocks.") and e.module.endswith(".attn")
    assert e.stats["max_logit"] >= 30 and e.stats["first_max_logit"] < 10 and e.stats["fused"] is False
    assert e.stats["growth"] >= 2 and e.stats["growth_steps"] == 30, "raised on growth, before the level 100"
    assert e.stats["entropy"] < 0.5 * e.stats["first_entropy"], "attention entropy collapses"
    assert e.step < e.stats["detected_at"] <= 50
    assert "LayerNorm(head_dim)" in e.hint and "cap * torch.tanh(logits / cap)" in e.hint
    assert e.severity == "error"
    plain, cured = _run("attention", False).losses, _run("attention", True).losses
    assert sum(plain[-20:]) > 10 * sum(cured[-20:]), "the cure trains, the uncured run does not"


@pytest.mark.parametrize(("lr", "qk_norm"), [(1e-1, True), (1e-2, False)], ids=["qk-layernorm-lr1e-1", "lr1e-2"])
def test_healthy_sharp_attention_is_silent(lr: float, qk_norm: bool) -> None:
    """Runs that learn one-hot attention (logits ~30, grown from ~1-3) are not growth without bound."""
    run = ip.healthy_attention(lr, qk_norm)
    # learns: from ln(16) ~ 2.8 to 0.0-0.1 (the level moves with torch's thread count: 0.06 on two threads,
    # 0.10 on one at seed 0, lr 1e-2), a run that does not learn stays near 2.8
    assert sum(run.losses[-20:]) / 20 < 0.05 * run.losses[0], "the run learns"
    assert not [e for e in run.monitor.findings if e.kind == "attention_logit_growth"]


def test_fused_attention_says_the_logits_are_hidden() -> None:
    e = _one("attention_fused")
    assert e.stats["fused"] is True and "scaled_dot_product_attention" in e.message and "hides" in e.message
    assert e.stats["max_logit"] >= 30 and e.stats["growth"] >= 2  # the bound max|q| max|k| / sqrt(d)


def test_output_logit_divergence_is_raised_while_the_loss_looks_healthy() -> None:
    """AdamW without weight decay drifts log Z once the task is learnt; the loss stays small; z-loss holds log Z."""
    e = _one("output_logits")
    plain, cured = _run("output_logits", False), _run("output_logits", True)
    raised = int(e.stats["detected_at"])
    assert e.stats["logz_rms"] >= 50 and e.stats["first_logz_mean"] < 10 and e.module == "loss:cross_entropy"
    assert e.stats["logz_rms"] == pytest.approx(plain.logz[raised], rel=1e-3), "the monitor's log Z is the logits'"
    assert 60 <= e.step < raised <= 200
    assert max(plain.losses[raised - 20:raised]) < 0.5, "raised while the loss looks healthy"
    # the drift: log Z climbs across the samples before the finding (not a level from the start)
    assert plain.logz[raised] > 3 * plain.logz[e.step] > 3 * 10
    assert max(cured.logz.values()) < 0.7 * e.stats["threshold"], "z-loss holds log Z"
    assert cured.logz[max(cured.logz)] < 0.5 * plain.logz[max(plain.logz)]
    assert "z_loss=1e-4" in e.hint and "floatguard.cross_entropy" in e.hint


def _logz_step(tmp_path, loss_fn) -> tuple[dict, torch.Tensor]:
    """One monitored step of ``loss_fn(logits, y)`` on a Linear(8, 5) whose logits have log Z far from 0:
    the step's log record and the logits (float64)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([3.0, -2.0, 40.0, 0.5, 1.0]))
    x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    mon = Monitor(model, log=tmp_path / "run.jsonl", live=False)
    loss = loss_fn(model(x), y)
    loss.backward()
    mon.step(loss)
    mon.close()
    rec = next(json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()
               if json.loads(line).get("type") == "step")
    return rec, model(x).detach().double()


def test_log_z_is_measured_exactly(tmp_path) -> None:
    """The log record's log Z is the logsumexp of the logits cross_entropy received (mean and RMS)."""
    rec, z = _logz_step(tmp_path, F.cross_entropy)
    lz = torch.logsumexp(z, -1)
    assert rec["logz"][0] == pytest.approx(float(lz.mean()), rel=1e-4)
    assert rec["logz"][1] == pytest.approx(float(lz.square().mean().sqrt()), rel=1e-4)


@pytest.mark.parametrize("kw", [{}, {"z_loss": 1e-4}, {"softcap": 30.0}], ids=["plain", "z_loss", "softcap"])
def test_log_z_is_seen_through_floatguard_cross_entropy(tmp_path, kw) -> None:
    """floatguard.cross_entropy follows torch's override protocol: the probe records its logits' log Z (capped)."""
    import floatguard

    rec, z = _logz_step(tmp_path, lambda logits, y: floatguard.cross_entropy(logits, y, **kw))
    if "softcap" in kw:
        z = 30.0 * torch.tanh(z / 30.0)
    lz = torch.logsumexp(z, -1)
    assert rec["logits"]["site"] == "loss:cross_entropy" and rec["logits"]["classes"] == 5
    assert rec["logz"][0] == pytest.approx(float(lz.mean()), rel=1e-4)
    assert rec["logz"][1] == pytest.approx(float(lz.square().mean().sqrt()), rel=1e-4)


def test_update_rounded_away_is_measured_on_bfloat16_weights() -> None:
    e = _one("bf16_sgd")
    assert e.dtype == "bfloat16" and e.stats["vanished_fraction"] >= 0.5 and e.stats["sampled_entries"] > 0
    assert "autocast" in e.hint and "Kahan" in e.hint


def test_row_statistics_of_a_sample_match_the_whole_tensor() -> None:
    """Past ENTRIES entries (ROWS rows at least) the entropy, gap and log Z come from a strided sample that
    visits every query position; the largest attention logit stays exact (past a +inf: the sample's finite one)."""
    from floatguard.monitor.transformer_stats import ENTRIES, attention_stats, logit_row_stats, row_sample

    g = torch.Generator().manual_seed(0)
    pos = torch.arange(64, dtype=torch.float32)
    z = torch.randn(16, 4, 64, 64, generator=g) * (1 + pos[:, None] / 8)  # sharper rows at later queries
    z = z.masked_fill(torch.ones(64, 64, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.softmax(z, -1)
    rows = row_sample(z)
    assert ENTRIES // 128 < rows.shape[0] <= ENTRIES // 64 < 4096
    first_key = rows[:, 1:].isinf().sum(-1)  # masked keys of a sampled row: 63 - its query position
    assert set(first_key.tolist()) == set(range(64)), "every query position is sampled"
    m, ent, keys = attention_stats(z, p).tolist()
    full_ent = float(-(p * p.clamp_min(1e-38).log()).sum(-1).mean())
    assert m == float(z.amax()) and keys == 64 and ent == pytest.approx(full_ent, rel=0.05)
    z[3, 1, 10, 2] = math.inf
    assert float(attention_stats(z, p)[0]) == float(torch.where(rows.isfinite(), rows, 0).amax())

    y = torch.randn(2048, 1000, generator=g) * 3 + torch.linspace(0, 60, 2048)[:, None]  # log Z grows with the row
    gap, logz = logit_row_stats(row_sample(y))
    lz = torch.logsumexp(y.double(), -1)
    top = y.topk(2, -1).values
    assert logz is not None and float(logz[0]) == pytest.approx(float(lz.mean()), rel=0.02)
    assert float(logz[1]) == pytest.approx(float(lz.square().mean().sqrt()), rel=0.02)
    assert float(gap) == pytest.approx(float((top[:, 0] - top[:, 1]).median()), rel=0.1)


def test_rounded_away_fraction_matches_a_direct_count() -> None:
    """The fraction the monitor logs equals the entries that a bf16 SGD step leaves unchanged."""
    from floatguard.monitor.transformer_stats import rounded_away_counts

    w = torch.full((1000,), 1.0, dtype=torch.bfloat16)
    g = torch.linspace(-1, 1, 1000, dtype=torch.float64)
    u = 1e-2 * g  # the update, applied with one rounding to bfloat16
    after = (w.double() - u).to(torch.bfloat16)
    counts = rounded_away_counts([w], [after], [g])
    # below 1.0 the bfloat16 spacing is 2^-8, above it 2^-7: an update within half of it (a tie rounds to
    # 1.0, the even neighbour) leaves the weight unchanged
    lost = ((u > 0) & (u <= 2.0**-9)) | ((u < 0) & (u >= -(2.0**-8)))
    assert int(counts[1]) == int((g != 0).sum())
    assert int(counts[0]) == int(lost.sum()) > 0


def test_adam_epsilon_dominates_reads_the_optimizer_state() -> None:
    e = _one("adam_eps")
    assert e.stats["eps"] == 1e-8 and e.stats["eps_fraction"] >= 0.5
    assert e.step == e.stats["detected_at"] == 10, "a state: raised at the first sample after Adam's first step"
    assert "eps=1e-15" in e.hint
    assert _run("adam_eps", True).losses[-1] < 0.5 * _run("adam_eps", False).losses[-1]


def test_loss_spike_names_the_step_and_the_batch() -> None:
    e = _one("loss_spike")
    assert e.step == ip.SPIKE_AT and e.stats["recovered"] is True
    assert e.stats["loss"] > 3 * e.stats["median_loss"] and "one batch" in e.message
    assert e.stats["detected_at"] == ip.SPIKE_AT + 5


def test_probe_keeps_results_bit_identical_and_exceptions_raised() -> None:
    torch.manual_seed(0)
    for fused in (False, True):
        model = ip.TinyLM(16, 32, 2, 2, 16, fused=fused)
        x = torch.randint(0, 16, (4, 16))
        ref = model(x)
        names = {id(m): (n, m) for n, m in model.named_modules()}
        probe = Probe(names)
        probe.start(model)
        try:
            watched = model(x)
        finally:
            probe.stop()
        assert torch.equal(ref, watched)
        assert len(probe.attention) == 2 and all(math.isfinite(float(v[0])) for v in probe.attention.values())

    class Boom(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.softmax(x, -1)
            raise ValueError("the user's own error")

    boom = Boom()
    probe = Probe({id(boom): ("", boom)})
    probe.start(boom)
    try:
        with pytest.raises(ValueError, match="own error"):
            boom(torch.randn(2, 3, 4))
    finally:
        probe.stop()
