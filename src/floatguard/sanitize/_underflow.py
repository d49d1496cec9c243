"""Underflow: values flushed to 0 where the exact result is not, judged op by op.

A whole tensor flushed to 0, or a product underflowing, is reported at once. Scattered
zeros are kept as candidates (by storage) and reported only if a log, a division or a
reduction whose every term underflowed consumes them: a softmax with a few zeros is normal.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from ..events import Event, Severity
from ._hints import hint_for
from ._op_table import UF_CAST, UF_NONNEG, UF_PROD, Policy
from ._torch_shims import storage_key

if TYPE_CHECKING:
    from ._core import Session

__all__ = ["UnderflowChecks"]

_Tensor = torch.Tensor
_INF = math.inf


class _Candidate:
    """Scattered underflow kept in case a log or a division consumes the zeros."""

    __slots__ = ("event", "ref")

    def __init__(self, t: Any, event: Event) -> None:
        self.ref = weakref.ref(t)
        self.event = event


class UnderflowChecks:
    """The underflow judgments of :class:`~floatguard.sanitize._op_sanitizer.OpSanitizer` (a mixin)."""

    session: Session
    _cands: dict[int, _Candidate]

    if TYPE_CHECKING:
        def _event(self, kind: str, message: str, pol: Policy, t: Any, args: Any, kwargs: Any, *,
                   severity: Severity = "error", origin: str = "produced", feeds: str | None = None,
                   where: tuple[Any, ...] | None = None, extra: dict[str, Any] | None = None) -> Event: ...

    # -- underflow -----------------------------------------------------------------------------------
    def _exact_nonzero(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any) -> Any:
        """A bool mask (broadcast to ``t``) of where the exact result is not 0, or None if unknown."""
        base = pol.base
        a0: Any = args[0] if args else None  # a tensor, or a number (``mul(x, 0.5)``)
        if pol.uf == UF_NONNEG:
            if base.startswith("exp") or base.startswith("sigmoid"):
                return (a0 != -_INF) & ~torch.isnan(a0)
            return (a0 != -_INF).expand_as(t) if a0.shape == t.shape else None
        if pol.uf == UF_CAST:
            src = args[1] if base == "copy_" else a0
            return (src != 0) if isinstance(src, _Tensor) else None
        if pol.uf == UF_PROD:
            x = a0
            if base.startswith("cumprod"):
                return (x != 0).to(torch.int64).cumprod(args[1] if len(args) > 1 else kwargs["dim"]) == 1
            if len(args) > 1 or "dim" in kwargs:
                dim = args[1] if len(args) > 1 else kwargs["dim"]
                keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
                return (x != 0).all(dim, keepdim=keep)
            return (x != 0).all()
        if base in ("mul", "mul_", "_foreach_mul", "square"):
            b = args[1] if len(args) > 1 else a0
            return (a0 != 0) & (b != 0)
        if base in ("div", "div_", "_foreach_div"):
            d: Any = args[1] if len(args) > 1 else None
            fin_b = torch.isfinite(d) if isinstance(d, _Tensor) else math.isfinite(d)
            return (a0 != 0) & fin_b
        if t.dtype == torch.float64:
            return None
        try:  # generic: recompute in float64
            def up(v: Any) -> Any:
                return v.to(torch.float64) if isinstance(v, _Tensor) and v.is_floating_point() else v
            exact = func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
            if isinstance(exact, (tuple, list)):
                exact = exact[0]
            return exact != 0 if isinstance(exact, _Tensor) and exact.shape == t.shape else None
        except Exception:
            return None

    def _underflow(self, func: Any, pol: Policy, t: Any, args: Any, kwargs: Any,
                   where: tuple[Any, ...] | None = None) -> None:
        if pol.mutated and pol.uf != UF_CAST:
            return  # the input is gone: in-place ops are not judged
        with torch.no_grad():
            a0 = args[0] if args else None
            # exp, sigmoid, softmax (no NaN here): exactly 0 only where the input is -inf (a mask); one count
            # of each settles the common case (a causal mask, nothing underflowed)
            if (pol.uf == UF_NONNEG and isinstance(a0, _Tensor) and a0.shape == t.shape
                    and int(torch.count_nonzero(t == 0)) == int(torch.count_nonzero(a0 == -_INF))):
                return
            zero = t == 0
            if not bool(zero.any()):
                return
            nz = self._exact_nonzero(func, pol, t, args, kwargs)
            if nz is None:
                return
            try:
                uf = zero & nz
            except RuntimeError:
                return
            n_uf = int(uf.sum())
            if n_uf == 0:
                return
            whole = bool(zero.all())
            self.session.stats["underflowed_values"] += n_uf
            if whole or pol.uf == UF_PROD:
                what = ("every value" if whole else f"{n_uf} of {t.numel()} values")
                ev = self._event("underflow", f"{pol.name} flushed {what} to exactly 0 (the exact results are "
                                 "not 0)", pol, t, args, kwargs, extra={"underflowed": n_uf}, where=where)
                self.session.emit(ev)
                return
            # scattered: keep it in case a log or a division consumes the zeros
            key = storage_key(t)
            if key is None:
                return
            ev = self._event("underflow", f"{pol.name} flushed {n_uf} of {t.numel()} values to exactly 0",
                             pol, t, args, kwargs, extra={"underflowed": n_uf}, where=where)
            self._cands[key] = _Candidate(t, ev)
            if len(self._cands) > 64:
                self._cands = {k: c for k, c in self._cands.items() if c.ref() is not None}
                while len(self._cands) > 64:
                    del self._cands[next(iter(self._cands))]

    def _consumed_candidate(self, inputs: list[tuple[str, Any]]) -> _Candidate | None:
        for _, v in inputs:
            if isinstance(v, _Tensor):
                key = storage_key(v)
                c = self._cands.get(key) if key is not None else None
                if c is not None and c.ref() is not None:
                    return c
        return None

    def _emit_candidate(self, cand: _Candidate, consumer: str, reduction: bool = False) -> None:
        for k in [k for k, c in self._cands.items() if c is cand]:
            del self._cands[k]
        ev = cand.event
        why = (f"; every term of a reduction by {consumer} underflowed, which gave 0" if reduction
               else f"; {consumer} then takes these zeros")
        self.session.emit(replace(ev, message=ev.message + why, hint=hint_for(
            "underflow", ev.op, ev.dtype, phase=ev.phase, forward_op=ev.forward_op, feeds=consumer)))

    def _carry(self, args: Any, out: Any) -> None:
        """A copy/selection of an underflowed tensor inherits its record."""
        outs = [out] if isinstance(out, _Tensor) else [o for o in out if isinstance(o, _Tensor)] \
            if isinstance(out, (tuple, list)) else []
        if not outs:
            return
        cand = self._consumed_candidate([("", a) for a in args if isinstance(a, _Tensor)])
        if cand is None:
            return
        for o in outs:
            key = storage_key(o)
            if key is not None and key not in self._cands and o.is_floating_point():
                with torch.no_grad():
                    if o.numel() and bool((o == 0).any()):
                        self._cands[key] = _Candidate(o, cand.event)
                        cand.ref = weakref.ref(o) if cand.ref() is None else cand.ref

    def _every_term(self, func: Any, pol: Policy, t: Any, args: Any) -> None:
        cand = self._consumed_candidate([("", a) for a in args if isinstance(a, _Tensor)])
        if cand is None:
            return
        with torch.no_grad():
            if bool((t == 0).any()):
                self._emit_candidate(cand, pol.name, reduction=True)
