"""Module-boundary checks: torch's own modules run unobserved and are checked at their outputs.

The op-level mode costs one Python call per aten op (~15 us on a CPU, the op itself
often less). Inside a module made only of torch's own modules (``nn.Linear``,
``nn.TransformerEncoder``, a ``nn.Sequential`` of them) every op has the same module
path and the same user line — the line that called the module — so the mode steps off
the dispatch stack for the module's forward, and the module's outputs get the op-level
check once (a min/max, or a sum of squares). When an output is suspect (NaN, inf,
within ``near_overflow`` of the dtype's max, or all zeros) the module's forward is run
again under the mode, with the RNG state it started from (dropout draws the same
mask), which names the first bad op as an op-level run would; the replay's result is
discarded and the RNG stream continues where the first run left it. The autograd nodes
made inside are mapped to the module and line (their backward ops are checked by the
mode as before, and named after the node).

Not checked this way (run op by op as before): a leaf module alone (``nn.Linear`` is one
or two ops: cheaper op by op), the forward of any module holding a user-defined
submodule, batch norm in training (its running statistics would update twice in a
replay), modules whose outputs are probabilities a later log may take (``nn.Softmax``,
``nn.Sigmoid``, ``nn.MultiheadAttention`` called directly: their scattered underflow is
judged op by op), tensors off the CPU (the deferred path) and anything under
``detect(exact=True)``.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

import torch

from ..events import Event
from ._hints import hint_for
from ._tensor_stats import dtype_name, flatten, tensor_stats
from ._torch_shims import current_dispatch_mode, current_node, saved_tensors_hooks, seq_nr

if TYPE_CHECKING:
    from ._module_tracker import ModuleTracker
    from ._op_sanitizer import OpSanitizer

__all__ = ["ModuleChecks"]

_Tensor = torch.Tensor
_strided = torch.strided
_nn = torch.nn
# region roots whose outputs a later log or division may take with scattered underflowed zeros
_NOT_ROOT = (_nn.Softmax, _nn.Softmin, _nn.Softmax2d, _nn.Sigmoid, _nn.MultiheadAttention, _nn.LogSigmoid)
_BATCH_NORM = _nn.modules.batchnorm._BatchNorm


def _random(m: torch.nn.Module) -> bool:
    """Does ``m`` draw random numbers in training (dropout and its kin)?"""
    return isinstance(m, (_nn.modules.dropout._DropoutNd, _nn.RReLU)) or bool(
        isinstance(getattr(m, "dropout", None), float) and m.dropout)


class _Region:
    """A module whose forward runs unobserved: what a replay of it needs."""

    __slots__ = ("module", "rng", "starts", "versions")

    def __init__(self, module: torch.nn.Module, args: Any, rng: Any) -> None:
        self.module = module
        self.rng = rng
        self.starts: list[int] = []  # the autograd sequence number at each open module's entry
        self.versions = [(a, a._version) for a in args if type(a) is _Tensor and not a.is_inference()]


class ModuleChecks:
    """Steps the mode aside inside torch's own modules and checks them at their outputs (see the module doc)."""

    def __init__(self, mode: OpSanitizer, modules: ModuleTracker) -> None:
        self.mode = mode
        self.modules = modules
        self._tls = threading.local()
        self._plan: weakref.WeakKeyDictionary[torch.nn.Module, tuple[bool, bool, bool]] = \
            weakref.WeakKeyDictionary()  # module -> (training, eligible, draws random numbers)
        self.replays = 0

    def install(self) -> None:
        self.modules.on_enter.append(self.enter)
        self.modules.on_exit.append(self.leave)

    def uninstall(self) -> None:
        if self.enter in self.modules.on_enter:
            self.modules.on_enter.remove(self.enter)
        if self.leave in self.modules.on_exit:
            self.modules.on_exit.remove(self.leave)

    def _region(self) -> _Region | None:
        return getattr(self._tls, "region", None)

    def _eligible(self, module: torch.nn.Module) -> tuple[bool, bool]:
        plan = self._plan.get(module)
        if plan is None or plan[0] != module.training:
            subs = list(module.modules())
            # a leaf (nn.Linear alone: one or two ops) costs less op by op than through a boundary check
            ok = len(subs) > 1 and not isinstance(module, _NOT_ROOT) and all(
                type(m).__module__.startswith("torch.nn.") and not (
                    isinstance(m, _BATCH_NORM) and m.training and m.track_running_stats) for m in subs)
            plan = (module.training, ok, ok and module.training and any(_random(m) for m in subs))
            self._plan[module] = plan
        return plan[1], plan[2]

    # -- the hooks ----------------------------------------------------------------------------------
    def enter(self, module: torch.nn.Module, args: Any) -> None:
        region = self._region()
        if region is not None:  # a module inside the region: only its autograd nodes are mapped
            region.starts.append(seq_nr())
            return
        mode = self.mode
        if mode.paused or mode.replaying or mode.defer_all or not args or current_dispatch_mode() is not mode:
            return  # (not on top of this thread's dispatch stack: another thread, or a mode above ours)
        a0 = args[0]
        if type(a0) is not _Tensor or not a0.is_cpu or current_node() is not None:
            return  # off the CPU (deferred path), or a forward recomputed in backward (checkpoint)
        ok, rnd = self._eligible(module)
        if not ok:
            return
        if mode.backward_checks is not None and saved_tensors_hooks(False) is not None:
            mode.backward_checks.saved_hooks_seen = True  # checkpointing: its backward is checked op by op
        region = _Region(module, args, torch.get_rng_state() if rnd else None)
        region.starts.append(seq_nr())
        self._tls.region = region
        mode.pause()

    def leave(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        region = self._region()
        if region is None:
            return
        start = region.starts.pop()
        end = seq_nr()
        if end != start:  # the nodes made inside this module (inner modules filled theirs first)
            fwd = self.mode._fwd
            loc = self.modules.locs[-1] if self.modules.locs else None
            info = (None, self.modules.current, *(loc if loc is not None else (None, None)))
            for nr in range(start, end):
                if nr not in fwd:
                    fwd[nr] = info
            if len(fwd) > 200_000:  # bounded as the mode bounds it (oldest first)
                for k in list(fwd)[:100_000]:
                    del fwd[k]
        if region.starts:
            return
        self._tls.region = None
        self.mode._last_nr = end
        self.mode.resume()
        if output is None:  # the forward raised
            return
        with self.mode.off():  # these checks are floatguard's own ops
            bad = self._suspect(output)
        if bad is not None:
            self._replay(region, args, kwargs, bad)

    # -- the check at the boundary --------------------------------------------------------------------
    def _suspect(self, output: Any) -> Any:
        """The first output tensor that the op-level check would look at more closely (None: all fine)."""
        mode = self.mode
        for t in flatten(output):
            if not (t.is_floating_point() and t.layout is _strided) or t.numel() == 0:
                continue
            thr = mode._thr.get(t.dtype)
            if thr is None:  # float8: judged op by op at the replay
                return t
            with torch.no_grad():
                a, b = torch.aminmax(t.detach())
                lo, hi = a.item(), b.item()
            if not (-thr <= lo and hi <= thr) or (mode.underflow and lo == hi == 0.0):
                return t
        return None

    def _replay(self, region: _Region, args: Any, kwargs: dict[str, Any], bad: Any) -> None:
        """Run the module's forward again under the mode; it names the op (else: a finding at the boundary)."""
        mode, session = self.mode, self.mode.session
        before = len(session.report.events)
        if all(a._version == v for a, v in region.versions):
            self.replays += 1
            rng_now = torch.get_rng_state() if region.rng is not None else None
            if region.rng is not None:
                torch.set_rng_state(region.rng)
            mode.replaying += 1
            try:
                region.module.forward(*args, **kwargs)
            finally:
                mode.replaying -= 1
                if rng_now is not None:
                    torch.set_rng_state(rng_now)
        if len(session.report.events) > before or session.has_error:
            return  # named by the replay
        with torch.no_grad():
            fin = bool(torch.isfinite(bad).all())
        if fin:
            return  # near the max or all zeros, and the op-level check found nothing wrong
        kind = "nan" if bool(torch.isnan(bad).any()) else "overflow"
        file, line = self.modules.location()
        name = self.modules.resolve(self.modules.current)
        ev = Event(kind=kind, source="sanitize", phase="forward", op=type(region.module).__name__,
                   module=name, file=file, line=line, dtype=dtype_name(bad.dtype), shape=tuple(bad.shape),
                   stats=tensor_stats(bad, "output"),
                   message=f"{type(region.module).__name__} produced {'NaN' if kind == 'nan' else 'inf'} "
                   "(checked at its output; an op-level replay could not name the op: its input was "
                   "changed in place, or it is nondeterministic)",
                   hint=hint_for(kind, None, dtype_name(bad.dtype)) + " Run under floatguard.detect(exact=True) "
                   "to check every op as it runs.")
        session.emit(ev)
