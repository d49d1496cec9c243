"""The monitor's rules: one class per finding kind, each with its thresholds and their source.

A rule reads the host-side :class:`State` after every step and returns the new
findings (:class:`~floatguard.events.Event` with ``source="monitor"``). Each finding
names the layer where that applies (``module``), the step it began (``step``), the
evidence (``stats``, with ``detected_at``: the step the rule fired) and a remedy
(``hint``). A finding is reported once per (kind, layer); later evidence replaces it
(events are frozen) by one whose ``stats`` count it (``count``, ``last_step``).

Thresholds (:class:`Thresholds`) and where they come from. AUTOTRAINER (Zhang et
al., ICSE 2021) configures, in its published defaults as we read them, β1 = 1e-3 and
β2 = 1e-4 for vanishing gradients, β3 = 70 for exploding gradients, γ = 0.7 for the
share of dead ReLUs, ζ = 0.03 for oscillation and δ = 0.01 for slow convergence;
DeepDiagnosis (Wardat et al., ICSE 2022) checks the same families (numerical error,
exploding tensor, unchanged weight, saturated activation, dead node, loss not
decreasing, accuracy not increasing, vanishing/exploding gradient); UMLAUT (Schoop
et al., CHI 2021) flags a softmax before the loss. We start from these and change
them where our test programs (``tests/monitor``) showed a false alarm on a healthy
run or a miss on a faulty one: statistics are per element (RMS) so that they do not
grow with layer width, every per-step condition must hold for ``patience``
consecutive steps, and loss rules compare with the run's own start (progress made)
rather than a fixed number. Each rule's docstring gives its values and the range
our healthy programs stay in (the margin against false alarms). The loss-curve rules
(stuck, stalled, oscillating) are checked every 10 steps, the rest every step or
every sampled step.

The rules live in one module per family: :mod:`.nonfinite` (NaN/inf loss and
gradients), :mod:`.gradient` (exploding, vanishing), :mod:`.units` (dead, saturated,
overconfident logits), :mod:`.loss` (the loss curve), :mod:`.updates` (update
ratios), :mod:`.precision` (float16 overflow and underflow); :mod:`.base` holds
:class:`Thresholds`, :class:`State` and the :class:`Rule` base class.
"""

from __future__ import annotations

from .base import CURVE_EVERY, FP16_MAX, FP16_TINY, HISTORY, Rule, State, Thresholds, ce_floor_on_probabilities
from .base import _g as _g  # the helpers transformer_rules.py imports from here
from .base import _num as _num
from .base import _Streak as _Streak
from .gradient import ExplodingGradient, VanishingGradient
from .loss import DivergingLoss, OscillatingLoss, StalledLoss, StuckAtChance
from .loss import _oscillation as _oscillation  # the tests read it here
from .nonfinite import NonfiniteGradient, NonfiniteLoss
from .precision import Fp16Overflow, GradientUnderflow
from .units import DeadUnits, OverconfidentLogits, SaturatedUnits
from .updates import UpdateRatio

__all__ = ["CURVE_EVERY", "FP16_MAX", "FP16_TINY", "HISTORY", "KINDS", "RULES", "DeadUnits", "DivergingLoss",
           "ExplodingGradient", "Fp16Overflow", "GradientUnderflow", "NonfiniteGradient", "NonfiniteLoss",
           "OscillatingLoss", "OverconfidentLogits", "Rule", "SaturatedUnits", "StalledLoss", "State",
           "StuckAtChance", "Thresholds", "UpdateRatio", "VanishingGradient", "ce_floor_on_probabilities"]

KINDS = (
    "nonfinite_loss",
    "nonfinite_gradient",
    "exploding_gradient",
    "vanishing_gradient",
    "dead_units",
    "saturated_units",
    "stuck_at_chance",
    "diverging_loss",
    "oscillating_loss",
    "stalled_loss",
    "update_ratio",
    "overconfident_logits",
    "fp16_overflow",
    "gradient_underflow",
    # the instabilities of transformer training (transformer_rules.py)
    "attention_logit_growth",
    "output_logit_divergence",
    "update_rounded_away",
    "adam_epsilon_dominates",
    "loss_spike",
)


RULES: tuple[type[Rule], ...] = (
    NonfiniteLoss, NonfiniteGradient, ExplodingGradient, VanishingGradient, DeadUnits, SaturatedUnits,
    StuckAtChance, DivergingLoss, OscillatingLoss, StalledLoss, UpdateRatio, OverconfidentLogits,
    Fp16Overflow, GradientUnderflow,
)
