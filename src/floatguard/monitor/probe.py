"""Sampled activation statistics: a TorchFunctionMode active during one training step.

On a sampled step the monitor enters :class:`Probe` when the model's forward begins
and leaves it in ``Monitor.step`` (after backward). While active it sees every torch
function call and keeps, on the device and without synchronizing:

* ReLU outputs: which units fired for some sample (dead units);
* tanh/sigmoid outputs: the share in the flat tails (saturation);
* the inputs of classification losses (cross_entropy, nll_loss, log_softmax,
  softmax, BCE with logits, and ``floatguard.cross_entropy``): max |logit|, the
  median gap between the top two logits, whether the input already is
  probabilities (double softmax), the number of classes, and log Z;
* ``log`` applied to a softmax output;
* attention: the softmax input of a hand-written attention (largest logit, row
  entropy) and the q/k norms of a fused ``scaled_dot_product_attention``
  (:mod:`.transformer_stats`), by the module that calls it.

Call sites are named by the module path of the innermost module running (global
module hooks, registered only while sampling): ``"net.3"`` for an ``nn.ReLU`` at
``net.3``, ``"block:relu"`` for ``F.relu`` inside ``block``'s forward,
``"loss:cross_entropy"`` outside the model.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .transformer_stats import attention_stats, logit_row_stats, row_sample, sdpa_stats

__all__ = ["Probe", "SiteStats"]

_RELU = {torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, torch.Tensor.relu, torch.Tensor.relu_}
_TANH: set[Callable[..., Any]] = {torch.tanh, F.tanh, torch.Tensor.tanh}
_SIGMOID = {torch.sigmoid, F.sigmoid, torch.Tensor.sigmoid}
_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax}
_LOG_SOFTMAX = {torch.log_softmax, F.log_softmax, torch.Tensor.log_softmax}
_CE = {F.cross_entropy}
_NLL = {F.nll_loss}
_BCE_LOGITS = {F.binary_cross_entropy_with_logits}
_LOG = {torch.log, torch.Tensor.log}
_SDPA = {F.scaled_dot_product_attention}
_CONV = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d,
         torch.nn.BatchNorm3d)


@dataclass
class SiteStats:
    """What one call site produced on this sampled step (device tensors)."""

    kind: str  # "relu", "tanh", "sigmoid"
    producer: str | None = None
    alive: torch.Tensor | None = None  # bool per unit, relu
    saturated: torch.Tensor | None = None  # 0-d float, tanh/sigmoid
    output: bool = False  # the model's own output


@dataclass
class LogitStats:
    site: str
    absmax: torch.Tensor
    gap: torch.Tensor | None
    probs: torch.Tensor  # 0-d bool: the input already is a probability distribution
    classes: int
    dtype: str
    from_softmax: bool = False
    logz: torch.Tensor | None = None  # [mean, rms] of logsumexp over the classes


@dataclass
class _Frame:
    name: str
    leaf_activation: bool
    conv: bool


class Probe(TorchFunctionMode):
    """Collects activation and logit statistics for one sampled step."""

    def __init__(self, module_names: dict[int, tuple[str, torch.nn.Module]], level: float = 0.99,
                 detailed: bool = False) -> None:
        super().__init__()
        self.module_names = module_names
        self.level = level
        self.detailed = detailed
        self.sites: dict[str, SiteStats] = {}
        self.logits: list[LogitStats] = []
        self.log_of_softmax: str | None = None
        self.attention: dict[str, torch.Tensor] = {}  # module -> [max logit (or q/k bound), entropy, keys]
        self.layer_out: dict[str, torch.Tensor] = {}  # detailed: [mean, std, absmax] per parametrized layer
        self._stack: list[_Frame] = []
        self._last_param: str | None = None
        self._softmax_out: dict[int, weakref.ref[torch.Tensor]] = {}
        self._act_out: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}
        self._handles: list[Any] = []
        self._calls: dict[str, int] = {}
        self.order: list[str] = []  # parametrized modules in the order their forward began
        self._root_id = 0
        self.active = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, root: torch.nn.Module) -> None:
        """Begin observing; called from the root module's forward pre-hook."""
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._root_id = id(root)
        entry = self.module_names.get(id(root))
        self._stack = [_Frame((entry[0] if entry else "") or "<model>", False, False)]
        self._handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        self.__enter__()
        self.active = True

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        self.__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stack = []

    # -- module stack ------------------------------------------------------------------------
    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        entry = self.module_names.get(id(module))
        if entry is None:
            return
        name = entry[0] or "<model>"
        has_params = any(True for _ in module.parameters(False))
        if has_params and name not in self.order:
            self.order.append(name)
        leaf_act = not any(True for _ in module.children()) and not has_params
        self._stack.append(_Frame(name, leaf_act, isinstance(module, _CONV)))

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        entry = self.module_names.get(id(module))
        if entry is None:
            return
        name = entry[0] or "<model>"
        if self._stack and self._stack[-1].name == name:
            self._stack.pop()
        if any(True for _ in module.parameters(False)):
            self._last_param = name
            if self.detailed and isinstance(output, torch.Tensor) and output.is_floating_point():
                y = output.detach()
                if y.numel() > 1:  # three fast reductions (torch.std_mean is ~50x slower on CPU)
                    n = y.numel()
                    mean = y.sum().double() / n  # float32 reductions, then float64 (a float64 pass is slow)
                    ms = torch.linalg.vector_norm(y).double() ** 2 / n
                    lo, hi = torch.aminmax(y)
                    sd = (ms - mean * mean).clamp_min(0).sqrt()
                    self.layer_out[name] = torch.stack([mean, sd, torch.maximum(hi, -lo).double()]).float()
        if id(module) == self._root_id and isinstance(output, torch.Tensor):
            hit = self._act_out.get(id(output))
            if hit is not None and hit[0]() is output:
                self.sites[hit[1]].output = True

    def _site(self, fname: str) -> str:
        if not self._stack:
            base = f"loss:{fname}"
        else:
            fr = self._stack[-1]
            base = fr.name if fr.leaf_activation else f"{fr.name}:{fname}"
        k = self._calls.get(base, 0)
        self._calls[base] = k + 1
        return base + (f"#{k}" if k else "")

    # -- interception ------------------------------------------------------------------------
    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        with contextlib.suppress(Exception):  # statistics must never break training
            if func is _fg_cross_entropy():
                self._floatguard_loss(args, kwargs)
            else:
                self._observe(func, args, kwargs, out)
        return out

    def _floatguard_loss(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Record the logits of ``floatguard.cross_entropy`` like ``F.cross_entropy``'s.

        The op follows PyTorch's override protocol (``handle_torch_function``), so this mode
        sees the call itself, with its arguments; the torch calls its kernels make run with
        the mode off and are not observed. The logits are taken along ``axis``/``dim`` and,
        when ``softcap`` is given, capped, as the z-loss sees them.
        """
        x = args[0] if args else kwargs.get("logits")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return
        d = kwargs.get("dim")
        d = kwargs.get("axis", -1) if d is None else d
        cap = kwargs.get("softcap")
        y = x.detach()
        if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0:
            y = cap * torch.tanh(y / cap)
        self._logits(y, "cross_entropy", int(d) if isinstance(d, int) else -1)

    def _is_softmax_out(self, x: Any) -> bool:
        if not isinstance(x, torch.Tensor):
            return False
        ref = self._softmax_out.get(id(x))
        return ref is not None and ref() is x

    def _observe(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if func in _RELU:
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.ndim >= 1:
                self._relu(out)
        elif func in _TANH or func in _SIGMOID:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                self._squash(out, "tanh" if func in _TANH else "sigmoid")
        elif func in _SOFTMAX:
            x = args[0] if args else kwargs.get("input")
            if isinstance(out, torch.Tensor):
                self._softmax_out[id(out)] = weakref.ref(out)
            if isinstance(x, torch.Tensor) and not self._is_softmax_out(x):
                self._logits(x, "softmax", _dim(args, kwargs, -1))
                if x.ndim >= 3 and _dim(args, kwargs, -1) % x.ndim == x.ndim - 1 and isinstance(out, torch.Tensor):
                    self._attention(attention_stats(x, out))
        elif func in _SDPA:
            q, k = (args[0] if args else kwargs.get("query")), (args[1] if len(args) > 1 else kwargs.get("key"))
            if isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.is_floating_point():
                self._attention(sdpa_stats(q, k, kwargs.get("scale")))
        elif func in _LOG:
            x = args[0] if args else kwargs.get("input")
            if self._is_softmax_out(x) and self.log_of_softmax is None:
                self.log_of_softmax = self._site("log")
        elif func in _CE or func in _LOG_SOFTMAX or func in _NLL:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                name = getattr(func, "__name__", "loss")
                dim = _dim(args, kwargs, 1 if x.ndim >= 2 else 0) if func in _LOG_SOFTMAX else (1 if x.ndim >= 2
                                                                                              else 0)
                self._logits(x, name, dim, nll=func in _NLL)
        elif func in _BCE_LOGITS:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                y = x.detach()
                self.logits.append(LogitStats(self._site("binary_cross_entropy_with_logits"),
                                              y.abs().amax().float(), None, y.new_zeros((), dtype=torch.bool), 2,
                                              _dtype_name(y)))

    def _unit_dim(self, y: torch.Tensor) -> int:
        if y.ndim <= 2:
            return y.ndim - 1
        conv = bool(self._stack) and (self._stack[-1].conv or (len(self._stack) > 1 and self._stack[-2].conv))
        return 1 if (conv or y.ndim >= 4) else y.ndim - 1

    def _relu(self, y: torch.Tensor) -> None:
        site = self._site("relu")
        d = self._unit_dim(y)
        dims = [i for i in range(y.ndim) if i != d]
        pos = (y.detach().amax(dim=dims) > 0) if dims else (y.detach() > 0)  # one pass, no copy
        st = self.sites.get(site)
        if st is None:
            self.sites[site] = st = SiteStats("relu", producer=self._last_param)
            st.alive = pos
        elif st.alive is not None and st.alive.shape == pos.shape:
            st.alive = st.alive | pos
        self._act_out[id(y)] = (weakref.ref(y), site)

    def _squash(self, y: torch.Tensor, kind: str) -> None:
        site = self._site(kind)
        v = y.detach()
        lv = self.level
        sat = (v.abs() >= lv) if kind == "tanh" else ((v <= 1 - lv) | (v >= lv))
        frac = sat.float().mean()
        st = self.sites.get(site)
        if st is None:
            self.sites[site] = st = SiteStats(kind, producer=self._last_param)
            st.saturated = frac
        elif st.saturated is not None:
            st.saturated = torch.maximum(st.saturated, frac)
        self._act_out[id(y)] = (weakref.ref(y), site)

    def _logits(self, x: torch.Tensor, fname: str, dim: int, nll: bool = False) -> None:
        """Max |logit| (exact: one pass), and on the rows of :func:`row_sample` the probability check, the
        median top-two gap and log Z (:func:`logit_row_stats`; not for a softmax, whose input is no loss's)."""
        site = self._site(fname)
        y = x.detach()
        if y.ndim == 0 or y.numel() == 0:
            return
        dim = dim % y.ndim
        c = int(y.shape[dim])
        from_sm = self._is_softmax_out(x)
        rows = row_sample(y, dim).float()
        if from_sm:
            probs = torch.ones((), dtype=torch.bool, device=y.device)
        elif c > 1:  # every sampled row in [0, 1] and summing to 1: the input already is probabilities
            lo_s, hi_s = torch.aminmax(rows)
            probs = (lo_s >= 0) & (hi_s <= 1) & ((rows.sum(-1) - 1).abs() <= 1e-3).all()
        else:
            probs = torch.zeros((), dtype=torch.bool, device=y.device)
        if nll:  # nll_loss takes log-probabilities: nothing to learn about logits, only misuse
            self.logits.append(LogitStats(site, rows.new_zeros(()), None, probs, c, _dtype_name(y), from_sm))
            return
        gap = logz = None
        if c >= 2:
            gap, logz = logit_row_stats(rows, logz=fname != "softmax")
        lo, hi = torch.aminmax(y)
        self.logits.append(LogitStats(site, torch.maximum(hi, -lo).float(), gap, probs, c, _dtype_name(y), from_sm,
                                      logz))

    def _attention(self, st: torch.Tensor) -> None:
        """Keep the statistics of one attention call under the module calling it (the largest of its calls)."""
        site = self._stack[-1].name if self._stack else "<model>"
        prev = self.attention.get(site)
        self.attention[site] = st if prev is None else torch.where(st[0] >= prev[0], st, prev)


_FG_CE: list[Callable[..., Any]] = []


def _fg_cross_entropy() -> Callable[..., Any]:
    """``floatguard.cross_entropy`` (imported on first use: the ops need NumPy only)."""
    if not _FG_CE:
        from ..ops.losses import cross_entropy

        _FG_CE.append(cross_entropy)
    return _FG_CE[0]


def _dim(args: tuple[Any, ...], kwargs: dict[str, Any], default: int) -> int:
    d = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return int(d) if isinstance(d, int) else default


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")
