"""Device-side statistics of the transformer instabilities (read by :mod:`.transformer_rules`).

Each function reduces on the device, without synchronizing, to a few numbers that join
the monitor's one transfer per step:

* :func:`row_sample`: the rows of logits the row statistics read (a fixed strided sample);
* :func:`attention_stats`: the softmax input of a hand-written attention (the logits
  :math:`q\\cdot k/\\sqrt d`): its largest finite entry and the mean entropy of the rows;
* :func:`sdpa_stats`: a fused ``scaled_dot_product_attention`` hides its logits, so
  the bound :math:`\\max_i\\lVert q_i\\rVert\\,\\max_j\\lVert k_j\\rVert / \\sqrt d \\ge |q_i\\cdot k_j|/\\sqrt d`
  (Cauchy-Schwarz) is measured instead;
* :func:`logit_row_stats`: the median gap between the two largest logits of a row and
  :math:`\\log Z = \\operatorname{logsumexp}_c z_c` of the output logits (mean and root
  mean square over the rows), the quantity z-loss pulls to 0, from one ``topk``;
* :func:`rounded_away_counts`: entries of a low-precision weight the optimizer meant
  to move (nonzero gradient) that did not change: the update was below half an ulp;
* :func:`adam_eps_counts`: entries where Adam's :math:`\\sqrt{\\hat v}` is at most its
  :math:`\\epsilon`, so that :math:`\\epsilon` halves the update or more.

None of them changes its inputs: they read detached tensors (results stay bit-identical).

Row statistics (a mean, a median or an RMS over rows: entropy, top-two gap, log Z) are
taken on a fixed sample of rows (:func:`row_sample`: 256 rows, more when they are short):
on a causal LM's (2048 x 1000) output logits the whole-tensor statistics took 10 ms per
call on one CPU thread, eight times ``F.cross_entropy``'s forward; on 228 sampled rows,
1 ms (the exact max |logit| included); a (32, 4, 64, 64) attention softmax, 7 ms then,
0.9 ms. A mean over hundreds of evenly spread rows estimates the mean over all rows to a
few percent (the rules' thresholds are factors of 2 and levels crossed by far), and
tensors that small, the instability proxies' logits and attention among them, are read
whole: exactly. Maxima stay exact where one pass over the tensor gives them (``amax``
does not allocate).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["CHUNK", "ENTRIES", "ROWS", "SUBSET", "adam_eps_counts", "attention_stats", "chunk_sample",
           "logit_row_stats", "rounded_away_counts", "row_sample", "sdpa_stats"]

SUBSET = 16384  # entries per tensor sampled (evenly spaced chunks)
CHUNK = 256
ROWS = 256  # rows of logits per call that the row statistics read at least (row_sample)...
ENTRIES = 65536  # ...or as many as hold this many entries: short rows (attention over few keys) sample more
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


def row_sample(t: torch.Tensor, dim: int = -1, rows: int | None = None) -> torch.Tensor:
    r"""The rows of ``t`` along ``dim`` as ``(n, t.shape[dim])``: all, or a fixed strided sample of at most ``rows``.

    .. math:: \{\,r_{ks} : k = 0, 1, \dots,\ ks < N\,\}, \qquad
              s = \min\{\,s \ge \lceil N/\mathrm{rows}\rceil : \gcd(s, N) = 1\,\}

    over the :math:`N` rows in row-major order of the other dimensions. As :math:`s` is
    coprime with :math:`N`, it is coprime with every trailing block of dimensions (a
    block's size divides :math:`N`): the sampled rows run through every query position
    of a ``(batch, heads, queries, keys)`` attention, every token position of flattened
    ``(batch * tokens, vocab)`` logits, in near-equal shares; never one position only (a
    stride of 64 on 64 query positions would read the first query of each head, a row
    of one key). The same shape gives the same rows. A view when the rows are
    contiguous; else only the sampled rows are gathered. ``rows`` defaults to ``ROWS``
    (256) or, for rows shorter than 256 entries, ``ENTRIES // c``: about 65536 entries,
    whose reductions take about 0.1 ms on one CPU thread (1024 rows of 64 keys).
    """
    z = t.detach().movedim(dim, -1)
    lead, c = tuple(z.shape[:-1]), int(z.shape[-1])
    n = math.prod(lead)
    if rows is None:
        rows = max(ROWS, ENTRIES // max(c, 1))
    if n <= rows:
        return z.reshape(n, c)
    s = -(-n // rows)
    while math.gcd(s, n) != 1:
        s += 1
    if z.is_contiguous():
        return z.view(n, c)[::s]
    idx = torch.arange(0, n, s, device=z.device)
    return z[torch.unravel_index(idx, lead)]


def attention_stats(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    r"""``[max logit, mean entropy, keys]`` of one attention softmax (float64, on the device).

    .. math:: m = \max_{ij,\ z_{ij}\ \mathrm{finite}} z_{ij}, \qquad
              \bar H = \operatorname{mean}_i\Big(-\sum_j p_{ij}\log p_{ij}\Big)

    The largest entry is taken from above: masked entries (``-inf``, ``-1e9``, the dtype's
    minimum) are negative and never the maximum, whatever the masking convention. It is
    exact (one ``amax`` over all the logits) unless some logit is ``+inf`` or NaN; then it
    is the largest finite one of the sampled rows. The mean entropy is over the rows of
    :func:`row_sample` (all rows up to 1024 of 64 keys): a mean over rows spread evenly over the
    heads and query positions.
    """
    z = logits.detach()
    zs = row_sample(z)
    ps = row_sample(probs).float()
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    m_all = z.amax()
    m = torch.where(torch.isfinite(m_all), m_all, torch.where(torch.isfinite(zs), zs, zero).amax()).double()
    tiny = torch.finfo(ps.dtype).tiny
    ent = -(ps * ps.clamp_min(tiny).log()).sum(-1).mean().double()
    keys = torch.full((), float(z.shape[-1]), dtype=torch.float64, device=z.device)
    return torch.stack([m, ent, keys])


def sdpa_stats(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    r"""``[bound, nan, keys]`` for a fused attention, whose logits are never materialized.

    .. math:: b = s\,\max_i\lVert q_i\rVert\,\max_j\lVert k_j\rVert \ge s\,|q_i\cdot k_j|,
              \qquad s = 1/\sqrt d \text{ unless ``scale`` is given}

    Over all queries and keys (a bound must see them all; q and k are small beside the
    logits).
    """
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    qn = torch.linalg.vector_norm(q.detach().float(), dim=-1).amax()
    kn = torch.linalg.vector_norm(k.detach().float(), dim=-1).amax()
    bound = (qn.double() * kn.double() * s)
    nan = torch.full((), math.nan, dtype=torch.float64, device=q.device)
    keys = torch.full((), float(k.shape[-2]), dtype=torch.float64, device=q.device)
    return torch.stack([bound, nan, keys])


def logit_row_stats(rows: torch.Tensor, logz: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""The median top-two gap and ``[mean log Z, rms log Z]`` over ``rows`` ``(n, c)``, ``c >= 2`` (float64 log Z).

    .. math:: g = \operatorname{median}_i\,(z_{i(1)} - z_{i(2)}), \qquad
              \log Z_i = m_i + \log\sum_c e^{z_{ic} - m_i}, \quad m_i = z_{i(1)}

    One ``topk(2)`` gives both the gap and the shift :math:`m_i` of the log-sum-exp (the
    row maximum; 0 where it is not finite, as ``torch.logsumexp`` does), so the rows are
    read twice, not four times. ``rows`` is a :func:`row_sample`; ``logz=False`` skips
    log Z (a softmax that is not the loss's).
    """
    top = rows.topk(2, dim=-1).values
    m = top[:, 0]
    gap = (m - top[:, 1]).median()
    if not logz:
        return gap, None
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))
    lz = (m + (rows - m[:, None]).exp().sum(-1).log()).double()
    return gap, torch.stack([lz.mean(), lz.square().mean().sqrt()])


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
