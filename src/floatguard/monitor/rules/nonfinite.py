"""Rules for non-finite values: a NaN/inf loss, a NaN/inf gradient under a finite loss.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...events import Event
from .base import Rule, State, _g

__all__ = ["NonfiniteGradient", "NonfiniteLoss"]


class NonfiniteLoss(Rule):
    """``nonfinite_loss``: the loss is NaN or ±inf.

    Fires on the first such step (no threshold: DeepDiagnosis and AUTOTRAINER both stop
    on the first NaN). The remedy follows the evidence: a non-finite input batch, a
    ``log`` of a softmax output, a float16 run, or a growing gradient before it.
    """

    kind = "nonfinite_loss"
    severity = "error"

    def check(self, s: State) -> list[Event]:
        v = s.loss[-1]
        if math.isfinite(v):
            return []
        stats: dict[str, Any] = {"loss": v, "last_finite_loss": s.last_finite_loss,
                                 "input_nonfinite": s.input_nonfinite}
        if s.gnorm:
            stats["grad_norm_before"] = s.gnorm[-2] if len(s.gnorm) > 1 else None
        rank = s.rank_of_first_nonfinite()
        if rank is not None:
            stats["ranks_nonfinite"] = [r for r, x in enumerate(s.rank_loss or []) if not math.isfinite(x)]
        where = f" on rank {rank}" if rank is not None else ""
        if s.input_nonfinite:
            msg = f"the loss is {v} at step {s.step}{where}: the input batch itself contains NaN or inf"
            hint = ("Clean the data: find the sample (torch.isfinite(x).all(dim=1)), drop or repair it "
                    "(torch.nan_to_num), and assert finite inputs in the data loader.")
        elif s.evidence.get("log_of_softmax"):
            site = s.evidence["log_of_softmax"]
            msg = f"the loss is {v} at step {s.step}{where}: log() of a softmax output at {site} reached log(0)"
            hint = ("softmax underflows to 0 and log(0) = -inf: compute log-probabilities with log_softmax "
                    "(fg.log_softmax), or pass the logits to cross_entropy (fg.cross_entropy).")
        elif s.has("exploding_gradient") or s.has("diverging_loss"):
            msg = f"the loss is {v} at step {s.step}{where}, after the loss or the gradients grew"
            hint = ("Lower the learning rate (10x), clip gradients (torch.nn.utils.clip_grad_norm_(params, 1.0)), "
                    "add warmup.")
        elif s.lowp == "float16":
            msg = f"the loss is {v} at step {s.step}{where} in a float16 run"
            hint = ("float16 overflows above 65504: use bfloat16 autocast, keep the loss and softmax in float32, "
                    "and use a GradScaler.")
        elif s.lowp == "bfloat16":
            msg = f"the loss is {v} at step {s.step}{where} in a bfloat16 run"
            hint = ("bfloat16 has float32's range (nothing overflows at 65504, and a GradScaler does not help) but "
                    "8 bits of precision: a NaN comes from an op whose result lost all its digits — a variance or "
                    "norm of nearly equal values, exp of a large difference, a division by a tiny sum. Keep "
                    "those in float32 (torch.autocast(dtype=torch.bfloat16) does; model.bfloat16() does not: "
                    "keep the loss, softmax/logsumexp, norms and the optimizer state in float32), use eps >= 1e-5 "
                    "in LayerNorm and Adam, and subtract the max before exp (fg.softmax, fg.logsumexp).")
        else:
            msg = f"the loss is {v} at step {s.step}{where}"
            hint = ("Find the first non-finite operation with floatguard's sanitizer; the usual causes are log(0), "
                    "x/0 and sqrt(<0): use fg.safe_log / fg.safe_div / fg.safe_sqrt or add eps, and "
                    "fg.cross_entropy on logits.")
        return self.emit(s, module=None, began=s.step, message=msg, hint=hint, stats=stats, rank=rank)


class NonfiniteGradient(Rule):
    """``nonfinite_gradient``: a finite loss whose gradient is NaN/inf in some layer.

    Fires on the first such step. The layer named is the one nearest the loss in
    forward order whose gradient is non-finite: backward runs from the loss, so that is
    where the NaN entered. Under a loss scaler such steps are the scaler's business
    (``fp16_overflow`` counts them) and are not reported here.
    """

    kind = "nonfinite_gradient"
    severity = "error"

    def check(self, s: State) -> list[Event]:
        if s.scaler or s.layer_norm is None or not math.isfinite(s.loss[-1]):
            return []
        bad = ~np.isfinite(s.layer_norm)
        if not bad.any():
            return []
        idx = [i for i in range(len(s.names)) if bad[i]]
        pos = {layer: k for k, layer in enumerate(s.order)}
        origin = max(idx, key=lambda i: pos.get(i, -1))
        has_nan = bool(np.isnan(s.layer_norm[idx]).any())
        stats = {"layers": [s.names[i] for i in idx], "loss": s.loss[-1],
                 "grad_norm": float(s.layer_norm[origin])}
        if has_nan:
            msg = (f"the loss is finite ({_g(s.loss[-1])}) but the gradient of {s.label(s.names[origin])} is NaN "
                   f"at step {s.step}: backward divides 0/0 or multiplies 0*inf")
            hint = ("A branch hidden by torch.where still backpropagates (the 'double where' problem), or sqrt/pow/"
                    "norm meets 0: use fg.safe_sqrt / fg.safe_log / fg.safe_div, or apply the where to the input "
                    "too; clipping does not remove NaN.")
        else:
            msg = (f"the gradient of {s.label(s.names[origin])} overflows to inf at step {s.step} while the loss is "
                   "finite")
            hint = ("Clip gradients (clip_grad_norm_), lower the learning rate, and check for x/0 or exp of large "
                    "values in the backward path (fg.safe_div, fg.logsumexp).")
        return self.emit(s, module=s.names[origin], began=s.step, message=msg, hint=hint, stats=stats,
                         rank=s.rank_of_first_nonfinite(), key="")
