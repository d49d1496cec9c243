"""The monitor's rules: one class per finding kind, each with its thresholds and their source.

A rule reads the host-side :class:`State` after every step and returns the new
findings (:class:`~floatguard.events.Event` with ``source="monitor"``). Each finding
names the layer where that applies (``module``), the step it began (``step``), the
evidence (``stats``, with ``detected_at``: the step the rule fired) and a remedy
(``hint``). A finding is reported once per (kind, layer); later evidence updates
its ``stats`` in place (``count``, ``last_step``).

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
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from ..events import Event

__all__ = ["KINDS", "RULES", "Rule", "State", "Thresholds", "ce_floor_on_probabilities"]

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
)

CURVE_EVERY = 10  # steps between checks of the loss-curve rules
HISTORY = 128  # steps of history kept: the longest window (100) and some
FP16_MAX = 65504.0
FP16_TINY = 2.0**-14  # smallest normal float16: below it values lose bits, below 2**-24 they are 0


@dataclass(frozen=True)
class Thresholds:
    """Every number a rule compares with; the defaults are documented in the rules.

    Pass ``Monitor(..., thresholds=Thresholds(explode_rms=100))`` to change one.
    """

    patience: int = 3  # consecutive steps (or samples) a condition must hold
    explode_rms: float = 10.0  # per-element RMS gradient of one layer
    explode_growth: float = 1e3  # total gradient norm over its median at the start
    explode_depth: float = 1e3  # RMS gradient of the first layer over the last one
    vanish_depth: float = 1e-4  # RMS gradient of the first layer over the last one
    vanish_rms: float = 1e-10  # every layer's RMS gradient below this: no gradient at all
    vanish_patience: int = 10
    dead_fraction: float = 0.5  # share of a layer's ReLU units that never fire
    dead_window: int = 5  # ...over this many sampled batches
    saturated_fraction: float = 0.5  # share of tanh/sigmoid outputs in the flat tails
    saturation_level: float = 0.99  # |tanh| >= 0.99, sigmoid <= 0.01 or >= 0.99
    chance_window: int = 100  # steps the loss must stay near ln C
    chance_tolerance: float = 0.05  # relative band around ln C
    chance_fraction: float = 0.5  # and for at least this share of the steps so far (a start at ln C is normal)
    stall_window: int = 100  # steps without progress
    stall_progress: float = 0.01  # relative decrease that counts as progress
    diverge_patience: int = 5
    oscillation_window: int = 60
    oscillation_patience: int = 2  # checks (every 10 steps) in a row
    oscillation_rebounds: int = 3  # rebounds of the loss within the window
    update_high: float = 0.1  # update norm / weight norm per step
    update_low: float = 1e-6
    update_samples: int = 5  # sampled steps a ratio must stay out of band
    logit_absmax: float = 8192.0  # within 8x of the float16 maximum 65504
    logit_gap_factor: float = 2.0  # median top-1 minus top-2 gap over ln(1/eps(dtype))
    probability_samples: int = 2  # sampled steps seeing probabilities fed to a log-loss
    scaler_window: int = 100  # steps over which loss-scaler skips are counted
    scaler_skips: int = 5  # skips after calibration within the window
    underflow_zero_fraction: float = 0.25  # share of gradient entries that are exactly 0
    underflow_tiny_fraction: float = 0.01  # share of nonzero entries below float16's smallest normal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ce_floor_on_probabilities(num_classes: int) -> float:
    r"""Lowest cross-entropy reachable when probabilities are fed in as logits.

    With :math:`p` in the simplex the best case is a one-hot row:
    :math:`-\log(e / (e + C - 1)) = \ln(e + C - 1) - 1` (1.46 for C = 10, above 0).
    """
    return math.log(math.e + num_classes - 1) - 1.0


@dataclass
class State:
    """What the rules see: the history of this run, host side, updated by the monitor."""

    names: list[str]  # layer names (modules with trainable parameters)
    numel: np.ndarray  # parameters per layer
    order: list[int]  # indices of layers with a weight (ndim >= 2), in forward order
    th: Thresholds
    num_classes: int | None = None
    step: int = 0  # current global step
    n: int = 0  # steps seen in this session
    steps: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY))  # the last steps...
    loss: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))  # ...their loss
    gnorm: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))  # ...and gradient norm
    first_loss: list[float] = field(default_factory=list)  # the first 20 finite losses
    first_gnorm: list[float] = field(default_factory=list)  # the first 10 finite nonzero gradient norms
    first_step: int = 0
    last_finite_loss: float | None = None
    ever_nonfinite: bool = False
    lr_min: float = math.inf  # range of the learning rate over the run
    lr_max: float = -math.inf
    layer_norm: np.ndarray | None = None  # this step, per layer
    layer_rms: np.ndarray | None = None
    present: np.ndarray | None = None  # layers with a gradient this step
    rms_ok: bool = False  # every layer's gradient finite this step
    rms_max: float = 0.0
    rms_argmax: int = 0
    depth: float | None = None  # RMS gradient of the first weight layer over the last one
    input_nonfinite: bool | None = None
    rank_loss: list[float] | None = None  # per rank, under torch.distributed
    rank_input: list[bool] | None = None
    lowp: str | None = None  # "float16" / "bfloat16" when seen in use
    scaler: bool = False
    scale: float | None = None
    skipped: bool = False
    growth_interval: int = 2000
    types: dict[str, str] = field(default_factory=dict)  # module path -> class name
    sample: dict[str, Any] | None = None  # this step's sampled statistics (None if not sampled)
    samples: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=64))
    evidence: dict[str, Any] = field(default_factory=dict)  # structural clues (double softmax...)
    not_in_optimizer: list[str] = field(default_factory=list)
    findings: dict[tuple[str, str | None], Event] = field(default_factory=dict)
    closed: list[Event] = field(default_factory=list)  # findings the run disproved this step (recovered)

    # -- helpers used by several rules -------------------------------------------------
    def label(self, name: str | None) -> str:
        """``name (Linear)`` for a module path, call sites (``block:relu``) as they are."""
        if name is None:
            return "the model"
        t = self.types.get(name.split("#")[0])
        return f"{name} ({t})" if t else name

    def has(self, kind: str) -> bool:
        return any(k == kind for k, _ in self.findings)

    def record(self, step: int, loss: float, gnorm: float, lr: float | None) -> None:
        """Append one step to the history."""
        self.step, self.n = step, self.n + 1
        if self.n == 1:
            self.first_step = step
        self.steps.append(step)
        self.loss.append(loss)
        self.gnorm.append(gnorm)
        if math.isfinite(loss):
            self.last_finite_loss = loss
            if len(self.first_loss) < 20:
                self.first_loss.append(loss)
        else:
            self.ever_nonfinite = True
        if math.isfinite(gnorm) and gnorm > 0 and len(self.first_gnorm) < 10:
            self.first_gnorm.append(gnorm)
        if lr is not None:
            self.lr_min, self.lr_max = min(self.lr_min, lr), max(self.lr_max, lr)

    def set_gradients(self, layer_norm: np.ndarray, layer_rms: np.ndarray, present: np.ndarray) -> None:
        """This step's per-layer gradient norms, and the few numbers every gradient rule reads."""
        self.layer_norm, self.layer_rms, self.present = layer_norm, layer_rms, present
        self.rms_ok = bool(np.isfinite(layer_rms).all())
        self.rms_argmax = int(np.argmax(layer_rms)) if layer_rms.size else 0
        self.rms_max = float(layer_rms[self.rms_argmax]) if layer_rms.size else 0.0
        self.depth = _depth_ratio(self)

    def tail(self, last: int) -> np.ndarray:
        """The last ``last`` losses (all of them, finite or not)."""
        n = len(self.loss)
        return np.fromiter(islice(self.loss, max(0, n - last), n), dtype=float)

    def start_loss(self) -> float | None:
        """Median of the first (up to 10) finite losses."""
        return float(np.median(self.first_loss[:10])) if self.first_loss else None

    def rank_of_first_nonfinite(self) -> int | None:
        if self.rank_loss is None:
            return None
        for r, v in enumerate(self.rank_loss):
            if not math.isfinite(v) or (self.rank_input and self.rank_input[r]):
                return r
        return None


class Rule:
    """Base class: ``check`` returns new findings; ``emit`` builds and registers one."""

    kind: str = ""
    severity: str = "warning"

    def check(self, s: State) -> Iterable[Event]:  # pragma: no cover - interface
        raise NotImplementedError

    def emit(
        self,
        s: State,
        *,
        module: str | None,
        began: int,
        message: str,
        hint: str,
        stats: dict[str, Any],
        rank: int | None = None,
        key: str | None = None,
    ) -> list[Event]:
        k = (self.kind, key if key is not None else module)
        if k in s.findings:
            ev = s.findings[k]
            ev.stats["count"] = int(ev.stats.get("count", 1)) + 1
            ev.stats["last_step"] = s.step
            return []
        stats = {k2: _num(v) for k2, v in stats.items()}
        stats.setdefault("detected_at", s.step)
        stats["count"] = 1
        ev = Event(kind=self.kind, source="monitor", message=message, severity=self.severity, hint=hint,
                   module=module, step=int(began), rank=rank, stats=stats, dtype=s.lowp)
        s.findings[k] = ev
        return [ev]


def _num(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _g(v: float) -> str:
    return f"{v:.3g}"


class _Streak:
    """Counts consecutive steps a condition holds and remembers when the run began."""

    def __init__(self) -> None:
        self.count = 0
        self.began = 0

    def update(self, cond: bool, step: int) -> int:
        if cond:
            if self.count == 0:
                self.began = step
            self.count += 1
        else:
            self.count = 0
        return self.count


# -- non-finite values ------------------------------------------------------------------
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


# -- gradients ------------------------------------------------------------------------------
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


def _depth_ratio(s: State) -> float | None:
    """RMS gradient of the first weight layer (forward order) over the last one."""
    order = _present_order(s)
    if s.layer_rms is None or len(order) < 2:
        return None
    first, last = s.layer_rms[order[0]], s.layer_rms[order[-1]]
    if not (math.isfinite(first) and math.isfinite(last)) or last <= 0:
        return None
    return float(first / last)


def _present_order(s: State) -> list[int]:
    return [i for i in s.order if s.present is None or s.present[i]]


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


# -- units ---------------------------------------------------------------------------------
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


# -- the loss curve ----------------------------------------------------------------------------
class StuckAtChance(Rule):
    """``stuck_at_chance``: the loss stays at ln C, the loss of a uniform guess.

    The loss (median of each block of 10 steps) has stayed within ``chance_tolerance``
    (5%) of ln C for the last ``chance_window`` (100) steps *and* for at least
    ``chance_fraction`` (half) of the run so far: every run starts at ln C, and a
    plateau there is normal until it lasts. C is ``num_classes`` or the class dimension
    seen by cross_entropy (2 for a binary loss). UMLAUT's "loss at chance" check, made
    persistent. When the loss later leaves chance (the median of the last 20 steps below
    ln C by twice the tolerance) the finding is closed as recovered: ``stats["recovered_at"]``,
    severity ``info``, and the monitor says so in its log.
    """

    kind = "stuck_at_chance"
    block = 10

    def __init__(self) -> None:
        self.plateau = 0  # consecutive steps (whole blocks) at chance, and the step they began
        self.began = 0

    def check(self, s: State) -> list[Event]:
        c = s.num_classes
        w = s.th.chance_window
        if not c or c < 2:
            return []
        chance = math.log(c)
        tol = s.th.chance_tolerance * chance
        open_ = s.findings.get((self.kind, None))
        if open_ is not None:
            if "recovered_at" not in open_.stats and s.n % self.block == 0:
                self._close_if_recovered(s, open_, chance, tol)
            return []
        b = self.block
        if s.n % b:
            return []
        blk = s.tail(b)
        blk = blk[np.isfinite(blk)]
        if blk.size >= b // 2 and abs(float(np.median(blk)) - chance) <= tol:  # this block sits at chance
            if self.plateau == 0:
                self.began = s.steps[-b]
            self.plateau += b
        else:
            self.plateau = 0
        plateau = self.plateau
        if plateau < w or plateau < s.th.chance_fraction * s.n:
            return []
        losses = s.tail(min(plateau, len(s.loss)))
        m_all = float(np.median(losses[np.isfinite(losses)]))
        began = self.began
        extra = ""
        if s.has("vanishing_gradient"):
            extra = " Gradients vanish before the first layers (see vanishing_gradient)."
        msg = (f"the loss stays at {_g(m_all)} ≈ ln {c} = {_g(chance)} from step {began} ({plateau} steps): the "
               f"model predicts no better than a uniform guess")
        hint = ("Check the labels belong to the inputs, raise the learning rate, replace sigmoid/tanh hidden "
                "activations by ReLU/GELU, and pass logits (no softmax) to the loss." + extra)
        return self.emit(s, module=None, began=began, message=msg, hint=hint,
                         stats={"median_loss": m_all, "chance_loss": chance, "num_classes": c, "window": w,
                                "plateau_steps": plateau})

    def _close_if_recovered(self, s: State, ev: Event, chance: float, tol: float) -> None:
        tail = s.tail(2 * self.block)
        tail = tail[np.isfinite(tail)]
        if tail.size < self.block:
            return
        now = float(np.median(tail))
        if now >= chance - 2 * tol:
            return
        ev.stats["recovered_at"] = s.step
        ev.stats["recovered"] = (f"the loss left chance: {_g(now)} now, below ln {s.num_classes} = {_g(chance)}; "
                                 f"the plateau from step {ev.step} was the start of learning, not a failure")
        ev.stats["loss_at_recovery"] = now
        ev.severity = "info"
        ev.message += f" — recovered at step {s.step} (loss {_g(now)})"
        s.closed.append(ev)


class StalledLoss(Rule):
    """``stalled_loss``: the loss makes no progress, or cannot.

    * No progress: after ``stall_window`` (100) steps at a constant learning rate, the
      median of the last 20 losses is not below the median of the first 20 by
      ``stall_progress`` (1%) and by twice the noise of that difference (its standard
      error). AUTOTRAINER's slow convergence uses δ = 0.01 on accuracy; we use the
      loss, which is always there, and the noise test keeps batch noise from deciding.
      A run that made progress and then flattened (converged) is not reported, nor a
      run whose learning rate is changing (warmup).
    * Cannot progress: cross_entropy (or log_softmax/nll) receives probabilities, a
      softmax applied twice, on ``probability_samples`` (2) sampled steps; the loss is
      then bounded below by :func:`ce_floor_on_probabilities`.
    """

    kind = "stalled_loss"

    def __init__(self) -> None:
        self.prob_seen = 0
        self.prob_first: int | None = None

    def check(self, s: State) -> list[Event]:
        if s.sample is not None and s.sample.get("probs_into_loss"):
            self.prob_seen += 1
            if self.prob_first is None:
                self.prob_first = s.step
            if self.prob_seen >= s.th.probability_samples:
                site = s.sample["probs_into_loss"]
                c = s.num_classes or 2
                floor = ce_floor_on_probabilities(c)
                msg = (f"{site} receives probabilities (a softmax was already applied): the loss cannot fall below "
                       f"{_g(floor)} for {c} classes and its gradient is squashed")
                hint = ("Remove the softmax at the end of the model and pass the logits to cross_entropy "
                        "(fg.cross_entropy); use softmax only to report probabilities.")
                return self.emit(s, module=site, began=self.prob_first, message=msg, hint=hint,
                                 stats={"loss_floor": floor, "num_classes": c, "loss": s.loss[-1]}, key="probs")
        w = s.th.stall_window
        if s.n < w or (s.n - w) % CURVE_EVERY or any(s.has(k) for k in (self.kind, "stuck_at_chance", "diverging_loss",
                                                          "oscillating_loss")):
            return []
        if s.lr_min < 0.99 * s.lr_max or s.ever_nonfinite:  # a schedule (warmup, decay) is running: no verdict
            return []
        k = 20
        head, tail = np.asarray(s.first_loss[:k]), s.tail(k)
        first, last = float(np.median(head)), float(np.median(tail))
        se = 1.2533 * float(np.hypot(head.std(), tail.std())) / math.sqrt(k)  # s.e. of the difference
        if first - last > max(s.th.stall_progress * abs(first), 2 * se):
            return []
        msg = f"the loss has not improved in {s.n} steps (median {_g(first)} over the first {k}, {_g(last)} now)"
        hint = ("Raise the learning rate, check that the optimizer holds the model's parameters (built before the "
                "model was replaced or moved?) and that the loss is not computed on detached outputs.")
        if s.not_in_optimizer:
            hint = (f"The optimizer does not hold the parameters of {', '.join(s.not_in_optimizer[:3])}: build it "
                    "from model.parameters() after the model is final. " + hint)
        return self.emit(s, module=None, began=s.first_step, message=msg, hint=hint,
                         stats={"start_loss": first, "loss": last, "steps": s.n})


class DivergingLoss(Rule):
    """``diverging_loss``: the loss climbs above where it started and stays there.

    The 3-step median exceeds both 1.5x the start (the first 3-step median) and twice
    its best so far, for ``diverge_patience`` (5) steps (a catapult spike of the loss
    that comes back within 4 steps is an oscillation, not a divergence); a loss that overflows to inf
    while rising counts. AUTOTRAINER compares single losses with the start; a median
    keeps one bad batch from firing, and the start-relative bar lets a converged run's
    noise pass (its best is far below its start).
    """

    kind = "diverging_loss"
    severity = "error"

    def __init__(self) -> None:
        self.streak = _Streak()
        self.best = math.inf
        self.best_step = 0
        self.start: float | None = None

    def check(self, s: State) -> list[Event]:
        v = s.loss[-1]
        if not math.isfinite(v):
            rising = self.streak.count > 0 and v > 0
            if rising and self.streak.count + 1 >= s.th.diverge_patience:
                return self._fire(s, v)
            if not rising:
                self.streak.update(False, s.step)
            return []
        win = sorted(v for v in (s.loss[-k] for k in range(1, min(3, len(s.loss)) + 1)) if math.isfinite(v))
        m = win[len(win) // 2] if len(win) % 2 else 0.5 * (win[0] + win[1])
        if self.start is None:
            self.start = m
        cond = s.n >= 3 and m > self.start + 0.5 * max(abs(self.start), 1e-12) and m > self.best + abs(self.best)
        if m < self.best:
            self.best, self.best_step = m, s.step
        if self.streak.update(cond, s.step) < s.th.diverge_patience:
            return []
        return self._fire(s, m)

    def _fire(self, s: State, m: float) -> list[Event]:
        msg = (f"the loss diverges from step {self.best_step}: {_g(m)} against a best of {_g(self.best)} "
               f"(start {_g(self.start or 0)})")
        hint = ("Lower the learning rate (10x) or add warmup, clip gradients (clip_grad_norm_), and check that "
                "inputs and targets are normalized.")
        return self.emit(s, module=None, began=self.best_step, message=msg, hint=hint,
                         stats={"loss": m, "best_loss": self.best, "start_loss": self.start})


class OscillatingLoss(Rule):
    """``oscillating_loss``: the loss swings up and down without progress.

    Over the last ``oscillation_window`` (60) steps, with the second half's median not
    below half the first half's (no strong progress), either

    * rebounds: the 3-step median climbs back from a trough by at least the trough
      itself, half the window's median and a quarter of the start loss (so a converged
      run's noise at a tiny loss does not count), ``oscillation_rebounds`` (3) times; or
    * flip-flop: lag-1 autocorrelation of the detrended loss <= -0.5 with a detrended
      standard deviation >= 10% of the median and a swing >= a quarter of the start
      loss (minibatch noise has autocorrelation ~0),

    on ``oscillation_patience`` (2) checks in a row (checked every 10 steps). AUTOTRAINER's ζ = 0.03 compares raw
    loss ranges, which small-batch noise exceeds; a median over 3 steps and rebounds
    that at least double the loss only count structure.
    """

    kind = "oscillating_loss"

    def __init__(self) -> None:
        self.streak = _Streak()

    def check(self, s: State) -> list[Event]:
        w = s.th.oscillation_window
        if s.n < w or (s.n - w) % CURVE_EVERY or s.has(self.kind) or s.has("diverging_loss"):
            return []
        x = s.tail(w)
        if not np.isfinite(x).all():
            return []
        detail = _oscillation(x, s.th.oscillation_rebounds, s.start_loss() or 0.0)
        if self.streak.update(detail is not None, s.step) < s.th.oscillation_patience or detail is None:
            return []
        began = max(s.first_step, self.streak.began - w + 1)  # the start of the window it was seen in
        msg = (f"the loss oscillates without progress from step {began} "
               f"({detail['pattern']}, swing {_g(detail['swing'])} around a median of {_g(detail['median'])})")
        hint = ("Lower the learning rate (or decay it), lower the momentum / Adam's beta1, or increase the batch "
                "size; shuffle the data if the swings follow the data order.")
        return self.emit(s, module=None, began=began, message=msg, hint=hint, stats=detail)


def _median3(x: np.ndarray) -> np.ndarray:
    """Medians of consecutive triples (vectorized: max(min(a, b), min(max(a, b), c)))."""
    a, b, c = x[:-2], x[1:-1], x[2:]
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _oscillation(x: np.ndarray, rebounds_needed: int, start: float) -> dict[str, Any] | None:
    n = x.size
    half = n // 2
    med = float(np.median(x))
    if med <= 0 or np.median(x[half:]) < 0.5 * np.median(x[:half]):
        return None
    bar = max(0.5 * med, 0.25 * abs(start))
    trough, rebounds, swing = math.inf, 0, 0.0
    for v in _median3(x).tolist():
        if v - trough >= max(abs(trough), bar):
            rebounds += 1
            swing = max(swing, v - trough)
            trough = v
        trough = min(trough, v)
    if rebounds >= rebounds_needed:
        return {"pattern": f"{rebounds} rebounds", "swing": swing, "median": med, "rebounds": rebounds}
    t = np.arange(n) - (n - 1) / 2
    resid = x - x.mean() - t * (float(np.dot(t, x)) / float(np.dot(t, t)))
    ss = float(np.dot(resid, resid))
    if ss > 0:
        ac = float(np.dot(resid[:-1], resid[1:])) / ss
        sd = math.sqrt(ss / n)
        if ac <= -0.5 and sd >= 0.1 * med and 2 * sd >= 0.25 * abs(start):
            return {"pattern": "alternating", "swing": 2 * sd, "median": med, "autocorrelation": ac}
    return None


# -- updates, logits, low precision --------------------------------------------------------------
class UpdateRatio(Rule):
    """``update_ratio``: ‖Δw‖/‖w‖ per step far outside its healthy band (~1e-3).

    The ratio of update to weight norm is ~1e-3 in healthy training (CS231n's rule of
    thumb). Reported when a layer stays >= ``update_high`` (0.3: the weights are
    rewritten every few steps) or <= ``update_low`` (1e-6: nothing moves, or updates
    vanish in rounding) on ``update_samples`` (5) sampled steps; our healthy programs
    stay between 1e-4 and 0.03. The low side is only
    reported while the learning rate is at its maximum so far (a warmup or a decayed
    schedule is not a fault) and the layer has a gradient.
    """

    kind = "update_ratio"

    def __init__(self) -> None:
        self.hist: deque[tuple[np.ndarray, float | None, int]] = deque()
        self.max_lr = 0.0

    def check(self, s: State) -> list[Event]:
        if s.sample is None or s.sample.get("update") is None:
            return []
        r = np.asarray(s.sample["update"], dtype=float)
        lr = s.sample.get("lr")
        if lr is not None:
            self.max_lr = max(self.max_lr, lr)
        self.hist.append((r, lr, s.step))
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
        has_grad = s.layer_rms is not None and np.isfinite(s.layer_rms)
        low_layers = [i for i in range(r.size) if low[i] and (s.layer_rms is None or
                                                              (has_grad[i] and s.layer_rms[i] > 0))]
        if high.any():
            idx = [i for i in range(r.size) if high[i]]
            worst = max(idx, key=lambda i: r[i])
            msg = (f"updates rewrite the weights: ‖Δw‖/‖w‖ = {_g(r[worst])} per step at {s.label(s.names[worst])} "
                   f"(healthy ~1e-3) from step {began}")
            hint = "Lower the learning rate (the ratio scales with it), add warmup, or clip gradients."
            out += self.emit(s, module=s.names[worst], began=began, message=msg, hint=hint, key="high",
                             stats={"ratio": float(r[worst]), "direction": "high", "lr": lr,
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
                             stats={"ratio": float(r[worst]), "direction": "low", "lr": lr,
                                    "layers": [s.names[i] for i in low_layers]})
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


RULES: tuple[type[Rule], ...] = (
    NonfiniteLoss, NonfiniteGradient, ExplodingGradient, VanishingGradient, DeadUnits, SaturatedUnits,
    StuckAtChance, DivergingLoss, OscillatingLoss, StalledLoss, UpdateRatio, OverconfidentLogits,
    Fp16Overflow, GradientUnderflow,
)
