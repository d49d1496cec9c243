"""Where the monitor is heard: plain log lines off a terminal, the end summary, the user's loggers;
curve findings the run later disproves; wording and remedies a reader can act on."""

from __future__ import annotations

import json
import logging
import math

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from floatguard.monitor import Monitor, read_log  # noqa: E402

V = 65  # vocabulary of a character model: chance is ln 65 = 4.17


def _proxy_run(curve, *, log=None, steps=None, **options):
    """A character-model proxy: a real model and optimizer whose reported loss follows ``curve(step)``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(V, 16), nn.Linear(16, V))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    mon = Monitor(model, opt, num_classes=V, log=log, live=False, **options)
    g = torch.Generator().manual_seed(1)
    for t in range(steps or 400):
        x = torch.randint(0, V, (8, 16), generator=g)
        opt.zero_grad()
        out = model(x)
        real = nn.functional.cross_entropy(out.flatten(0, 1), x.flatten())
        real.backward()
        noise = 0.01 * float(torch.randn((), generator=g))
        mon.step(curve(t) + noise)
        opt.step()
    mon.close()
    return mon


def _plateau_then_learns(until, span=150):
    chance = math.log(V)
    return lambda t: chance if t < until else chance * (1 - 0.5 * min(1.0, (t - until) / span))


def test_a_plateau_at_chance_at_the_start_is_not_a_finding():
    """~60 steps at ln V, then the loss halves (gradually) and stays: normal, nothing to report."""
    mon = _proxy_run(_plateau_then_learns(60))
    assert [e for e in mon.findings if e.kind == "stuck_at_chance"] == []


def test_a_long_plateau_is_reported_then_closed_as_recovered(tmp_path, caplog):
    log = tmp_path / "run.jsonl"
    with caplog.at_level(logging.INFO, logger="floatguard.monitor"):
        mon = _proxy_run(_plateau_then_learns(150), log=log)
    (e,) = [e for e in mon.findings if e.kind == "stuck_at_chance"]
    assert e.step == 0 and 150 <= e.stats["recovered_at"] <= 220 and e.severity == "info"
    assert "recovered at step" in e.message and e.stats["loss_at_recovery"] < 0.9 * math.log(V)
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("[stuck_at_chance] step 0") for m in lines)  # heard when it fired...
    assert any(m.startswith("[stuck_at_chance] closed at step") for m in lines)  # ...and when withdrawn
    assert "recovered: stuck_at_chance" in lines[-1] and "no open finding" in lines[-1]
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["type"] for r in recs].count("closed") == 1
    (f,) = [f for f in read_log(log).findings if f.kind == "stuck_at_chance"]  # the report's data
    assert f.stats["recovered_at"] == e.stats["recovered_at"] and f.severity == "info"


def test_a_run_that_never_leaves_chance_stays_reported():
    mon = _proxy_run(lambda t: math.log(V), steps=220)
    (e,) = [e for e in mon.findings if e.kind == "stuck_at_chance"]
    assert "recovered_at" not in e.stats and e.severity == "warning" and "from step 0" in e.message


def _nan_run(dtype=None, *, log=None, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    if dtype is not None:
        model = model.to(dtype)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    mon = Monitor(model, opt, num_classes=3, log=log, live=False, **options)
    for t in range(4):
        x = torch.randn(16, 4, dtype=dtype or torch.float32)
        loss = nn.functional.cross_entropy(model(x).float(), torch.randint(0, 3, (16,)))
        if t == 3:
            loss = loss * float("nan")
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()
    return mon


def test_off_a_terminal_each_finding_is_one_log_line_with_its_remedy(tmp_path, caplog):
    log = tmp_path / "run.jsonl"
    with caplog.at_level(logging.INFO, logger="floatguard.monitor"):
        mon = _nan_run(log=log)
        found = [r for r in caplog.records if r.name == "floatguard.monitor"]
        assert len(found) == 1 and found[0].levelno == logging.ERROR
        msg = found[0].getMessage()
        assert msg.startswith("[nonfinite_loss] step 3: the loss is nan") and "| remedy: " in msg
        assert "\n" not in msg
        mon.close()
    summary = caplog.records[-1].getMessage()
    assert summary.startswith("floatguard monitor: 1 finding in 4 steps")
    assert f"floatguard report {log} -o report.html" in summary


def test_the_log_lines_reach_stderr_when_logging_is_not_configured(tmp_path):
    import subprocess
    import sys

    code = ("import torch, floatguard.monitor as m, tests.monitor.test_output as t; t._nan_run().close()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert proc.returncode == 0, proc.stderr
    assert "ERROR floatguard.monitor: [nonfinite_loss] step 3" in proc.stderr
    assert "floatguard monitor: 1 finding in 4 steps" in proc.stderr


def test_bfloat16_nan_gets_a_bfloat16_remedy():
    (e,) = _nan_run(torch.bfloat16).findings
    assert e.kind == "nonfinite_loss" and "bfloat16 run" in e.message
    assert "8 bits" in e.hint and "float32" in e.hint and "65504: use" not in e.hint


class FakeWriter:
    """What the monitor needs of a TensorBoard SummaryWriter."""

    def __init__(self):
        self.scalars, self.texts = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))


def test_statistics_and_findings_go_to_the_users_writer_and_callable():
    w, got = FakeWriter(), []
    mon = _nan_run(tensorboard=w, on_scalars=got.append)
    tags = {t for t, _, _ in w.scalars}
    assert {"floatguard/loss", "floatguard/grad_norm", "floatguard/lr", "floatguard/grad_norm/0",
            "floatguard/grad_norm/1", "floatguard/findings"} <= tags
    assert all(t.startswith("floatguard/") for t in tags)
    losses = [(v, s) for t, v, s in w.scalars if t == "floatguard/loss"]
    assert [s for _, s in losses] == [0, 1, 2, 3] and math.isnan(losses[-1][0])
    ((tag, text, step),) = w.texts
    assert tag == "floatguard/findings/nonfinite_loss" and step == 3 and "remedy" in text
    assert len(got) == 4 and got[-1]["floatguard/findings"] == 1.0
    with pytest.raises(TypeError, match="add_scalar"):
        Monitor(nn.Linear(2, 2), tensorboard=object())
    mon.close()


def test_exploding_depth_ratio_names_both_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.LayerNorm(4))
    mon = Monitor(model, live=False)
    for _ in range(4):
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-3)
        model[0].weight.grad.fill_(20.0)  # 2e4x the RMS gradient of the last weight layer
        model[0].bias.grad.fill_(20.0)
        mon.step(1.0)
    mon.close()
    (e,) = [e for e in mon.findings if e.kind == "exploding_gradient"]
    assert "the first weight layer in forward order, 0 (Linear), gets 2e+04x the RMS gradient of the last, " \
           "2 (Linear)" in e.message
    assert "the largest RMS gradient, 20, is in 0 (Linear)" in e.message


class ExpAct(nn.Module):
    def forward(self, x):
        return torch.exp(x)  # L:replay_exp


def _exp_model_run(replay, *, dtype=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), ExpAct(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), 0.01)
    mon = Monitor(model, opt, num_classes=3, live=False, replay=replay(model) if callable(replay) else replay)
    g = torch.Generator().manual_seed(0)
    for t in range(5):
        x = torch.randn(16, 4, generator=g) * (1e3 if t == 3 else 1.0)  # step 3: exp overflows in the forward
        y = torch.randint(0, 3, (16,), generator=g)
        batch["x"], batch["y"] = x, y
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        mon.step(loss)
        assert all(torch.equal(a, p.grad) or (a.isnan().any() and p.grad.isnan().any())
                   for a, p in zip(grads, model.parameters(), strict=True)), "the replay changed the gradients"
        opt.step()
    mon.close()
    return mon


batch: dict = {}


@pytest.mark.parametrize("replay", [True, lambda m: lambda: nn.functional.cross_entropy(m(batch["x"]), batch["y"])],
                         ids=["forward", "step-function"])
def test_replay_names_the_first_bad_op_module_and_line(replay):
    from pathlib import Path

    exp_line = next(i for i, t in enumerate(Path(__file__).read_text().splitlines(), 1) if "# L:replay_exp" in t)
    mon = _exp_model_run(replay)
    e = next(e for e in mon.findings if e.kind in ("nonfinite_loss", "nonfinite_gradient"))
    assert e.step == 3
    assert e.cause is not None and e.replay is not None
    assert (e.cause.op, e.cause.kind, e.cause.module) == ("aten::exp", "overflow", "1")
    assert e.cause.file == __file__ and e.cause.line == exp_line
    assert "the first bad op is aten::exp in 1 at" in e.message and "subtract the max" in e.hint


def test_without_replay_nothing_is_replayed():
    mon = _exp_model_run(False)
    e = next(e for e in mon.findings if e.kind in ("nonfinite_loss", "nonfinite_gradient"))
    assert e.cause is None and e.replay is None
