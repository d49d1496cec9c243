"""Training-health monitor: catch silent failure while it happens, say what to change.

::

    from floatguard.monitor import Monitor
    mon = Monitor(model, optimizer, num_classes=10, log="run.jsonl")  # num_classes, log optional
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        mon.step(loss)          # after backward, before optimizer.step()
        optimizer.step()
    mon.close()
    mon.findings                # Events: .kind, .step, .module, .message, .hint, .stats, .to_dict()

Off a terminal (a batch job) each finding is one line with its remedy on the ``logging``
logger ``"floatguard.monitor"``, and ``close()`` ends with a summary and the command that
renders the report; ``tensorboard=writer`` (anything with ``add_scalar``/``add_text``)
and ``on_scalars=`` send the statistics (``floatguard/...``) and findings to the user's
logger; ``replay=True`` re-runs a step whose loss went NaN under the sanitizer and names
the first bad op, module and line in the finding (:mod:`.output`, :class:`Monitor`).
The options can also travel as one value: ``Monitor(model, optimizer,
config=MonitorConfig(log="run.jsonl", every=5))`` (:mod:`.config` documents each).

Findings (``Event.kind``) are the names in :data:`KINDS`; :mod:`.rules` documents
each rule's thresholds and their source. ``floatguard report run.jsonl -o
report.html`` renders a log (:mod:`.report`); :func:`attach_global` watches a
script that was not written for it (``floatguard run --monitor SCRIPT``).
Lightning and Hugging Face callbacks live in :mod:`.lightning` and
:mod:`.huggingface` (imported on demand: they import their framework).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import require
from .config import MonitorConfig
from .rules import KINDS, Thresholds

if TYPE_CHECKING:
    from .attach import GlobalMonitor
    from .core import Monitor

__all__ = ["KINDS", "Monitor", "MonitorConfig", "Thresholds", "attach_global", "read_log"]


def __getattr__(name: str) -> Any:  # torch is imported only when the monitor is used
    if name == "Monitor":
        require("torch", feature="floatguard.Monitor")
        from .core import Monitor

        return Monitor
    if name == "read_log":
        from .log import read_log

        return read_log
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def attach_global(**options: Any) -> GlobalMonitor:
    """Monitor every training loop of this process without changing its code.

    Keyword options are :class:`Monitor`'s. See :func:`floatguard.monitor.attach.attach_global`.
    """
    require("torch", feature="floatguard.monitor.attach_global")
    from .attach import attach_global as _attach

    return _attach(**options)
