"""Rules for the loss curve: stuck at chance, stalled, diverging, oscillating.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from ...events import Event
from .base import CURVE_EVERY, Rule, State, _g, _Streak, ce_floor_on_probabilities

__all__ = ["DivergingLoss", "OscillatingLoss", "StalledLoss", "StuckAtChance"]


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
        ev = replace(ev, stats={**ev.stats, "recovered_at": s.step, "loss_at_recovery": now}, severity="info",
                     note=(f"the loss left chance: {_g(now)} now, below ln {s.num_classes} = {_g(chance)}; "
                           f"the plateau from step {ev.step} was the start of learning, not a failure"),
                     message=ev.message + f" — recovered at step {s.step} (loss {_g(now)})")
        s.findings[(self.kind, None)] = ev
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
        return self.emit(s, module=None, began=began, message=msg, hint=hint,  # the pattern's name is in msg
                         stats={k: v for k, v in detail.items() if k != "pattern"})


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
