"""floatguard: stable numerics for neural networks, and visible instability.

The stable ops are importable straight from the package::

    import floatguard as fg
    fg.logsumexp(x, axis=-1)
"""

from .ops import *  # noqa: F403
from .ops import __all__ as _ops_all
from .ops._namespace import OptionalDependencyError

__version__ = "0.1.0"
__all__ = [*_ops_all, "OptionalDependencyError", "__version__"]
