"""The training-health monitor: :class:`Monitor`.

Cost model. Every step the monitor reads the loss and the gradient norm of every
parameter (one ``torch._foreach_norm`` over all gradients, on the device) and moves
that one small vector to the host: one synchronization per step. Every ``every``
steps (10 by default; 1 in detailed mode) it also samples activations (a
:class:`~floatguard.monitor.probe.Probe` during that step's forward and loss),
the update-to-weight ratio of the next optimizer step (a copy of the weights held
from the optimizer's pre- to its post-step hook), and, in float16 runs, the share
of gradient entries that underflow. Everything sampled is reduced on the device and
joins the same one transfer. The rules then run on the host over a few numbers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..events import Event
from .live import LiveLine
from .log import LogWriter, last_step
from .output import Sinks, closed_line, finding_line, get_logger, level_of, summary_lines
from .probe import Probe
from .rules import FP16_TINY, RULES, Rule, State, Thresholds

__all__ = ["Monitor"]

_SUBSET = 16384  # entries per weight tensor sampled for update ratios
_ON_NONFINITE = frozenset({"nonfinite_loss", "nonfinite_gradient", "fp16_overflow", "diverging_loss"})


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    inner = getattr(model, "module", None)
    if isinstance(inner, torch.nn.Module) and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
        return inner
    return model


def _unwrap_optimizer(opt: Any) -> Any:
    """The torch optimizer inside wrappers (accelerate's AcceleratedOptimizer, LightningOptimizer)."""
    for _ in range(4):
        if opt is None or (isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "_optimizer_step_pre_hooks")):
            return opt  # a wrapper may subclass Optimizer without initializing it
        inner = getattr(opt, "optimizer", None) or getattr(opt, "_optimizer", None)
        if inner is None:
            return opt
        opt = inner
    return opt


def _stored(g: torch.Tensor) -> torch.Tensor:
    """The entries a gradient stores: itself, or the values of a sparse one (``nn.Embedding(sparse=True)``).

    A COO gradient is coalesced first (repeated indices summed, as the optimizer will), so
    its norm is the dense gradient's; the entries it does not store are zeros.
    """
    if g.layout is torch.strided:
        return g
    if g.layout is torch.sparse_coo:
        return g.coalesce()._values()
    return g.values()


class Monitor:
    """Watch a training run for silent failure; see the package docstring for the API.

    Args:
        model: the module being trained (DDP/DataParallel wrappers are unwrapped).
        optimizer: its optimizer; needed for update ratios (``update_ratio``). Wrappers
            (accelerate, Lightning) are unwrapped.
        num_classes: C for ``stuck_at_chance``; inferred from the class dimension
            that cross_entropy receives when not given.
        log: path of the JSONL log (appended; a resumed run continues the numbering).
        detailed: per-layer statistics every step (gradient norms, update ratios,
            activations and each layer's output statistics) instead of every ``every``.
        every: sampling period of the costlier statistics (default 10; 1 if detailed).
        scaler: a ``torch.amp.GradScaler`` in use (``fp16_overflow``); its skipped steps
            are not reported as ``nonfinite_gradient``.
        thresholds: a :class:`~floatguard.monitor.rules.Thresholds` overriding defaults.
        live: live status line; None = on when stderr is a terminal. Without it (a batch
            job, stderr to a file) each finding is one plain line with its remedy on the
            ``logging`` logger ``"floatguard.monitor"``; :meth:`close` ends with a summary
            and the command that renders the report.
        rank: distributed rank (default: ``torch.distributed``'s, or 0).
        tensorboard: a ``torch.utils.tensorboard.SummaryWriter`` (or any object with
            ``add_scalar`` and ``add_text``, or a list of them): the loss, gradient norms
            (per layer on sampled steps) and update ratios as scalars under ``floatguard/``,
            each finding as text.
        on_scalars: a callable receiving each step's ``{"floatguard/...": value}`` dict
            (Lightning's ``log_dict``; the callbacks use it).
        replay: when the loss (or a gradient) turns NaN/inf, re-run that step under the
            sanitizer (:func:`floatguard.detect`) and put its first bad op, module and line
            into the finding. ``True`` replays the model's forward with the inputs of that
            step (the parameters are still those of the step: ``step()`` comes before
            ``optimizer.step()``); a callable (``lambda: loss_fn(model(xb), yb)``) replays
            forward, loss and backward. Free until it fires: a reference to the forward's
            inputs and the RNG state (for dropout) are kept each step, nothing is computed.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        num_classes: int | None = None,
        log: str | os.PathLike[str] | None = None,
        detailed: bool = False,
        every: int | None = None,
        scaler: Any = None,
        thresholds: Thresholds | None = None,
        live: bool | None = None,
        rank: int | None = None,
        tensorboard: Any = None,
        on_scalars: Any = None,
        replay: Any = False,
    ) -> None:
        if every is not None and every < 1:
            raise ValueError(f"Monitor: 'every' must be >= 1, got {every}")
        self.model = model
        optimizer = _unwrap_optimizer(optimizer)
        self.optimizer = optimizer
        self.scaler = scaler
        self.detailed = detailed
        self.every = int(every) if every is not None else (1 if detailed else 10)
        self.th = thresholds or Thresholds()
        self.findings: list[Event] = []
        self._root = _unwrap(model)
        self._closed = False

        dist = torch.distributed
        self._dist = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world_size = dist.get_world_size() if self._dist else 1
        self.rank = rank if rank is not None else (dist.get_rank() if self._dist else 0)
        self._comm_dev = torch.device("cpu")  # gloo; NCCL needs the tensors on the GPU

        self._module_names = {id(m): (n, m) for n, m in self._root.named_modules()}
        self._layer_types: dict[str, str] = {}
        names: list[str] = []
        params: list[torch.nn.Parameter] = []
        pl: list[int] = []
        weights: list[int] = []
        seen: set[int] = set()
        for mname, mod in self._root.named_modules():
            own = [p for p in mod.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
            if not own:
                continue
            lname = mname or "<model>"
            names.append(lname)
            self._layer_types[lname] = type(mod).__name__
            for p in own:
                seen.add(id(p))
                if p.ndim >= 2:
                    weights.append(len(params))
                params.append(p)
                pl.append(len(names) - 1)
        self._params = params
        self._pl = np.asarray(pl, dtype=np.int64)
        self._numel = np.asarray([p.numel() for p in params], dtype=float)
        self._weights = weights  # indices into params
        self.layers = names
        weight_layers = sorted({pl[i] for i in weights})
        self._dev = params[0].device if params else torch.device("cpu")
        self._fdt = torch.float32 if self._dev.type == "mps" else torch.float64  # the statistics' dtype
        if self._dist and dist.get_backend() == "nccl":
            self._comm_dev = self._dev
        lowp = None
        if any(p.dtype == torch.float16 for p in params):
            lowp = "float16"
        elif any(p.dtype == torch.bfloat16 for p in params):
            lowp = "bfloat16"

        not_in_opt: list[str] = []
        if optimizer is not None:
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            not_in_opt = sorted({names[pl[i]] for i, p in enumerate(params) if id(p) not in held},
                                key=names.index)
        self.state = State(names=names, numel=np.bincount(self._pl, weights=self._numel, minlength=len(names))
                           if names else np.zeros(0), order=weight_layers, th=self.th, num_classes=num_classes,
                           lowp=lowp, scaler=scaler is not None, not_in_optimizer=not_in_opt)
        self.state.types = {(n or "<model>"): type(m).__name__ for n, m in self._root.named_modules()}
        self._given_classes = num_classes
        self._rules: list[Rule] = [cls() for cls in RULES]

        self._first = 0
        self._log: LogWriter | None = None
        resumed = False
        if log is not None and self.rank == 0:
            prev = last_step(log)
            if prev is not None:
                self._first, resumed = prev + 1, True
        if self._dist:
            t = torch.tensor([self._first], dtype=torch.float64, device=self._comm_dev)
            dist.broadcast(t, 0)
            self._first = int(t.item())
        self._step = self._first
        if log is not None and self.rank == 0:
            self._log = LogWriter(log)
            self._log.write({"type": "start", "version": 1, "floatguard": __version__, "layers": names,
                             "layer_types": [self._layer_types[n] for n in names],
                             "numel": [int(x) for x in self.state.numel], "mode": "detailed" if detailed else "default",
                             "every": self.every, "num_classes": num_classes, "world_size": self.world_size,
                             "first_step": self._first, "resumed": resumed, "thresholds": self.th.to_dict()})
        self._live = LiveLine(live if self.rank == 0 else False)
        self._plain = self.rank == 0 and not self._live.enabled  # not a terminal: plain logging lines
        self._log_path = str(log) if log is not None else None
        writers = [] if tensorboard is None else list(tensorboard) if isinstance(tensorboard, (list, tuple)) \
            else [tensorboard]
        self._sinks = Sinks(writers, [on_scalars] if on_scalars is not None else []) if self.rank == 0 else None

        # hooks: the root module's forward (inputs, autocast, probe), the optimizer's step (update ratios)
        self.replay = replay
        self._replaying = False
        self._replay_inputs: tuple[Any, ...] | None = None
        self._handles = [self._root.register_forward_pre_hook(self._fwd_pre, with_kwargs=True),
                         self._root.register_forward_hook(self._fwd_post)]
        if optimizer is not None:
            self._handles += [optimizer.register_step_pre_hook(self._opt_pre),
                              optimizer.register_step_post_hook(self._opt_post)]
        self._probe: Probe | None = None
        self._probe_order: list[str] | None = None
        self._last_input: torch.Tensor | None = None
        self._input_flag: torch.Tensor | None = None
        self._captured_loss: torch.Tensor | None = None
        self._snapshot: list[torch.Tensor] | None = None
        self._pending_update: tuple[torch.Tensor, torch.Tensor] | None = None
        self._want_snapshot = False
        self._windows: dict[str, deque[torch.Tensor]] = {}
        self._window_since: dict[str, deque[int]] = {}
        self._lr_now: float | None = None

    # -- hooks ---------------------------------------------------------------------------------
    def _sampling(self, step: int | None = None) -> bool:
        return ((self._step if step is None else step) - self._first) % self.every == 0

    def _fwd_pre(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        if self._replaying:
            return
        if self.replay is True:  # references only (and the RNG state, for dropout): the replay needs them
            dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
            amp = None
            with contextlib.suppress(RuntimeError, TypeError):
                if torch.is_autocast_enabled(dev):
                    amp = (dev, torch.get_autocast_dtype(dev))
            self._replay_inputs = (args, dict(kwargs or {}), torch.get_rng_state(), amp)
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if x is not None:
            self._last_input = x
            dev = x.device.type
            try:
                if torch.is_autocast_enabled(dev):
                    dt = torch.get_autocast_dtype(dev)
                    if dt == torch.float16:
                        self.state.lowp = "float16"
                    elif dt == torch.bfloat16 and self.state.lowp is None:
                        self.state.lowp = "bfloat16"
            except (RuntimeError, TypeError):  # device types without autocast
                pass
            if self._dist and x.is_floating_point():
                self._input_flag = (~torch.isfinite(x.detach())).any()
        if (self._probe is None and torch.is_grad_enabled() and self._sampling() and not self._closed
                and not self._replaying):
            self._probe = Probe(self._module_names, level=self.th.saturation_level, detailed=self.detailed)
            self._probe.start(self._root)

    def _fwd_post(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._replaying:
            return
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._captured_loss = loss

    def _weight_list(self) -> list[torch.Tensor]:
        """The weights whose update ratio is measured: a fixed subset of each large tensor.

        ‖Δw‖/‖w‖ over evenly spaced contiguous chunks of 256 entries (about ``_SUBSET``
        entries per tensor; all of a smaller tensor) estimates the whole tensor's ratio
        and keeps the copy held across the optimizer step small and cache-friendly.
        """
        out = []
        for i in self._weights:
            w = self._params[i].detach().reshape(-1)
            n = w.numel()
            if n > 2 * _SUBSET:
                rows = w[: n // 256 * 256].view(-1, 256)
                w = rows[:: rows.shape[0] // (_SUBSET // 256)]
            out.append(w)
        return out

    def _opt_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._want_snapshot and self._weights:
            self._snapshot = torch._foreach_mul(self._weight_list(), 1.0)
            self._want_snapshot = False

    def _opt_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._snapshot is None:
            return
        w = self._weight_list()
        diff = torch._foreach_sub(w, self._snapshot)
        self._snapshot = None
        dn = torch.stack(torch._foreach_norm(diff, 2, dtype=torch.float32)).to(self._fdt)
        wn = torch.stack(torch._foreach_norm(w, 2, dtype=torch.float32)).to(self._fdt)
        self._pending_update = (dn.to(self._dev), wn.to(self._dev))

    # -- the step --------------------------------------------------------------------------------
    def step(self, loss: torch.Tensor | float | None = None) -> list[Event]:
        """Record one step: call after ``backward()``, before ``optimizer.step()``; returns new findings."""
        if self._closed:
            raise RuntimeError("Monitor.step: the monitor is closed")
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.stop()
        if loss is None:
            loss = self._captured_loss
        self._captured_loss = None
        t = self._step
        sampled = self._sampling(t) or probe is not None
        dev = self._dev

        if isinstance(loss, torch.Tensor):
            lv = loss.detach().reshape(-1)[:1].to(device=dev, dtype=self._fdt)
        else:
            lv = torch.tensor([math.nan if loss is None else float(loss)], dtype=self._fdt, device=dev)
        if lv.numel() == 0:
            lv = torch.full((1,), math.nan, dtype=self._fdt, device=dev)
        present = [i for i, p in enumerate(self._params) if p.grad is not None]
        grads = [_stored(self._params[i].grad) for i in present]
        parts: list[torch.Tensor] = [lv]
        layout: list[tuple[str, int]] = [("loss", 1)]
        if grads:
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
            parts.append(torch.stack([n.to(dev) for n in norms]).to(self._fdt))
            layout.append(("norms", len(grads)))

        extra: dict[str, Any] = {}
        if probe is not None:
            self._pack_probe(probe, parts, layout, extra)
        if self._pending_update is not None:
            dn, wn = self._pending_update
            self._pending_update = None
            parts += [dn, wn]
            layout += [("upd_d", dn.numel()), ("upd_w", wn.numel())]
        if sampled and grads and self.state.lowp == "float16":
            self._pack_underflow(grads, parts, layout)
        if self.scaler is not None:
            sc = getattr(self.scaler, "_scale", None)
            parts.append(sc.detach().reshape(-1)[:1].to(dev, self._fdt) if isinstance(sc, torch.Tensor)
                         else torch.tensor([float(self.scaler.get_scale())], dtype=self._fdt, device=dev))
            layout.append(("scale", 1))
        if self._dist:
            flag = self._input_flag if self._input_flag is not None else torch.zeros((), dtype=torch.bool)
            mine = torch.stack([lv[0].to(self._comm_dev), flag.detach().to(self._comm_dev, lv.dtype)])
            everyone = [torch.zeros_like(mine) for _ in range(self.world_size)]
            torch.distributed.all_gather(everyone, mine)
            parts.append(torch.cat(everyone).to(dev))
            layout.append(("ranks", 2 * self.world_size))

        vec = torch.cat(parts).cpu().numpy()  # the one synchronization of the step
        vals: dict[str, np.ndarray] = {}
        pos = 0
        for name, n in layout:
            vals[name] = vec[pos:pos + n]
            pos += n
        new = self._host(t, vals, present, grads, extra, sampled)
        self._want_snapshot = self.optimizer is not None and (self._sampling(t) or self.detailed)
        self._step += 1
        return new

    def _pack_probe(self, probe: Probe, parts: list[torch.Tensor], layout: list[tuple[str, int]],
                    extra: dict[str, Any]) -> None:
        dev = self._dev
        acts: list[tuple[str, str, str | None, int | None, bool, bool]] = []
        for site, st in probe.sites.items():
            if st.kind == "relu" and st.alive is not None:
                alive = st.alive
                if self._dist:
                    a = alive.to(self._comm_dev, torch.float32)
                    torch.distributed.all_reduce(a, op=torch.distributed.ReduceOp.MAX)
                    alive = (a > 0).to(alive.device)
                win = self._windows.setdefault(site, deque(maxlen=self.th.dead_window))
                since = self._window_since.setdefault(site, deque(maxlen=self.th.dead_window))
                if win and win[-1].shape != alive.shape:
                    win.clear()
                    since.clear()
                win.append(alive)
                since.append(self._step)
                ever = win[0]
                for m in list(win)[1:]:
                    ever = ever | m
                parts.append(torch.stack([1 - ever.to(self._fdt).mean(), 1 - alive.to(self._fdt).mean()]).to(dev))
                layout.append((f"act:{site}", 2))
                acts.append((site, "relu", st.producer, int(alive.numel()), len(win) == win.maxlen, st.output))
            elif st.saturated is not None:
                sat = st.saturated.to(self._fdt).reshape(1)
                if self._dist:
                    sat = sat.to(self._comm_dev)
                    torch.distributed.all_reduce(sat)
                    sat = sat / self.world_size
                parts.append(sat.to(dev))
                layout.append((f"act:{site}", 1))
                acts.append((site, st.kind, st.producer, None, True, st.output))
        extra["acts"] = acts
        if probe.logits:
            lg = next((g for g in probe.logits if not g.site.split(":")[-1].startswith("softmax")), probe.logits[0])
            probs = next((g.site for g in probe.logits if g.from_softmax), None)
            gap = lg.gap if lg.gap is not None else torch.tensor(math.nan)
            flags = torch.stack([g.probs for g in probe.logits if "softmax" not in g.site.split(":")[-1]
                                 or g.site.split(":")[-1].startswith("log_softmax")]
                                or [torch.zeros((), dtype=torch.bool)])
            parts.append(torch.stack([lg.absmax.to(self._fdt).to(dev), gap.to(self._fdt).to(dev),
                                      flags.any().to(self._fdt).to(dev)]))
            layout.append(("logits", 3))
            extra["logits"] = lg
            extra["probs_site"] = probs or next((g.site for g in probe.logits), None)
            if self._given_classes is None and lg.classes >= 2:
                self.state.num_classes = lg.classes
        if probe.log_of_softmax:
            self.state.evidence["log_of_softmax"] = probe.log_of_softmax
        if probe.layer_out:
            names = list(probe.layer_out)
            parts.append(torch.cat([probe.layer_out[n].to(self._fdt).to(dev) for n in names]))
            layout.append(("layer_out", 3 * len(names)))
            extra["layer_out"] = names
        if probe.order and self._probe_order is None:
            self._probe_order = probe.order
            idx = {n: i for i, n in enumerate(self.layers)}
            wl = set(self.state.order)
            fwd = [idx[n] for n in probe.order if n in idx and idx[n] in wl]
            rest = [i for i in self.state.order if i not in fwd]
            if fwd:
                self.state.order = fwd + rest

    def _grads_unscaled(self) -> bool:
        """Whether the scaler already divided the gradients by its scale (``scaler.unscale_``)."""
        if self.scaler is None or self.optimizer is None:
            return False
        st = getattr(self.scaler, "_per_optimizer_states", {}).get(id(self.optimizer), {})
        return getattr(st.get("stage"), "name", "") == "UNSCALED"

    def _pack_underflow(self, grads: Sequence[torch.Tensor], parts: list[torch.Tensor],
                        layout: list[tuple[str, int]]) -> None:
        thr = FP16_TINY
        if self._grads_unscaled():  # compare in the loss-scaled domain, where float16 computed them
            thr = FP16_TINY / max(float(self.scaler.get_scale()), 1e-30)
        zeros = torch.stack([(g == 0).sum() for g in grads]).to(self._fdt)
        tiny = torch.stack([((g != 0) & (g.abs() < thr)).sum() for g in grads]).to(self._fdt)
        parts += [zeros.to(self._dev), tiny.to(self._dev)]
        layout += [("zeros", len(grads)), ("tiny", len(grads))]

    # -- host side -------------------------------------------------------------------------------
    def _host(self, t: int, vals: dict[str, np.ndarray], present: list[int], grads: list[torch.Tensor],
              extra: dict[str, Any], sampled: bool) -> list[Event]:
        s = self.state
        L = len(self.layers)
        loss = float(vals["loss"][0])
        norms = vals.get("norms", np.zeros(0)).copy()
        if norms.size and np.isinf(norms).any():  # float32 norm overflow of finite gradients: redo in float64
            for k in np.flatnonzero(np.isinf(norms)):
                norms[k] = float(torch.linalg.vector_norm(grads[k].detach(), dtype=torch.float64))
        if "scale" in vals and norms.size and not self._grads_unscaled():
            norms = norms / max(float(vals["scale"][0]), 1e-30)  # the rules judge the true gradient
        pl = self._pl[present] if present else np.zeros(0, dtype=np.int64)
        with np.errstate(over="ignore", invalid="ignore"):
            layer_sq = np.bincount(pl, weights=norms * norms, minlength=L) if L else np.zeros(0)
            layer_n = np.bincount(pl, weights=self._numel[present], minlength=L) if L else np.zeros(0)
            layer_norm = np.sqrt(layer_sq)
            layer_rms = layer_norm / np.sqrt(np.maximum(layer_n, 1))
            gnorm = float(np.sqrt(layer_sq.sum())) if L else 0.0
        if self._dist and "ranks" in vals:
            r = vals["ranks"].reshape(self.world_size, 2)
            s.rank_loss = [float(v) for v in r[:, 0]]
            s.rank_input = [bool(v) for v in r[:, 1]]
            loss = float(np.mean(r[:, 0]))
        s.record(t, loss, gnorm, self._lr())
        s.set_gradients(layer_norm, layer_rms, layer_n > 0)
        if not math.isfinite(loss) and self._last_input is not None and s.rank_input is None:
            x = self._last_input
            s.input_nonfinite = bool(x.is_floating_point() and not torch.isfinite(x.detach()).all())
        elif s.rank_input is not None:
            s.input_nonfinite = any(s.rank_input)
        s.skipped = False
        if "scale" in vals:
            s.scale = float(vals["scale"][0])
            s.skipped = not (math.isfinite(gnorm) and np.isfinite(norms).all())
            gi = getattr(self.scaler, "_growth_interval", None)
            if gi is None and hasattr(self.scaler, "get_growth_interval"):
                gi = self.scaler.get_growth_interval()
            s.growth_interval = int(gi or 2000)

        rec: dict[str, Any] = {"type": "step", "step": t, "loss": loss, "grad_norm": gnorm}
        sample: dict[str, Any] = {}
        if self.detailed or sampled:
            rec["grad"] = [_r(v) if layer_n[i] > 0 else None for i, v in enumerate(layer_norm)]
        if "upd_d" in vals:
            d, w = vals["upd_d"], vals["upd_w"]
            wl = self._pl[self._weights]
            ud = np.sqrt(np.bincount(wl, weights=d * d, minlength=L))
            uw = np.sqrt(np.bincount(wl, weights=w * w, minlength=L))
            has_w = np.bincount(wl, minlength=L) > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(has_w, ud / uw, np.nan)
            sample["update"] = ratio
            sample["lr"] = self._lr()
            rec["update"] = [None if not has_w[i] else _r(v) for i, v in enumerate(ratio)]
            rec["lr"] = sample["lr"]
        if "acts" in extra:
            acts: dict[str, Any] = {}
            for site, kind, producer, units, full, is_out in extra["acts"]:
                v = vals[f"act:{site}"]
                a: dict[str, Any] = {"kind": kind, "producer": producer}
                if kind == "relu":
                    a.update(dead=float(v[0]), batch_dead=float(v[1]), units=units, full=full,
                             since=self._window_since[site][0])
                    if full and v[0] >= self.th.dead_fraction:
                        a["bias_mean"] = self._bias_mean(producer)
                else:
                    a["saturated"] = float(v[0])
                if is_out:
                    a["output"] = True
                acts[site] = a
            sample["act"] = acts
            rec["act"] = {k: {kk: vv for kk, vv in a.items() if kk not in ("since",)} for k, a in acts.items()}
        if "logits" in vals:
            lg = extra["logits"]
            v = vals["logits"]
            sample["logits"] = {"site": lg.site, "absmax": float(v[0]),
                                "gap": None if math.isnan(v[1]) else float(v[1]), "classes": lg.classes,
                                "dtype": lg.dtype}
            rec["logits"] = sample["logits"]
            if v[2] > 0:
                sample["probs_into_loss"] = extra.get("probs_site")
                rec["logits"]["probabilities"] = True
        if "layer_out" in vals:
            v = vals["layer_out"].reshape(-1, 3)
            rec["layer_out"] = {n: [_r(x) for x in v[i]] for i, n in enumerate(extra["layer_out"])}
        if "zeros" in vals:
            z, tn = vals["zeros"], vals["tiny"]
            nz = np.bincount(pl, weights=z, minlength=L)
            nt = np.bincount(pl, weights=tn, minlength=L)
            with np.errstate(divide="ignore", invalid="ignore"):
                zero_frac = np.where(layer_n > 0, nz / np.maximum(layer_n, 1), 0.0)
                tiny_frac = np.where(layer_n - nz > 0, nt / np.maximum(layer_n - nz, 1), 0.0)
            sample["underflow"] = {"zero": zero_frac, "tiny": tiny_frac}
            rec["underflow"] = {"zero": [_r(x) for x in zero_frac], "tiny": [_r(x) for x in tiny_frac]}
        if "scale" in vals:
            rec["scale"], rec["skipped"] = s.scale, s.skipped
        if s.rank_loss is not None:
            rec["ranks"] = s.rank_loss
        s.sample = sample or None
        if sample:
            s.samples.append(sample)

        new: list[Event] = []
        poisoned = not math.isfinite(loss) or (self.scaler is None and not math.isfinite(gnorm))
        for rule in self._rules:
            if poisoned and rule.kind not in _ON_NONFINITE:
                continue  # NaN/inf statistics say nothing about units, logits or the loss curve
            new += rule.check(s)
        if self.replay and not self._dist:
            for ev in new:
                if ev.kind in ("nonfinite_loss", "nonfinite_gradient"):
                    self._replay(ev)
                    break
        self._replay_inputs = None
        closed, s.closed = s.closed, []
        if self._log is not None:
            self._log.write(rec)
            for ev in new:
                self._log.write({"type": "finding", **ev.to_dict()})
            for ev in closed:
                self._log.write({"type": "closed", **ev.to_dict()})
        self.findings += new
        self._live.update(t, loss, gnorm, new)
        if self._plain:
            log = get_logger()
            for ev in new:
                log.log(level_of(ev), finding_line(ev))
        for ev in closed:
            if self._plain:
                get_logger().warning(closed_line(ev))
            elif self._live.enabled:
                self._live.console.print(closed_line(ev), style="green")
        if self._sinks is not None:
            self._to_sinks(t, rec, new + closed)
        return new

    def _to_sinks(self, t: int, rec: dict[str, Any], events: list[Event]) -> None:
        """This step's numbers (and findings) to the user's own loggers."""
        sinks = self._sinks
        assert sinks is not None
        vals: dict[str, Any] = {"loss": rec["loss"], "grad_norm": rec["grad_norm"]}
        if rec.get("lr") is not None:
            vals["lr"] = rec["lr"]
        if self.state.scale is not None:
            vals["loss_scale"] = self.state.scale
        for key in ("grad", "update"):
            if rec.get(key):
                name = "grad_norm" if key == "grad" else "update_ratio"
                vals.update({f"{name}/{layer}": v for layer, v in zip(self.layers, rec[key], strict=False)
                             if v is not None})
        vals["findings"] = sum(1 for e in self.findings if "recovered_at" not in e.stats)
        sinks.scalars(t, vals)
        for ev in events:
            sinks.text(t, ev, closed_line(ev) if "recovered_at" in ev.stats else finding_line(ev))

    def _replay(self, ev: Event) -> None:
        """Re-run the step that went non-finite under the sanitizer; name its first bad op in ``ev``."""
        from ..sanitize import detect

        fn = self.replay if callable(self.replay) else None
        inputs = self._replay_inputs
        if fn is None and inputs is None:
            ev.stats["replay"] = "no forward of the model was seen this step: nothing to replay"
            return
        grads = [p.grad for p in self._params]  # restored after: the replay must not change the step
        rng = torch.get_rng_state()
        self._replaying = True
        what = "forward, loss and backward" if fn is not None else "forward"
        try:
            with detect(action="record", quiet=True) as d:
                if fn is not None:
                    for p in self._params:
                        p.grad = None
                    out = fn()
                    if isinstance(out, torch.Tensor) and out.requires_grad and out.numel() == 1:
                        out.backward()
                else:
                    args, kwargs, state, amp = inputs  # type: ignore[misc]
                    torch.set_rng_state(state)
                    with torch.no_grad(), (torch.autocast(amp[0], dtype=amp[1]) if amp else contextlib.nullcontext()):
                        self.model(*args, **kwargs)
        except Exception as exc:  # the user's step failing again must not break training
            ev.stats["replay"] = f"the replay raised {type(exc).__name__}: {exc}"
            return
        finally:
            self._replaying = False
            torch.set_rng_state(rng)
            for p, g in zip(self._params, grads, strict=True):
                p.grad = g
        first = next((e for e in d.events if e.severity == "error"), None)
        if first is None:
            ev.stats["replay"] = (f"replayed the {what} under the sanitizer: every op was finite"
                                  + ("; the loss computation or the backward made it (pass replay=lambda: "
                                     "loss_fn(model(x), y) to replay them too)" if fn is None else ""))
            return
        where = f" in {first.module}" if first.module else ""
        at = f" at {first.location}" if first.file else ""
        ev.stats.update(first_op=first.op, first_kind=first.kind, first_module=first.module,
                        first_file=first.file, first_line=first.line, first_phase=first.phase,
                        replay=f"replayed the {what} under the sanitizer")
        ev.module = ev.module or first.module
        ev.message += f"; replayed under the sanitizer: the first bad op is {first.op}{where}{at} ({first.message})"
        if first.hint:
            ev.hint = f"{first.hint} ({ev.hint})" if ev.hint else first.hint

    def _lr(self) -> float | None:
        if self.optimizer is None:
            return None
        lrs = []
        for g in self.optimizer.param_groups:
            v = g.get("lr")
            if isinstance(v, torch.Tensor):
                v = float(v)
            if isinstance(v, int | float):
                lrs.append(float(v))
        return max(lrs) if lrs else None

    def _bias_mean(self, layer: str | None) -> float | None:
        if layer is None:
            return None
        entry = next((m for n, m in self._module_names.values() if (n or "<model>") == layer), None)
        b = getattr(entry, "bias", None)
        if isinstance(b, torch.Tensor) and b.numel():
            return float(b.detach().float().mean())
        return None

    # -- end ---------------------------------------------------------------------------------------
    def close(self) -> list[Event]:
        """Stop watching: remove the hooks, write the final evidence, close the log; returns the findings."""
        if self._closed:
            return self.findings
        self._closed = True
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        for h in self._handles:
            h.remove()
        self._handles = []
        self._snapshot = None
        if self._log is not None:
            self._log.write({"type": "end", "step": self._step - 1,
                             "findings": [e.to_dict() for e in self.findings]})
            self._log.close()
            self._log = None
        self._live.close()
        if self.rank == 0 and self.state.n:
            lines = summary_lines(self.findings, self.state.n, self._log_path)
            if self._plain:
                opened = any("recovered_at" not in e.stats for e in self.findings)
                get_logger().log(logging.WARNING if opened else logging.INFO, "\n".join(lines))
            elif self._live.enabled:
                self._live.console.print("\n".join(lines))
        return self.findings

    @property
    def steps(self) -> int:
        """Steps recorded in this session."""
        return self.state.n

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Monitor(layers={len(self.layers)}, step={self._step}, every={self.every}, "
                f"findings={[e.kind for e in self.findings]})")


def _r(v: float) -> float:
    """A float rounded to 5 significant digits for the log (NaN/inf kept)."""
    v = float(v)
    if not math.isfinite(v) or v == 0:
        return v
    return float(f"{v:.5g}")
