"""The device side of a step: its statistics packed into one vector, moved to the host at once.

Every number the monitor reads in a step is reduced on the device and appended to one
:class:`Packed` vector under a name; :meth:`Packed.unpack` makes the step's one transfer
(one synchronization) and hands the host a dict of named slices. :func:`pack_probe` adds
what the :class:`~floatguard.monitor.probe.Probe` saw during a sampled forward (activation
shares, logits, attention, layer outputs; all-reduced across ranks under torch.distributed).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .probe import Probe

if TYPE_CHECKING:
    from .core import Monitor

__all__ = ["Packed", "pack_probe"]


class Packed:
    """Named statistics of one step, on the device, in the statistics' dtype."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.parts: list[torch.Tensor] = []
        self.layout: list[tuple[str, int]] = []

    def add(self, name: str, t: torch.Tensor) -> None:
        """Append ``t`` (flattened) under ``name``."""
        self.parts.append(t.reshape(-1).to(self.device, self.dtype))
        self.layout.append((name, t.numel()))

    def unpack(self) -> dict[str, np.ndarray]:
        """Everything to the host in one transfer (the one synchronization of the step), by name."""
        vec = torch.cat(self.parts).cpu().numpy()
        vals: dict[str, np.ndarray] = {}
        pos = 0
        for name, n in self.layout:
            vals[name] = vec[pos:pos + n]
            pos += n
        return vals


def pack_probe(mon: Monitor, probe: Probe, packed: Packed) -> dict[str, Any]:
    """The probe's statistics into ``packed``; returns what the host needs to read them (names, sites).

    A ReLU site's dead share is over the last ``dead_window`` sampled batches (a unit is dead
    when it fired in none); the structural facts the probe saw (classes, a log of a softmax,
    the forward order of the layers) go into the rules' state.
    """
    dev = mon._dev
    acts: list[tuple[str, str, str | None, int | None, bool, bool]] = []
    for site, st in probe.sites.items():
        if st.kind == "relu" and st.alive is not None:
            alive = st.alive
            if mon._dist:
                a = alive.to(mon._comm_dev, torch.float32)
                torch.distributed.all_reduce(a, op=torch.distributed.ReduceOp.MAX)
                alive = (a > 0).to(alive.device)
            win = mon._windows.setdefault(site, deque(maxlen=mon.th.dead_window))
            since = mon._window_since.setdefault(site, deque(maxlen=mon.th.dead_window))
            if win and win[-1].shape != alive.shape:
                win.clear()
                since.clear()
            win.append(alive)
            since.append(mon._step)
            ever = win[0]
            for m in list(win)[1:]:
                ever = ever | m
            packed.add(f"act:{site}", torch.stack([1 - ever.to(mon._fdt).mean(), 1 - alive.to(mon._fdt).mean()]))
            acts.append((site, "relu", st.producer, int(alive.numel()), len(win) == win.maxlen, st.output))
        elif st.saturated is not None:
            sat = st.saturated.to(mon._fdt).reshape(1)
            if mon._dist:
                sat = sat.to(mon._comm_dev)
                torch.distributed.all_reduce(sat)
                sat = sat / mon.world_size
            packed.add(f"act:{site}", sat)
            acts.append((site, st.kind, st.producer, None, True, st.output))
    extra: dict[str, Any] = {"acts": acts}
    if probe.logits:
        lg = next((g for g in probe.logits if not g.site.split(":")[-1].startswith("softmax")), probe.logits[0])
        probs = next((g.site for g in probe.logits if g.from_softmax), None)
        gap = lg.gap if lg.gap is not None else torch.full((), math.nan, device=dev)  # made on the device: no copy
        flags = torch.stack([g.probs.to(dev) for g in probe.logits if "softmax" not in g.site.split(":")[-1]
                             or g.site.split(":")[-1].startswith("log_softmax")]
                            or [torch.zeros((), dtype=torch.bool, device=dev)])
        packed.add("logits", torch.stack([lg.absmax.to(mon._fdt).to(dev), gap.to(mon._fdt).to(dev),
                                         flags.any().to(mon._fdt).to(dev)]))
        if lg.logz is not None:
            packed.add("logz", lg.logz)
        extra["logits"] = lg
        extra["probs_site"] = probs or next((g.site for g in probe.logits), None)
        if mon._given_classes is None and lg.classes >= 2:
            mon.state.num_classes = lg.classes
    if probe.log_of_softmax:
        mon.state.evidence["log_of_softmax"] = probe.log_of_softmax
    if probe.attention:
        extra["attention"] = list(probe.attention)
        packed.add("attention", torch.cat([probe.attention[n].to(mon._fdt).to(dev) for n in extra["attention"]]))
    if probe.layer_out:
        names = list(probe.layer_out)
        packed.add("layer_out", torch.cat([probe.layer_out[n].to(mon._fdt).to(dev) for n in names]))
        extra["layer_out"] = names
    if probe.order and mon._probe_order is None:
        mon._probe_order = probe.order
        idx = {n: i for i, n in enumerate(mon.layers)}
        wl = set(mon.state.order)
        fwd = [idx[n] for n in probe.order if n in idx and idx[n] in wl]
        rest = [i for i in mon.state.order if i not in fwd]
        if fwd:
            mon.state.order = fwd + rest
    return extra
