"""floatguard: stable numerics for neural networks, and visible instability.

The stable ops are importable straight from the package::

    import floatguard as fg
    fg.logsumexp(x, axis=-1)

The ops (``floatguard.ops``, which imports NumPy), the sanitizer (``fg.detect``,
``fg.guard``, ``fg.NumericalError``) and the training monitor (``fg.Monitor``)
are imported on first use (PEP 562), so ``import floatguard`` stays light and
the linter (``floatguard lint``) never imports NumPy.
"""

from typing import TYPE_CHECKING, Any

from .errors import OptionalDependencyError
from .events import Event, Report

if TYPE_CHECKING:  # the names the module __getattr__ below gives, for type checkers
    from .monitor import Monitor
    from .ops import (
        binary_cross_entropy_with_logits,
        cross_entropy,
        default_eps,
        linear_cross_entropy,
        log1mexp,
        log_matmul_exp,
        log_prod,
        log_sigmoid,
        log_softmax,
        logaddexp,
        logcumsumexp,
        logmeanexp,
        logsubexp,
        logsumexp,
        safe_div,
        safe_log,
        safe_sqrt,
        sigmoid,
        softmax,
        softplus,
        softplus_inverse,
        xlog1py,
        xlogy,
    )
    from .sanitize import NumericalError, NumericalWarning, checkify_report, detect, guard

__version__ = "0.1.0"

#: the ops of floatguard.ops (a test checks that they are its __all__), the sanitizer and the monitor are
#: imported on first use (``_LAZY``)
__all__ = [
    "Event",
    "Monitor",
    "NumericalError",
    "NumericalWarning",
    "OptionalDependencyError",
    "Report",
    "__version__",
    "binary_cross_entropy_with_logits",
    "checkify_report",
    "cross_entropy",
    "default_eps",
    "detect",
    "guard",
    "linear_cross_entropy",
    "log1mexp",
    "log_matmul_exp",
    "log_prod",
    "log_sigmoid",
    "log_softmax",
    "logaddexp",
    "logcumsumexp",
    "logmeanexp",
    "logsubexp",
    "logsumexp",
    "safe_div",
    "safe_log",
    "safe_sqrt",
    "sigmoid",
    "softmax",
    "softplus",
    "softplus_inverse",
    "xlog1py",
    "xlogy",
]

#: where the names imported on first use live: the ops unless listed here
_ELSEWHERE = {
    "detect": "floatguard.sanitize",
    "guard": "floatguard.sanitize",
    "NumericalError": "floatguard.sanitize",
    "NumericalWarning": "floatguard.sanitize",
    "checkify_report": "floatguard.sanitize",
    "Monitor": "floatguard.monitor",
}
_EAGER = frozenset({"Event", "OptionalDependencyError", "Report", "__version__"})
_LAZY = {name: _ELSEWHERE.get(name, "floatguard.ops") for name in __all__ if name not in _EAGER}


#: subpackages reachable as attributes before their first import (``fg.ops.logsumexp``, as when the ops were eager)
_SUBMODULES = frozenset({"ops", "sanitize", "monitor", "lint", "testing", "reporting"})


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"floatguard.{name}")  # the import binds it here too
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'floatguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
