"""The rules' common parts: :class:`Thresholds`, the host-side :class:`State` they read, the
:class:`Rule` base class (one finding per kind and layer) and small helpers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from typing import Any

import numpy as np

from ...events import Event, Severity

__all__ = ["CURVE_EVERY", "FP16_MAX", "FP16_TINY", "HISTORY", "Rule", "State", "Thresholds",
           "ce_floor_on_probabilities"]


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
    attention_logit: float = 100.0  # largest attention logit q·k/sqrt(d) (transformer_rules.py)
    attention_floor: float = 30.0  # ...or at least this and growing fast (transformer_rules.py):
    attention_growth: float = 2.0  # ...this factor over the last attention_window samples
    attention_window: int = 3
    logz_rms: float = 50.0  # root mean square of log Z of the output logits
    rounded_fraction: float = 0.5  # share of low-precision weight entries whose update vanished
    adam_eps_fraction: float = 0.5  # share of a layer's entries with sqrt(v_hat) <= Adam's eps
    spike_window: int = 30  # steps of recent range a loss spike is compared with
    spike_factor: float = 3.0  # rise above the window's median, in its (max - median)
    spike_rise: float = 0.1  # and at least this share of the start loss
    spike_confirm: int = 5  # steps after a spike before it is reported (recovered or not)

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
    severity: Severity = "warning"

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
            s.findings[k] = replace(ev, stats={**ev.stats, "count": int(ev.stats.get("count") or 1) + 1,
                                               "last_step": s.step})
            return []
        stats = {k2: _num(v) for k2, v in stats.items()}
        stats.setdefault("detected_at", s.step)
        stats["count"] = 1
        # names are fields of their own; stats holds numbers only
        layers, producer = stats.pop("layers", None), stats.pop("producer", None)
        ranks = stats.pop("ranks_nonfinite", None)
        ev = Event(kind=self.kind, source="monitor", message=message, severity=self.severity, hint=hint,
                   module=module, step=int(began), rank=rank, stats=stats, dtype=s.lowp, layers=tuple(layers or ()),
                   producer=producer, ranks=tuple(ranks or ()))
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
