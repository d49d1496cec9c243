"""One step's statistics on the host: :class:`StepRecord`.

The monitor moves one vector to the host per step; :class:`~floatguard.monitor.core.Monitor`
aggregates it (per parameter to per layer) into a :class:`StepRecord`. From the record the
rules get their sample (:meth:`StepRecord.sample`) and the log its ``step`` line
(:meth:`StepRecord.log_record`, the fields :mod:`.log` documents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AttentionStats", "LayerMap", "StepRecord", "rounded"]


def rounded(v: float) -> float:
    """A float rounded to 5 significant digits for the log (NaN/inf kept; so is a value within 5e-5 of the
    float64 maximum, which would round to inf)."""
    v = float(v)
    if not math.isfinite(v) or v == 0:
        return v
    r = float(f"{v:.5g}")
    return r if math.isfinite(r) else v


@dataclass(frozen=True)
class AttentionStats:
    """One attention module's sampled statistics (:mod:`.transformer_stats`)."""

    max_logit: float  # largest softmax input, or the q/k bound of a fused attention
    entropy: float  # mean row entropy, over a fixed sample of rows (NaN: fused, not seen)
    keys: int

    def sample(self) -> dict[str, Any]:
        return {"max_logit": self.max_logit, "entropy": self.entropy, "keys": self.keys,
                "fused": bool(np.isnan(self.entropy))}


@dataclass
class StepRecord:
    """What one step measured, per layer (arrays are indexed like ``Monitor.layers``)."""

    step: int
    loss: float  # the mean over ranks under torch.distributed
    grad_norm: float
    layer_norm: np.ndarray  # gradient norm per layer
    layer_rms: np.ndarray  # ...per element
    layer_n: np.ndarray  # gradient entries per layer (0: no gradient this step)
    norms: np.ndarray  # gradient norm per parameter with a gradient (true, unscaled)
    lr: float | None
    grads_logged: bool  # per-layer gradient norms go to the log (a sampled step, or detailed mode)
    update: np.ndarray | None = None  # ‖Δw‖/‖w‖ per layer (NaN: a layer without weights)
    has_weights: np.ndarray | None = None
    acts: dict[str, dict[str, Any]] | None = None  # per call site: kind, dead / saturated shares...
    logits: dict[str, Any] | None = None  # site, absmax, gap, classes, dtype (probabilities: True)
    probs_into_loss: str | None = None  # the loss site that received probabilities
    layer_out: dict[str, list[float]] | None = None  # detailed: mean, std, absmax of each layer's output
    underflow: tuple[np.ndarray, np.ndarray] | None = None  # float16: share of zero / tiny entries per layer
    scale: float | None = None  # the loss scale, with a scaler
    skipped: bool = False  # ...which skipped this step
    attention: dict[str, AttentionStats] | None = None
    logz: tuple[float, float, str] | None = None  # mean and RMS of log Z of the output logits, their site
    rounded: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # vanished, moving per layer; share per tensor
    adam: tuple[np.ndarray, np.ndarray, float | None] | None = None  # small, seen per layer; the largest eps
    ranks: list[float] | None = None  # per-rank losses (torch.distributed)
    rank_input: list[bool] | None = None  # per rank: whether its input batch held NaN/inf

    def sample(self) -> dict[str, Any]:
        """The sampled statistics the rules read (:attr:`State.sample`); empty on a step without any."""
        s: dict[str, Any] = {}
        if self.update is not None:
            s["update"] = self.update
            s["lr"] = self.lr
        if self.acts is not None:
            s["act"] = self.acts
        if self.logits is not None:
            s["logits"] = self.logits
            if self.logits.get("probabilities"):
                s["probs_into_loss"] = self.probs_into_loss
        if self.underflow is not None:
            s["underflow"] = {"zero": self.underflow[0], "tiny": self.underflow[1]}
        if self.attention is not None:
            s["attention"] = {n: a.sample() for n, a in self.attention.items()}
        if self.logz is not None:
            s["logz"] = {"mean": self.logz[0], "rms": self.logz[1], "site": self.logz[2]}
        if self.rounded is not None:
            s["rounded"] = {"vanished": self.rounded[0], "moving": self.rounded[1]}
        if self.adam is not None:
            s["adam"] = {"small": self.adam[0], "seen": self.adam[1], "eps": self.adam[2]}
        return s

    def log_record(self) -> dict[str, Any]:
        """The ``step`` line of the JSONL log (numbers rounded to 5 significant digits)."""
        rec: dict[str, Any] = {"type": "step", "step": self.step, "loss": self.loss, "grad_norm": self.grad_norm}
        if self.grads_logged:
            rec["grad"] = [rounded(v) if self.layer_n[i] > 0 else None for i, v in enumerate(self.layer_norm)]
        if self.update is not None and self.has_weights is not None:
            rec["update"] = [None if not self.has_weights[i] else rounded(v) for i, v in enumerate(self.update)]
            rec["lr"] = self.lr
        if self.acts is not None:
            rec["act"] = {k: {kk: vv for kk, vv in a.items() if kk not in ("since",)} for k, a in self.acts.items()}
        if self.logits is not None:
            rec["logits"] = self.logits
        if self.layer_out is not None:
            rec["layer_out"] = self.layer_out
        if self.underflow is not None:
            rec["underflow"] = {"zero": [rounded(x) for x in self.underflow[0]],
                                "tiny": [rounded(x) for x in self.underflow[1]]}
        if self.scale is not None:
            rec["scale"], rec["skipped"] = self.scale, self.skipped
        if self.attention is not None:
            rec["attention"] = {n: [rounded(a.max_logit), rounded(a.entropy), rounded(a.keys)]
                                for n, a in self.attention.items()}
        if self.logz is not None:
            rec["logz"] = [rounded(self.logz[0]), rounded(self.logz[1])]
        if self.rounded is not None:
            rec["rounded"] = [rounded(x) for x in self.rounded[2]]
        if self.adam is not None:
            rec["adam_eps_fraction"] = [rounded(x) for x in self.adam[0] / np.maximum(self.adam[1], 1)]
        if self.ranks is not None:
            rec["ranks"] = self.ranks
        return rec


@dataclass(frozen=True)
class LayerMap:
    """Which layer each parameter belongs to: per-parameter statistics summed into per-layer ones."""

    layers: int  # number of layers
    pl: np.ndarray  # the layer of each parameter
    numel: np.ndarray  # the entries of each parameter
    weights: list[int]  # the parameters with ndim >= 2 (update ratios), indices into the parameters
    lowp_weights: list[int]  # the bfloat16/float16 ones, indices into ``weights``

    def _of(self, present: list[int]) -> np.ndarray:
        return self.pl[present] if present else np.zeros(0, dtype=np.int64)

    def gradients(self, norms: np.ndarray, present: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Per layer: gradient norm, RMS per entry and entries with a gradient; and the total norm."""
        L, pl = self.layers, self._of(present)
        with np.errstate(over="ignore", invalid="ignore"):
            layer_sq = np.bincount(pl, weights=norms * norms, minlength=L) if L else np.zeros(0)
            layer_n = np.bincount(pl, weights=self.numel[present], minlength=L) if L else np.zeros(0)
            layer_norm = np.sqrt(layer_sq)
            layer_rms = layer_norm / np.sqrt(np.maximum(layer_n, 1))
            gnorm = float(np.sqrt(layer_sq.sum())) if L else 0.0
        return layer_norm, layer_rms, layer_n, gnorm

    def update_ratios(self, d: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """‖Δw‖/‖w‖ per layer over its weight tensors (NaN where a layer has none), and which layers have one."""
        L, wl = self.layers, self.pl[self.weights]
        ud = np.sqrt(np.bincount(wl, weights=d * d, minlength=L))
        uw = np.sqrt(np.bincount(wl, weights=w * w, minlength=L))
        has_w = np.bincount(wl, minlength=L) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(has_w, ud / uw, np.nan)
        return ratio, has_w

    def underflow(self, z: np.ndarray, tn: np.ndarray, present: list[int], layer_n: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Per layer: the share of gradient entries that are 0, and of the rest below float16's smallest normal."""
        L, pl = self.layers, self._of(present)
        nz = np.bincount(pl, weights=z, minlength=L)
        nt = np.bincount(pl, weights=tn, minlength=L)
        with np.errstate(divide="ignore", invalid="ignore"):
            zero_frac = np.where(layer_n > 0, nz / np.maximum(layer_n, 1), 0.0)
            tiny_frac = np.where(layer_n - nz > 0, nt / np.maximum(layer_n - nz, 1), 0.0)
        return zero_frac, tiny_frac

    def rounded(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Low-precision weights: (vanished, moving) update counts per tensor -> per layer, and the share per tensor."""
        v = counts.reshape(-1, 2)
        wl = self.pl[[self.weights[k] for k in self.lowp_weights]]
        return (np.bincount(wl, weights=v[:, 0], minlength=self.layers),
                np.bincount(wl, weights=v[:, 1], minlength=self.layers), v[:, 0] / np.maximum(v[:, 1], 1))

    def adam(self, counts: np.ndarray, eps: float | None) -> tuple[np.ndarray, np.ndarray, float | None]:
        """Adam: (entries with sqrt(v̂) <= eps, entries seen) per weight tensor -> per layer; and eps."""
        v = counts.reshape(-1, 2)
        wl = self.pl[self.weights]
        return (np.bincount(wl, weights=v[:, 0], minlength=self.layers),
                np.bincount(wl, weights=v[:, 1], minlength=self.layers), eps)
