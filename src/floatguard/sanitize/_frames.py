"""The user's source line: the first Python frame outside torch, numpy, floatguard and the stdlib.

Walking frames with ``sys._getframe`` costs a fraction of a microsecond per frame;
whether a code object is internal is decided once per code object and cached, so the
walk is a few dictionary lookups (this is what keeps the sanitizer far cheaper than
``torch.autograd.detect_anomaly``, which formats the whole stack for every op).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from types import CodeType, FrameType

__all__ = ["add_internal_path", "user_frame", "user_location"]

_here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../floatguard
_internal_prefixes: list[str] = [_here + os.sep]
for _key in ("stdlib", "platstdlib"):
    _p = sysconfig.get_paths().get(_key)
    if _p:
        _internal_prefixes.append(os.path.abspath(_p) + os.sep)
for _mod in ("torch", "numpy", "jax", "jaxlib", "runpy", "functools"):
    _m = sys.modules.get(_mod)
    _f = getattr(_m, "__file__", None)
    if _f and _mod in ("torch", "numpy", "jax", "jaxlib"):
        _internal_prefixes.append(os.path.dirname(os.path.abspath(_f)) + os.sep)

_internal_names = ("/torch/", "/numpy/", "/jax/", "/jaxlib/", "/_pytest/", "/pluggy/", "/torchgen/")
_cache: dict[CodeType, bool] = {}


def add_internal_path(path: str) -> None:
    """Treat frames from files under ``path`` as library code (skipped when locating the user)."""
    _internal_prefixes.append(os.path.abspath(path) + os.sep)
    _cache.clear()


def _is_internal(code: CodeType) -> bool:
    fn = code.co_filename
    if fn.startswith("<") and fn not in ("<stdin>", "<string>") and not fn.startswith("<ipython"):
        return True  # <frozen runpy>, <built-in>, generated code
    fn = fn.replace("\\", "/")
    if any(fn.startswith(p.replace("\\", "/")) for p in _internal_prefixes):
        return True
    return any(n in fn for n in _internal_names)


def user_frame(depth: int = 1) -> FrameType | None:
    """The innermost frame of user code, starting ``depth`` frames above the caller."""
    try:
        f: FrameType | None = sys._getframe(depth + 1)
    except ValueError:
        return None
    cache = _cache
    while f is not None:
        code = f.f_code
        internal = cache.get(code)
        if internal is None:
            internal = cache[code] = _is_internal(code)
        if not internal:
            return f
        f = f.f_back
    return None


def user_location(depth: int = 1) -> tuple[str | None, int | None]:
    """``(file, line)`` of :func:`user_frame` (``(None, None)`` when every frame is internal)."""
    f = user_frame(depth + 1)
    if f is None:
        return None, None
    return f.f_code.co_filename, f.f_lineno
