"""The monitor's rules for the instabilities of transformer training (issue 15).

Five kinds, each read from sampled statistics (:mod:`.transformer_stats`) or the loss
history, each raised, where the signal allows, before the loss shows the failure:

==========================  ========================================================  ===========================
kind                        signal                                                    published cure
==========================  ========================================================  ===========================
``attention_logit_growth``  largest attention logit q·k/√d >= 30 and x2 in 3 samples,  qk-layernorm (Dehghani et
                            entropy halved (or >= 100), on 3 samples (fused: the      al. 2023), lower lr,
                            bound ‖q‖‖k‖/√d)                                          soft-capping
``output_logit_divergence`` RMS of log Z = logsumexp(output logits) >= 50, 3 samples   z-loss 1e-4 (PaLM)
``update_rounded_away``     >= 50% of a bf16/fp16 weight's updates leave it unchanged  float32 master weights,
                            (measured before/after the step), 3 samples                Kahan/stochastic rounding
``adam_epsilon_dominates``  >= 50% of a layer's entries have sqrt(v̂) <= Adam's eps,    eps = 1e-15 (Wortsman et
                            first sample                                               al. 2023)
``loss_spike``              one step's loss >= median + 3 (max - median) of the last   clipping, lower lr / beta2,
                            30 steps and >= 10% of the start loss                      the batch
==========================  ========================================================  ===========================

Thresholds and the margins measured on our programs (``tests/monitor/test_instabilities.py``):
a tiny causal transformer with hand-written attention at lr 3e-2 without qk-layernorm
reaches a largest logit of 1700 (at lr 1e-1: 10^5), with qk-layernorm it stays at 14
(44 at lr 1e-1), hence 100. Confident healthy models reach RMS log Z of about 20 (the
cured transformer), hence 50.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from ..events import Event
from .rules import Rule, State, _g, _Streak

__all__ = ["TRANSFORMER_RULES"]


class AttentionLogitGrowth(Rule):
    """``attention_logit_growth``: the attention logits grow without bound; softmax turns one-hot.

    Per attention module (the module calling softmax on a >= 3-d input along its last
    dimension, or ``scaled_dot_product_attention``), on sampled steps, the largest finite
    softmax input :math:`m_t` (masked entries are negative and never the maximum) either

    * grows fast: :math:`m_t \\ge` ``attention_floor`` (30) and
      :math:`m_t \\ge` ``attention_growth`` (2) :math:`\\times\\, m_{t-w}`, the value
      ``attention_window`` (3) samples before (the first sample while fewer were taken),
      and the rows' mean entropy is below half its first value (collapsing); or
    * is large: :math:`m_t \\ge` ``attention_logit`` (100), whatever its history,

    on ``patience`` (3) samples in a row: a sustained multiplicative growth, not a level.
    The step it began is the first sample after which the logit stayed above twice its
    first value. A fused ``scaled_dot_product_attention`` never shows its logits; the
    bound max‖q‖·max‖k‖/√d (Cauchy-Schwarz) is compared instead (without the entropy), and
    the finding says so.

    Margins on our programs (sampled every 10 steps): the uncured proxy (lr 3e-2) doubles
    every 10-30 steps from 1.1 to 14, 33, 73, ...; healthy runs that learn the copy task
    with one-hot attention grow slowly and level off: no qk-layernorm at lr 1e-2 reaches
    31 (doubling takes 90 steps), qk-layernorm at lr 1e-1 reaches 28 (x2 in 20 steps, but
    below 20 then), so both conditions are needed.
    """

    kind = "attention_logit_growth"
    severity = "error"

    def __init__(self) -> None:
        self.streaks: dict[str, _Streak] = {}
        self.first: dict[str, tuple[float, float]] = {}  # site -> (max logit, entropy) of its first sample
        self.onset: dict[str, int] = {}
        self.history: dict[str, deque[tuple[int, float]]] = {}  # site -> the last samples (step, max logit)

    def check(self, s: State) -> list[Event]:
        att = s.sample.get("attention") if s.sample else None
        if not att:
            return []
        th = s.th
        out: list[Event] = []
        for site, a in att.items():
            m = a["max_logit"]
            if not math.isfinite(m):
                continue
            m0, h0 = self.first.setdefault(site, (m, a["entropy"]))
            if m <= 2 * max(m0, 1.0):
                self.onset.pop(site, None)
            else:
                self.onset.setdefault(site, s.step)
            hist = self.history.setdefault(site, deque(maxlen=th.attention_window))
            back_step, back = hist[0] if hist else (s.step, m)
            hist.append((s.step, m))
            growth = m / max(back, 1e-30)
            collapsing = a["fused"] or not a["entropy"] > 0.5 * h0  # NaN entropy (fused): not known, not required
            fast = m >= th.attention_floor and growth >= th.attention_growth and collapsing
            st = self.streaks.setdefault(site, _Streak())
            if st.update(fast or m >= th.attention_logit, s.step) < th.patience:
                continue
            began = min(self.onset.get(site, st.began), st.began)
            keys = a["keys"]
            pace = (f"x{_g(growth)} in the last {s.step - back_step} steps" if growth >= th.attention_growth
                    else f"above {_g(th.attention_logit)}")
            if a["fused"]:
                msg = (f"a fused scaled_dot_product_attention at {s.label(site)} hides its logits; their bound "
                       f"max‖q‖·max‖k‖/√d grows from {_g(m0)} to {_g(m)} ({pace}, from step {began}): the logits "
                       "can reach it and softmax turns one-hot")
            else:
                msg = (f"attention logits grow without bound at {s.label(site)}: the largest q·k/√d is {_g(m)} "
                       f"(first {_g(m0)}, {pace}, growing from step {began}); the rows' mean entropy fell from "
                       f"{_g(h0)} to {_g(a['entropy'])} nats (uniform over {keys} keys: "
                       f"{_g(math.log(max(keys, 1)))}): attention collapses to one-hot")
            hint = ("Normalize queries and keys (qk-layernorm, Dehghani et al. 2023): q, k = self.q_norm(q), "
                    "self.k_norm(k) with nn.LayerNorm(head_dim) before q @ k.transpose(-2, -1); or lower the "
                    "learning rate; or soft-cap the logits: logits = cap * torch.tanh(logits / cap), cap = 50.")
            stats: dict[str, Any] = {"max_logit": m, "first_max_logit": m0, "growth": growth,
                                     "growth_steps": s.step - back_step, "threshold": th.attention_logit,
                                     "floor": th.attention_floor, "fused": a["fused"], "keys": keys}
            if not a["fused"]:
                stats.update(entropy=a["entropy"], first_entropy=h0)
            out += self.emit(s, module=site, began=began, message=msg, hint=hint, stats=stats)
        return out


class OutputLogitDivergence(Rule):
    """``output_logit_divergence``: log Z of the output logits drifts far from 0 (PaLM).

    On sampled steps, where cross_entropy / log_softmax receives its logits, the root
    mean square over the rows of log Z = logsumexp(z) is >= ``logz_rms`` (50) on
    ``patience`` (3) samples in a row. Cross-entropy does not see a common shift of the
    logits, so nothing holds log Z near 0; far from it the logits lose precision (in
    bfloat16 the ulp at 64 is 0.5) and the loss diverges. Left to ``overconfident_logits``
    when that already fired (its remedy covers the same large logits).
    """

    kind = "output_logit_divergence"

    def __init__(self) -> None:
        self.streak = _Streak()
        self.first: float | None = None
        self.calm_until: int | None = None  # the last sampled step with RMS log Z below half the threshold

    def check(self, s: State) -> list[Event]:
        lz = s.sample.get("logz") if s.sample else None
        if not lz or not math.isfinite(lz["rms"]) or s.has("overconfident_logits"):
            return []
        rms = lz["rms"]
        if self.first is None:
            self.first = lz["mean"]
        if rms < 0.5 * s.th.logz_rms:
            self.calm_until = s.step
        if self.streak.update(rms >= s.th.logz_rms, s.step) < s.th.patience:
            return []
        calm = self.calm_until
        began = calm if calm is not None and calm < self.streak.began else self.streak.began
        msg = (f"log Z of the output logits at {lz['site']} drifts from 0: its RMS over the tokens is {_g(rms)} "
               f"(mean {_g(lz['mean'])}, {_g(self.first)} at the start), drifting from step {began}")
        hint = ("Add PaLM's z-loss, coefficient 1e-4: loss = floatguard.cross_entropy(logits, target, "
                "z_loss=1e-4) (adds 1e-4 * mean(logsumexp(logits, -1)**2)); or by hand: loss = "
                "F.cross_entropy(logits, target) + 1e-4 * torch.logsumexp(logits, -1).pow(2).mean().")
        return self.emit(s, module=lz["site"], began=began, message=msg, hint=hint, key="",
                         stats={"logz_rms": rms, "logz_mean": lz["mean"], "first_logz_mean": self.first,
                                "threshold": s.th.logz_rms})


class UpdateRoundedAway(Rule):
    """``update_rounded_away``: low-precision weights that the optimizer's updates cannot move.

    For bfloat16/float16 weights (no float32 master copy), on sampled steps: of the
    entries whose gradient is nonzero (meant to move), the share whose value the
    optimizer step left unchanged, measured exactly on a sample of entries before and
    after the step. Reported when a layer's share is >= ``rounded_fraction`` (0.5) on
    ``patience`` (3) samples in a row: the update was below half an ulp of the weight
    and was rounded away (bfloat16 keeps 8 bits: an update below 2^-9 of the weight is lost).
    """

    kind = "update_rounded_away"

    def __init__(self) -> None:
        self.streak = _Streak()

    def check(self, s: State) -> list[Event]:
        r = s.sample.get("rounded") if s.sample else None
        if not r:
            return []
        moving, vanished = np.asarray(r["moving"], dtype=float), np.asarray(r["vanished"], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(moving >= 16, vanished / np.maximum(moving, 1), 0.0)
        bad = frac >= s.th.rounded_fraction
        if self.streak.update(bool(bad.any()), s.step) < s.th.patience:
            return []
        worst = int(np.argmax(frac))
        total = float(vanished.sum() / max(moving.sum(), 1))
        dt = s.lowp or "low-precision"
        msg = (f"{frac[worst]:.0%} of the {dt} weight updates of {s.label(s.names[worst])} are rounded away from "
               f"step {self.streak.began}: below half an ulp of the weight, they leave it unchanged (measured "
               f"before/after the optimizer step; {total:.0%} over all {dt} weights)")
        hint = ("Keep float32 master weights: train the float32 model under torch.autocast(device, "
                "dtype=torch.bfloat16) instead of model.to(torch.bfloat16); or round updates stochastically / "
                "keep the lost low bits (Kahan-compensated summation); or raise the learning rate.")
        return self.emit(s, module=s.names[worst], began=self.streak.began, message=msg, hint=hint, key="",
                         stats={"vanished_fraction": float(frac[worst]), "overall_fraction": total,
                                "sampled_entries": int(moving[worst]),
                                "layers": [s.names[i] for i in range(frac.size) if bad[i]]})


class AdamEpsilonDominates(Rule):
    """``adam_epsilon_dominates``: sqrt(v̂) of many entries falls to Adam's eps; updates shrink.

    Read from the optimizer's state on sampled steps (``exp_avg_sq``, ``step``, ``betas``,
    ``eps``): a layer whose entries with a gradient have sqrt(v̂) <= eps in share >=
    ``adam_eps_fraction`` (0.5), reported at the first sampled step where it holds: v̂ is
    already an average over about 1/(1 - beta2) steps (a state, not one noisy reading),
    so no further patience is needed. There the update m̂/(sqrt(v̂) + eps) is at most half
    of Adam's normalized step and shrinks with the gradient (Wortsman et al. 2023, §3.4).
    Entries never given a gradient (v = 0) do not count.
    """

    kind = "adam_epsilon_dominates"

    def __init__(self) -> None:
        self.streak = _Streak()

    def check(self, s: State) -> list[Event]:
        a = s.sample.get("adam") if s.sample else None
        if not a:
            return []
        seen, small = np.asarray(a["seen"], dtype=float), np.asarray(a["small"], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(seen > 0, small / np.maximum(seen, 1), 0.0)
        bad = frac >= s.th.adam_eps_fraction
        if self.streak.update(bool(bad.any()), s.step) < 1:
            return []
        worst = int(np.argmax(frac))
        total = float(small.sum() / max(seen.sum(), 1))
        eps = a.get("eps")
        msg = (f"Adam's eps ({_g(eps or 0)}) dominates sqrt(v̂) for {frac[worst]:.0%} of the entries of "
               f"{s.label(s.names[worst])} from step {self.streak.began} ({total:.0%} of all): the updates there "
               "shrink to a fraction of Adam's normalized step")
        hint = ("Lower Adam's eps: torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-15) (Wortsman et al. 2023); "
                "or scale the loss up (gradients that small usually come from a mean over very many tokens).")
        return self.emit(s, module=s.names[worst], began=self.streak.began, message=msg, hint=hint, key="",
                         stats={"eps_fraction": float(frac[worst]), "overall_fraction": total, "eps": eps,
                                "layers": [s.names[i] for i in range(frac.size) if bad[i]]})


class LossSpike(Rule):
    """``loss_spike``: one step's loss jumps far above its recent range.

    A finite loss >= the median of the last ``spike_window`` (30) finite losses plus
    ``spike_factor`` (3) times their range above the median (max - median), and above
    that median by >= ``spike_rise`` (10%) of the start loss. Reported
    ``spike_confirm`` (5) steps later, with what followed (recovered: the loss back
    within the range; or not) and what preceded it (the gradient norm's growth over the
    steps before, or none: one batch). A spike that opens a divergence or a NaN is left
    to ``diverging_loss`` / ``nonfinite_loss``.
    """

    kind = "loss_spike"

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def check(self, s: State) -> list[Event]:
        th = s.th
        if self.pending is not None:
            return self._confirm(s)
        v = s.loss[-1]
        w = th.spike_window
        if not math.isfinite(v) or len(s.loss) < w + 1 or not s.first_loss:
            return []
        win = s.tail(w + 1)[:-1]
        win = win[np.isfinite(win)]
        if win.size < w // 2:
            return []
        med, hi = float(np.median(win)), float(win.max())
        start = abs(s.start_loss() or 0.0)
        if v < med + th.spike_factor * (hi - med) or v - med < th.spike_rise * start or v <= hi:
            return []
        g = np.fromiter(s.gnorm, dtype=float)[-(w + 1):]
        gw = g[:-1][np.isfinite(g[:-1])]
        gmed = float(np.median(gw)) if gw.size else math.nan
        before = float(np.max(g[-4:-1])) if g.size >= 4 else math.nan
        self.pending = {"step": s.step, "loss": v, "median": med, "high": hi, "grad_norm": float(g[-1]),
                        "grad_norm_median": gmed, "grad_norm_before": before, "after": []}
        return []

    def _confirm(self, s: State) -> list[Event]:
        p = self.pending
        assert p is not None
        if any(s.has(k) for k in ("diverging_loss", "nonfinite_loss", "nonfinite_gradient")):
            self.pending = None
            return []
        p["after"].append(s.loss[-1])
        if len(p["after"]) < s.th.spike_confirm:
            return []
        self.pending = None
        after = np.asarray(p["after"], dtype=float)
        back = [i for i, x in enumerate(after) if math.isfinite(x) and x <= p["high"]]
        recovered = bool(back)
        growth = p["grad_norm_before"] / p["grad_norm_median"] if p["grad_norm_median"] > 0 else math.nan
        if math.isfinite(growth) and growth >= 3:
            cause = f"the gradient norm had grown {_g(growth)}x over its recent median in the steps before"
        elif recovered and back[0] == 0:
            cause = "nothing grew before it and the next step is back in range: one batch"
        else:
            cause = "no gradient growth before it"
        where = (f"recovered {back[0] + 1} step(s) later" if recovered
                 else f"not recovered {len(after)} steps later (loss {_g(float(after[-1]))})")
        msg = (f"the loss spikes at step {p['step']}: {_g(p['loss'])} against a recent median of {_g(p['median'])} "
               f"(max {_g(p['high'])}); {where}; {cause}")
        hint = ("Look at the batch of that step (bad data shows as one-step spikes); clip gradients "
                "(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)); lower the learning rate or Adam's beta2 "
                "(0.95) and lengthen warmup; qk-layernorm and z-loss remove the spikes that attention and output "
                "logits cause.")
        return self.emit(s, module=None, began=p["step"], message=msg, hint=hint,
                         stats={"loss": p["loss"], "median_loss": p["median"], "max_recent_loss": p["high"],
                                "recovered": recovered, "recovered_after": back[0] + 1 if recovered else None,
                                "grad_norm": p["grad_norm"], "grad_norm_growth_before": growth})


TRANSFORMER_RULES: tuple[type[Rule], ...] = (
    AttentionLogitGrowth, OutputLogitDivergence, UpdateRoundedAway, AdamEpsilonDominates, LossSpike,
)
