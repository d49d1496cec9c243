"""JAX: the same report shape from ``jax.experimental.checkify``.

JAX arrays are not seen by :func:`~floatguard.sanitize.detect` (jitted code runs in
XLA). JAX's own tools cover part of the ground:

* ``jax.config.update("jax_debug_nans", True)`` (and ``"jax_debug_infs"``): after a
  jitted function returns a NaN, JAX re-runs it op by op and raises
  ``FloatingPointError`` at the primitive that made it.
* ``checkify.checkify(f, errors=checkify.float_checks)``: a functional check of NaN
  outputs and division by zero inside jit, with the primitive and the source line.
  :func:`checkify_report` runs that and returns a :class:`~floatguard.events.Report`.

Not covered for JAX: overflow to ±inf that is not a division by zero, underflow, and
near-overflow warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..events import Event, Report
from ._frames import _is_internal
from ._hints import hint_for

__all__ = ["checkify_report"]


def _location(exc: Any) -> tuple[str | None, int | None]:
    tb = getattr(exc, "traceback_info", None)
    frames = getattr(tb, "frames", None) or []
    for fr in frames:
        code = type("C", (), {"co_filename": fr.file_name})
        if not _is_internal(code):  # type: ignore[arg-type]
            return fr.file_name, int(fr.line_num)
    return None, None


def checkify_report(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Report]:
    """Run ``fn(*args, **kwargs)`` under checkify's float checks; return ``(output, report)``.

    The report holds at most one event (checkify stops at the first error): kind
    ``nan`` or ``div_by_zero``, the primitive as ``op`` (``jax.lax.log``), the user's
    file and line.
    """
    try:
        from jax.experimental import checkify
    except ImportError as no_jax:
        from ..errors import missing

        raise missing("jax", feature="checkify_report") from no_jax

    err, out = checkify.checkify(fn, errors=checkify.float_checks)(*args, **kwargs)
    report = Report()
    exc = err.get_exception()
    if exc is None:
        return out, report
    text = str(err.get() or exc)
    kind = "div_by_zero" if type(exc).__name__ == "DivisionByZeroError" else "nan"
    prim = getattr(exc, "prim", None)
    op = f"jax.lax.{prim}" if prim else ("jax.lax.div" if kind == "div_by_zero" else None)
    file, line = _location(exc)
    report.add(Event(kind=kind, source="sanitize", message=f"JAX checkify: {text.rstrip('.')}",
                     hint=hint_for(kind, prim or ("div" if kind == "div_by_zero" else None), None, phase="forward"),
                     file=file, line=line, op=op, phase="forward", origin="produced"))
    return out, report
