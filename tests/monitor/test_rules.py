"""Unit tests of the monitor's rules (``monitor/rules/*`` and ``monitor/transformer_rules.py``).

No model is trained here: :class:`Run` feeds synthetic per-step records to the rules exactly as
``Monitor._update_state`` / ``Monitor._check`` do (a :class:`StepRecord` per step, its
``sample()`` as the rules' sample, the per-layer gradient statistics through
``State.set_gradients``, and on a step with a NaN/inf loss only the rules that read one).
Each rule is driven on the pattern it names, just below its threshold, for one step fewer
than its persistence, and on healthy series (Hypothesis).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")  # the mirror of Monitor._check below reads core.py, which imports torch

from floatguard.events import Event
from floatguard.monitor.core import _ON_NONFINITE
from floatguard.monitor.record import AttentionStats, StepRecord
from floatguard.monitor.rules import (
    KINDS,
    RULES,
    DeadUnits,
    DivergingLoss,
    Fp16Overflow,
    GradientUnderflow,
    NonfiniteGradient,
    NonfiniteLoss,
    OscillatingLoss,
    OverconfidentLogits,
    Rule,
    SaturatedUnits,
    StalledLoss,
    State,
    StuckAtChance,
    Thresholds,
    UpdateRatio,
    VanishingGradient,
    ce_floor_on_probabilities,
)
from floatguard.monitor.transformer_rules import TRANSFORMER_RULES

AttentionLogitGrowth, OutputLogitDivergence, UpdateRoundedAway, AdamEpsilonDominates, LossSpike = TRANSFORMER_RULES

NAMES = ("fc1", "fc2", "head")  # three layers with a weight, in forward order
NUMEL = 100  # parameters per layer
HEALTHY_RMS = 0.01
LN10 = math.log(10)


class Run:
    """The host side of a Monitor without a model: one :class:`StepRecord` per :meth:`step`."""

    def __init__(self, *, rules: Sequence[type[Rule]] | None = None, th: Thresholds | None = None,
                 num_classes: int | None = None, lowp: str | None = None, scaler: bool = False,
                 not_in_optimizer: Sequence[str] = (), start: int = 0, growth_interval: int = 2000) -> None:
        n = len(NAMES)
        self.s = State(names=list(NAMES), numel=np.full(n, float(NUMEL)), order=list(range(n)),
                       th=th or Thresholds(), num_classes=num_classes, lowp=lowp, scaler=scaler,
                       not_in_optimizer=list(not_in_optimizer))
        self.s.types = {name: "Linear" for name in NAMES}
        self.rules = [cls() for cls in (RULES + TRANSFORMER_RULES if rules is None else rules)]
        self.t = start
        self.growth_interval = growth_interval
        self.new: list[Event] = []  # every finding as first reported
        self.closed: list[Event] = []  # findings closed (recovered)

    def step(self, loss: float = 1.0, *, rms: float | Sequence[float] = HEALTHY_RMS,
             present: Sequence[bool] | None = None, lr: float | None = 1e-3,
             input_nonfinite: bool | None = None, ranks: list[float] | None = None,
             **record: Any) -> list[Event]:
        """One training step: its loss, per-layer RMS gradients and any sampled statistics (StepRecord fields)."""
        n = len(NAMES)
        layer_rms = np.broadcast_to(np.asarray(rms, dtype=float), (n,)).copy()
        layer_n = np.where(np.asarray(present if present is not None else [True] * n), float(NUMEL), 0.0)
        layer_rms[layer_n == 0] = 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            layer_norm = layer_rms * np.sqrt(layer_n)
            gnorm = float(np.sqrt((layer_norm * layer_norm).sum()))
        rec = StepRecord(step=self.t, loss=loss, grad_norm=gnorm, layer_norm=layer_norm, layer_rms=layer_rms,
                         layer_n=layer_n, norms=layer_norm[layer_n > 0], lr=lr, grads_logged=False, ranks=ranks,
                         **record)
        if rec.scale is not None:  # as Monitor._gradients: a scaler skips a step whose gradients overflowed
            rec.skipped = not (math.isfinite(gnorm) and np.isfinite(rec.norms).all())
        # Monitor._update_state
        s = self.s
        if rec.ranks is not None:
            s.rank_loss, s.rank_input = rec.ranks, [False] * len(rec.ranks)
        s.record(rec.step, rec.loss, rec.grad_norm, rec.lr)
        s.set_gradients(rec.layer_norm, rec.layer_rms, rec.layer_n > 0)
        if not math.isfinite(rec.loss):
            s.input_nonfinite = input_nonfinite
        s.skipped = rec.skipped
        if rec.scale is not None:
            s.scale = rec.scale
            s.growth_interval = self.growth_interval
        sample = rec.sample()
        s.sample = sample or None
        if sample:
            s.samples.append(sample)
        # Monitor._check
        poisoned = not math.isfinite(rec.loss) or (not s.scaler and not math.isfinite(rec.grad_norm))
        new: list[Event] = []
        for rule in self.rules:
            if poisoned and rule.kind not in _ON_NONFINITE:
                continue
            new += rule.check(s)
        self.closed += s.closed
        s.closed = []
        self.new += new
        self.t += 1
        return new

    def steps(self, losses: Iterable[float], **kw: Any) -> list[Event]:
        out: list[Event] = []
        for v in losses:
            out += self.step(v, **kw)
        return out

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.new]

    def one(self, kind: str) -> Event:
        """The single finding of ``kind`` reported so far, in its latest form (counts, recovery)."""
        got = [e for (k, _), e in self.s.findings.items() if k == kind]
        assert len(got) == 1, f"{kind}: {got}"
        return got[0]


def num(ev: Event, key: str) -> float:
    """A statistic of a finding that must be a number."""
    v = ev.stats[key]
    assert isinstance(v, int | float) and not isinstance(v, bool), f"{key}: {v!r}"
    return float(v)


def fired_at(run: Run, kind: str) -> int | None:
    """The step at which ``kind`` was first reported (``stats['detected_at']``), or None."""
    for e in run.new:
        if e.kind == kind:
            return int(num(e, "detected_at"))
    return None


# -- the rule tables ----------------------------------------------------------------------------------

def test_every_kind_has_one_rule() -> None:
    kinds = [cls.kind for cls in RULES + TRANSFORMER_RULES]
    assert sorted(kinds) == sorted(KINDS)
    assert len(set(kinds)) == len(kinds)


# -- nonfinite_loss -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("setup", "cue"), [
    ({}, "fg.safe_log"),
    ({"input_nonfinite": True}, "nan_to_num"),
    ({"evidence": "loss:log"}, "log_softmax"),
    ({"lowp": "float16"}, "GradScaler"),
    ({"lowp": "bfloat16"}, "keep the loss, softmax/logsumexp, norms and the optimizer state in float32"),
])
def test_nonfinite_loss_fires_on_the_first_nan_with_the_remedy_its_evidence_points_to(
        setup: dict[str, Any], cue: str) -> None:
    run = Run(lowp=setup.get("lowp"))
    if "evidence" in setup:
        run.s.evidence["log_of_softmax"] = setup["evidence"]
    run.steps([2.0, 1.5, 1.25])
    assert run.new == []
    new = run.step(math.nan, rms=math.nan, input_nonfinite=setup.get("input_nonfinite"))
    assert [e.kind for e in new] == ["nonfinite_loss"]
    ev = new[0]
    assert (ev.step, ev.module, ev.severity, ev.source) == (3, None, "error", "monitor")
    assert math.isnan(num(ev, "loss")) and ev.stats["last_finite_loss"] == 1.25
    assert ev.stats["detected_at"] == 3 and ev.stats["count"] == 1
    assert ev.hint is not None and cue in ev.hint
    if "evidence" in setup:
        assert "loss:log" in ev.message
    # reported once: a second NaN step counts it
    assert run.step(math.inf, rms=math.nan) == []
    assert run.one("nonfinite_loss").stats["count"] == 2 and run.one("nonfinite_loss").stats["last_step"] == 4


def test_nonfinite_loss_after_exploding_gradients_says_clip() -> None:
    run = Run()
    run.steps([1.0] * 5)
    run.steps([1.0] * 3, rms=[0.01, 50.0, 0.01])
    assert run.kinds == ["exploding_gradient"]
    ev = run.step(math.inf, rms=math.inf)[0]
    assert ev.kind == "nonfinite_loss" and "after the loss or the gradients grew" in ev.message
    assert ev.hint is not None and "clip_grad_norm_" in ev.hint


def test_nonfinite_loss_names_the_rank() -> None:
    run = Run()
    ev = run.step(math.nan, ranks=[1.0, math.nan, 2.0])[0]
    assert ev.rank == 1 and ev.ranks == (1,) and "on rank 1" in ev.message


def test_finite_losses_of_any_size_are_not_nonfinite() -> None:
    run = Run(rules=[NonfiniteLoss])
    run.steps([1e300, -1e300, 0.0, 5e-324])
    assert run.new == []


# -- nonfinite_gradient ---------------------------------------------------------------------------------

def test_nonfinite_gradient_names_the_layer_nearest_the_loss() -> None:
    run = Run()
    run.steps([1.0, 0.9])
    new = run.step(0.8, rms=[math.nan, math.nan, 0.01])
    assert [e.kind for e in new] == ["nonfinite_gradient"]
    ev = new[0]
    assert (ev.step, ev.module, ev.layers) == (2, "fc2", ("fc1", "fc2"))  # backward reaches fc2 first
    assert math.isnan(num(ev, "grad_norm")) and ev.stats["loss"] == 0.8
    assert "fc2 (Linear) is NaN" in ev.message and ev.hint is not None and "double where" in ev.hint
    assert run.step(0.7, rms=[0.01, math.nan, 0.01]) == []  # once per run (key "")


def test_nonfinite_gradient_inf_is_an_overflow() -> None:
    run = Run(rules=[NonfiniteGradient])
    ev = run.step(1.0, rms=[0.01, 0.01, math.inf])[0]
    assert ev.module == "head" and math.isinf(num(ev, "grad_norm"))
    assert "overflows to inf" in ev.message and ev.hint is not None and "Clip gradients" in ev.hint


def test_nonfinite_gradient_silent_under_a_scaler_and_on_a_nan_loss() -> None:
    run = Run(rules=[NonfiniteGradient], scaler=True)
    run.steps([1.0] * 3, rms=math.inf, scale=1024.0)  # the scaler's business (fp16_overflow)
    assert run.new == []
    run = Run(rules=[NonfiniteGradient])
    run.step(math.nan, rms=math.nan)  # that is nonfinite_loss
    run.steps([1.0] * 3, rms=[0.01, 1e30, 0.01])  # large but finite
    assert run.new == []


# -- exploding_gradient ---------------------------------------------------------------------------------

def test_exploding_gradient_on_a_large_rms_after_patience() -> None:
    run = Run()
    run.steps([1.0] * 5)
    run.steps([1.0] * 2, rms=[0.01, 12.0, 0.01])
    assert run.new == []  # two steps: not yet
    new = run.step(1.0, rms=[0.01, 12.0, 0.01])
    assert [e.kind for e in new] == ["exploding_gradient"]
    ev = new[0]
    assert (ev.step, ev.module, ev.severity, ev.stats["detected_at"]) == (5, "fc2", "error", 7)
    assert ev.stats["layer_rms"] == 12.0
    assert ev.stats["start_grad_norm"] == pytest.approx(HEALTHY_RMS * math.sqrt(3 * NUMEL))
    assert "RMS gradient 12 >= 10" in ev.message and "fc2 (Linear)" in ev.message
    assert ev.hint is not None and "clip_grad_norm_" in ev.hint


def test_exploding_gradient_silent_below_the_threshold_and_on_interrupted_streaks() -> None:
    run = Run()
    run.steps([1.0] * 5)
    run.steps([1.0] * 30, rms=[0.01, 9.99, 0.01])
    for _ in range(5):  # two bad steps, one good, again and again
        run.steps([1.0] * 2, rms=[0.01, 20.0, 0.01])
        run.step(1.0)
    assert run.new == []


def test_exploding_gradient_on_growth_over_the_start() -> None:
    run = Run()
    run.steps([1.0] * 6, rms=1e-4)
    run.steps([1.0] * 10, rms=0.09)  # 900x the start: below 1e3
    assert run.new == []
    run.steps([1.0] * 3, rms=0.11)  # 1100x, every layer far below the RMS bar
    ev = run.one("exploding_gradient")
    assert ev.step == 16 and ev.stats["detected_at"] == 18
    assert num(ev, "grad_norm") / num(ev, "start_grad_norm") == pytest.approx(1100)
    assert "x its start" in ev.message


def test_exploding_gradient_through_depth() -> None:
    run = Run()
    run.steps([1.0] * 10, rms=[0.9, 0.01, 0.001])  # first/last = 900
    assert run.new == []
    run.steps([1.0] * 3, rms=[1.1, 0.01, 0.001])  # 1100
    ev = run.one("exploding_gradient")
    assert ev.step == 10 and ev.stats["depth_ratio"] == pytest.approx(1100)
    assert "fc1 (Linear), gets 1.1e+03x the RMS gradient of the last, head (Linear)" in ev.message


# -- vanishing_gradient ---------------------------------------------------------------------------------

def test_vanishing_gradient_with_depth_after_ten_steps() -> None:
    run = Run()
    run.steps([1.0] * 3)
    run.steps([1.0] * 9, rms=[0.95e-6, 0.01, 0.01])
    assert run.new == []
    new = run.step(1.0, rms=[0.95e-6, 0.01, 0.01])
    assert [e.kind for e in new] == ["vanishing_gradient"]
    ev = new[0]
    assert (ev.step, ev.module, ev.severity, ev.stats["detected_at"]) == (3, "fc1", "warning", 12)
    assert ev.stats["depth_ratio"] == pytest.approx(0.95e-4) and ev.stats["first_layer_rms"] == 0.95e-6
    assert "vanish with depth" in ev.message and ev.hint is not None and "Kaiming" in ev.hint


def test_vanishing_gradient_silent_above_the_ratio_and_on_short_streaks() -> None:
    run = Run()
    run.steps([1.0] * 40, rms=[1.05e-6, 0.01, 0.01])
    for _ in range(3):
        run.steps([1.0] * 9, rms=[1e-8, 0.01, 0.01])
        run.step(1.0)
    assert run.new == []


def test_vanishing_gradient_when_no_gradient_reaches_any_layer() -> None:
    run = Run(rules=[VanishingGradient])
    run.steps([2.0] * 10, rms=1e-12)
    ev = run.one("vanishing_gradient")
    assert ev.step == 0 and "no gradient reaches any layer" in ev.message
    # a converged loss (1e-6 of the first) owes no gradient
    run = Run(rules=[VanishingGradient])
    run.step(2.0)
    run.steps([2e-6] * 20, rms=1e-12)
    assert run.new == []


# -- dead_units, saturated_units ------------------------------------------------------------------------

def relu(dead: float, *, full: bool = True, since: int = 0, bias_mean: float | None = None) -> dict[str, Any]:
    """A ReLU call site's sampled statistics, as Monitor._activations builds them."""
    a: dict[str, Any] = {"kind": "relu", "producer": "fc1", "dead": dead, "batch_dead": dead, "units": 32,
                         "full": full, "since": since}
    if bias_mean is not None:
        a["bias_mean"] = bias_mean
    return a


def test_dead_units_over_a_full_window() -> None:
    run = Run()
    run.steps([1.0] * 7)
    new = run.step(1.0, acts={"relu1": relu(0.6, since=3, bias_mean=-2.5)})
    assert [e.kind for e in new] == ["dead_units"]
    ev = new[0]
    assert (ev.step, ev.module, ev.producer, ev.stats["detected_at"]) == (3, "relu1", "fc1", 7)
    assert ev.stats["dead_fraction"] == 0.6 and ev.stats["units"] == 32 and ev.stats["producer_bias_mean"] == -2.5
    assert "60% of the 32 ReLU units at relu1 output 0" in ev.message
    assert "the bias of fc1 (Linear) has mean -2.5" in ev.message
    assert ev.hint is not None and "LeakyReLU" in ev.hint
    assert run.step(1.0, acts={"relu1": relu(0.7, since=3)}) == []  # once per site
    assert run.step(1.0, acts={"relu2": relu(0.7, since=9)})[0].module == "relu2"  # another site


def test_dead_units_silent_below_the_share_or_before_the_window_is_full() -> None:
    run = Run(rules=[DeadUnits])
    for _ in range(10):
        run.step(1.0, acts={"relu1": relu(0.49), "relu2": relu(1.0, full=False)})
    assert run.new == []


def test_saturated_units_on_consecutive_samples() -> None:
    run = Run()
    tanh = {"kind": "tanh", "producer": "fc1", "saturated": 0.7}
    calm = {"kind": "sigmoid", "producer": "fc2", "saturated": 0.49}
    for t in range(6):  # sampled every other step: the unsampled steps neither count nor break the streak
        new = run.step(1.0, acts={"tanh1": tanh, "sig1": calm} if t % 2 == 0 else None)
        assert new == [] or t == 4
    ev = run.one("saturated_units")
    assert (ev.step, ev.module, ev.producer, ev.stats["detected_at"]) == (0, "tanh1", "fc1", 4)
    assert ev.stats["saturated_fraction"] == 0.7 and "70% of the tanh outputs at tanh1" in ev.message
    assert ev.hint is not None and "Xavier" in ev.hint


def test_saturated_units_silent_on_the_model_output_and_on_broken_streaks() -> None:
    run = Run(rules=[SaturatedUnits])
    out = {"kind": "sigmoid", "producer": "head", "saturated": 1.0, "output": True}
    for t in range(12):
        sat = 0.9 if t % 3 else 0.1  # two saturated samples, then one not
        run.step(1.0, acts={"out": out, "tanh1": {"kind": "tanh", "producer": "fc1", "saturated": sat}})
    assert run.new == []


# -- overconfident_logits -------------------------------------------------------------------------------

def logits(absmax: float = 12.0, gap: float | None = 4.0, dtype: str = "float32") -> dict[str, Any]:
    return {"site": "loss:cross_entropy", "absmax": absmax, "gap": gap, "classes": 10, "dtype": dtype}


def test_overconfident_logits_large() -> None:
    run = Run()
    run.steps([1.0] * 2, logits=logits())
    run.steps([1.0] * 2, logits=logits(absmax=9000.0))
    assert run.new == []
    ev = run.step(1.0, logits=logits(absmax=9000.0))[0]
    assert (ev.kind, ev.step, ev.module, ev.stats["absmax"]) == ("overconfident_logits", 2, "loss:cross_entropy", 9000)
    assert "float16 overflows at 65504" in ev.message and ev.hint is not None and "label_smoothing" in ev.hint


@pytest.mark.parametrize(("dtype", "eps_bits"), [("float32", 23), ("float16", 10), ("bfloat16", 7), ("float64", 52)])
def test_overconfident_logits_gap_scales_with_the_dtype(dtype: str, eps_bits: int) -> None:
    limit = 2 * eps_bits * math.log(2)  # logit_gap_factor x ln(1/eps)
    run = Run(rules=[OverconfidentLogits])
    run.steps([1.0] * 10, logits=logits(gap=limit * 0.99, dtype=dtype))
    run.steps([1.0] * 10, logits=logits(absmax=8000.0, dtype=dtype))
    assert run.new == []
    run.steps([1.0] * 3, logits=logits(gap=limit * 1.01, dtype=dtype))
    ev = run.one("overconfident_logits")
    assert ev.step == 20 and ev.stats["gap_limit"] == pytest.approx(limit)
    assert "softmax rounds to 1" in ev.message


# -- stuck_at_chance ------------------------------------------------------------------------------------

def test_stuck_at_chance_fires_after_the_window_and_closes_on_recovery() -> None:
    run = Run(num_classes=10)
    run.steps([LN10] * 99)
    assert run.new == []
    new = run.step(LN10)
    assert [e.kind for e in new] == ["stuck_at_chance"]  # and not stalled_loss: it defers to this one
    ev = new[0]
    assert (ev.step, ev.module, ev.stats["detected_at"]) == (0, None, 99)
    assert ev.stats["chance_loss"] == pytest.approx(LN10) and ev.stats["num_classes"] == 10
    assert ev.stats["plateau_steps"] == 100 and ev.stats["median_loss"] == pytest.approx(LN10)
    assert ev.hint is not None and "labels" in ev.hint and "no softmax" in ev.hint
    run.steps([LN10] * 20)
    run.steps([1.0] * 9)  # the tail of 20 (checked every 10 steps) is half at chance: not yet
    assert run.closed == []
    run.step(1.0)
    assert len(run.closed) == 1
    ev = run.one("stuck_at_chance")
    assert run.closed[0] == ev and ev.severity == "info"
    assert ev.stats["recovered_at"] == 129 and ev.stats["loss_at_recovery"] == pytest.approx((1.0 + LN10) / 2)
    assert ev.note is not None and "start of learning" in ev.note and "recovered at step 129" in ev.message
    run.steps([LN10] * 150)  # one finding per run: back at chance, it is not reported again
    assert run.kinds == ["stuck_at_chance"]


@pytest.mark.parametrize(("factor", "recovers"), [(0.88, True), (0.92, False)])
def test_stuck_at_chance_recovers_twice_the_tolerance_below_chance(factor: float, recovers: bool) -> None:
    run = Run(rules=[StuckAtChance], num_classes=10)
    run.steps([LN10] * 100 + [factor * LN10] * 50)
    assert run.kinds == ["stuck_at_chance"]
    assert ("recovered_at" in run.one("stuck_at_chance").stats) == recovers
    assert len(run.closed) == int(recovers)


def test_stuck_at_chance_needs_half_the_run() -> None:
    run = Run(rules=[StuckAtChance], num_classes=10)
    run.steps([1.0] * 150 + [LN10] * 149)  # 149 of 299 steps at chance
    assert run.new == []
    run.step(LN10)
    ev = run.one("stuck_at_chance")
    assert (ev.step, ev.stats["detected_at"], ev.stats["plateau_steps"]) == (150, 299, 150)


@settings(max_examples=25, deadline=None)
@given(factor=st.floats(0.5, 1.5), classes=st.integers(2, 1000))
def test_stuck_at_chance_band(factor: float, classes: int) -> None:
    """A constant loss at factor x ln C fires after 100 steps iff it is within 5% of ln C."""
    run = Run(rules=[StuckAtChance], num_classes=classes)
    run.steps([factor * math.log(classes)] * 120)
    inside = abs(factor - 1) <= 0.05
    if abs(abs(factor - 1) - 0.05) > 1e-9:  # the boundary itself is decided by rounding
        assert (fired_at(run, "stuck_at_chance") == 99) == inside
        assert run.kinds == (["stuck_at_chance"] if inside else [])


def test_stuck_at_chance_needs_num_classes() -> None:
    run = Run(rules=[StuckAtChance])
    run.steps([LN10] * 200)
    assert run.new == []


# -- stalled_loss ---------------------------------------------------------------------------------------

def test_stalled_loss_without_progress_after_the_window() -> None:
    run = Run()
    run.steps([1.0] * 99)
    assert run.new == []
    new = run.step(1.0)
    assert [e.kind for e in new] == ["stalled_loss"]
    ev = new[0]
    assert (ev.step, ev.module, ev.stats["detected_at"]) == (0, None, 99)
    assert (ev.stats["start_loss"], ev.stats["loss"], ev.stats["steps"]) == (1.0, 1.0, 100)
    assert "not improved in 100 steps" in ev.message and ev.hint is not None and "Raise the learning rate" in ev.hint


@pytest.mark.parametrize(("end", "fires"), [(0.985, False), (0.995, True)])
def test_stalled_loss_threshold_is_one_percent(end: float, fires: bool) -> None:
    run = Run(rules=[StalledLoss])
    run.steps([1.0] * 50 + [end] * 50)
    assert run.kinds == (["stalled_loss"] if fires else [])


def test_stalled_loss_is_not_judged_under_a_schedule_and_names_parameters_outside_the_optimizer() -> None:
    run = Run(rules=[StalledLoss])
    for t in range(150):
        run.step(1.0, lr=1e-4 * (1 + t / 100))  # warmup
    assert run.new == []
    run = Run(rules=[StalledLoss], not_in_optimizer=["fc2"])
    run.steps([1.0] * 100)
    hint = run.one("stalled_loss").hint
    assert hint is not None and hint.startswith("The optimizer does not hold the parameters of fc2")


def test_stalled_loss_when_probabilities_reach_the_loss() -> None:
    probs = {**logits(absmax=0.9, gap=0.1), "probabilities": True}
    run = Run()
    run.steps([2.0, 1.9])
    run.step(1.8, logits=probs, probs_into_loss="loss:cross_entropy")
    run.steps([1.7, 1.6])
    assert run.new == []
    new = run.step(1.6, logits=probs, probs_into_loss="loss:cross_entropy")
    assert [e.kind for e in new] == ["stalled_loss"]
    ev = new[0]
    assert (ev.step, ev.module, ev.stats["detected_at"]) == (2, "loss:cross_entropy", 5)
    assert ev.stats["loss_floor"] == pytest.approx(ce_floor_on_probabilities(2))  # C unknown: binary
    assert ev.hint is not None and "Remove the softmax" in ev.hint


# -- diverging_loss -------------------------------------------------------------------------------------

def test_diverging_loss_after_five_steps_above_start_and_best() -> None:
    run = Run()
    run.steps(np.linspace(2.0, 1.0, 11))  # steps 0..10
    run.steps([5.0] * 5)  # 3-step medians: best 1.1 at step 10, 5 from step 12
    assert run.new == []
    new = run.step(5.0)
    assert [e.kind for e in new] == ["diverging_loss"]
    ev = new[0]
    assert (ev.step, ev.severity, ev.stats["detected_at"]) == (10, "error", 16)  # from the best
    assert (ev.stats["loss"], ev.stats["best_loss"], ev.stats["start_loss"]) == (5.0, pytest.approx(1.1), 2.0)
    assert ev.hint is not None and "warmup" in ev.hint


@pytest.mark.parametrize(("level", "fires"), [(2.95, False), (3.05, True)])
def test_diverging_loss_needs_one_and_a_half_times_the_start(level: float, fires: bool) -> None:
    run = Run(rules=[DivergingLoss])
    run.steps(list(np.linspace(2.0, 1.0, 11)) + [level] * 20)  # twice the best is 2: the start's 3 binds
    assert run.kinds == (["diverging_loss"] if fires else [])


def test_diverging_loss_ignores_a_catapult_that_comes_back() -> None:
    run = Run(rules=[DivergingLoss])
    run.steps([1.0] * 10)
    for _ in range(5):
        run.steps([10.0] * 4 + [1.0] * 10)  # back within 4 steps: 4 high 3-step medians
    assert run.new == []
    run.steps([10.0] * 5 + [1.0])  # 5 high losses: the fifth high median (10, 10, 1) is one too many
    assert run.kinds == ["diverging_loss"]


def test_diverging_loss_counts_an_overflow_while_rising() -> None:
    run = Run()
    run.steps([1.0] * 10 + [4.0] * 5)  # medians above the bar from step 11: a streak of 4
    assert run.new == []
    new = run.step(math.inf, rms=math.inf)
    assert sorted(e.kind for e in new) == ["diverging_loss", "nonfinite_loss"]
    assert run.one("diverging_loss").stats["detected_at"] == 15
    run = Run(rules=[DivergingLoss])
    run.steps([1.0] * 10 + [4.0] * 5 + [math.nan])  # NaN is not "rising"
    assert run.new == []


# -- oscillating_loss -----------------------------------------------------------------------------------

def test_oscillating_loss_rebounds_on_two_checks() -> None:
    run = Run()
    wave = [1.0, 3.0] * 40
    run.steps(wave[:69])
    assert run.new == []  # one check (n = 60) saw it, patience is 2
    new = run.step(wave[69])
    assert [e.kind for e in new] == ["oscillating_loss"]
    ev = new[0]
    assert (ev.step, ev.stats["detected_at"]) == (0, 69)
    assert num(ev, "rebounds") >= 3 and ev.stats["swing"] == 2.0 and ev.stats["median"] == 2.0
    assert "rebounds" in ev.message and ev.hint is not None and "momentum" in ev.hint


@pytest.mark.parametrize(("amplitude", "fires"), [(0.12, False), (0.13, True)])
def test_oscillating_loss_alternating_swing_threshold(amplitude: float, fires: bool) -> None:
    # around 1 with a start of 1: 2 sd >= a quarter of the start binds (sd >= 10% of the median is 0.1)
    run = Run(rules=[OscillatingLoss])
    run.steps([1.0 + amplitude, 1.0 - amplitude] * 50)
    assert run.kinds == (["oscillating_loss"] if fires else [])
    if fires:
        ev = run.one("oscillating_loss")
        assert "alternating" in ev.message and ev.stats["autocorrelation"] == pytest.approx(-1, abs=0.05)


def test_oscillating_loss_silent_on_noise_and_on_progress() -> None:
    rng = np.random.default_rng(0)
    run = Run(rules=[OscillatingLoss])
    run.steps(1.0 + 0.3 * rng.random(200))  # white noise: autocorrelation ~0, no doubling
    assert run.new == []
    run = Run(rules=[OscillatingLoss])
    wave = np.array([1.0, 3.0] * 100)
    run.steps(wave * np.exp(-np.arange(200) / 20))  # swings, but the loss more than halves in each window
    assert run.new == []


# -- update_ratio ---------------------------------------------------------------------------------------

def test_update_ratio_high_on_five_samples() -> None:
    run = Run()
    high = np.array([1e-3, 0.2, 1e-3])
    for t in range(12):
        if t % 2:
            run.step(1.0)  # unsampled
        else:
            run.step(1.0, update=np.array([1e-3, 1e-3, 1e-3]) if t < 2 else high)
    ev = run.one("update_ratio")
    assert (ev.step, ev.module, ev.layers, ev.stats["detected_at"]) == (2, "fc2", ("fc2",), 10)
    assert ev.stats["ratio"] == 0.2 and ev.stats["too_high"] is True and ev.stats["lr"] == 1e-3
    assert "rewrite the weights" in ev.message and ev.hint is not None and "Lower the learning rate" in ev.hint


def test_update_ratio_silent_inside_the_band_and_on_four_of_five() -> None:
    run = Run(rules=[UpdateRatio])
    run.steps([1.0] * 30, update=np.array([1.01e-6, 0.099, math.nan]))  # NaN: a layer without weights
    for t in range(30):
        run.step(1.0, update=np.array([1e-3, 0.5 if t % 5 else 1e-3, 1e-9 if t % 5 else 1e-3]))
    assert run.new == []


def test_update_ratio_low_only_at_the_top_learning_rate_and_with_a_gradient() -> None:
    low = np.array([1e-7, 1e-3, 1e-3])
    run = Run(rules=[UpdateRatio])
    for t in range(7):
        run.step(1.0, lr=1e-4 * (t + 1), update=low)  # warmup: a rising lr explains small updates
    assert run.new == []
    run.steps([1.0] * 4, lr=8e-4, update=low)  # the lr stays at its top: 4 of the 5 samples
    assert run.new == []
    run.step(1.0, lr=8e-4, update=low)
    ev = run.one("update_ratio")
    assert (ev.step, ev.module, ev.stats["too_high"], ev.stats["detected_at"]) == (7, "fc1", False, 11)
    assert ev.stats["ratio"] == 1e-7 and ev.layers == ("fc1",)
    assert "barely move" in ev.message and ev.hint is not None and "master weights" in ev.hint
    run = Run(rules=[UpdateRatio])
    run.steps([1.0] * 20, present=[False, True, True], update=low)  # no gradient: nothing to move
    assert run.new == []


def test_update_ratio_low_needs_five_samples_with_a_gradient() -> None:
    low = np.array([1e-7, 1e-3, 1e-3])
    run = Run(rules=[UpdateRatio])
    run.steps([1.0] * 4, present=[False, True, True], update=low)  # steps 0-3: fc1 has no gradient
    run.step(1.0, update=low)  # step 4: one sample with a gradient
    assert run.new == []
    run.steps([1.0] * 4, update=low)
    assert fired_at(run, "update_ratio") == 8 and run.one("update_ratio").step == 4


def test_update_ratio_low_names_parameters_outside_the_optimizer() -> None:
    run = Run(rules=[UpdateRatio], not_in_optimizer=["fc1"])
    run.steps([1.0] * 5, update=np.array([0.0, 1e-3, 1e-3]))
    ev = run.one("update_ratio")
    assert "fc1 is not in the optimizer" in ev.message
    assert ev.hint is not None and ev.hint.startswith("Build the optimizer")


# -- fp16_overflow --------------------------------------------------------------------------------------

def scaled(run: Run, skips: Sequence[int], steps: int, scale: float = 1024.0) -> None:
    """Steps with a loss scaler that skips (gradient overflow) at the given step indices."""
    for t in range(steps):
        run.step(1.0, rms=math.inf if t in skips else HEALTHY_RMS, scale=scale)


def test_fp16_overflow_after_calibration() -> None:
    run = Run(scaler=True, lowp="float16")
    scaled(run, skips=[0, 1, 2, 3, 4, 5, 20, 40, 60, 80], steps=90)  # calibration, then four skips
    assert run.new == []
    run.step(1.0, rms=math.inf, scale=1024.0)  # step 90: the fifth in 100 steps
    ev = run.one("fp16_overflow")
    assert (ev.step, ev.severity, ev.dtype, ev.stats["detected_at"]) == (20, "error", "float16", 90)
    assert ev.stats["skips_in_window"] == 5 and ev.stats["window"] == 100
    assert "skipped 5 of the last 100 steps" in ev.message and ev.hint is not None and "bfloat16" in ev.hint


def test_fp16_overflow_counts_skips_within_the_window_only() -> None:
    run = Run(rules=[Fp16Overflow], scaler=True, lowp="float16")
    scaled(run, skips=list(range(10, 400, 30)), steps=400)  # one skip in 30 steps: 4 per window
    assert run.new == []


def test_fp16_overflow_limit_follows_the_growth_interval() -> None:
    skips = [10, 12, 14, 16, 18, 20]  # 3 x 100 / 50 = 6 skips allowed in 100 steps
    run = Run(rules=[Fp16Overflow], scaler=True, growth_interval=50)
    scaled(run, skips=skips[:5], steps=30)
    assert run.new == []
    run = Run(rules=[Fp16Overflow], scaler=True, growth_interval=50)
    scaled(run, skips=skips, steps=30)
    assert fired_at(run, "fp16_overflow") == 20


def test_fp16_overflow_scale_below_one() -> None:
    run = Run(rules=[Fp16Overflow], scaler=True)
    scaled(run, skips=[], steps=3, scale=1.0)
    assert run.new == []
    run.step(1.0, scale=0.5)
    ev = run.one("fp16_overflow")
    assert ev.stats["scale"] == 0.5 and "loss scale fell to 0.5" in ev.message
    run = Run(rules=[Fp16Overflow])  # no scaler: nothing to judge
    run.steps([1.0] * 3, rms=math.inf)
    assert run.new == []


# -- gradient_underflow ---------------------------------------------------------------------------------

def underflow(zero: float, tiny: float) -> tuple[np.ndarray, np.ndarray]:
    return np.array([0.05, zero, 0.05]), np.array([0.0, tiny, 0.0])


def test_gradient_underflow_in_float16() -> None:
    run = Run(lowp="float16")
    run.steps([1.0] * 2, underflow=underflow(0.3, 0.02))
    assert run.new == []
    ev = run.step(1.0, underflow=underflow(0.3, 0.02))[0]
    assert (ev.kind, ev.step, ev.module, ev.layers) == ("gradient_underflow", 0, "fc2", ("fc2",))
    assert ev.stats["zero_fraction"] == 0.3 and ev.stats["tiny_fraction"] == 0.02
    assert "30% of the entries are 0" in ev.message and ev.hint is not None and "GradScaler" in ev.hint


@pytest.mark.parametrize(("lowp", "zero", "tiny"), [
    ("float16", 0.24, 0.5), ("float16", 0.9, 0.009), ("bfloat16", 0.9, 0.5), (None, 0.9, 0.5)])
def test_gradient_underflow_silent(lowp: str | None, zero: float, tiny: float) -> None:
    run = Run(rules=[GradientUnderflow], lowp=lowp)
    run.steps([1.0] * 10, underflow=underflow(zero, tiny))
    assert run.new == []


# -- attention_logit_growth -----------------------------------------------------------------------------

def attention(m: float, entropy: float = 2.5) -> dict[str, AttentionStats]:
    return {"blk.attn": AttentionStats(max_logit=m, entropy=entropy, keys=16)}


def test_attention_logit_growth_fast_and_collapsing() -> None:
    run = Run()
    seq = [5.0, 10.0, 20.0, 35.0, 50.0]
    for m in seq:  # x2 over 3 samples from 35 on, with the entropy below half its first value
        run.step(1.0, attention=attention(m, entropy=2.5 if m < 20 else 1.0))
    assert run.new == []
    new = run.step(1.0, attention=attention(70.0, entropy=1.0))
    assert [e.kind for e in new] == ["attention_logit_growth"]
    ev = new[0]
    assert (ev.step, ev.module, ev.severity, ev.stats["detected_at"]) == (2, "blk.attn", "error", 5)  # 20 > 2 x 5
    assert ev.stats["max_logit"] == 70.0 and ev.stats["first_max_logit"] == 5.0
    assert ev.stats["growth"] == pytest.approx(3.5) and ev.stats["growth_steps"] == 3
    assert ev.stats["entropy"] == 1.0 and ev.stats["first_entropy"] == 2.5
    assert "attention collapses to one-hot" in ev.message and ev.hint is not None and "qk-layernorm" in ev.hint


def test_attention_logit_growth_needs_the_entropy_to_fall_or_the_logit_to_be_large() -> None:
    run = Run(rules=[AttentionLogitGrowth])
    for m in [5.0, 10.0, 20.0, 35.0, 50.0, 70.0, 99.0, 99.0, 99.0]:  # growing fast, attention still spread
        run.step(1.0, attention=attention(m, entropy=1.3))
    assert run.new == []
    run.steps([1.0] * 2, attention=attention(101.0, entropy=1.3))
    assert run.new == []
    run.step(1.0, attention=attention(101.0, entropy=1.3))
    ev = run.one("attention_logit_growth")
    assert ev.stats["detected_at"] == 11 and "above 100" in ev.message


def test_attention_logit_growth_fused_compares_the_bound() -> None:
    run = Run(rules=[AttentionLogitGrowth])
    run.steps([1.0] * 3, attention=attention(150.0, entropy=math.nan))
    ev = run.one("attention_logit_growth")
    assert ev.stats["fused"] is True and "entropy" not in ev.stats
    assert "fused scaled_dot_product_attention" in ev.message


# -- output_logit_divergence ----------------------------------------------------------------------------

def test_output_logit_divergence_after_three_samples() -> None:
    run = Run()
    run.steps([1.0] * 3, logz=(2.0, 5.0, "loss:cross_entropy"))
    run.steps([1.0] * 3, logz=(30.0, 40.0, "loss:cross_entropy"))  # drifting, below 50
    run.steps([1.0] * 2, logz=(50.0, 60.0, "loss:cross_entropy"))
    assert run.new == []
    ev = run.step(1.0, logz=(50.0, 60.0, "loss:cross_entropy"))[0]
    assert (ev.kind, ev.module, ev.stats["detected_at"]) == ("output_logit_divergence", "loss:cross_entropy", 8)
    assert ev.step == 2  # the last sample with RMS log Z below half the threshold
    assert (ev.stats["logz_rms"], ev.stats["logz_mean"], ev.stats["first_logz_mean"]) == (60.0, 50.0, 2.0)
    assert ev.hint is not None and "z_loss=1e-4" in ev.hint


def test_output_logit_divergence_silent_below_and_after_overconfident_logits() -> None:
    run = Run(rules=[OutputLogitDivergence])
    run.steps([1.0] * 10, logz=(40.0, 49.9, "loss:cross_entropy"))
    assert run.new == []
    run = Run(rules=[OverconfidentLogits, OutputLogitDivergence])
    run.steps([1.0] * 10, logz=(50.0, 60.0, "loss:cross_entropy"), logits=logits(absmax=9000.0))
    assert run.kinds == ["overconfident_logits"]


def test_output_logit_divergence_begins_inside_the_run() -> None:
    run = Run(rules=[OutputLogitDivergence], start=1000)
    run.steps([1.0] * 3, logz=(50.0, 60.0, "loss:cross_entropy"))
    assert run.one("output_logit_divergence").step == 1000


# -- update_rounded_away --------------------------------------------------------------------------------

def rounded(vanished: float, moving: float = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v, mv = np.array([0.0, vanished, 0.0]), np.array([100.0, moving, 100.0])
    return v, mv, v / np.maximum(mv, 1)


def test_update_rounded_away_after_three_samples() -> None:
    run = Run(lowp="bfloat16")
    run.steps([1.0] * 2, rounded=rounded(60))
    assert run.new == []
    ev = run.step(1.0, rounded=rounded(60))[0]
    assert (ev.kind, ev.step, ev.module, ev.layers, ev.dtype) == ("update_rounded_away", 0, "fc2", ("fc2",), "bfloat16")
    assert ev.stats["vanished_fraction"] == 0.6 and ev.stats["overall_fraction"] == pytest.approx(0.2)
    assert ev.stats["sampled_entries"] == 100
    assert "60% of the bfloat16 weight updates of fc2 (Linear)" in ev.message
    assert ev.hint is not None and "float32 master weights" in ev.hint


def test_update_rounded_away_silent_below_half_and_on_few_entries() -> None:
    run = Run(rules=[UpdateRoundedAway], lowp="bfloat16")
    run.steps([1.0] * 5, rounded=rounded(49))
    run.steps([1.0] * 5, rounded=rounded(15, moving=15))  # fewer than 16 moving entries: no verdict
    assert run.new == []


# -- adam_epsilon_dominates -----------------------------------------------------------------------------

def test_adam_epsilon_dominates_on_the_first_sample() -> None:
    run = Run()
    run.steps([1.0] * 3, adam=(np.array([0.0, 49.0, 0.0]), np.array([100.0, 100.0, 100.0]), 1e-8))
    assert run.new == []
    ev = run.step(1.0, adam=(np.array([0.0, 80.0, 0.0]), np.array([0.0, 100.0, 100.0]), 1e-8))[0]
    assert (ev.kind, ev.step, ev.module, ev.layers) == ("adam_epsilon_dominates", 3, "fc2", ("fc2",))
    assert ev.stats["eps_fraction"] == 0.8 and ev.stats["eps"] == 1e-8
    assert ev.stats["overall_fraction"] == pytest.approx(0.4)  # entries never given a gradient do not count
    assert ev.hint is not None and "eps=1e-15" in ev.hint


# -- loss_spike -----------------------------------------------------------------------------------------

def calm(n: int) -> list[float]:
    return [1.0 + 0.005 * math.sin(t) for t in range(n)]


def test_loss_spike_recovered_in_one_batch() -> None:
    run = Run()
    run.steps(calm(40))
    run.step(3.0)  # step 40
    run.steps(calm(4))
    assert run.new == []
    new = run.step(1.0)  # confirmed 5 steps later
    assert [e.kind for e in new] == ["loss_spike"]
    ev = new[0]
    assert (ev.step, ev.module, ev.stats["detected_at"]) == (40, None, 45)
    assert ev.stats["loss"] == 3.0 and ev.stats["recovered"] is True and ev.stats["recovered_after"] == 1
    assert ev.stats["median_loss"] == pytest.approx(1.0, abs=0.005)
    assert "one batch" in ev.message and ev.hint is not None and "clip_grad_norm_" in ev.hint


def test_loss_spike_after_gradient_growth_not_recovered() -> None:
    run = Run(rules=[LossSpike])
    run.steps(calm(37))
    run.steps(calm(3), rms=0.05)  # the gradient norm grows 5x in the steps before
    run.steps([3.0] * 6)
    ev = run.one("loss_spike")
    assert ev.stats["recovered"] is False and ev.stats["recovered_after"] is None
    assert ev.stats["grad_norm_growth_before"] == pytest.approx(5.0)
    assert "not recovered 5 steps later" in ev.message and "gradient norm had grown 5x" in ev.message


@pytest.mark.parametrize(("height", "fires"), [(1.09, False), (1.12, True)])
def test_loss_spike_needs_a_tenth_of_the_start_loss(height: float, fires: bool) -> None:
    run = Run(rules=[LossSpike])
    run.steps([*calm(40), height, *calm(10)])
    assert run.kinds == (["loss_spike"] if fires else [])


def test_loss_spike_that_opens_a_divergence_is_left_to_diverging_loss() -> None:
    run = Run()
    run.steps(calm(40) + [5.0] * 10)
    assert run.kinds == ["diverging_loss"]


# -- properties over healthy series and persistence -----------------------------------------------------

def healthy_sample(lowp: str | None) -> dict[str, Any]:
    """Every sampled statistic at a healthy value (the margins the rules' docstrings give)."""
    ones = np.ones(len(NAMES))
    return {
        "update": 1e-3 * ones,
        "acts": {"relu1": relu(0.02, since=0), "tanh1": {"kind": "tanh", "producer": "fc2", "saturated": 0.05}},
        "logits": logits(absmax=12.0, gap=4.0),
        "underflow": (0.1 * ones, 0.001 * ones) if lowp == "float16" else None,
        "attention": attention(4.0, entropy=2.5),
        "logz": (2.0, 5.0, "loss:cross_entropy"),
        "rounded": rounded(5) if lowp else None,
        "adam": (1.0 * ones, 100.0 * ones, 1e-8),
    }


@settings(max_examples=30, deadline=None)
@given(start=st.floats(0.05, 50.0), rate=st.floats(0.01, 0.05), floor=st.floats(0.0, 1.0),
       noise=st.floats(0.0, 0.003), layer_rms=st.lists(st.floats(1e-3, 0.9), min_size=3, max_size=3),
       every=st.integers(1, 10), lowp=st.sampled_from([None, "float16", "bfloat16"]),
       classes=st.sampled_from([None, 2, 10, 1000]), seed=st.integers(0, 2**16))
def test_a_healthy_run_fires_no_rule(start: float, rate: float, floor: float, noise: float, layer_rms: list[float],
                                     every: int, lowp: str | None, classes: int | None, seed: int) -> None:
    """A loss decaying to a floor, steady gradients and healthy samples: none of the 19 rules fires."""
    # not a run that spends its second half within the rule's 5% of chance (it is stuck there: the rule is right to
    # fire; e.g. start 3.5, floor 0.625, rate 1/32 stays at 2.19-2.40 from step 90 with 10 classes)
    late = (floor * start, (math.exp(-100 * rate) + floor) * start)  # the loss from step 100 on lies in between
    assume(classes is None or late[0] > 1.06 * math.log(classes) or late[1] < 0.94 * math.log(classes))
    rng = np.random.default_rng(seed)
    run = Run(lowp=lowp, num_classes=classes)
    sample = {k: v for k, v in healthy_sample(lowp).items() if v is not None}
    jitter = 1 + noise * rng.standard_normal(200)
    for t in range(200):
        loss = (start * math.exp(-rate * t) + floor * start) * jitter[t]
        run.step(loss, rms=layer_rms, **(sample if t % every == 0 else {}))
    assert run.new == [], [e.message for e in run.new]


@settings(max_examples=25, deadline=None)
@given(level=st.floats(1e-3, 1e3), classes=st.sampled_from([None, 10]), every=st.integers(1, 10))
def test_a_constant_healthy_run_fires_nothing_but_stalled_loss_after_its_window(
        level: float, classes: int | None, every: int) -> None:
    if classes is not None and abs(level / math.log(classes) - 1) <= 0.06:
        return  # that is stuck_at_chance (tested above)
    run = Run(num_classes=classes)
    sample = {k: v for k, v in healthy_sample(None).items() if v is not None}
    for t in range(99):
        run.step(level, **(sample if t % every == 0 else {}))
    assert run.new == []
    run.step(level)
    assert run.kinds == ["stalled_loss"]


# For each rule with a per-sample condition and ``patience``: (run options, the bad record, how many healthy
# steps before the streak the reported ``step`` lies: output_logit_divergence reports its last calm sample).
PATIENT: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "exploding_gradient": ({}, {"rms": [0.01, 12.0, 0.01]}, 0),
    "saturated_units": ({}, {"acts": {"tanh1": {"kind": "tanh", "producer": "fc1", "saturated": 0.8}}}, 0),
    "overconfident_logits": ({}, {"logits": logits(absmax=1e4)}, 0),
    "gradient_underflow": ({"lowp": "float16"}, {"underflow": underflow(0.5, 0.1)}, 0),
    "attention_logit_growth": ({}, {"attention": attention(150.0, entropy=0.1)}, 0),
    "output_logit_divergence": ({}, {"logz": (80.0, 90.0, "loss:cross_entropy")}, 1),
    "update_rounded_away": ({"lowp": "bfloat16"}, {"rounded": rounded(90)}, 0),
}


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(PATIENT)), patience=st.integers(1, 6), bad=st.integers(0, 8))
def test_patience(kind: str, patience: int, bad: int) -> None:
    """``bad`` consecutive bad samples after healthy ones fire ``kind`` iff bad >= patience, and nothing else."""
    options, record, back = PATIENT[kind]
    run = Run(th=Thresholds(patience=patience), **options)
    healthy = {k: v for k, v in healthy_sample(options.get("lowp")).items() if v is not None}
    run.steps([1.0] * 6, **healthy)
    for _ in range(bad):
        run.step(1.0, **{**healthy, **record})
    run.steps([1.0] * 3, **healthy)
    if bad >= patience:
        assert run.kinds == [kind]
        ev = run.one(kind)
        assert (ev.step, ev.stats["detected_at"]) == (6 - back, 6 + patience - 1)
    else:
        assert run.new == []
