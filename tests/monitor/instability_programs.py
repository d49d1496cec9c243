"""Small-scale proxies of the instabilities of transformer training, each with its cure.

Each proxy trains from a fixed seed under a default :class:`~floatguard.monitor.Monitor`
and returns a :class:`Run`: the closed monitor and the loss of every step. ``cured=True``
applies the published cure; ``steps`` and ``size`` scale a proxy up for the benchmark
(``benchmarks/instabilities.py``). The tests (``test_instabilities.py``) run them small.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import floatguard
from floatguard.monitor import Monitor

__all__ = ["PROXIES", "Proxy", "Run", "adam_eps", "attention", "attention_fused", "bf16_sgd", "healthy_attention",
           "loss_spike", "output_logits"]


@dataclass
class Run:
    monitor: Monitor
    losses: list[float] = field(default_factory=list)
    logz: dict[int, float] = field(default_factory=dict)  # LM runs: step -> RMS of log Z of the logits, every 10 steps


@dataclass(frozen=True)
class Proxy:
    name: str
    kind: str  # the finding the uncured run must produce
    cure: str
    run: Callable[..., Run]
    steps: int  # of the test; the benchmark may run longer


# -- a tiny causal transformer with hand-written (or fused) attention ----------------------------
class Attention(nn.Module):
    def __init__(self, d: int, heads: int, qk_norm: bool, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.q_norm = nn.LayerNorm(d // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(d // heads) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
            a = a.masked_fill(torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            y = torch.softmax(a, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, qk_norm: bool, fused: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, qk_norm, fused)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, d: int, heads: int, layers: int, length: int, *, qk_norm: bool = False,
                 fused: bool = False, final_norm: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(length, d))
        self.blocks = nn.ModuleList([Block(d, heads, qk_norm, fused) for _ in range(layers)])
        self.ln = nn.LayerNorm(d) if final_norm else nn.Identity()
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx) + self.pos[: idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def _copy_task(n: int, vocab: int, length: int, seed: int) -> torch.Tensor:
    """Sequences ``h h h[0]`` of random tokens: predicting the second half needs attention to the first."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(0, vocab, (n, length // 2), generator=g)
    return torch.cat([h, h, h[:, :1]], 1)


def _train_lm(model: TinyLM, opt: torch.optim.Optimizer, steps: int, *, vocab: int, length: int, seed: int,
              z_loss: float | None = None, warmup: int = 0) -> Run:
    """Train on the copy task (loss on the second half); ``z_loss``: through ``floatguard.cross_entropy``.

    ``warmup``: the learning rate rises linearly over that many steps.
    """
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / warmup)) if warmup else None
    seqs = _copy_task(2048, vocab, length, seed)
    g = torch.Generator().manual_seed(seed + 1)
    mon = Monitor(model, opt, live=False)
    run = Run(mon)
    half = length // 2
    for step in range(steps):
        b = seqs[torch.randint(0, seqs.shape[0], (32,), generator=g)]
        logits = model(b[:, :-1])[:, half:].reshape(-1, vocab)
        target = b[:, 1 + half:].reshape(-1)
        if z_loss is None:
            loss = F.cross_entropy(logits, target)
        else:  # PaLM's z-loss, fused: + z_loss * mean(logsumexp(logits, -1)**2)
            loss = floatguard.cross_entropy(logits, target, z_loss=z_loss)
        if step % 10 == 0:  # measured here, independently of the monitor
            run.logz[step] = float(torch.logsumexp(logits.detach().double(), -1).square().mean().sqrt())
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()
        if sched is not None:
            sched.step()
        run.losses.append(float(loss.detach()))
    mon.close()
    return run


def attention(cured: bool = False, steps: int = 150, size: int = 1) -> Run:
    """Hand-written attention at lr 3e-2: the attention logits grow from ~2 to ~10^3; cure: qk-layernorm."""
    torch.manual_seed(0)
    model = TinyLM(16, 32 * size, 2, 2, 16, qk_norm=cured)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    return _train_lm(model, opt, steps, vocab=16, length=16, seed=0)


def attention_fused(cured: bool = False, steps: int = 150, size: int = 1) -> Run:
    """The same with F.scaled_dot_product_attention: the logits are hidden, the q/k-norm bound is watched."""
    torch.manual_seed(0)
    model = TinyLM(16, 32 * size, 2, 2, 16, qk_norm=cured, fused=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    return _train_lm(model, opt, steps, vocab=16, length=16, seed=0)


LR_LOGITS = 5e-2


def output_logits(cured: bool = False, steps: int = 200, size: int = 1, seed: int = 0) -> Run:
    """Output-logit divergence (Wortsman et al. 2023): AdamW without weight decay drifts log Z; cure: z-loss 1e-4.

    The qk-normed LM without a final LayerNorm, vocabulary 64, AdamW lr 5e-2 (50 steps
    of linear warmup), betas (0.9, 0.95), weight decay 0, loss ``F.cross_entropy`` (what
    users write). Once the copy task is learnt (step ~100) cross-entropy no longer
    holds the logits' common shift, and the RMS of log Z rises about linearly, 20 -> 50 ->
    100 -> 970 (steps 100, 150, 200, 575; seeds 0-2 alike) while the loss stays small.
    Cured: ``floatguard.cross_entropy(logits, target, z_loss=1e-4)``, the same model and
    schedule: log Z peaks at 20-28 near step 125 and falls back. At lr 1e-1 the z-loss
    of 1e-4 only holds log Z near 50, and without warmup both runs catapult early.
    """
    torch.manual_seed(seed)
    model = TinyLM(64, 32 * size, 2, 2, 16, qk_norm=True, final_norm=False)
    opt = torch.optim.AdamW(model.parameters(), lr=LR_LOGITS, betas=(0.9, 0.95), weight_decay=0.0)
    return _train_lm(model, opt, steps, vocab=64, length=16, seed=seed, z_loss=1e-4 if cured else None, warmup=50)


# -- an MLP: bfloat16 weights, tiny gradients under Adam, a bad batch ----------------------------
def _teacher(n: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, classes, generator=g)).argmax(1)
    return x, y


def _train_mlp(model: nn.Module, opt: torch.optim.Optimizer, steps: int, data: tuple[torch.Tensor, torch.Tensor], *,
               seed: int, scale: float = 1.0, autocast: bool = False,
               corrupt: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> Run:
    x, y = data
    g = torch.Generator().manual_seed(seed + 1)
    dtype = next(model.parameters()).dtype
    mon = Monitor(model, opt, live=False)
    run = Run(mon)
    for step in range(steps):
        i = torch.randint(0, x.shape[0], (64,), generator=g)
        xb, yb = x[i].to(dtype), y[i]
        if corrupt is not None:
            xb = corrupt(step, xb)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(xb).float(), yb)
        opt.zero_grad()
        (scale * loss).backward()
        mon.step(loss)
        opt.step()
        run.losses.append(float(loss.detach()))
    mon.close()
    return run


def _mlp(d: int, w: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, c))


LR_BF16 = 3e-2


def bf16_sgd(cured: bool = False, steps: int = 120, size: int = 1) -> Run:
    """bfloat16 weights, plain SGD at lr 1e-3: most updates are below half an ulp; cure: float32 + autocast."""
    torch.manual_seed(2)
    model = _mlp(32, 128 * size, 10)
    if not cured:
        model = model.to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=LR_BF16)
    return _train_mlp(model, opt, steps, _teacher(4096, 32, 10, 2), seed=2, autocast=cured)


def adam_eps(cured: bool = False, steps: int = 120, size: int = 1) -> Run:
    """The loss scaled by 1e-7 (a mean over very many tokens): sqrt(v̂) ~ 1e-9 < eps = 1e-8; cure: eps = 1e-15."""
    torch.manual_seed(3)
    model = _mlp(32, 128 * size, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-15 if cured else 1e-8)
    return _train_mlp(model, opt, steps, _teacher(4096, 32, 10, 3), seed=3, scale=1e-7)


SPIKE_AT = 100


def healthy_attention(lr: float, qk_norm: bool, seed: int = 0, steps: int = 300) -> Run:
    """Runs that learn the copy task with sharp (one-hot) attention: must stay silent.

    qk-layernorm at lr 1e-1 (largest logit 28-41 over seeds 0-5) and no qk-layernorm at
    lr 1e-2 (30-32, growing slowly): a level alone does not tell growth without bound.
    """
    torch.manual_seed(seed)
    model = TinyLM(16, 32, 2, 2, 16, qk_norm=qk_norm)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    return _train_lm(model, opt, steps, vocab=16, length=16, seed=seed)


def loss_spike(cured: bool = False, steps: int = 130, size: int = 1) -> Run:
    """One bad batch (inputs x30) at step 100 of an Adam run; without it (the cure here: clean data) no spike."""
    torch.manual_seed(4)
    model = _mlp(32, 128 * size, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def corrupt(step: int, x: torch.Tensor) -> torch.Tensor:
        return 30 * x if step == SPIKE_AT and not cured else x

    return _train_mlp(model, opt, steps, _teacher(4096, 32, 10, 4), seed=4, corrupt=corrupt)


PROXIES: list[Proxy] = [
    Proxy("attention", "attention_logit_growth", "qk-layernorm", attention, 150),
    Proxy("attention_fused", "attention_logit_growth", "qk-layernorm", attention_fused, 150),
    Proxy("output_logits", "output_logit_divergence", "z-loss 1e-4 (floatguard.cross_entropy)", output_logits, 200),
    Proxy("bf16_sgd", "update_rounded_away", "float32 master weights (autocast)", bf16_sgd, 120),
    Proxy("adam_eps", "adam_epsilon_dominates", "eps = 1e-15", adam_eps, 120),
    Proxy("loss_spike", "loss_spike", "no bad batch", loss_spike, 130),
]
