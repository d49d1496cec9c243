"""The rules, one module per rule; :func:`all_rules` finds them."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from ..rule import Rule

__all__ = ["all_rules", "by_code"]


@cache
def all_rules() -> tuple[type[Rule], ...]:
    """Every rule class of this package, sorted by code."""
    found: list[type[Rule]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Rule) and obj is not Rule and obj.code and \
                    obj.__module__ == mod.__name__:
                found.append(obj)
    return tuple(sorted(found, key=lambda r: r.code))


def by_code() -> dict[str, type[Rule]]:
    """Rule classes by code (``"FG101"``)."""
    return {r.code: r for r in all_rules()}
