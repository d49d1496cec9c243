"""The PyTorch op-level sanitizer: a ``TorchDispatchMode`` that checks every op's output.

Design (what keeps it cheaper than ``torch.autograd.detect_anomaly``):

* One fused reduction per float output: ``torch.aminmax`` (a single vectorised pass,
  NaN-propagating) read back as two Python floats; for large contiguous float32/float64
  outputs whose zeros need no judgment, the sum of squares (one BLAS ``dot``, ~1.25x
  faster), which is finite only when no entry is NaN, inf or near the overflow threshold.
  Everything else — input scans, statistics, the user's frame — runs only when that check fails.
* Ops that cannot create a non-finite value from finite inputs (views, copies,
  gathers, factories, ``relu``, ``max``...) are not checked at all; a NaN they pass on
  is caught at the op that made it.
* Backward ops are mapped to their forward op through the autograd sequence number:
  at forward time the mode stores ``(op, module, file, line)`` under the number of the
  node the op created (a dict insert, plus a cached frame walk); in backward,
  ``torch._C._current_autograd_node()`` names the node — no stack is formatted.
* The module path comes from global module pre/post hooks keeping a stack of names.
* Optimizer steps run unchecked op by op; the parameters and optimizer state are
  checked once after each ``step()`` with one reduction pass (see :func:`first_bad`).
* Off the CPU the (min, max) pairs stay on the device (one ``aminmax`` launch per op)
  and are read once per step: at the end of the backward, or of the forward when no
  backward follows (and earlier past 256 ops or 256 MiB of held tensors, and at exit).
  No host synchronisation per op.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..events import Event, Severity
from ._core import NumericalError, Session
from ._deferred import DeferredChecks, hold
from ._hints import hint_for
from ._module_tracker import ModuleTracker
from ._op_table import CAST, LOGLIKE, SKIP, UF_NONNEG, UF_PROD, Policy, flat_tensors
from ._tensor_stats import (
    COMPLEX,
    FLOAT8,
    absmax,
    dtype_name,
    flatten,
    has_zero,
    is_float,
    nonfinite,
    taint,
    tensor_stats,
)
from ._torch_shims import (
    current_dispatch_mode,
    current_node,
    is_compiling,
    node_op,
    pop_mode,
    push_mode,
    saved_tensors_hooks,
    seq_nr,
)
from ._underflow import UnderflowChecks, _Candidate

if TYPE_CHECKING:
    from ._backward_checks import BackwardChecks

__all__ = ["OpSanitizer"]

_is_compiling = is_compiling
_saved_hooks = saved_tensors_hooks
_Tensor = torch.Tensor
_strided = torch.strided
_INF = math.inf
_dot = torch.dot
_DOT_MIN = 16384  # below this size aminmax is as fast (the view and the BLAS call cost a fixed ~1 us)


class OpSanitizer(DeferredChecks, UnderflowChecks, TorchDispatchMode):
    """Check every op's float outputs; report through ``session``."""

    # torch.compile and this mode, through TorchDispatchMode's own switches: ``ignore_compile_internals``
    # lets torch.compile compile with the mode on the stack (otherwise dynamo falls back to eager for
    # every compiled function called under detect(), changing the numerics it was asked to watch).
    # TorchDispatchMode's default wraps ``__torch_dispatch__`` in ``torch.compiler.disable``; that wrapper
    # costs ~4 us per op (a quarter of the mode's crossing), so it is turned off (``_should_skip_dynamo``)
    # and ``__torch_dispatch__`` keeps dynamo out itself: while dynamo traces, it only calls the op
    # (``is_compiling()``). While a compiled region runs the mode also steps off the stack (``pause``:
    # compiled modules through the module hooks, functions compiled under detect() through the
    # torch.compile wrapper): the region is checked at its outputs, its kernels run unobserved.

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self, session: Session, modules: ModuleTracker, *, near_overflow: float | None = 16.0,
                 underflow: bool = True, defer: bool | None = None, flush_every: int = 256,
                 hold_bytes: int = 256 << 20) -> None:
        super().__init__()
        self.session = session
        self.modules = modules
        self.underflow = underflow
        self.near = near_overflow
        self._pol: dict[Any, Policy] = {}
        self._thr: dict[torch.dtype, float] = {}
        self._fwd: dict[int, tuple[str | None, str | None, str | None, int | None]] = {}
        self._last_nr = seq_nr()
        self._cands: dict[int, _Candidate] = {}
        self._bad: dict[int, weakref.ref[Any]] = {}
        self.paused = 0
        self.replaying = 0  # inside a module-boundary replay (see _module_checks)
        self.backward_checks: BackwardChecks | None = None  # set: backward runs off the stack (_backward_checks)
        self.in_backward = False  # a backward run by BackwardChecks is under way (the mode is off the stack)
        self._popped = False
        self.scaled = False  # inside a GradScaler-scaled backward: findings are warnings
        self.scaled_reported = False
        self.defer_all = bool(defer)
        self.flush_every = flush_every
        self._pending: list[tuple[Any, ...]] = []
        self._pending_uf = False  # a deferred op that may underflow waits for the flush
        self._held_bytes = 0
        self.hold_bytes = hold_bytes
        self._bw_callback = False
        self.checked = 0
        self._internal_errors = 0
        self.compiled_seen = False
        self._init_thresholds()

    # -- pausing: optimizer steps run without the mode ---------------------------------------------
    def pause(self) -> None:
        """Take the mode off the dispatch stack (if it is on top), else just stop checking."""
        self.paused += 1
        if self.paused == 1 and current_dispatch_mode() is self:
            pop_mode()
            self._popped = True

    def resume(self) -> None:
        self.paused = max(0, self.paused - 1)
        if self.paused == 0 and self._popped:
            self._popped = False
            push_mode(self)

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        """floatguard's own tensor work (flushes, step checks) is never checked."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def reinstate(self) -> None:
        """After an exception skipped :meth:`resume`: put the mode back (called when a model is entered)."""
        if (self._popped or self.paused) and not self.in_backward:
            self.paused = 1
            self.resume()

    # -- thresholds -------------------------------------------------------------------------
    def _threshold(self, dt: torch.dtype) -> float:
        thr = self._thr.get(dt)
        if thr is None:
            mx = float(torch.finfo(dt).max)
            thr = mx / self.near if self.near else mx
            if dt not in COMPLEX and dt not in FLOAT8:  # _thr holds the dtypes of the fast path only
                self._thr[dt] = thr
        return thr

    def _init_thresholds(self) -> None:
        for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):  # complex, float8: _check_other
            self._threshold(dt)
        # dtypes whose sum-of-squares check is exact for the thresholds: a finite sum bounds |x| by about
        # sqrt(finfo.max), which must lie below the near-overflow threshold (float16's does not)
        self._dot_ok = frozenset(dt for dt in (torch.float32, torch.float64)
                                 if math.sqrt(float(torch.finfo(dt).max)) * 1.01 < self._threshold(dt))

    # -- the hot path ---------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if _is_compiling():  # dynamo tracing through the mode: stay out of the graph
            return func(*args, **kwargs) if kwargs else func(*args)
        out = func(*args, **kwargs) if kwargs else func(*args)
        if self.paused:
            return out
        pol = self._pol.get(id(func))
        if pol is None:
            pol = self._pol[id(func)] = Policy(func)
        nr = seq_nr()
        if nr != self._last_nr:  # this op created an autograd node: remember where (for backward)
            self._last_nr = nr
            fwd = self._fwd
            fwd[nr - 1] = (pol.name, *self.modules.here())
            if _saved_hooks(False) is not None and self.backward_checks is not None:
                self.backward_checks.saved_hooks_seen = True  # checkpointing: its backward is checked op by op
            if len(fwd) > 200_000:
                for k in list(fwd)[:100_000]:
                    del fwd[k]
        if pol.check == SKIP:
            if self._cands:
                self._carry(args, out)
            if self._pending_uf and not pol.is_view:  # deferred: a copy of a possible underflow, in order
                sizes: list[int] = []
                self._pending.append((None, func, pol, hold(out, sizes), None, None, hold(args, sizes), None,
                                      None))
                self._held_bytes += sum(sizes)
            return out
        if isinstance(out, _Tensor):
            self._check(func, pol, out, args, kwargs)
        elif isinstance(out, (tuple, list)):
            for t in out:
                if isinstance(t, _Tensor):
                    self._check(func, pol, t, args, kwargs)
        return out

    def _check(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any) -> None:
        thr = self._thr.get(t.dtype)
        if thr is None or t.layout is not _strided:  # not a real float tensor
            if t.layout is _strided and (t.dtype in COMPLEX or t.dtype in FLOAT8) and t.numel():
                self._guarded(self._check_other, pol, func, pol, t, args, kwargs)
            return
        n = t.numel()
        if n == 0:
            return
        if pol.check == CAST and not self._narrowing(pol, t, args):
            return
        if self.defer_all or not t.is_cpu:
            self._defer(func, pol, t, args, kwargs)
            return
        self.checked += 1
        if n == 1:
            lo = hi = t.item()
        elif n >= _DOT_MIN and pol.dot and t.dtype in self._dot_ok and not self._cands and t.is_contiguous():
            # s = fl(sum x_i^2), one BLAS pass (~1.25x faster than aminmax on large tensors). A NaN or an inf
            # makes s NaN or inf; a finite s bounds every |x_i| by ~sqrt(finfo.max) (1.8e19 in float32), far
            # below any threshold; s == 0 (all zeros, or all below ~1e-23) falls through to the exact check.
            flat = t.view(-1)
            s = _dot(flat, flat).item()
            if 0.0 < s < _INF or (s == 0.0 and not (pol.uf and self.underflow)):
                return
            a, b = torch.aminmax(t)
            lo = a.item()
            hi = b.item()
        else:
            a, b = torch.aminmax(t)
            lo = a.item()
            hi = b.item()
        if -thr <= lo and hi <= thr:
            uf = pol.uf
            if uf and lo <= 0.0 <= hi and self.underflow and (uf in (UF_NONNEG, UF_PROD) or lo == hi == 0.0):
                self._guarded(self._underflow, pol, func, pol, t, args, kwargs)
            if self._cands and pol.reduction and lo <= 0.0 <= hi:
                self._guarded(self._every_term, pol, func, pol, t, args)
            return
        self._guarded(self._slow, pol, func, pol, t, args, kwargs, lo, hi)

    def _check_other(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any) -> None:
        """Complex outputs (through their real view) and float8 outputs (casts: through their source)."""
        if t.dtype in COMPLEX:
            tag, probe = "complex", torch.view_as_real(t.resolve_conj() if t.is_conj() else t)
        else:
            tag, probe = "fp8", t
            if pol.check == CAST:  # float8_e4m3fn saturates: the values before the cast are the evidence
                src = args[1] if pol.base == "copy_" and len(args) > 1 else args[0] if args else None
                if isinstance(src, _Tensor) and src.is_floating_point() and src.dtype not in FLOAT8:
                    tag, probe = "fp8_cast", src
            if probe.dtype in FLOAT8:
                probe = probe.float()
        if self.defer_all or not t.is_cpu:
            self._defer(func, pol, t, args, kwargs, probe=probe, tag=tag)
            return
        self.checked += 1
        with torch.no_grad():
            a, b = torch.aminmax(probe.detach())
        self._judge_other(func, pol, t, args, kwargs, a.item(), b.item(), tag)

    def _judge_other(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any, lo: float, hi: float,
                     tag: str, where: tuple[Any, ...] | None = None) -> None:
        if tag != "fp8_cast":  # complex, or a float8 op that is not a cast: the usual rules on the values
            thr = self._threshold(t.dtype)
            if not (-thr <= lo and hi <= thr):
                self._slow(func, pol, t, args, kwargs, lo, hi, where=where)
            return
        if lo != lo or hi != hi or math.isinf(lo) or math.isinf(hi):
            return  # a NaN/inf source: reported at the op that made it
        fi = torch.finfo(t.dtype)
        mx, amax, dtype = float(fi.max), max(-lo, hi), dtype_name(t.dtype)
        if amax > mx:
            if bool(torch.isinf(t.float()).any()):
                what = "they became inf"
            elif bool(torch.isnan(t.float()).any()):
                what = f"they became NaN ({dtype} has no inf)"
            else:
                what = f"they were clamped to ±{mx:g} ({dtype} saturates: no inf, no error)"
            ev = self._event("overflow", f"{pol.name} cast values up to {amax:.4g} to {dtype} (max {mx:g}): {what}",
                             pol, t, args, kwargs, where=where)
            self.session.emit(ev)
        elif self.near is not None and amax > mx / self.near:
            ev = self._event("near_overflow", f"{pol.name} cast values up to {amax:.4g} to {dtype}, within "
                             f"{mx / amax:.3g}x of its max {mx:g}", pol, t, args, kwargs, severity="warning",
                             where=where)
            self.session.emit(ev, dedupe=True)
        elif self.underflow and amax > 0.0 and not bool(t.float().any()):
            ev = self._event("underflow", f"{pol.name} flushed every value to exactly 0 (the largest, {amax:.4g}, "
                             f"is below half of {dtype}'s smallest subnormal)", pol, t, args, kwargs, where=where)
            self.session.emit(ev)

    def _guarded(self, fn: Any, pol: Policy, *args: Any) -> None:
        """Run a slow-path analysis; a bug in it is reported once, never raised into the user's program."""
        try:
            fn(*args)
        except NumericalError:
            raise
        except Exception as exc:  # pragma: no cover - defensive
            if not self._internal_errors:
                warnings.warn(f"floatguard: could not analyse the output of {pol.name} ({type(exc).__name__}: "
                              f"{exc}); the sanitizer goes on without this check", RuntimeWarning, stacklevel=2)
            self._internal_errors += 1

    def _narrowing(self, pol: Policy, t: Any, args: Any) -> bool:
        src = args[1] if pol.base == "copy_" and len(args) > 1 else args[0] if args else None
        if not isinstance(src, _Tensor):
            return True
        if src.dtype == t.dtype:
            return False
        if not src.is_floating_point():
            return t.dtype == torch.float16
        a, b = torch.finfo(src.dtype), torch.finfo(t.dtype)
        return b.max < a.max or b.smallest_normal > a.smallest_normal

    # -- compiled regions: checked at their outputs ------------------------------------------------
    def check_compiled(self, name: str, inputs: Any, outputs: Any) -> None:
        """Check the tensors a ``torch.compile``'d region returned (its ops are invisible to the mode)."""
        self.compiled_seen = True
        with self.off():
            self._check_compiled(name, inputs, outputs)

    def _check_compiled(self, name: str, inputs: Any, outputs: Any) -> None:
        outs = flatten(outputs)
        bad = [t for t in outs if isinstance(t, _Tensor) and t.is_floating_point() and t.numel()
               and t.layout is _strided and not bool(torch.isfinite(t.detach()).all())]
        if not bad:
            return
        t = bad[0].detach()
        ins = [a.detach() for a in flatten(inputs) if isinstance(a, _Tensor) and a.is_floating_point()]
        in_bad = any(not bool(torch.isfinite(a).all()) for a in ins if a.numel())
        has_nan = bool(torch.isnan(t).any())
        kind = "nan" if has_nan else "overflow"
        if in_bad and not self.session.has_error:
            if not has_nan:
                return  # an inf passed along (a mask)
            msg, origin = f"{name} received NaN in its inputs", "propagated"
        elif in_bad or self.session.has_error:
            return  # already reported (an eager-run op inside the region — backend="eager" — or before it)
        else:
            msg, origin = (f"{name} (a torch.compile'd region, checked at its outputs) produced "
                           f"{'NaN' if has_nan else 'inf'} from finite inputs"), "produced"
        file, line = self.modules.location()
        stats = tensor_stats(t, "output")
        for i, a in enumerate(ins[:4]):
            stats.update(tensor_stats(a, f"input{i}"))
        ev = Event(kind=kind, source="sanitize", message=msg, op=name, phase="forward",
                   module=self.modules.resolve(self.modules.current),
                   file=file, line=line, dtype=dtype_name(t.dtype), shape=tuple(t.shape), stats=stats, origin=origin,
                   hint=hint_for(kind, None, dtype_name(t.dtype)) + " To name the op inside the compiled region, "
                   "run it without torch.compile under floatguard.detect().")
        self.session.emit(ev)

    # -- what failed -----------------------------------------------------------------------------
    def _where(self) -> tuple[str, str | None, str | None, str | None, int | None]:
        """(phase, forward_op, module, file, line) of the op being run."""
        node = current_node()
        if node is not None:
            info = self._fwd.get(node._sequence_nr())
            if info is None:
                return "backward", node_op(node.name()), None, None, None
            # info[0] is None for a node made inside a module checked at its boundary (no op seen)
            return "backward", info[0] or node_op(node.name()), info[1], info[2], info[3]
        file, line = self.modules.location()
        return "forward", None, self.modules.current, file, line

    def _event(self, kind: str, message: str, pol: Policy, t: Any, args: Any, kwargs: Any, *,
               severity: Severity = "error", origin: str = "produced", feeds: str | None = None,
               where: tuple[Any, ...] | None = None, extra: dict[str, Any] | None = None) -> Event:
        phase, fwd_op, module, file, line = where or self._where()
        module = self.modules.resolve(module)
        stats: dict[str, Any] = {}
        if extra:
            stats.update(extra)
        if t is not None:
            stats.update(tensor_stats(t, "output"))
        for label, v in flat_tensors(pol, args, kwargs)[:6]:
            if isinstance(v, _Tensor) and not (v.is_floating_point() or v.is_complex()):
                continue
            stats.update(tensor_stats(v, label))
        dtype = dtype_name(t.dtype) if t is not None else None
        if (self.paused and where is None) or phase == "optimizer":  # flushes pass the op's own `where`
            phase = "optimizer"
        return Event(kind=kind, source="sanitize", message=message, severity=severity,
                     hint=hint_for(kind, pol.name, dtype, phase=phase, forward_op=fwd_op, feeds=feeds),
                     file=file, line=line, op=pol.name, phase=phase, module=module, dtype=dtype,
                     shape=tuple(t.shape) if t is not None else None, stats=stats, origin=origin,
                     forward_op=fwd_op if phase == "backward" else None)

    def _slow(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any, lo: float, hi: float,
              where: tuple[Any, ...] | None = None) -> None:
        with torch.no_grad():
            out_nan = lo != lo or hi != hi
            out_inf = not out_nan and (lo == -_INF or hi == _INF)
            inputs = flat_tensors(pol, args, kwargs)
            mutated = {id(args[i]) for i in pol.mutated if i < len(args) and isinstance(args[i], _Tensor)}
            in_nan = in_inf = False
            nonfinite_inputs: list[Any] = []  # the element-wise judgment needs only these
            for _, v in inputs:
                if isinstance(v, _Tensor) and id(v) in mutated:
                    bad = self._bad.get(id(v))
                    if bad is not None and bad() is v:
                        in_nan = in_nan or out_nan
                        in_inf = True
                    continue
                a, b = nonfinite(v)
                in_nan, in_inf = in_nan or a, in_inf or b
                if a or b:
                    nonfinite_inputs.append(v)
            if not (out_nan or out_inf):  # near overflow
                if self.near is None or any(absmax(v) > self._threshold(t.dtype) for _, v in inputs
                                            if id(v) not in mutated):
                    return
                amax = max(abs(lo), abs(hi))
                mx = float(torch.finfo(t.dtype).max)
                ev = self._event("near_overflow",
                                 f"{pol.name} produced {amax:.4g}, within {mx / amax:.3g}x of the "
                                 f"{dtype_name(t.dtype)} max {mx:.5g}", pol, t, args, kwargs, severity="warning",
                                 where=where)
                self.session.emit(ev, dedupe=True)
                return
            scaled = self.scaled and (where[0] == "backward" if where else current_node() is not None)
            if scaled and self.scaled_reported:
                return
            self._bad[id(t)] = weakref.ref(t)
            if len(self._bad) > 4096:
                self._bad = {k: r for k, r in self._bad.items() if r() is not None}
            prior = self.session.has_error
            mixed = False  # the inputs held non-finite values, but this op made new ones elsewhere
            if not prior and ((out_nan and in_nan) or (out_inf and (in_inf or in_nan))):
                new_nan, new_inf = _fresh_nonfinite(func, pol, t, args, kwargs, out_nan, out_inf, nonfinite_inputs)
                if new_nan or new_inf:
                    mixed, out_nan, out_inf = True, new_nan, not new_nan
            if not mixed and ((out_nan and in_nan) or (out_inf and (in_inf or in_nan))
                              or (prior and (in_nan or in_inf))):
                if out_inf and not in_nan and not prior:
                    if pol.uf in (UF_NONNEG, UF_PROD) and self.underflow and not pol.mutated:
                        self._underflow(func, pol, t, args, kwargs, where=where)  # exp(-1000) beside a mask
                    return  # an intended inf (a -inf mask, an inf constant) passed along
                what = "NaN" if out_nan else "inf"
                if prior:
                    verb = "passed on" if (in_nan if out_nan else in_inf) else "made from a non-finite input:"
                    ev = self._event("nan" if out_nan else "overflow",
                                     f"{pol.name} {verb} {what}", pol, t, args, kwargs,
                                     severity="info", origin="propagated", where=where)
                else:
                    ev = self._event("nan", f"{pol.name} received NaN in its inputs (not made under the "
                                     "sanitizer: input data, or a tensor computed before it was enabled)",
                                     pol, t, args, kwargs, origin="propagated", where=where)
                self.session.emit(ev)
                return
            dtype = dtype_name(t.dtype)
            at = " at those positions" if mixed else ""
            if out_nan:
                why = " (inf - inf, 0 * inf or inf / inf)" if in_inf else ""
                kind, msg = "nan", f"{pol.name} produced NaN from NaN-free inputs{at}{why}"
            elif pol.divlike and any(has_zero(v) for _, v in inputs):
                cand = self._consumed_candidate(inputs)
                if cand is not None:
                    self._emit_candidate(cand, consumer=pol.name)
                kind = "div_by_zero"
                sign = "-inf" if lo == -_INF else "inf"
                if pol.base in LOGLIKE:
                    msg = f"{pol.name} of an exact 0 gave {sign}"
                else:
                    msg = f"{pol.name} divided by an exact 0 and gave {sign}"
            else:
                mx = float(torch.finfo(t.dtype).max)
                kind, msg = "overflow", f"{pol.name} overflowed: finite inputs{at} gave inf ({dtype} max is {mx:.5g})"
                if mixed:
                    msg += "; the infinities its inputs already held (a -inf mask, say) are not the cause"
            severity: Severity = "error"
            if scaled:
                severity = "warning"
                msg += "; the GradScaler skips this step and lowers its scale"
                self.scaled_reported = True
            ev = self._event(kind, msg, pol, t, args, kwargs, severity=severity, where=where)
            if ev.phase == "backward" and ev.forward_op:
                ev = replace(ev, message=ev.message + f" in the gradient of {ev.forward_op}")
            self.session.emit(ev)


def _fresh_nonfinite(func: Any, pol: Policy, t: Any, args: Any, kwargs: Any, out_nan: bool, out_inf: bool,
                     bad_inputs: list[Any]) -> tuple[bool, bool]:
    """(new NaN, new inf): did this op make a NaN / an inf where its inputs held none?

    Run only when the whole-tensor check already found non-finite values in both the
    output and the inputs (``bad_inputs``: the inputs holding some). Element-wise for
    pointwise ops: a NaN where no input is NaN, an inf where every input is finite — the
    inputs known to be finite everywhere do not enter the masks, so a ``-inf`` causal mask
    added to the scores costs a pass over the output and one over the mask. Other ops
    (matmuls, reductions) are run once more with every non-finite input entry replaced by
    NaN: NaN spreads to every output that depends on one, so an inf that remains was made
    from finite values alone. (A NaN cannot be traced that way; for those ops a NaN beside
    input NaNs counts as passed on.)
    """
    if pol.mutated:
        return False, False  # the input was overwritten: propagation cannot be told apart
    kwargs = kwargs or {}
    if torch.Tag.pointwise in getattr(func, "tags", ()):
        tensors = [v for _, v in flat_tensors(pol, args, kwargs) if isinstance(v, _Tensor)]
        try:
            shape = torch.broadcast_shapes(*[v.shape for v in tensors])
        except RuntimeError:
            shape = None
        if shape == t.shape:
            probe = torch.view_as_real(t) if t.is_complex() else t
            new_nan = new_inf = False
            if out_inf:
                fresh = torch.isinf(probe)
                for v in bad_inputs:
                    if is_float(v):
                        m = torch.isfinite(v)
                        fresh.logical_and_(m.unsqueeze(-1) if t.is_complex() else m)
                    elif isinstance(v, float):  # an inf scalar: every inf may be its
                        fresh.zero_()
                new_inf = bool(fresh.any())
            if out_nan:
                fresh = torch.isnan(probe)
                for v in bad_inputs:
                    if is_float(v):
                        m = ~torch.isnan(v)
                        fresh.logical_and_(m.unsqueeze(-1) if t.is_complex() else m)
                    elif isinstance(v, float) and v != v:
                        fresh.zero_()
                new_nan = bool(fresh.any())
            return new_nan, new_inf
    if not out_inf:
        return False, False
    try:
        targs = [taint(a) if i in pol.pos else a for i, a in enumerate(args)]
        tkw = {k: (taint(v) if k in pol.kw else v) for k, v in kwargs.items()}
        res = func(*targs, **tkw)
    except Exception:
        return False, False
    cands = [res] if isinstance(res, _Tensor) else [r for r in res if isinstance(r, _Tensor)] \
        if isinstance(res, (tuple, list)) else []
    bad_t = torch.isinf(t)
    return False, any(bool((torch.isinf(r) & bad_t).any()) for r in cands
                      if r.shape == t.shape and r.dtype == t.dtype)
