"""The rule for the size of the optimizer's updates: ‖Δw‖/‖w‖ per step.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ...events import Event
from .base import Rule, State, _g

__all__ = ["UpdateRatio"]


class UpdateRatio(Rule):
    """``update_ratio``: ‖Δw‖/‖w‖ per step far outside its healthy band (~1e-3).

    The ratio of update to weight norm is ~1e-3 in healthy training (CS231n's rule of
    thumb). Reported when a layer stays >= ``update_high`` (0.1: the weights are
    rewritten within ten steps) or <= ``update_low`` (1e-6: nothing moves, or updates
    vanish in rounding) on ``update_samples`` (5) sampled steps; our healthy programs
    stay between 1e-4 and 0.03. The low side is only
    reported while the learning rate is at its maximum so far (a warmup or a decayed
    schedule is not a fault) and the layer has a gradient.
    """

    kind = "update_ratio"

    def __init__(self) -> None:
        # (ratios, lr, step, which layers had a finite nonzero gradient at that sample: None if not measured)
        self.hist: deque[tuple[np.ndarray, float | None, int, np.ndarray | None]] = deque()
        self.max_lr = 0.0

    def check(self, s: State) -> list[Event]:
        if s.sample is None or s.sample.get("update") is None:
            return []
        r = np.asarray(s.sample["update"], dtype=float)
        lr = s.sample.get("lr")
        if lr is not None:
            self.max_lr = max(self.max_lr, lr)
        rms = s.layer_rms  # a layer without a (finite, nonzero) gradient is not expected to move
        with np.errstate(invalid="ignore"):
            moving = None if rms is None else np.isfinite(np.asarray(rms, dtype=float)) & (np.asarray(rms) > 0)
        self.hist.append((r, lr, s.step, moving))
        k = s.th.update_samples
        while len(self.hist) > k:
            self.hist.popleft()
        if len(self.hist) < k:
            return []
        mat = np.stack([h[0] for h in self.hist])
        began = self.hist[0][2]
        out: list[Event] = []
        with np.errstate(invalid="ignore"):
            high = np.all(mat >= s.th.update_high, axis=0)
            low = np.all(mat <= s.th.update_low, axis=0)
        lrs = [h[1] for h in self.hist]
        steady = all(v is None or v >= 0.99 * self.max_lr for v in lrs)
        # low: a layer with a gradient on every sample of the window (persistence is over those samples)
        had_grad = np.ones(r.size, dtype=bool)
        for h in self.hist:
            if h[3] is not None:
                had_grad &= h[3]
        low_layers = [i for i in range(r.size) if low[i] and had_grad[i]]
        if high.any():
            idx = [i for i in range(r.size) if high[i]]
            worst = max(idx, key=lambda i: r[i])
            msg = (f"updates rewrite the weights: ‖Δw‖/‖w‖ = {_g(r[worst])} per step at {s.label(s.names[worst])} "
                   f"(healthy ~1e-3) from step {began}")
            hint = "Lower the learning rate (the ratio scales with it), add warmup, or clip gradients."
            out += self.emit(s, module=s.names[worst], began=began, message=msg, hint=hint, key="high",
                             stats={"ratio": float(r[worst]), "too_high": True, "lr": lr,
                                    "layers": [s.names[i] for i in idx]})
        if low_layers and steady:
            worst = min(low_layers, key=lambda i: r[i])
            missing = [s.names[i] for i in low_layers if s.names[i] in s.not_in_optimizer]
            msg = (f"the weights of {s.label(s.names[worst])} barely move: ‖Δw‖/‖w‖ = {_g(r[worst])} per step "
                   f"(healthy ~1e-3) from step {began}")
            if missing:
                msg += f"; {', '.join(missing[:3])} {'is' if len(missing) == 1 else 'are'} not in the optimizer"
                hint = "Build the optimizer from the final model's parameters (model.parameters())."
            else:
                hint = ("Raise the learning rate; in low precision keep float32 master weights (updates below the "
                        "weights' resolution round away).")
            out += self.emit(s, module=s.names[worst], began=began, message=msg, hint=hint, key="low",
                             stats={"ratio": float(r[worst]), "too_high": False, "lr": lr,
                                    "layers": [s.names[i] for i in low_layers]})
        return out
