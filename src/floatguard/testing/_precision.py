"""Precision machinery shared by the references: mpmath on demand, dtype formats, exact keys, and
recomputation with more digits wherever a formula cancels (:func:`_precise`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import require

#: Decimal digits of the references (at least; more where a formula cancels).
DPS = 60
_MAX_DPS = 4000


def _mp() -> Any:
    """mpmath's global context (``mpmath.mp``), imported on first use."""
    return require("mpmath", "dev", feature="floatguard.testing").mp


# -- dtypes ---------------------------------------------------------------------------
# name: (precision p incl. the implicit bit, exponent of the smallest normal, of the largest binade)
_FORMATS = {
    "float16": (11, -14, 15),
    "bfloat16": (8, -126, 127),
    "float32": (24, -126, 127),
    "float64": (53, -1022, 1023),
}
_ALIASES = {"half": "float16", "single": "float32", "double": "float64"}


def dtype_info(dtype: Any) -> tuple[str, int, int, int]:
    """``(name, p, emin, emax)`` of a floating dtype given as NumPy/torch/JAX dtype or name.

    >>> dtype_info("bfloat16")
    ('bfloat16', 8, -126, 127)
    """
    if isinstance(dtype, str):
        name = dtype
    elif isinstance(dtype, np.dtype):
        name = dtype.name
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:  # torch dtypes (``torch.bfloat16``): their name is their text
            name = str(dtype)
    name = name.rsplit(".", 1)[-1].lower()
    name = _ALIASES.get(name, name)
    if name not in _FORMATS:
        raise ValueError(f"floatguard.testing: unsupported dtype {dtype!r} (float16, bfloat16, float32, float64)")
    return (name, *_FORMATS[name])


def to_float64(a: Any) -> np.ndarray:
    """NumPy float64 copy of a NumPy array, torch tensor (any float dtype), JAX array or scalar."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch, without importing it
        a = a.detach().cpu().double().numpy()
    return np.asarray(np.asarray(a).astype(np.float64))


# -- conversion helpers -----------------------------------------------------------------
def _mpf(v: Any) -> Any:
    mp = _mp()
    return v if isinstance(v, mp.mpf) else mp.mpf(float(v))


def _floats(x: Any) -> tuple[float, ...]:
    """Hashable exact key of an array-like: its values as a tuple of Python floats."""
    return tuple(to_float64(x).ravel().tolist())


def _obj_array(values: Sequence[Any], shape: tuple[int, ...] | None = None) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out if shape is None else out.reshape(shape)


def _keep(where: Any, shape: tuple[int, ...]) -> np.ndarray:
    if where is None:
        return np.ones(shape, dtype=bool)
    return np.broadcast_to(to_float64(where) != 0, shape)


class _Cancelled(Exception):
    """A sum cancelled too many digits; recompute with ``more`` extra digits."""

    def __init__(self, more: int) -> None:
        super().__init__(more)
        self.more = more


_KEEP = 40  # significant digits a reference must keep after cancellation


def _check(total: Any, big: Any) -> Any:
    """Raise :class:`_Cancelled` if ``total`` kept fewer than _KEEP digits of terms of size ``big``."""
    mp = _mp()
    if not mp.isfinite(total) or big == 0 or mp.dps >= _MAX_DPS:
        return total
    if total == 0:
        raise _Cancelled(mp.dps)
    kept = mp.dps - int(mp.log10(big / abs(total)))
    if kept < _KEEP:
        raise _Cancelled(_KEEP - kept + 10)
    return total


def _add(*terms: Any) -> Any:
    """Sum of a few mpf terms, checked for cancellation."""
    mp = _mp()
    return _check(mp.fsum(terms), max((abs(t) for t in terms if mp.isfinite(t)), default=mp.zero))


def _precise(f: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``f`` with DPS digits; on cancellation rerun it with enough extra digits."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mp = _mp()
        dps = DPS
        while True:
            with mp.workdps(dps):
                try:
                    return f(*args, **kwargs)
                except _Cancelled as c:
                    dps = min(_MAX_DPS, dps + c.more)

    return wrapper


def _ratio(num: Any, den: Any) -> float:
    """``|num / den|`` as a float; ``inf`` when ``den`` is 0 and ``num`` is not, NaN-safe."""
    mp = _mp()
    if mp.isnan(num) or mp.isnan(den) or mp.isinf(den):
        return 0.0 if mp.isinf(den) and mp.isfinite(num) else math.nan
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return float(abs(num / den))
