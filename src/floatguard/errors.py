"""Errors floatguard raises for a missing optional dependency.

floatguard's hard dependencies are NumPy and rich; PyTorch, JAX, numba, mpmath and the
training frameworks are imported only where they are used. Each such import goes through
:func:`require` (or, where the import must stay an ``import`` statement, e.g. code that
``torch.compile`` traces, through :func:`missing`), so a missing package always raises the
same :class:`OptionalDependencyError`, naming the package and the extra that installs it::

    >>> try:
    ...     require("no_such_package_fg", "torch", feature="this example")
    ... except OptionalDependencyError as e:
    ...     print(e)
    this example needs no_such_package_fg: pip install 'floatguard[torch]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "OptionalDependencyError", "missing", "require"]

#: The extra of ``pyproject.toml`` that installs each optional top-level package.
#: Packages no extra installs (the training frameworks) name themselves.
EXTRAS: dict[str, str] = {
    "torch": "torch",
    "array_api_compat": "torch",
    "jax": "jax",
    "jaxlib": "jax",
    "ml_dtypes": "jax",
    "numba": "fast",
    "llvmlite": "fast",
    "mpmath": "dev",
    "scipy": "dev",
}


class OptionalDependencyError(ImportError):
    """An optional dependency is missing; the message names the extra (or package) to install.

    ``package`` is the top-level package that failed to import and ``extra`` the
    floatguard extra that installs it (``None`` where no extra does).
    """

    def __init__(self, message: str, *, package: str | None = None, extra: str | None = None) -> None:
        super().__init__(message, name=package)
        self.package = package
        self.extra = extra


def _install_line(package: str, extra: str | None) -> str:
    return f"pip install 'floatguard[{extra}]'" if extra else f"pip install {package}"


def missing(module: str, extra: str | None = None, *, feature: str | None = None) -> OptionalDependencyError:
    """The :class:`OptionalDependencyError` for ``module`` that could not be imported.

    ``extra`` defaults to :data:`EXTRAS` of the top-level package; ``feature`` names what
    needed it (default: ``floatguard``). Raise it ``from`` the ``ImportError``.
    """
    package = module.partition(".")[0]
    extra = extra if extra is not None else EXTRAS.get(package)
    what = feature or "floatguard"
    return OptionalDependencyError(
        f"{what} needs {package}: {_install_line(package, extra)}", package=package, extra=extra
    )


def require(module: str, extra: str | None = None, *, feature: str | None = None) -> ModuleType:
    """Import ``module`` (dotted names allowed) or raise :class:`OptionalDependencyError`.

    A package blocked with ``sys.modules[name] = None`` counts as missing, as
    ``import`` itself treats it.

    >>> require("numpy").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if isinstance(exc, OptionalDependencyError):
            raise
        raise missing(module, extra, feature=feature) from exc
