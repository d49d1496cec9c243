"""A live status line while training (rich), off when the output is not a terminal."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..events import Event

__all__ = ["LiveLine"]

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


class LiveLine:
    """One refreshing line: step, loss, gradient norm, findings so far.

    ``enabled=None`` turns it on only when ``console`` (stderr by default) is a
    terminal. Updates are rate-limited to ``interval`` seconds so that the line costs
    nothing measurable; findings print above it as they fire.
    """

    def __init__(self, enabled: bool | None = None, console: Console | None = None, interval: float = 0.25) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else bool(enabled)
        self.interval = interval
        self._live: Live | None = None
        self._last = 0.0
        self._findings = 0

    def _text(self, step: int, loss: float, gnorm: float) -> Text:
        t = Text("floatguard ", style="bold")
        t.append(f"step {step}  ")
        t.append(f"loss {_f(loss)}  ", style="red" if not math.isfinite(loss) else "")
        t.append(f"‖g‖ {_f(gnorm)}  ")
        t.append(f"{self._findings} finding{'s' if self._findings != 1 else ''}",
                 style="bold red" if self._findings else "green")
        return t

    def update(self, step: int, loss: float, gnorm: float, new: list[Event] | None = None) -> None:
        if not self.enabled:
            return
        for ev in new or []:
            self._findings += 1
            where = f" at {ev.module}" if ev.module else ""
            self.console.print(Text(f"[{ev.kind}] step {ev.step}{where}: {ev.message}", style=_STYLE[ev.severity]))
        now = time.monotonic()
        if not new and now - self._last < self.interval:
            return
        self._last = now
        text = self._text(step, loss, gnorm)
        if self._live is None:
            self._live = Live(text, console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(text, refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __del__(self, _suppress: type[contextlib.suppress] = contextlib.suppress) -> None:  # pragma: no cover
        with _suppress(Exception):  # bound at definition: at interpreter shutdown module globals may be None
            self.close()


def _f(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return "-"
