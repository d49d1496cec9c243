"""``floatguard.detect``: the sanitizer as a context manager and a decorator."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
from collections.abc import Callable
from typing import Any, Literal, TextIO, TypedDict, TypeVar

from ..events import Report
from ._core import ACTIONS, LEVELS, Session

__all__ = ["detect"]

F = TypeVar("F", bound=Callable[..., Any])


class _Options(TypedDict):
    """The keyword options of :class:`detect`, kept to build a fresh one per decorated call."""

    near_overflow: float | None
    underflow: bool
    torch: bool | None
    numpy: bool
    numpy_underflow: bool
    stream: TextIO | None
    quiet: bool
    defer: bool | None
    exact: bool


class detect:
    """Find the first op that overflows, underflows, divides by zero or makes NaN.

    ``with detect(): ...`` checks every PyTorch op (forward and backward) and NumPy ufunc
    run inside the block; ``@detect()`` does the same for each call of a function.

    Args:
        level: ``"op"`` checks each op as it runs; ``"step"`` only the gradients before
            and the parameters after each ``optimizer.step()`` (use :func:`guard` to also
            replay a bad step at op level and name the op).
        action: ``"raise"`` (print the finding, raise :class:`NumericalError`),
            ``"warn"`` (print it once per place, issue a :class:`NumericalWarning`, go on)
            or ``"record"`` (only collect it in :attr:`report`).
        near_overflow: warn when a float value reaches ``finfo.max / near_overflow``
            (``None``: never).
        underflow: judge underflow (whole tensors flushed to 0, products underflowing,
            underflowed values later fed to a log or a division).
        torch: check PyTorch ops (default: when torch is already imported).
        numpy: check NumPy ufuncs through ``np.errstate``.
        numpy_underflow: also report NumPy's underflow flag (noisy: set for any subnormal).
        stream: where panels are printed (default stderr); ``quiet`` prints nothing.
        defer: keep each op's (min, max) on its device and read them once per step
            (end of the backward; in inference, of the forward; earlier past 256 ops)
            instead of once per op. ``None`` (default): deferred for tensors off the CPU (no host sync per
            CUDA op), op by op on the CPU; ``True``: deferred everywhere.
        exact: at op level, check every op as it runs, inside torch's own modules too. By default
            (``False``) a module made only of torch's modules, with submodules (``nn.TransformerEncoder``,
            a ``nn.Sequential`` of ``nn.Linear``...), runs unobserved and is checked at its outputs; a suspect output
            makes it run again under the op-level check (same inputs, same RNG state), which names the
            op — the same finding at a fraction of the cost. ``True`` also judges scattered underflow
            inside such modules.

    The findings are in :attr:`report` (``report.to_json()``); a raised
    :class:`NumericalError` carries them too.
    """

    def __init__(self, level: str = "op", action: str = "raise", *, near_overflow: float | None = 16.0,
                 underflow: bool = True, torch: bool | None = None, numpy: bool = True,
                 numpy_underflow: bool = False, stream: TextIO | None = None, quiet: bool = False,
                 report: Report | None = None, defer: bool | None = None, exact: bool = False) -> None:
        if level not in LEVELS:
            raise ValueError(f"detect: level must be one of {LEVELS}, got {level!r}")
        if action not in ACTIONS:
            raise ValueError(f"detect: action must be one of {ACTIONS}, got {action!r}")
        if near_overflow is not None and not near_overflow >= 1:
            raise ValueError(f"detect: near_overflow must be >= 1 or None, got {near_overflow!r}")
        self.level = level
        self.action = action
        self.options: _Options = {"near_overflow": near_overflow, "underflow": underflow, "torch": torch,
                                  "numpy": numpy, "numpy_underflow": numpy_underflow, "stream": stream,
                                  "quiet": quiet, "defer": defer, "exact": exact}
        self.report = report if report is not None else Report()
        self.session: Session | None = None
        self._stack: contextlib.ExitStack | None = None

    @property
    def events(self) -> list[Any]:
        """The findings so far (``report.events``)."""
        return self.report.events

    def _use_torch(self) -> bool:
        want = self.options["torch"]
        if want is None:
            return sys.modules.get("torch") is not None  # None: blocked (import torch would fail)
        if want and importlib.util.find_spec("torch") is None:
            from ..errors import missing

            raise missing("torch", feature="detect(torch=True)")
        return bool(want)

    def __enter__(self) -> detect:
        if self._stack is not None:
            raise RuntimeError("detect: this context is already active (create one detect() per `with`)")
        o = self.options
        self.session = Session(self.action, report=self.report, stream=o["stream"], quiet=o["quiet"])
        stack = contextlib.ExitStack()
        try:
            if o["numpy"]:
                from ._numpy import numpy_errstate

                stack.enter_context(numpy_errstate(self.session, underflow=o["numpy_underflow"]))
            if self._use_torch():
                from ._torch_ctx import TorchContext

                stack.enter_context(TorchContext(self.session, self.level, near_overflow=o["near_overflow"],
                                                 underflow=o["underflow"], defer=o["defer"], exact=o["exact"]))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(exc_type, exc, tb)
        if self.session is not None:
            self.session.collect_children()  # findings of forked DataLoader workers
        return False  # never swallow an exception

    def __call__(self, fn: F) -> F:
        """Decorator: each call runs under a fresh ``detect``; events add up in :attr:`report`.

        With ``level="step"`` the function is wrapped by :func:`guard` instead.
        """

        if self.level == "step":
            from ._step import guard

            o = self.options
            return guard(fn, action=self.action, near_overflow=o["near_overflow"], underflow=o["underflow"],
                         stream=o["stream"], quiet=o["quiet"], report=self.report)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with detect(self.level, self.action, report=self.report, **self.options):
                return fn(*args, **kwargs)

        wrapper.report = self.report  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]
