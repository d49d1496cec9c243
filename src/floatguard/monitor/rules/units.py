"""Rules for what units and the output layer emit: dead ReLUs, saturated tanh/sigmoid, overconfident logits.
"""

from __future__ import annotations

import math

from ...events import Event
from .base import Rule, State, _g, _Streak

__all__ = ["DeadUnits", "OverconfidentLogits", "SaturatedUnits"]


class DeadUnits(Rule):
    """``dead_units``: ReLU units that output 0 for every sample.

    A unit is dead when it is not positive for any sample of the last ``dead_window``
    (5) sampled batches; the layer is reported when ``dead_fraction`` (0.5) of its
    units are. AUTOTRAINER uses γ = 0.7 on one batch; several batches make a dead unit
    certain, so a lower share is safe (our healthy ReLU nets stay below 0.02).
    """

    kind = "dead_units"

    def check(self, s: State) -> list[Event]:
        if s.sample is None:
            return []
        out: list[Event] = []
        for site, a in s.sample.get("act", {}).items():
            if a.get("kind") != "relu" or not a.get("full") or a.get("dead", 0.0) < s.th.dead_fraction:
                continue
            producer = a.get("producer")
            stats = {"dead_fraction": a["dead"], "units": a.get("units"), "batches": s.th.dead_window,
                     "producer": producer, "producer_bias_mean": a.get("bias_mean")}
            cause = ""
            if a.get("bias_mean") is not None and a["bias_mean"] < -1.0:
                cause = (f"; the bias of {s.label(producer)} has mean {_g(a['bias_mean'])}, pushing pre-activations "
                         "below 0")
            msg = (f"{a['dead']:.0%} of the {a.get('units')} ReLU units at {s.label(site)} output 0 for every "
                   f"sample of {s.th.dead_window} sampled batches{cause}")
            hint = ("Re-initialize the layer before it (Kaiming weights, zero bias), lower the learning rate, or use "
                    "LeakyReLU/GELU; BatchNorm before the ReLU keeps units alive.")
            out += self.emit(s, module=site, began=a.get("since", s.step), message=msg, hint=hint, stats=stats)
        return out


class SaturatedUnits(Rule):
    """``saturated_units``: tanh/sigmoid outputs stuck in their flat tails.

    Reported when ``saturated_fraction`` (0.5) of a layer's outputs are beyond
    ``saturation_level`` (|tanh| >= 0.99, sigmoid <= 0.01 or >= 0.99, where the
    derivative is below 0.02) on ``patience`` (3) sampled steps in a row.
    DeepDiagnosis checks saturated activations without a published number; a
    Xavier-initialized tanh net has under 5% there. The model's own output is exempt
    (a confident sigmoid output is the goal).
    """

    kind = "saturated_units"

    def __init__(self) -> None:
        self.streaks: dict[str, _Streak] = {}

    def check(self, s: State) -> list[Event]:
        if s.sample is None:
            return []
        out: list[Event] = []
        for site, a in s.sample.get("act", {}).items():
            if a.get("kind") not in ("tanh", "sigmoid") or a.get("output"):
                continue
            st = self.streaks.setdefault(site, _Streak())
            if st.update(a.get("saturated", 0.0) >= s.th.saturated_fraction, s.step) < s.th.patience:
                continue
            msg = (f"{a['saturated']:.0%} of the {a['kind']} outputs at {s.label(site)} sit in the flat tails "
                   f"(derivative < 0.02) from step {st.began}: those units barely learn")
            hint = ("Scale the initialization of the layer before it (Xavier/Glorot), normalize the inputs, add "
                    "LayerNorm/BatchNorm before the activation, or use ReLU-family activations in hidden layers.")
            out += self.emit(s, module=site, began=st.began, message=msg, hint=hint,
                             stats={"saturated_fraction": a["saturated"], "producer": a.get("producer")})
        return out




class OverconfidentLogits(Rule):
    """``overconfident_logits``: logits that overflow float16 or saturate softmax.

    Read where a classification loss (cross_entropy, log_softmax, nll, BCE with logits)
    or softmax receives its input, on sampled steps. Reported on ``patience`` (3)
    sampled steps in a row when max |logit| >= ``logit_absmax`` (8192: within 8x of the
    float16 maximum) or the median gap between the top two logits is
    >= ``logit_gap_factor`` (2) x ln(1/eps) of the logits' dtype (33 for float32, 15 for
    float16): softmax then rounds to exactly 1 and the sample stops contributing
    gradient. Our healthy classifiers stay below a gap of 10 and |logit| of 30.
    """

    kind = "overconfident_logits"

    def __init__(self) -> None:
        self.streak = _Streak()

    def check(self, s: State) -> list[Event]:
        if s.sample is None:
            return []
        lg = s.sample.get("logits")
        if not lg:
            return []
        absmax, gap = lg.get("absmax", 0.0), lg.get("gap")
        eps = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float64": 2.0**-52}.get(lg.get("dtype", ""), 2.0**-23)
        gap_limit = s.th.logit_gap_factor * math.log(1 / eps)
        big = math.isfinite(absmax) and absmax >= s.th.logit_absmax
        wide = gap is not None and math.isfinite(gap) and gap >= gap_limit
        if self.streak.update(big or wide, s.step) < s.th.patience:
            return []
        parts = []
        if big:
            parts.append(f"max |logit| = {_g(absmax)} (float16 overflows at 65504)")
        if wide:
            parts.append(f"median top-1/top-2 gap = {_g(gap)} >= {_g(gap_limit)}, softmax rounds to 1")
        msg = f"overconfident logits at {lg.get('site')} from step {self.streak.began}: " + "; ".join(parts)
        hint = ("Look for a missing 1/temperature or a scaling bug before the loss; add label smoothing "
                "(cross_entropy(..., label_smoothing=0.1)), weight decay or logit normalization; keep the loss on "
                "logits (fg.cross_entropy) so large logits stay finite.")
        return self.emit(s, module=lg.get("site"), began=self.streak.began, message=msg, hint=hint,
                         stats={"absmax": absmax, "median_gap": gap, "gap_limit": gap_limit})
