"""Rules for the size of the gradient: exploding and vanishing gradients.
"""

from __future__ import annotations

import math

import numpy as np

from ...events import Event
from .base import Rule, State, _g, _present_order, _Streak

__all__ = ["ExplodingGradient", "VanishingGradient"]


class ExplodingGradient(Rule):
    """``exploding_gradient``: gradients far too large.

    ==========================  =======  ===============================================
    condition (``patience`` =3)  default  source
    ==========================  =======  ===============================================
    a layer's RMS gradient       >= 10    AUTOTRAINER β3 = 70 on the mean |grad|; per
                                          element RMS, lower: our healthy programs reach
                                          at most 0.4
    total norm / start median    >= 1e3   growth by three orders of magnitude
    first / last layer RMS       >= 1e3   gradients amplified through depth (inverse of
                                          AUTOTRAINER's β2); healthy: 0.02 to 7
    ==========================  =======  ===============================================
    """

    kind = "exploding_gradient"
    severity = "error"

    def __init__(self) -> None:
        self.streak = _Streak()
        self.ref: float | None = None

    def check(self, s: State) -> list[Event]:
        g = s.gnorm[-1]
        if self.ref is None and s.n >= 5:
            self.ref = float(np.median(s.first_gnorm)) if s.first_gnorm else None
        if s.layer_rms is None or not math.isfinite(g) or not s.rms_ok:
            self.streak.update(False, s.step)
            return []
        th = s.th
        worst, ratio = s.rms_argmax, s.depth
        if (s.rms_max < th.explode_rms and not (self.ref and g >= th.explode_growth * self.ref)
                and not (ratio is not None and ratio >= th.explode_depth)):
            self.streak.update(False, s.step)
            return []
        reasons = []
        if s.rms_max >= th.explode_rms:
            reasons.append(f"RMS gradient {_g(s.rms_max)} >= {_g(th.explode_rms)}")
        if self.ref and g >= th.explode_growth * self.ref:
            reasons.append(f"total norm {_g(g)} is {_g(g / self.ref)}x its start ({_g(self.ref)})")
        if ratio is not None and ratio >= th.explode_depth:
            order = _present_order(s)
            reasons.append(f"the first weight layer in forward order, {s.label(s.names[order[0]])}, gets {_g(ratio)}x "
                           f"the RMS gradient of the last, {s.label(s.names[order[-1]])}")
        if self.streak.update(bool(reasons), s.step) < th.patience:
            return []
        stats = {"grad_norm": g, "layer_rms": s.rms_max, "start_grad_norm": self.ref,
                 "depth_ratio": ratio}
        msg = (f"gradients explode from step {self.streak.began}: " + "; ".join(reasons)
               + f" (the largest RMS gradient, {_g(s.rms_max)}, is in {s.label(s.names[worst])})")
        hint = ("Clip gradients (torch.nn.utils.clip_grad_norm_(params, 1.0)), lower the learning rate, and check the "
                "initialization (Kaiming/Xavier) or add normalization layers / residual connections.")
        return self.emit(s, module=s.names[worst], began=self.streak.began, message=msg, hint=hint, stats=stats,
                         key="")




class VanishingGradient(Rule):
    """``vanishing_gradient``: the first layers get (almost) no gradient.

    ============================  =======  ===========================================
    condition (10 steps in a row)  default  source
    ============================  =======  ===========================================
    first / last layer RMS grad    <= 1e-4  AUTOTRAINER β2 = 1e-4 (ratio of the edge
                                            layers); our healthy nets stay >= 0.02
    every layer's RMS gradient     <= 1e-10 no gradient at all while the loss is not ~0
    ============================  =======  ===========================================
    """

    kind = "vanishing_gradient"

    def __init__(self) -> None:
        self.streak = _Streak()

    def check(self, s: State) -> list[Event]:
        rms = s.layer_rms
        if rms is None or not s.rms_ok or not math.isfinite(s.loss[-1]):
            self.streak.update(False, s.step)
            return []
        th = s.th
        ratio = s.depth
        loss_scale = abs(s.first_loss[0]) if s.first_loss else 1.0
        any_grad = s.present is None or bool(s.present.any())
        none = any_grad and s.rms_max <= th.vanish_rms and abs(s.loss[-1]) > 1e-3 * max(loss_scale, 1e-12)
        deep = ratio is not None and ratio <= th.vanish_depth
        if self.streak.update(none or deep, s.step) < th.vanish_patience:
            return []
        order = _present_order(s) or list(range(len(s.names)))
        layer = s.names[order[0]]
        if deep:
            msg = (f"gradients vanish with depth from step {self.streak.began}: {s.label(layer)} gets "
                   f"{_g(ratio or 0)}x the RMS gradient of {s.label(s.names[order[-1]])}")
        else:
            msg = f"no gradient reaches any layer from step {self.streak.began} (max RMS {_g(float(rms.max()))})"
        hint = ("Use ReLU/GELU instead of sigmoid/tanh in hidden layers, Kaiming initialization, residual "
                "connections or normalization layers; check that the loss is not detached from the output.")
        return self.emit(s, module=layer, began=self.streak.began, message=msg, hint=hint,
                         stats={"depth_ratio": ratio, "max_layer_rms": float(rms.max()),
                                "first_layer_rms": float(rms[order[0]])}, key="")
