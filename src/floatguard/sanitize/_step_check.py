"""The step check: gradients before ``optimizer.step()``, parameters and optimizer state after it."""

from __future__ import annotations

from typing import Any

import torch

from ..events import Event
from ._core import Session
from ._module_tracker import ModuleTracker
from ._tensor_stats import dtype_name as _dtype_name
from ._tensor_stats import first_bad, stored_values, tensor_stats

__all__ = ["StepChecker"]

_Tensor = torch.Tensor


class StepChecker:
    """Step-level checks around ``optimizer.step()``.

    Before the step: the gradients, one fused reduction (a non-finite gradient never
    reaches the parameters). After every ``state_every``-th step (and on request): the
    parameters and the optimizer state, which finite gradients can only corrupt through
    an update that overflows.
    """

    def __init__(self, session: Session, modules: ModuleTracker, *, state_every: int = 16) -> None:
        self.session = session
        self.modules = modules
        self.step = 0
        self.state_every = state_every

    def _name(self, p: Any, i: int) -> str:
        return self.modules.param_name(p) or f"param {i}"

    @staticmethod
    def params(optimizer: Any) -> list[Any]:
        return [p for g in optimizer.param_groups for p in g["params"]]

    def check_grads(self, optimizer: Any) -> Event | None:
        """An event if a gradient of ``optimizer``'s parameters is non-finite (None if all are finite)."""
        params = self.params(optimizer)
        grads = [p.grad for p in params]
        bad = first_bad(grads)
        if not bad:
            return None
        already = self.check_params(optimizer, before=True)
        if already is not None:
            return already
        i = bad[0]
        g = grads[i]
        vals = stored_values(g)  # first_bad judged it, so its layout has stored values
        has_nan = vals is not None and bool(torch.isnan(vals).any())
        kind = "nan" if has_nan else "overflow"
        names = ", ".join(self._name(params[j], j) for j in bad[:5]) + (" ..." if len(bad) > 5 else "")
        return Event(kind=kind, source="sanitize", phase="backward", op=None, module=self._name(params[i], i),
                     message=f"the gradient of {names} has {'NaN' if has_nan else 'inf'} "
                     f"({len(bad)} of {len(params)} parameters) before {type(optimizer).__name__}.step()",
                     dtype=_dtype_name(g.dtype), shape=tuple(g.shape), stats=tensor_stats(g, "grad"),
                     step=self.step, hint="run this step at op level (floatguard.guard replays it, or "
                     "`floatguard run --level op`) to name the op that made it")

    def after_step(self, optimizer: Any) -> Event | None:
        self.step += 1
        if self.state_every and self.step % self.state_every == 0:
            return self.check_params(optimizer)
        return None

    def check_params(self, optimizer: Any, *, before: bool = False) -> Event | None:
        """An event if a parameter or a float optimizer state is non-finite."""
        params = self.params(optimizer)
        states: list[tuple[Any, str, Any]] = []
        for p in params:
            for key, v in optimizer.state.get(p, {}).items():
                if isinstance(v, _Tensor) and v.is_floating_point() and v.numel() > 1:
                    states.append((p, key, v))
        tensors = [p.detach() for p in params] + [v for _, _, v in states]
        bad = first_bad(tensors)
        if not bad:
            return None
        i = bad[0]
        if i < len(params):
            p, what, t, label = params[i], "parameter", params[i].detach(), "param"
        else:
            p, key, t = states[i - len(params)]
            what, label = f"optimizer state {key!r} of", str(key)
        has_nan = bool(torch.isnan(t).any())
        j = next(k for k, q in enumerate(params) if q is p)
        name = self._name(p, j)
        opname = f"{type(optimizer).__name__}.step"
        when = "an earlier" if before else "this"
        return Event(kind="nan" if has_nan else "overflow", source="sanitize", phase="optimizer", op=opname,
                     module=name, message=f"{what} {name} is {'NaN' if has_nan else 'inf'}: {when} "
                     f"{opname} made it so from finite gradients", dtype=_dtype_name(t.dtype), shape=tuple(t.shape),
                     stats=tensor_stats(t, label), step=self.step, origin="produced",
                     hint="the update overflowed: lower the learning rate, clip gradients "
                     "(torch.nn.utils.clip_grad_norm_), or raise the optimizer's eps")
