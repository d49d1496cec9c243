"""floatguard: stable numerics for neural networks, and visible instability.

The stable ops are importable straight from the package::

    import floatguard as fg
    fg.logsumexp(x, axis=-1)

The sanitizer (``fg.detect``, ``fg.guard``, ``fg.NumericalError``) and the
training monitor (``fg.Monitor``) are imported on first use, so ``import
floatguard`` stays light (NumPy and rich only).
"""

from typing import Any

from .errors import OptionalDependencyError
from .events import Event, Report
from .ops import *  # noqa: F403
from .ops import __all__ as _ops_all

__version__ = "0.1.0"

_LAZY = {
    "detect": "floatguard.sanitize",
    "guard": "floatguard.sanitize",
    "NumericalError": "floatguard.sanitize",
    "NumericalWarning": "floatguard.sanitize",
    "checkify_report": "floatguard.sanitize",
    "Monitor": "floatguard.monitor",
}

__all__ = [*_ops_all, *_LAZY, "Event", "OptionalDependencyError", "Report", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'floatguard' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
