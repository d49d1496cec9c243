"""Replay a step that went non-finite under the sanitizer, and name its first bad op in the finding.

``Monitor(..., replay=True)`` keeps a reference to each forward's inputs and the RNG state
(for dropout); ``replay=lambda: loss_fn(model(x), y)`` replays forward, loss and backward.
When the loss (or a gradient) turns NaN/inf, :func:`replay` re-runs the step under
:func:`floatguard.detect` and returns the finding with what the replay found (``replay``)
and the first bad op (``cause``, its module, message and hint). Gradients and the RNG state
are restored: the replay does not change the step.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from ..events import Event

if TYPE_CHECKING:
    from .core import Monitor

__all__ = ["replay"]


def replay(mon: Monitor, ev: Event) -> Event:
    """``ev`` with what re-running its step under the sanitizer found."""
    from ..sanitize import detect

    fn = mon.replay if callable(mon.replay) else None
    inputs = mon._replay_inputs
    if fn is None and inputs is None:
        return replace(ev, replay="no forward of the model was seen this step: nothing to replay")
    params = mon._params
    grads = [p.grad for p in params]  # restored after: the replay must not change the step
    rng = torch.get_rng_state()
    mon._replaying = True
    what = "forward, loss and backward" if fn is not None else "forward"
    try:
        with detect(action="record", quiet=True) as d:
            if fn is not None:
                for p in params:
                    p.grad = None
                out = fn()
                if isinstance(out, torch.Tensor) and out.requires_grad and out.numel() == 1:
                    out.backward()
            elif inputs is not None:
                args, kwargs, state, amp = inputs
                torch.set_rng_state(state)
                with torch.no_grad(), (torch.autocast(amp[0], dtype=amp[1]) if amp else contextlib.nullcontext()):
                    mon.model(*args, **kwargs)
    except Exception as exc:  # the user's step failing again must not break training
        return replace(ev, replay=f"the replay raised {type(exc).__name__}: {exc}")
    finally:
        mon._replaying = False
        torch.set_rng_state(rng)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
    first = next((e for e in d.events if e.severity == "error"), None)
    if first is None:
        return replace(ev, replay=(f"replayed the {what} under the sanitizer: every op was finite"
                                   + ("; the loss computation or the backward made it (pass replay=lambda: "
                                      "loss_fn(model(x), y) to replay them too)" if fn is None else "")))
    where = f" in {first.module}" if first.module else ""
    at = f" at {first.location}" if first.file else ""
    return replace(ev, replay=f"replayed the {what} under the sanitizer", cause=first,
                   module=ev.module or first.module,
                   message=ev.message + f"; replayed under the sanitizer: the first bad op is {first.op}{where}{at}"
                   f" ({first.message})",
                   hint=(f"{first.hint} ({ev.hint})" if ev.hint else first.hint) if first.hint else ev.hint)
