"""Rules for float16 training: a loss scaler that keeps skipping steps, gradients flushed to zero.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from ...events import Event
from .base import Rule, State, _g, _Streak

__all__ = ["Fp16Overflow", "GradientUnderflow"]


class Fp16Overflow(Rule):
    """``fp16_overflow``: a loss scaler skips steps again and again.

    A GradScaler skips a step (and halves its scale) when the scaled gradients
    overflow. The first consecutive skips are calibration (65536 down to a working
    scale); afterwards a skip is expected once per ``growth_interval`` steps. Reported
    when, after calibration, the skips within ``scaler_window`` (100) steps reach
    max(``scaler_skips`` (5), 3 x window / growth_interval), or when the scale falls
    below 1 (values overflow float16 without any scaling).
    """

    kind = "fp16_overflow"
    severity = "error"

    def __init__(self) -> None:
        self.calibrating = True
        self.skips: deque[int] = deque()
        self.first_skip: int | None = None

    def check(self, s: State) -> list[Event]:
        if not s.scaler:
            return []
        if s.skipped:
            if not self.calibrating:
                self.skips.append(s.step)
                if self.first_skip is None:
                    self.first_skip = s.step
        else:
            self.calibrating = False
        w = s.th.scaler_window
        while self.skips and self.skips[0] <= s.step - w:
            self.skips.popleft()
        limit = max(s.th.scaler_skips, math.ceil(3 * w / max(s.growth_interval, 1)))
        tiny = s.scale is not None and s.scale < 1.0
        if len(self.skips) < limit and not tiny:
            return []
        began = self.skips[0] if self.skips else (self.first_skip if self.first_skip is not None else s.step)
        if tiny:
            msg = (f"the loss scale fell to {_g(s.scale or 0)}: float16 overflows even unscaled, every step is "
                   "skipped")
        else:
            msg = f"the loss scaler skipped {len(self.skips)} of the last {w} steps after calibration (overflow)"
        hint = ("Use bfloat16 autocast (float32's range), keep the loss, softmax and norms in float32, normalize the "
                "inputs, and lower the learning rate; skipped steps are lost training.")
        return self.emit(s, module=None, began=began, message=msg, hint=hint,
                         stats={"scale": s.scale, "skips_in_window": len(self.skips), "window": w})


class GradientUnderflow(Rule):
    """``gradient_underflow``: gradients flushed to zero by float16.

    In a float16 run (half parameters, float16 autocast or a loss scaler), on sampled
    steps, a layer with >= ``underflow_zero_fraction`` (25%) of its gradient entries
    exactly 0 and >= ``underflow_tiny_fraction`` (1%) of the nonzero ones below
    float16's smallest normal 2^-14 (in the loss-scaled domain) on ``patience`` (3)
    samples in a row. Zeros alone can be dead units; the subnormal tail shows the
    zeros are values that rounded away.
    """

    kind = "gradient_underflow"

    def __init__(self) -> None:
        self.streak = _Streak()

    def check(self, s: State) -> list[Event]:
        if s.sample is None or s.lowp != "float16" or not s.sample.get("underflow"):
            return []
        zero = np.asarray(s.sample["underflow"]["zero"], dtype=float)
        tiny = np.asarray(s.sample["underflow"]["tiny"], dtype=float)
        bad = (zero >= s.th.underflow_zero_fraction) & (tiny >= s.th.underflow_tiny_fraction)
        if self.streak.update(bool(bad.any()), s.step) < s.th.patience:
            return []
        worst = int(np.argmax(np.where(bad, zero, -1)))
        msg = (f"float16 flushes gradients to zero at {s.label(s.names[worst])} from step {self.streak.began}: "
               f"{zero[worst]:.0%} of the entries are 0 and {tiny[worst]:.0%} of the rest are below 2^-14")
        hint = ("Scale the loss (torch.amp.GradScaler), or train in bfloat16, whose range is float32's; keep "
                "master weights in float32.")
        return self.emit(s, module=s.names[worst], began=self.streak.began, message=msg, hint=hint, key="",
                         stats={"zero_fraction": float(zero[worst]), "tiny_fraction": float(tiny[worst]),
                                "layers": [s.names[i] for i in range(zero.size) if bad[i]]})
