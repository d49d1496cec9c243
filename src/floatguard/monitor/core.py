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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._torch_util import stored_values
from ..events import Event
from .config import MonitorConfig
from .live import LiveLine
from .log import LogWriter, last_step
from .output import Sinks, closed_line, finding_line, get_logger, level_of, summary_lines
from .pack import Packed, pack_probe
from .probe import Probe
from .record import AttentionStats, LayerMap, StepRecord, rounded
from .replay import replay
from .rules import FP16_TINY, RULES, Rule, State, Thresholds
from .transformer_rules import TRANSFORMER_RULES
from .transformer_stats import LOWP, adam_eps_counts, chunk_sample, rounded_away_counts
from .wrappers import unwrap_model, unwrap_optimizer

__all__ = ["Monitor"]

_SUBSET = 16384  # entries per weight tensor sampled for update ratios
_ON_NONFINITE = frozenset({"nonfinite_loss", "nonfinite_gradient", "fp16_overflow", "diverging_loss"})


def _stored(g: torch.Tensor) -> torch.Tensor:
    """The entries a gradient stores (a COO one coalesced, so that its norm is the dense gradient's)."""
    v = stored_values(g, coalesce=True)
    return g if v is None else v


class Monitor:
    """Watch a training run for silent failure; see the package docstring for the API.

    Args:
        model: the module being trained (DDP/DataParallel wrappers are unwrapped).
        optimizer: its optimizer; needed for update ratios (``update_ratio``). Wrappers
            (accelerate, Lightning) are unwrapped.
        config: the options as one :class:`~floatguard.monitor.config.MonitorConfig`; or
            pass them as keywords, each documented there: ``num_classes``, ``log``,
            ``detailed``, ``every``, ``scaler``, ``thresholds``, ``live``, ``rank``,
            ``tensorboard``, ``on_scalars``, ``replay`` (not both).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        config: MonitorConfig | None = None,
        num_classes: int | None = None,
        log: str | os.PathLike[str] | None = None,
        detailed: bool = False,
        every: int | None = None,
        scaler: Any = None,
        thresholds: Thresholds | None = None,
        live: bool | None = None,
        rank: int | None = None,
        tensorboard: Any = None,
        on_scalars: Callable[[dict[str, float]], Any] | None = None,
        replay: bool | Callable[[], Any] = False,
    ) -> None:
        options = MonitorConfig(num_classes=num_classes, log=log, detailed=detailed, every=every, scaler=scaler,
                                thresholds=thresholds, live=live, rank=rank, tensorboard=tensorboard,
                                on_scalars=on_scalars, replay=replay)
        if config is not None:
            if options != MonitorConfig():
                raise TypeError("Monitor: pass the options as config=MonitorConfig(...) or as keywords, not both")
            options = config
        self.config = options
        self.model = model
        self.optimizer = optimizer = unwrap_optimizer(optimizer)
        self.scaler = options.scaler
        self.detailed = options.detailed
        self.every = options.period
        self.th = options.thresholds or Thresholds()
        self.replay = options.replay
        self.findings: list[Event] = []
        self._root = unwrap_model(model)
        self._closed = False
        self._init_distributed(options.rank)
        self._init_layers()
        self._init_state(options.num_classes)
        self._open_log(options.log)
        self._live = LiveLine(options.live if self.rank == 0 else False)
        self._plain = self.rank == 0 and not self._live.enabled  # not a terminal: plain logging lines
        self._log_path = str(options.log) if options.log is not None else None
        self._sinks = Sinks(options.writers, [options.on_scalars] if options.on_scalars is not None else []) \
            if self.rank == 0 else None
        self._install_hooks()

    def _init_distributed(self, rank: int | None) -> None:
        dist = torch.distributed
        self._dist = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world_size = dist.get_world_size() if self._dist else 1
        self.rank = rank if rank is not None else (dist.get_rank() if self._dist else 0)
        self._comm_dev = torch.device("cpu")  # gloo; NCCL needs the tensors on the GPU

    def _init_layers(self) -> None:
        """The layers (modules with trainable parameters of their own) and their parameters, in module order."""
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
        self._pl = np.asarray(pl, dtype=np.int64)  # the layer of each parameter
        self._numel = np.asarray([p.numel() for p in params], dtype=float)
        self._weights = weights  # indices into params
        self._lowp_weights = [k for k, i in enumerate(weights) if params[i].dtype in LOWP]  # into self._weights
        self.layers = names
        self._map = LayerMap(len(names), self._pl, self._numel, weights, self._lowp_weights)
        self._dev = params[0].device if params else torch.device("cpu")
        self._fdt = torch.float32 if self._dev.type == "mps" else torch.float64  # the statistics' dtype
        if self._dist and torch.distributed.get_backend() == "nccl":
            self._comm_dev = self._dev

    def _init_state(self, num_classes: int | None) -> None:
        """The rules and the host-side :class:`State` they read."""
        names, params, pl = self.layers, self._params, [int(i) for i in self._pl]
        lowp = None
        if any(p.dtype == torch.float16 for p in params):
            lowp = "float16"
        elif any(p.dtype == torch.bfloat16 for p in params):
            lowp = "bfloat16"
        not_in_opt: list[str] = []
        if self.optimizer is not None:
            held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
            not_in_opt = sorted({names[pl[i]] for i, p in enumerate(params) if id(p) not in held},
                                key=names.index)
        self.state = State(names=names, numel=np.bincount(self._pl, weights=self._numel, minlength=len(names))
                           if names else np.zeros(0), order=sorted({pl[i] for i in self._weights}), th=self.th,
                           num_classes=num_classes, lowp=lowp, scaler=self.scaler is not None,
                           not_in_optimizer=not_in_opt)
        self.state.types = {(n or "<model>"): type(m).__name__ for n, m in self._root.named_modules()}
        self._given_classes = num_classes
        self._rules: list[Rule] = [cls() for cls in RULES + TRANSFORMER_RULES]

    def _open_log(self, log: str | os.PathLike[str] | None) -> None:
        """Open the JSONL log (rank 0) and number the steps: a resumed log continues its numbering."""
        self._first = 0
        self._log: LogWriter | None = None
        resumed = False
        if log is not None and self.rank == 0:
            prev = last_step(log)
            if prev is not None:
                self._first, resumed = prev + 1, True
        if self._dist:
            t = torch.tensor([self._first], dtype=torch.float64, device=self._comm_dev)
            torch.distributed.broadcast(t, 0)
            self._first = int(t.item())
        self._step = self._first
        if log is not None and self.rank == 0:
            names = self.layers
            self._log = LogWriter(log)
            self._log.write({"type": "start", "version": 1, "floatguard": __version__, "layers": names,
                             "layer_types": [self._layer_types[n] for n in names],
                             "numel": [int(x) for x in self.state.numel],
                             "mode": "detailed" if self.detailed else "default", "every": self.every,
                             "num_classes": self._given_classes, "world_size": self.world_size,
                             "first_step": self._first, "resumed": resumed, "thresholds": self.th.to_dict()})

    def _install_hooks(self) -> None:
        """Hooks on the root module's forward (inputs, autocast, probe) and the optimizer's step (update ratios)."""
        self._replaying = False
        self._replay_inputs: tuple[Any, ...] | None = None
        self._handles = [self._root.register_forward_pre_hook(self._fwd_pre, with_kwargs=True),
                         self._root.register_forward_hook(self._fwd_post)]
        if self.optimizer is not None:
            self._handles += [self.optimizer.register_step_pre_hook(self._opt_pre),
                              self.optimizer.register_step_post_hook(self._opt_post)]
        self._probe: Probe | None = None
        self._probe_order: list[str] | None = None
        self._last_input: torch.Tensor | None = None
        self._input_flag: torch.Tensor | None = None
        self._captured_loss: torch.Tensor | None = None
        self._snapshot: list[torch.Tensor] | None = None
        self._pending_update: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending_rounded: torch.Tensor | None = None
        self._want_snapshot = False
        self._windows: dict[str, deque[torch.Tensor]] = {}
        self._window_since: dict[str, deque[int]] = {}

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
        return [chunk_sample(self._params[i]) for i in self._weights]

    def _opt_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._want_snapshot and self._weights:
            self._snapshot = list(torch._foreach_mul(self._weight_list(), 1.0))
            self._want_snapshot = False

    def _opt_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._snapshot is None:
            return
        w = self._weight_list()
        diff = torch._foreach_sub(w, self._snapshot)
        if self._lowp_weights:  # bfloat16/float16 weights: the share of updates rounded away (transformer_stats)
            lw = [self._params[self._weights[k]] for k in self._lowp_weights]
            self._pending_rounded = rounded_away_counts(
                [self._snapshot[k] for k in self._lowp_weights], [w[k] for k in self._lowp_weights],
                [None if p.grad is None or p.grad.layout is not torch.strided else chunk_sample(p.grad) for p in lw])
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
        grads = [_stored(g) for i in present if (g := self._params[i].grad) is not None]
        packed = Packed(self._fdt, dev)
        packed.add("loss", lv)
        if grads:
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
            packed.add("norms", torch.stack([n.to(dev) for n in norms]))
        extra: dict[str, Any] = pack_probe(self, probe, packed) if probe is not None else {}
        if self._pending_update is not None:
            dn, wn = self._pending_update
            self._pending_update = None
            packed.add("upd_d", dn)
            packed.add("upd_w", wn)
        if sampled and grads and self.state.lowp == "float16":
            self._pack_underflow(grads, packed)
        if self._pending_rounded is not None:
            packed.add("rounded", self._pending_rounded)
            self._pending_rounded = None
        adam = None
        if sampled and self.optimizer is not None and self._weights:
            adam = adam_eps_counts([self._params[i] for i in self._weights], self.optimizer)
        if adam is not None:
            packed.add("adam", adam)
        if self.scaler is not None:
            sc = getattr(self.scaler, "_scale", None)
            packed.add("scale", sc.detach().reshape(-1)[:1] if isinstance(sc, torch.Tensor)
                       else torch.tensor([float(self.scaler.get_scale())], dtype=self._fdt, device=dev))
        if self._dist:
            flag = self._input_flag if self._input_flag is not None else torch.zeros((), dtype=torch.bool)
            mine = torch.stack([lv[0].to(self._comm_dev), flag.detach().to(self._comm_dev, lv.dtype)])
            everyone = [torch.zeros_like(mine) for _ in range(self.world_size)]
            torch.distributed.all_gather(everyone, mine)
            packed.add("ranks", torch.cat(everyone))
        vals = packed.unpack()  # the one synchronization of the step
        new = self._host(t, vals, present, grads, extra, sampled)
        self._want_snapshot = self.optimizer is not None and (self._sampling(t) or self.detailed)
        self._step += 1
        return new

    def _grads_unscaled(self) -> bool:
        """Whether the scaler already divided the gradients by its scale (``scaler.unscale_``)."""
        if self.scaler is None or self.optimizer is None:
            return False
        st = getattr(self.scaler, "_per_optimizer_states", {}).get(id(self.optimizer), {})
        return getattr(st.get("stage"), "name", "") == "UNSCALED"

    def _pack_underflow(self, grads: Sequence[torch.Tensor], packed: Packed) -> None:
        """float16: per gradient, the entries that are 0 and the nonzero ones below the smallest normal."""
        thr = FP16_TINY
        if self._grads_unscaled():  # compare in the loss-scaled domain, where float16 computed them
            thr = FP16_TINY / max(float(self.scaler.get_scale()), 1e-30)
        packed.add("zeros", torch.stack([(g == 0).sum() for g in grads]).to(self._fdt))
        packed.add("tiny", torch.stack([((g != 0) & (g.abs() < thr)).sum() for g in grads]).to(self._fdt))

    # -- host side -------------------------------------------------------------------------------
    def _host(self, t: int, vals: dict[str, np.ndarray], present: list[int], grads: list[torch.Tensor],
              extra: dict[str, Any], sampled: bool) -> list[Event]:
        """The step on the host: aggregate the vector into a record, update the rules' state, check, report."""
        rec = self._aggregate(t, vals, present, grads, extra, sampled)
        self._update_state(rec)
        new, closed = self._check(rec)
        self._emit(rec, new, closed)
        return new

    # -- aggregation: per parameter -> per layer, into a StepRecord
    def _aggregate(self, t: int, vals: dict[str, np.ndarray], present: list[int], grads: list[torch.Tensor],
                   extra: dict[str, Any], sampled: bool) -> StepRecord:
        rec = self._gradients(t, vals, present, grads, logged=self.detailed or sampled)
        if "upd_d" in vals:
            rec.update, rec.has_weights = self._map.update_ratios(vals["upd_d"], vals["upd_w"])
        if "acts" in extra:
            rec.acts = self._activations(vals, extra["acts"])
        if "logits" in vals:
            lg, v = extra["logits"], vals["logits"]
            rec.logits = {"site": lg.site, "absmax": float(v[0]), "gap": None if math.isnan(v[1]) else float(v[1]),
                          "classes": lg.classes, "dtype": lg.dtype}
            if v[2] > 0:
                rec.logits["probabilities"] = True
                rec.probs_into_loss = extra.get("probs_site")
        if "layer_out" in vals:
            v = vals["layer_out"].reshape(-1, 3)
            rec.layer_out = {n: [rounded(x) for x in v[i]] for i, n in enumerate(extra["layer_out"])}
        if "zeros" in vals:
            rec.underflow = self._map.underflow(vals["zeros"], vals["tiny"], present, rec.layer_n)
        self._transformer_stats(rec, vals, extra)
        return rec

    def _gradients(self, t: int, vals: dict[str, np.ndarray], present: list[int], grads: list[torch.Tensor], *,
                   logged: bool) -> StepRecord:
        """The loss, and the gradient norms per layer (true norms: unscaled, float32 overflow redone)."""
        loss = float(vals["loss"][0])
        norms = vals.get("norms", np.zeros(0)).copy()
        if norms.size and np.isinf(norms).any():  # float32 norm overflow of finite gradients: redo in float64
            for k in np.flatnonzero(np.isinf(norms)):
                norms[k] = float(torch.linalg.vector_norm(grads[k].detach(), dtype=torch.float64))
        if "scale" in vals and norms.size and not self._grads_unscaled():
            norms = norms / max(float(vals["scale"][0]), 1e-30)  # the rules judge the true gradient
        layer_norm, layer_rms, layer_n, gnorm = self._map.gradients(norms, present)
        ranks = rank_input = None
        if self._dist and "ranks" in vals:
            r = vals["ranks"].reshape(self.world_size, 2)
            ranks, rank_input = [float(v) for v in r[:, 0]], [bool(v) for v in r[:, 1]]
            loss = float(np.mean(r[:, 0]))
        rec = StepRecord(step=t, loss=loss, grad_norm=gnorm, layer_norm=layer_norm, layer_rms=layer_rms,
                         layer_n=layer_n, norms=norms, lr=self._lr(), grads_logged=logged, ranks=ranks,
                         rank_input=rank_input)
        if "scale" in vals:
            rec.scale = float(vals["scale"][0])
            rec.skipped = not (math.isfinite(gnorm) and np.isfinite(norms).all())
        return rec

    def _activations(self, vals: dict[str, np.ndarray], acts: list[tuple[str, str, str | None, int | None, bool, bool]]
                     ) -> dict[str, dict[str, Any]]:
        """Per call site: dead ReLU shares (over the window and this batch) or the saturated share."""
        out: dict[str, dict[str, Any]] = {}
        for site, kind, producer, units, full, is_out in acts:
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
            out[site] = a
        return out

    def _transformer_stats(self, rec: StepRecord, vals: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        """The transformer statistics (:mod:`.transformer_stats`) into the record."""
        if "attention" in vals:
            v = vals["attention"].reshape(-1, 3)
            rec.attention = {n: AttentionStats(float(v[i, 0]), float(v[i, 1]), int(v[i, 2]))
                             for i, n in enumerate(extra["attention"])}
        if "logz" in vals:
            rec.logz = (float(vals["logz"][0]), float(vals["logz"][1]), extra["logits"].site)
        if "rounded" in vals:
            rec.rounded = self._map.rounded(vals["rounded"])
        if "adam" in vals:
            eps = [float(g["eps"]) for g in self.optimizer.param_groups if "eps" in g] if self.optimizer else []
            rec.adam = self._map.adam(vals["adam"], max(eps) if eps else None)

    # -- the rules' state, the rules, and the step's report
    def _update_state(self, rec: StepRecord) -> None:
        """The step into the history the rules read (:class:`State`)."""
        s = self.state
        if rec.ranks is not None:
            s.rank_loss, s.rank_input = rec.ranks, rec.rank_input
        s.record(rec.step, rec.loss, rec.grad_norm, rec.lr)
        s.set_gradients(rec.layer_norm, rec.layer_rms, rec.layer_n > 0)
        if not math.isfinite(rec.loss) and self._last_input is not None and s.rank_input is None:
            x = self._last_input
            s.input_nonfinite = bool(x.is_floating_point() and not torch.isfinite(x.detach()).all())
        elif s.rank_input is not None:
            s.input_nonfinite = any(s.rank_input)
        s.skipped = rec.skipped
        if rec.scale is not None:
            s.scale = rec.scale
            gi = getattr(self.scaler, "_growth_interval", None)
            if gi is None and hasattr(self.scaler, "get_growth_interval"):
                gi = self.scaler.get_growth_interval()
            s.growth_interval = int(gi or 2000)
        rec.ranks = s.rank_loss
        sample = rec.sample()
        s.sample = sample or None
        if sample:
            s.samples.append(sample)

    def _check(self, rec: StepRecord) -> tuple[list[Event], list[Event]]:
        """Run the rules: the new findings (a non-finite one replayed when asked), and those closed this step."""
        s = self.state
        new: list[Event] = []
        poisoned = not math.isfinite(rec.loss) or (self.scaler is None and not math.isfinite(rec.grad_norm))
        for rule in self._rules:
            if poisoned and rule.kind not in _ON_NONFINITE:
                continue  # NaN/inf statistics say nothing about units, logits or the loss curve
            new += rule.check(s)
        if self.replay and not self._dist:
            for i, ev in enumerate(new):
                if ev.kind in ("nonfinite_loss", "nonfinite_gradient"):
                    new[i] = replay(self, ev)
                    s.findings.update({k: new[i] for k, v in s.findings.items() if v is ev})
                    break
        self._replay_inputs = None
        closed, s.closed = s.closed, []
        self.findings = list(s.findings.values())  # the rules' latest events (counts, closes), in order of finding
        return new, closed

    def _emit(self, rec: StepRecord, new: list[Event], closed: list[Event]) -> None:
        """The step and its findings to the log, the live line or the ``logging`` logger, and the user's sinks."""
        t = rec.step
        line = rec.log_record()
        if self._log is not None:
            self._log.write(line)
            for ev in new:
                self._log.write({"type": "finding", **ev.to_dict()})
            for ev in closed:
                self._log.write({"type": "closed", **ev.to_dict()})
        self._live.update(t, rec.loss, rec.grad_norm, new)
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
            self._sinks.step(t, line, new + closed, self.layers, self.state.scale,
                             sum(1 for e in self.findings if "recovered_at" not in e.stats))

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
