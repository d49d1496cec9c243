"""Device-side statistics of the transformer instabilities (read by :mod:`.transformer_rules`).

Each function reduces on the device, without synchronizing, to a few numbers that join
the monitor's one transfer per step:

* :func:`attention_stats`: the softmax input of a hand-written attention (the logits
  :math:`q\\cdot k/\\sqrt d`): its largest finite entry and the mean entropy of the rows;
* :func:`sdpa_stats`: a fused ``scaled_dot_product_attention`` hides its logits, so
  the bound :math:`\\max_i\\lVert q_i\\rVert\\,\\max_j\\lVert k_j\\rVert / \\sqrt d \\ge |q_i\\cdot k_j|/\\sqrt d`
  (Cauchy-Schwarz) is measured instead;
* :func:`logz_stats`: :math:`\\log Z = \\operatorname{logsumexp}_c z_c` of the output
  logits (mean and root mean square over the rows), the quantity z-loss pulls to 0;
* :func:`rounded_away_counts`: entries of a low-precision weight the optimizer meant
  to move (nonzero gradient) that did not change: the update was below half an ulp;
* :func:`adam_eps_counts`: entries where Adam's :math:`\\sqrt{\\hat v}` is at most its
  :math:`\\epsilon`, so that :math:`\\epsilon` halves the update or more.

None of them changes its inputs: they read detached tensors (results stay bit-identical).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["CHUNK", "SUBSET", "adam_eps_counts", "attention_stats", "chunk_sample", "logz_stats",
           "rounded_away_counts", "sdpa_stats"]

SUBSET = 16384  # entries per tensor sampled (evenly spaced chunks)
CHUNK = 256
LOWP = (torch.float16, torch.bfloat16)


def chunk_sample(t: torch.Tensor) -> torch.Tensor:
    """A flat view of ``t``: all of it, or about ``SUBSET`` entries in evenly spaced chunks of 256.

    The same tensor shape always gives the same entries, so two calls (a weight before and
    after the optimizer step, its gradient) select corresponding entries.
    """
    w = t.detach().reshape(-1)
    n = w.numel()
    if n > 2 * SUBSET:
        rows = w[: n // CHUNK * CHUNK].view(-1, CHUNK)
        w = rows[:: rows.shape[0] // (SUBSET // CHUNK)]
    return w


def attention_stats(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    r"""``[max logit, mean entropy, keys]`` of one attention softmax (float64, on the device).

    .. math:: m = \max_{ij,\ z_{ij}\ \mathrm{finite}} z_{ij}, \qquad
              \bar H = \operatorname{mean}_i\Big(-\sum_j p_{ij}\log p_{ij}\Big)

    The largest entry is taken from above: masked entries (``-inf``, ``-1e9``, the dtype's
    minimum) are negative and never the maximum, whatever the masking convention.
    """
    z = logits.detach()
    p = probs.detach().float()
    finite = torch.isfinite(z)
    m = torch.where(finite, z, torch.zeros((), dtype=z.dtype, device=z.device)).amax().double()
    tiny = torch.finfo(p.dtype).tiny
    ent = -(p * p.clamp_min(tiny).log()).sum(-1).mean().double()
    keys = torch.tensor(float(z.shape[-1]), dtype=torch.float64, device=z.device)
    return torch.stack([m, ent, keys])


def sdpa_stats(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    r"""``[bound, nan, keys]`` for a fused attention, whose logits are never materialized.

    .. math:: b = s\,\max_i\lVert q_i\rVert\,\max_j\lVert k_j\rVert \ge s\,|q_i\cdot k_j|,
              \qquad s = 1/\sqrt d \text{ unless ``scale`` is given}
    """
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    qn = torch.linalg.vector_norm(q.detach().float(), dim=-1).amax()
    kn = torch.linalg.vector_norm(k.detach().float(), dim=-1).amax()
    bound = (qn.double() * kn.double() * s)
    nan = torch.full((), math.nan, dtype=torch.float64, device=q.device)
    keys = torch.tensor(float(k.shape[-2]), dtype=torch.float64, device=q.device)
    return torch.stack([bound, nan, keys])


def logz_stats(logits: torch.Tensor, dim: int) -> torch.Tensor:
    r"""``[mean log Z, rms log Z]`` over the rows, :math:`\log Z = \log\sum_c e^{z_c}` (float64)."""
    lz = torch.logsumexp(logits.detach().float(), dim=dim).double()
    return torch.stack([lz.mean(), lz.square().mean().sqrt()])


def rounded_away_counts(before: list[torch.Tensor], after: list[torch.Tensor],
                        grads: list[torch.Tensor | None]) -> torch.Tensor:
    """Per tensor ``[vanished, moving]``: entries with a nonzero gradient, and those of them unchanged by the step.

    ``before``/``after``/``grads`` are corresponding :func:`chunk_sample` views. An entry
    whose gradient is nonzero was meant to move (SGD moves it by ``lr * g``; Adam by
    ``lr * m / (sqrt(v) + eps)``, nonzero with the gradient); if it kept its exact value the
    update was rounded away in the weight's dtype.
    """
    rows = []
    for b, a, g in zip(before, after, grads, strict=True):
        if g is None or g.shape != a.shape:
            rows.append(torch.zeros(2, dtype=torch.float64, device=a.device))
            continue
        moving = g != 0
        vanished = moving & (a == b)
        rows.append(torch.stack([vanished.sum(), moving.sum()]).double())
    return torch.stack(rows).reshape(-1) if rows else torch.zeros(0, dtype=torch.float64)


def adam_eps_counts(params: list[torch.Tensor], optimizer: Any) -> torch.Tensor | None:
    r"""Per parameter ``[small, seen]``: entries with :math:`0 < \sqrt{\hat v} \le \epsilon`, and with :math:`v > 0`.

    :math:`\hat v = v / (1 - \beta_2^t)` is Adam's bias-corrected second moment (state
    ``exp_avg_sq``, ``step``; group ``betas``, ``eps``). ``None`` when the optimizer keeps
    no such state (not an Adam-family optimizer, or before its first step).
    """
    groups: dict[int, dict[str, Any]] = {}
    for grp in getattr(optimizer, "param_groups", []):
        if "eps" not in grp or "betas" not in grp:
            continue
        for p in grp["params"]:
            groups[id(p)] = grp
    state = getattr(optimizer, "state", {})
    rows: list[torch.Tensor] = []
    found = False
    dev = params[0].device if params else torch.device("cpu")
    for p in params:
        grp = groups.get(id(p))
        st = state.get(p) if grp is not None else None
        if grp is None or not isinstance(st, dict):
            rows.append(torch.zeros(2, dtype=torch.float64, device=dev))
            continue
        v = st.get("exp_avg_sq")
        if not isinstance(v, torch.Tensor) or v.layout is not torch.strided:
            rows.append(torch.zeros(2, dtype=torch.float64, device=dev))
            continue
        t = st.get("step", 0)
        t = float(t)
        if t < 1:
            rows.append(torch.zeros(2, dtype=torch.float64, device=dev))
            continue
        found = True
        bc2 = 1.0 - float(grp["betas"][1]) ** t
        eps = float(grp["eps"])
        vs = chunk_sample(v).float()
        seen = vs > 0
        small = seen & (vs <= (eps * eps) * bc2)  # sqrt(v / bc2) <= eps, without a sqrt pass
        rows.append(torch.stack([small.sum(), seen.sum()]).double().to(dev))
    if not found:
        return None
    return torch.stack(rows).reshape(-1)
