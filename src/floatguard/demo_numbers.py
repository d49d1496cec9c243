"""``floatguard demo``: the numbers behind each row: exact references (mpmath, or Python's
``decimal``), the floating-point formats shown, and the verdict of a value against its exact one."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

DIGITS = 50  # significant digits of the exact reference values

_SEVERITY = {"ok": 0, "inaccurate": 1, "underflow": 2, "overflow": 3, "nan": 4}
_LABEL = {"ok": "✓", "underflow": "✗ underflow", "overflow": "✗ overflow", "nan": "✗ NaN"}


# -- exact reference arithmetic ----------------------------------------------------
class _Exact:
    """50-digit arithmetic: mpmath when importable, else the standard ``decimal`` module."""

    def __init__(self) -> None:
        try:
            import mpmath
        except ImportError:
            mpmath = None
        if mpmath is not None:
            self._mp: Any = mpmath.MPContext()
            self._mp.dps = DIGITS
            self.short = "mpmath"
            self.name = f"mpmath {mpmath.__version__}, {DIGITS} significant digits"
        else:
            import decimal

            self._mp = None
            self._dec = decimal.Context(prec=DIGITS, Emax=10**6, Emin=-(10**6))
            self.short = "decimal"
            self.name = f"Python's decimal module, {DIGITS} significant digits (mpmath is not installed)"

    def num(self, x: float) -> Any:
        """The float ``x`` exactly."""
        return self._mp.mpf(float(x)) if self._mp is not None else Decimal(float(x))

    def exp(self, v: Any) -> Any:
        return self._mp.exp(v) if self._mp is not None else self._dec.exp(v)

    def log(self, v: Any) -> Any:
        return self._mp.log(v) if self._mp is not None else self._dec.ln(v)

    def add(self, a: Any, b: Any) -> Any:
        return a + b if self._mp is not None else self._dec.add(a, b)

    def sub(self, a: Any, b: Any) -> Any:
        return a - b if self._mp is not None else self._dec.subtract(a, b)

    def div(self, a: Any, b: Any) -> Any:
        return a / b if self._mp is not None else self._dec.divide(a, b)

    def sum(self, vs: Iterable[Any]) -> Any:
        total = self.num(0.0)
        for v in vs:
            total = self.add(total, v)
        return total

    def log1p(self, v: Any) -> Any:
        """``log(1 + v)`` to full precision even for tiny ``v`` (where ``1 + v`` would round)."""
        if self._mp is not None:
            return self._mp.log1p(v)
        import decimal

        wide = decimal.Context(prec=DIGITS + max(0, -v.adjusted()), Emax=10**6, Emin=-(10**6))
        return self._dec.plus(wide.ln(wide.add(1, v)))  # 1 + v exact in ``wide``, then rounded once

    def lse(self, xs: Sequence[float]) -> Any:
        """``log Σ e^x`` as ``m + log1p(Σ_{j≠k} e^(x_j − m))``: every digit, however small the other terms."""
        k = max(range(len(xs)), key=lambda i: xs[i])
        m = self.num(xs[k])
        rest = self.sum(self.exp(self.sub(self.num(x), m)) for i, x in enumerate(xs) if i != k)
        return self.add(m, self.log1p(rest))

    def isinf(self, v: Any) -> bool:
        return bool(self._mp.isinf(v)) if self._mp is not None else v.is_infinite()

    def to_float(self, v: Any) -> float | None:
        """``v`` rounded to float64, or None where float64 cannot hold it (beyond max, below subnormals)."""
        f = float(v)
        if (math.isinf(f) and not self.isinf(v)) or (f == 0 and v != 0):
            return None
        return f

    def text(self, v: Any, digits: int) -> str:
        if self.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        d = Decimal(self._mp.nstr(v, DIGITS) if self._mp is not None else str(v))
        mant, _, expo = format(d, f".{digits - 1}e").partition("e")
        e = int(expo)
        if -4 <= e < digits:  # the layout of Python's "g" format, without its float64 rounding
            return _trim(format(d, f".{digits - 1 - e}f"))
        return f"{_trim(mant)}e{e:+03d}"


def _trim(s: str) -> str:
    """Drop trailing zeros after a decimal point: ``30.0000`` -> ``30``, ``1.970`` -> ``1.97``."""
    return s.rstrip("0").rstrip(".") if "." in s else s


# -- floating-point formats -------------------------------------------------------
@dataclass(frozen=True)
class _Format:
    """A floating-point format: its limits and how to compute/print in it."""

    name: str
    max: float
    tiny: float  # smallest normal
    subnormal: float  # smallest subnormal
    eps: float
    source: str  # "numpy", "ml_dtypes" or "torch"
    exact_digits: int
    np_type: Any = None  # NumPy scalar type, None when only torch has the format
    torch_dtype: Any = None

    def ulp(self, x: float) -> float:
        ax = min(abs(x), self.max)
        if ax < self.tiny:
            return self.subnormal
        return math.ldexp(self.eps, math.frexp(ax)[1] - 1)

    def show(self, v: float) -> str:
        if v == 0 or not math.isfinite(v):
            return str(float(v))
        if self.np_type is not None:
            return str(self.np_type(v))
        return f"{v:.4g}"

    def exp(self, x: float) -> float:
        if self.np_type is not None:
            with np.errstate(all="ignore"):
                return float(np.exp(np.asarray(x, dtype=self.np_type)))
        import torch

        return float(torch.exp(torch.tensor(x, dtype=self.torch_dtype)))


def _numpy_format(t: Any, digits: int) -> _Format:
    fi = np.finfo(t)
    return _Format(np.dtype(t).name, float(fi.max), float(fi.smallest_normal), float(fi.smallest_subnormal),
                   float(fi.eps), "numpy", digits, t)


def _optional(module: str) -> tuple[Any, str | None]:
    """``(module, None)``, or ``(None, why)`` when it cannot be imported."""
    try:
        return __import__(module), None
    except Exception as exc:  # an optional dependency may fail in any way; the demo goes on
        return None, f"{type(exc).__name__}: {exc}"


def _bfloat16(torch: Any) -> tuple[_Format | None, str | None]:
    """bfloat16 from ml_dtypes (comes with JAX) or else PyTorch; or the reason it is skipped."""
    ml_dtypes, _ = _optional("ml_dtypes")
    if ml_dtypes is not None:
        fi = ml_dtypes.finfo(ml_dtypes.bfloat16)
        return _Format("bfloat16", float(fi.max), float(fi.smallest_normal), float(fi.smallest_subnormal),
                       float(fi.eps), "ml_dtypes", 5, ml_dtypes.bfloat16), None
    if torch is not None:
        fi = torch.finfo(torch.bfloat16)
        tiny, eps = float(fi.smallest_normal), float(fi.eps)
        return _Format("bfloat16", float(fi.max), tiny, tiny * eps, eps, "torch", 5, None, torch.bfloat16), None
    return None, ("bfloat16: NumPy has no bfloat16 and neither ml_dtypes (installed with jax) nor torch is "
                  "importable; `pip install ml_dtypes` or 'floatguard[torch]' adds it")


# -- verdicts ----------------------------------------------------------------------
def _judge(v: float, e: Any, fmt: _Format, ex: _Exact, log_domain: bool) -> tuple[str, float]:
    """Failure kind of the computed ``v`` against the exact ``e`` (None: only finiteness is asked)."""
    if math.isnan(v):
        return "nan", math.nan
    if e is None:
        return ("ok", 0.0) if math.isfinite(v) else ("overflow", math.inf)
    if math.isinf(v):
        if ex.isinf(e) and (e > 0) == (v > 0):
            return "ok", 0.0
        return ("underflow" if log_domain and v < 0 else "overflow"), math.inf
    if ex.isinf(e):
        return "inaccurate", math.inf
    ef = float(e)
    if v == 0 and e != 0 and not log_domain and abs(ef) < fmt.tiny:
        return "underflow", 1.0
    err = abs(v - ef)
    if err <= 2 * fmt.ulp(ef):
        return "ok", 0.0
    return "inaccurate", err / abs(ef) if ef != 0 else math.inf


def _verdict(values: list[float], exact: list[Any] | None, fmt: _Format, ex: _Exact, log_domain: bool) -> str:
    worst, rel = "ok", 0.0
    for i, v in enumerate(values):
        kind, r = _judge(v, None if exact is None else exact[i], fmt, ex, log_domain)
        if _SEVERITY[kind] > _SEVERITY[worst]:
            worst, rel = kind, r
        elif kind == worst == "inaccurate":
            rel = max(rel, r)
    return f"✗ rel. err {rel:.1g}" if worst == "inaccurate" else _LABEL[worst]


def _floats(a: Any) -> list[float]:
    """Values of a NumPy/torch array or scalar as a flat list of Python floats."""
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().double().cpu().numpy()
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def _show(values: list[float], show: Callable[[float], str], scalar: bool) -> str:
    """Printed values; runs of three or more equal entries as ``v ×n``."""
    texts = [show(v) for v in values]
    if scalar:
        return texts[0]
    parts: list[str] = []
    i = 0
    while i < len(texts):
        j = i
        while j < len(texts) and texts[j] == texts[i]:
            j += 1
        n = j - i
        parts.extend([f"{texts[i]} ×{n}"] if n > 2 else texts[i:j])
        i = j
    return "[" + ", ".join(parts) + "]"


def _row(case: str, fmt: _Format, ex: _Exact, naive: Any, stable: Any, exact: Any, *,
         log_domain: bool = False, exact_text: str | None = None, naive_text: str | None = None,
         inputs: Sequence[float] | None = None, **extra: Any) -> dict[str, Any]:
    """One demo row: values as Python floats (lists for arrays), their texts and verdicts.

    ``exact`` is an exact number or a list of them; ``None`` means the problem has no
    finite answer and a result passes by being finite.
    """
    scalar = not isinstance(exact, list) and np.ndim(naive) == 0
    nv = _floats(naive)
    sv = None if stable is None else _floats(stable)
    ev = None if exact is None else (exact if isinstance(exact, list) else [exact])
    row: dict[str, Any] = {
        "case": case,
        "dtype": fmt.name,
        "inputs": None if inputs is None else [float(x) for x in inputs],
        "naive": nv[0] if scalar else nv,
        "stable": None if sv is None else (sv[0] if scalar else sv),
        "exact": None if ev is None else (ex.to_float(ev[0]) if scalar else [ex.to_float(e) for e in ev]),
        "naive_text": naive_text or _show(nv, fmt.show, scalar),
        "stable_text": None if sv is None else _show(sv, fmt.show, scalar),
        "exact_text": exact_text or _show(ev or [], lambda e: ex.text(e, fmt.exact_digits), scalar),
        "naive_verdict": _verdict(nv, ev, fmt, ex, log_domain),
        "stable_verdict": None if sv is None else _verdict(sv, ev, fmt, ex, log_domain),
    }
    row.update(extra)
    return row
