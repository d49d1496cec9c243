"""Training programs with known problems produce their findings; healthy ones produce none.

The programs are in ``monitor_programs.py``; each runs under the monitor's default
settings. A finding outside ``expect`` and ``allow`` is a false alarm and fails.
"""

from __future__ import annotations

import functools
import math

import pytest

pytest.importorskip("torch")

from monitor_programs import HEALTHY, PROGRAMS, Program

from floatguard.events import Event
from floatguard.monitor import KINDS, Monitor


@functools.cache
def _result(name: str) -> Monitor:
    """Each program runs once per test process; the tests below share its monitor."""
    return next(p for p in PROGRAMS + HEALTHY if p.name == name).run()


def _by_kind(mon: Monitor) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in mon.findings:
        out.setdefault(e.kind, []).append(e)
    return out


def _check_record(e: Event) -> None:
    """Every finding carries the fields the issue asks for."""
    assert e.source == "monitor" and e.kind in KINDS
    assert isinstance(e.step, int) and e.step >= 0, "the step it began"
    assert e.message and e.hint, "what happened and the remedy"
    assert e.stats and "detected_at" in e.stats and e.stats["detected_at"] >= e.step, "the evidence"
    d = e.to_dict()
    assert d["kind"] == e.kind and d["step"] == e.step and Event.from_dict(d) == e


def test_every_kind_of_the_issue_is_expected_by_some_program() -> None:
    from instability_programs import PROXIES

    base = {
        "nonfinite_loss", "nonfinite_gradient", "exploding_gradient", "vanishing_gradient", "dead_units",
        "saturated_units", "stuck_at_chance", "diverging_loss", "oscillating_loss", "stalled_loss", "update_ratio",
        "overconfident_logits", "fp16_overflow", "gradient_underflow"}
    transformer = {"attention_logit_growth", "output_logit_divergence", "update_rounded_away",
                   "adam_epsilon_dominates", "loss_spike"}  # issue 15; their proxies: test_instabilities.py
    assert set(KINDS) == base | transformer
    expected = set().union(*(p.expect for p in PROGRAMS))
    assert expected == base and {p.kind for p in PROXIES} == transformer
    assert len(PROGRAMS) >= 12 and len(HEALTHY) >= 4


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_faulty_program_is_diagnosed(program: Program) -> None:
    mon = _result(program.name)
    found = {e.kind for e in mon.findings}
    assert program.expect <= found, f"missed {sorted(program.expect - found)}; found {sorted(found)}"
    assert found <= program.expect | program.allow, f"unexpected {sorted(found - program.expect - program.allow)}"
    for e in mon.findings:
        _check_record(e)


@pytest.mark.parametrize("program", HEALTHY, ids=lambda p: p.name)
def test_healthy_program_has_no_findings(program: Program) -> None:
    mon = _result(program.name)
    assert mon.findings == [], [f"{e.kind}@{e.step}: {e.message}" for e in mon.findings]
    assert mon.steps >= 200


# -- the details each program must get right: layer, step, evidence, remedy -----------------------
def _run(name: str) -> dict[str, list[Event]]:
    return _by_kind(_result(name))


def test_nan_sample_names_the_step_and_the_data() -> None:
    (e,) = _run("nan_sample")["nonfinite_loss"]
    assert e.step == 30 and e.stats["input_nonfinite"] is True and math.isnan(e.stats["loss"])
    assert "data" in e.hint


def test_dead_relu_names_the_layer_and_the_bias() -> None:
    (e,) = _run("dead_relu_bias")["dead_units"]
    assert e.module == "1" and e.producer == "0"
    assert e.stats["dead_fraction"] == 1.0 and e.stats["producer_bias_mean"] == pytest.approx(-10.0)
    assert "bias" in e.message and "Kaiming" in e.hint


def test_saturated_tanh_names_both_layers() -> None:
    found = _run("saturated_tanh")["saturated_units"]
    assert {e.module for e in found} == {"1", "3"}
    assert all(e.stats["saturated_fraction"] >= 0.5 for e in found)


def test_deep_sigmoid_vanishes_in_the_first_layer() -> None:
    f = _run("deep_sigmoid")
    (v,) = f["vanishing_gradient"]
    assert v.module == "0" and v.stats["depth_ratio"] < 1e-4
    (c,) = f["stuck_at_chance"]
    assert c.stats["num_classes"] == 10 and c.stats["chance_loss"] == pytest.approx(math.log(10))


def test_where_nan_gradient_names_the_layer() -> None:
    (e,) = _run("where_nan_grad")["nonfinite_gradient"]
    assert e.module == "fc1" and e.step == 0 and math.isfinite(e.stats["loss"])
    assert "where" in e.hint


def test_double_softmax_states_the_loss_floor() -> None:
    (e,) = _run("double_softmax")["stalled_loss"]
    assert e.stats["loss_floor"] == pytest.approx(math.log(math.e + 9) - 1)
    assert "logits" in e.hint


def test_log_of_softmax_points_to_log_softmax() -> None:
    (e,) = _run("log_of_softmax")["nonfinite_loss"]
    assert "log_softmax" in e.hint and "loss:log" in e.message


def test_exploding_lr_diverges_before_it_overflows() -> None:
    f = _run("exploding_lr")
    (d,) = f["diverging_loss"]
    (n,) = f["nonfinite_loss"]
    assert d.stats["detected_at"] < n.step and "learning rate" in d.hint


def test_fp16_overflow_reports_the_scale() -> None:
    (e,) = _run("fp16_overflow")["fp16_overflow"]
    assert e.stats["scale"] < 1.0 and "bfloat16" in e.hint


def test_gradient_underflow_recommends_loss_scaling() -> None:
    (e,) = _run("gradient_underflow")["gradient_underflow"]
    assert e.stats["zero_fraction"] >= 0.25 and "GradScaler" in e.hint and e.dtype == "float16"


def test_update_ratio_directions() -> None:
    (hi,) = _run("sgd_lr_high")["update_ratio"]
    assert hi.stats["too_high"] is True and hi.stats["ratio"] >= 0.1
    (lo,) = _run("lr_too_small")["update_ratio"]
    assert lo.stats["too_high"] is False and lo.stats["ratio"] <= 1e-6
    (missing,) = _run("not_in_optimizer")["update_ratio"]
    assert missing.stats["ratio"] == 0.0 and "not in the optimizer" in missing.message


def test_overconfident_logits_evidence() -> None:
    (e,) = _run("overconfident")["overconfident_logits"]
    assert e.stats["median_gap"] >= e.stats["gap_limit"] and "temperature" in e.hint
