"""StepRecord and LayerMap: per parameter -> per layer, and the sample and log line built from one record."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from floatguard.monitor.record import AttentionStats, LayerMap, StepRecord, rounded

# three layers: parameters 0, 1 in layer 0 (weight, bias), 2 in layer 1 (bias only), 3 in layer 2 (weight)
MAP = LayerMap(3, np.array([0, 0, 1, 2]), np.array([6.0, 2.0, 3.0, 4.0]), weights=[0, 3], lowp_weights=[1])


def test_gradients_sum_squares_per_layer() -> None:
    norms = np.array([3.0, 4.0, 12.0])  # parameters 0, 1, 3 have a gradient; 2 has none
    layer_norm, layer_rms, layer_n, total = MAP.gradients(norms, [0, 1, 3])
    assert layer_norm.tolist() == [5.0, 0.0, 12.0] and layer_n.tolist() == [8.0, 0.0, 4.0]
    assert layer_rms == pytest.approx([5 / math.sqrt(8), 0.0, 6.0]) and total == 13.0


def test_update_ratios_and_underflow() -> None:
    ratio, has_w = MAP.update_ratios(np.array([0.3, 0.4]), np.array([3.0, 4.0]))
    assert has_w.tolist() == [True, False, True] and ratio[0] == pytest.approx(0.1) and math.isnan(ratio[1])
    zero, tiny = MAP.underflow(np.array([4.0, 0.0, 1.0]), np.array([2.0, 0.0, 3.0]), [0, 1, 3],
                               np.array([8.0, 0.0, 4.0]))
    assert zero.tolist() == [0.5, 0.0, 0.25] and tiny.tolist() == [0.5, 0.0, 1.0]


def test_rounded_and_adam_counts_go_to_their_layers() -> None:
    vanished, moving, share = MAP.rounded(np.array([3.0, 4.0]))  # the one low-precision weight: parameter 3
    assert vanished.tolist() == [0.0, 0.0, 3.0] and moving.tolist() == [0.0, 0.0, 4.0] and share.tolist() == [0.75]
    small, seen, eps = MAP.adam(np.array([1.0, 6.0, 2.0, 4.0]), 1e-8)
    assert small.tolist() == [1.0, 0.0, 2.0] and seen.tolist() == [6.0, 0.0, 4.0] and eps == 1e-8


def _record(**kw: object) -> StepRecord:
    base = dict(step=7, loss=0.5, grad_norm=2.0, layer_norm=np.array([1.0, 0.0, 2.0]),
                layer_rms=np.array([0.1, 0.0, 0.2]), layer_n=np.array([8.0, 0.0, 4.0]), norms=np.zeros(3),
                lr=0.01, grads_logged=True)
    base.update(kw)
    return StepRecord(**base)  # type: ignore[arg-type]


def test_an_unsampled_step_logs_the_basics_and_samples_nothing() -> None:
    rec = _record(grads_logged=False)
    assert rec.sample() == {}
    assert rec.log_record() == {"type": "step", "step": 7, "loss": 0.5, "grad_norm": 2.0}


def test_a_sampled_step_logs_and_samples_the_same_numbers() -> None:
    logits = {"site": "loss:cross_entropy", "absmax": 9.0, "gap": 1.0, "classes": 3, "dtype": "float32",
              "probabilities": True}
    rec = _record(update=np.array([0.1, math.nan, 0.001234567]), has_weights=np.array([True, False, True]),
                  logits=logits, probs_into_loss="loss:cross_entropy", scale=1024.0, skipped=True,
                  attention={"attn": AttentionStats(12.3456789, math.nan, 16)}, ranks=[0.5, 0.5])
    s, line = rec.sample(), rec.log_record()
    assert s["lr"] == 0.01 and s["probs_into_loss"] == "loss:cross_entropy" and s["logits"] is logits
    assert s["attention"]["attn"]["fused"] is True and s["attention"]["attn"]["keys"] == 16
    assert line["grad"] == [1.0, None, 2.0]  # a layer without a gradient is null
    assert line["update"] == [0.1, None, 0.0012346] and line["lr"] == 0.01
    assert line["scale"] == 1024.0 and line["skipped"] is True and line["ranks"] == [0.5, 0.5]
    assert line["attention"]["attn"][0] == 12.346 and math.isnan(line["attention"]["attn"][1])
    assert list(line)[:4] == ["type", "step", "loss", "grad_norm"]


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_rounded_keeps_five_significant_digits(v: float) -> None:
    r = rounded(v)
    if not math.isfinite(v):
        assert math.isnan(r) if math.isnan(v) else r == v
    else:
        five = float(f"{v:.5g}")
        if math.isfinite(five):
            assert r == five and (v == 0 or abs(r - v) <= 5e-5 * abs(v))
        else:  # within 5e-5 of the float64 maximum: 5 digits would round to inf, the value is kept
            assert r == v
