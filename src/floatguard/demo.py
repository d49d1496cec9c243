"""``floatguard demo``: each classic floating-point failure next to its cure.

Every row shows a naive formula, the floatguard op that replaces it and the
exact value (50 significant digits with mpmath, or with Python's ``decimal``
module when mpmath is not installed), each judged by a verdict:

``✓``            within 2 ulp of the exact value (for division: finite)
``✗ overflow``   a result (or an intermediate) beyond the format's largest number
``✗ underflow``  a result flushed to 0, or its log to ``-inf``
``✗ NaN``        an undefined operation (``inf/inf``, ``0/0``, ``-inf - -inf``)
``✗ rel. err r`` finite but more than 2 ulp away: digits lost

:func:`run_demo` prints the tables and returns the same numbers as data. NumPy
is all it needs: PyTorch (gradients, bfloat16 fallback) and ml_dtypes
(bfloat16, installed with JAX) are imported only if present, and what could not
be shown is listed at the end. The second half, silent failures found by the
monitor, the sanitizer and the linter, is :mod:`floatguard.demo_detect`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from . import ops as fg

__all__ = ["run_demo"]

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


# -- the sections -------------------------------------------------------------------
@dataclass
class _Env:
    ex: _Exact
    formats: dict[str, _Format]
    torch: Any
    torch_missing: str | None  # why torch could not be imported
    skipped: list[str]


def _naive_softmax(z: np.ndarray) -> np.ndarray:
    """The textbook softmax, max shift included."""
    e = np.exp(z - np.max(z))
    return e / np.sum(e)


def _section_exp(env: _Env) -> dict[str, Any]:
    ex = env.ex
    rows = []
    for fmt in env.formats.values():
        for x in (1000.0, -1000.0):
            rows.append(_row(f"e^{x:g}", fmt, ex, fmt.exp(x), None, ex.exp(ex.num(x)), inputs=[x]))
    formats = {
        f.name: {"max": f.max, "tiny": f.tiny, "smallest_subnormal": f.subnormal, "eps": f.eps, "source": f.source,
                 "exp_finite_nonzero": [math.log(f.subnormal) - math.log(2.0), math.log(f.max)]}
        for f in env.formats.values()
    }
    return {
        "title": "exp leaves every floating-point format",
        "why": ("e^x is inf once x > ln(max) and 0 once x < ln(smallest subnormal / 2), only 11 and -17 in "
                "float16, so any formula that exponentiates raw logits is one large input away from inf or 0."),
        "naive_code": "np.exp(x)",
        "stable_code": None,
        "rows": rows,
        "formats": formats,
        "exact_1000": ex.text(ex.exp(ex.num(1000.0)), 17),
        "exact_-1000": ex.text(ex.exp(ex.num(-1000.0)), 17),
    }


def _section_logsumexp(env: _Env) -> dict[str, Any]:
    ex, fmt = env.ex, env.formats["float64"]
    rows = []
    for z in ([1000.0, 1000.5, 999.0], [-1000.0, -1000.5, -1001.0]):
        a = np.array(z)
        with np.errstate(all="ignore"):
            naive = np.log(np.sum(np.exp(a)))
        alpha = float(np.max(a))
        terms = np.exp(a - alpha)
        rows.append(_row(_list_text(z), fmt, ex, naive, fg.logsumexp(a), ex.lse(z), log_domain=True, inputs=z,
                         alpha=alpha, shifted=[float(v) for v in a - alpha], shifted_sum=float(np.sum(terms))))
    return {
        "title": "log-sum-exp: shift by the maximum",
        "why": ("log Σ e^z = α + log Σ e^(z−α) with α = max z: every exponent is ≤ 0, so nothing overflows, and the "
                "largest term is exactly 1, so the sum cannot underflow to 0."),
        "naive_code": "np.log(np.sum(np.exp(z)))",
        "stable_code": "fg.logsumexp(z)",
        "rows": rows,
    }


def _section_log_prod(env: _Env) -> dict[str, Any]:
    ex = env.ex
    rows = []
    for name in ("float32", "float64"):
        fmt = env.formats[name]
        p = np.linspace(0.05, 0.5, 600).astype(fmt.np_type)
        with np.errstate(all="ignore"):
            prod = np.prod(p)
            naive = np.log(prod)
        exact = ex.sum(ex.log(ex.num(v)) for v in p)
        rows.append(_row(f"600 p in [0.05, 0.5], {name}", fmt, ex, naive, fg.log_prod(p), exact, log_domain=True,
                         naive_text=f"{fmt.show(float(naive))} (∏p = {fmt.show(float(prod))})",
                         inputs=p.tolist(), product=float(prod)))
    return {
        "title": "Products of probabilities: add logs instead",
        "why": ("600 probabilities multiply to less than the smallest float64 (about e^-745), so the product is 0 "
                "and its log -inf, while the sum of their logs is an ordinary number."),
        "naive_code": "np.log(np.prod(p))",
        "stable_code": "fg.log_prod(p)",
        "rows": rows,
    }


def _section_safe_div(env: _Env) -> dict[str, Any]:
    ex, fmt = env.ex, env.formats["float32"]
    f32 = np.float32
    rows = []
    cases = ((1.0, 0.0, "1 / 0", "∞"), (0.0, 0.0, "0 / 0 (a zero vector / its norm)", "undefined"))
    for a, b, what, exact_text in cases:
        av, bv = np.asarray(a, f32), np.asarray(b, f32)
        with np.errstate(all="ignore"):
            naive = av / bv
        rows.append(_row(what, fmt, ex, naive, fg.safe_div(av, bv), None, exact_text=exact_text, inputs=[a, b]))
    torch = env.torch
    if torch is not None:
        for wrt, exact_text in (("a", "∞"), ("b", "−∞")):
            grads = []
            for f in (lambda a, b: a / b, fg.safe_div):
                a = torch.tensor(1.0, requires_grad=True)
                b = torch.tensor(0.0, requires_grad=True)
                f(a, b).backward()
                grads.append((a if wrt == "a" else b).grad)
            rows.append(_row(f"∂(a/b)/∂{wrt} at a=1, b=0 (torch)", fmt, ex, grads[0], grads[1], None,
                             exact_text=exact_text, inputs=[1.0, 0.0]))
    else:
        env.skipped.append(f"gradients of a/b vs safe_div at b = 0: torch is not importable ({env.torch_missing}); "
                           "`pip install 'floatguard[torch]'` adds them")
    eps = fg.default_eps(np.float32, "safe_div")
    return {
        "title": "Division by zero: guard the denominator",
        "why": ("a/0 is inf and 0/0 is NaN, and the gradients 1/b and −a/b² are infinite at b = 0; safe_div "
                f"divides by sign(b)·max(|b|, eps) (eps = {eps:.3g} for float32) so value and gradients stay finite."),
        "naive_code": "a / b",
        "stable_code": "fg.safe_div(a, b)",
        "rows": rows,
        "eps": eps,
    }


def _softmax_exact(ex: _Exact, z: Sequence[float]) -> list[Any]:
    total = ex.sum(ex.exp(ex.num(v)) for v in z)
    return [ex.div(ex.exp(ex.num(v)), total) for v in z]


def _section_softmax(env: _Env) -> dict[str, Any]:
    ex = env.ex
    rows = []
    for z, name in (([10.0, 11.0, 12.0], "float16"), ([80.0, 90.0, 100.0], "float32")):
        fmt = env.formats[name]
        a = np.array(z, dtype=fmt.np_type)
        with np.errstate(all="ignore"):
            e = np.exp(a)
            naive = e / np.sum(e)
        stable = fg.softmax(a)
        rows.append(_row(f"{_list_text(z)} {name}", fmt, ex, naive, stable, _softmax_exact(ex, z), inputs=z,
                         stable_sum=float(np.sum(stable, dtype=np.float64))))
    return {
        "title": "softmax: inf / inf = NaN",
        "why": ("float16 ends at 65504 = e^11.09, so e^12 is inf and inf/inf is NaN (float32 ends at e^88.7); "
                "floatguard subtracts the max and computes in float64, rounding once."),
        "naive_code": "e = np.exp(z); e / e.sum()",
        "stable_code": "fg.softmax(z)",
        "rows": rows,
    }


def _section_log_softmax(env: _Env) -> dict[str, Any]:
    ex = env.ex
    rows = []
    for low, name in ((-30.0, "float16"), (-110.0, "float32")):
        fmt = env.formats[name]
        z = [0.0] + [low] * 50
        a = np.array(z, dtype=fmt.np_type)
        with np.errstate(all="ignore"):
            naive = np.log(_naive_softmax(a))
        lse = ex.lse(z)
        rows.append(_row(f"[0, {low:g} ×50] {name}", fmt, ex, naive, fg.log_softmax(a),
                         [ex.sub(ex.num(v), lse) for v in z], log_domain=True, inputs=z))
    return {
        "title": "log_softmax: never take the log of a softmax",
        "why": ("probabilities below the smallest subnormal (e^-17 in float16, e^-104 in float32) round to 0 and "
                "log(0) = -inf; z − logsumexp(z) never forms the tiny probability."),
        "naive_code": "np.log(softmax(z))",
        "stable_code": "fg.log_softmax(z)",
        "rows": rows,
    }


def _section_softplus(env: _Env) -> dict[str, Any]:
    ex = env.ex
    rows = []
    for x, name in ((30.0, "float16"), (100.0, "float32"), (-30.0, "float32"), (-30.0, "float64")):
        fmt = env.formats[name]
        a = np.asarray(x, dtype=fmt.np_type)
        with np.errstate(all="ignore"):
            naive = np.log(1 + np.exp(a))
        exact = ex.log1p(ex.exp(ex.num(x)))
        rows.append(_row(f"x = {x:g}, {name}", fmt, ex, naive, fg.softplus(a), exact, inputs=[x]))
    return {
        "title": "softplus: log(1 + e^x)",
        "why": ("for large x, e^x overflows although the answer is about x; for negative x, 1 + e^x rounds toward 1 "
                "and the digits of e^x are lost; max(x, 0) + log1p(e^−|x|) avoids both."),
        "naive_code": "np.log(1 + np.exp(x))",
        "stable_code": "fg.softplus(x)",
        "rows": rows,
    }


def _section_masked(env: _Env) -> dict[str, Any]:
    ex, fmt = env.ex, env.formats["float32"]
    scores = np.array([2.0, -1.0, 0.5], dtype=np.float32)
    mask = np.zeros(3, dtype=bool)  # every key masked out
    filled = np.where(mask, scores, np.float32(-np.inf))
    zeros = [ex.num(0.0)] * 3
    with np.errstate(all="ignore"):
        naive = _naive_softmax(filled)
    rows = [
        _row("masked_fill(-inf), all keys masked", fmt, ex, naive, fg.softmax(filled), zeros,
             exact_text="[0 ×3] (empty sum)", inputs=filled.tolist()),
        _row("where=mask, mask all False", fmt, ex, naive, fg.softmax(scores, where=mask), zeros,
             exact_text="[0 ×3] (empty sum)", inputs=scores.tolist()),
    ]
    return {
        "title": "A fully masked attention row",
        "why": ("with every key masked the scores are all -inf, and even the max-shifted softmax computes "
                "-inf − (-inf) = NaN; floatguard treats the row as an empty sum: zeros, with gradient 0."),
        "naive_code": "e = np.exp(z - z.max()); e / e.sum()",
        "stable_code": "fg.softmax(z) / fg.softmax(scores, where=mask)",
        "rows": rows,
    }


_SECTIONS: list[tuple[str, Callable[[_Env], dict[str, Any]]]] = [
    ("exp", _section_exp),
    ("logsumexp", _section_logsumexp),
    ("log_prod", _section_log_prod),
    ("safe_div", _section_safe_div),
    ("softmax", _section_softmax),
    ("log_softmax", _section_log_softmax),
    ("softplus", _section_softplus),
    ("masked_softmax", _section_masked),
]


def _list_text(z: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in z) + "]"


# -- printing -----------------------------------------------------------------------
def _default_console() -> Any:
    from rich.console import Console

    stream = sys.stdout
    try:
        "✓✗αΣ∏−∂×≤".encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
    if not stream.isatty() and "COLUMNS" not in os.environ:
        return Console(highlight=False, width=120)  # piped or captured: wide enough for the tables
    return Console(highlight=False)


def _verdict_text(verdict: str, console: Any) -> Any:
    from rich.text import Text

    ok = verdict.startswith("✓")
    if not (console.encoding or "").lower().startswith("utf"):  # e.g. an ASCII-only pipe: keep ✓/✗ apart
        verdict = verdict.replace("✓", "ok").replace("✗", "FAIL:")
    return Text(verdict, style="bold green" if ok else "bold red")


def _print_header(console: Any, index: int, section: dict[str, Any]) -> None:
    from rich.text import Text

    console.print()
    console.rule(Text(f"{index}. {section['title']}", style="bold"))
    console.print(Text(section["why"], style="italic"))
    code = f"naive: {section['naive_code']}"
    if section["stable_code"]:
        code += f"    floatguard: {section['stable_code']}"
    console.print(Text(code, style="dim"))


def _print_exp(console: Any, section: dict[str, Any], ex: _Exact) -> None:
    from rich.table import Table
    from rich.text import Text

    formats = section["formats"]
    table = Table(header_style="bold")
    table.add_column("")
    for name in formats:
        table.add_column(name, justify="right", overflow="fold")
    for label, key in (("max", "max"), ("min normal (tiny)", "tiny"), ("min subnormal", "smallest_subnormal"),
                       ("eps", "eps")):
        table.add_row(Text(label), *(Text(f"{info[key]:.4g}") for info in formats.values()))
    table.add_row(Text("e^x finite and ≠ 0 for"),
                  *(Text("{:.4g} < x < {:.4g}".format(*info["exp_finite_nonzero"])) for info in formats.values()),
                  end_section=True)
    for case in ("e^1000", "e^-1000"):
        by_fmt = {row["dtype"]: row for row in section["rows"] if row["case"] == case}
        table.add_row(Text(f"naive {case}"),
                      *(Text.assemble(by_fmt[n]["naive_text"], " ", _verdict_text(by_fmt[n]["naive_verdict"], console))
                        for n in formats))
    console.print(table)
    console.print(Text(f"exact ({ex.short}): e^1000 = {section['exact_1000']}, e^-1000 = {section['exact_-1000']}"))


def _print_rows(console: Any, section: dict[str, Any], ex: _Exact) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold")
    for col in ("case", "naive", "", "floatguard", "", f"exact ({ex.short})"):
        table.add_column(col, justify="right" if col in ("naive", "floatguard") or col.startswith("exact") else "left",
                         overflow="fold")
    for row in section["rows"]:
        table.add_row(Text(row["case"]), Text(row["naive_text"]), _verdict_text(row["naive_verdict"], console),
                      Text(row["stable_text"]), _verdict_text(row["stable_verdict"], console), Text(row["exact_text"]))
    console.print(table)


def _print_lse_steps(console: Any, section: dict[str, Any]) -> None:
    from rich.text import Text

    for row in section["rows"]:
        alpha = row["alpha"]
        terms = " + ".join(f"e^{s:g}" for s in row["shifted"])
        console.print(Text(f"{row['case']}: α = max z = {alpha:g};  log Σ e^z = α + log Σ e^(z−α) = "
                           f"{alpha:g} + log({terms}) = {alpha:g} + log({row['shifted_sum']:.6g}) "
                           f"= {row['stable_text']}"))


# -- entry point --------------------------------------------------------------------
def run_demo(console: Any = None) -> dict[str, Any]:
    """Print each failure and its cure as tables on ``console``, then the tools that find them; return the numbers.

    After the eight cures come the detection sections of :mod:`floatguard.demo_detect`:
    the training monitor on a silently failing run (needs torch), the sanitizer naming the
    first bad op of a run that goes NaN, and the linter flagging that line before it runs.

    ``console`` is a :class:`rich.console.Console` (default: standard output; plain
    text when that is not a terminal). The result is::

        {"exact_method": str, "bfloat16": "ml_dtypes" | "torch" | None, "skipped": [str, ...],
         "sections": {key: {"title", "why", "naive_code", "stable_code", "rows": [row, ...], ...}},
         "detection": {"monitor", "sanitizer", "lint"},  # see floatguard.demo_detect.run_detection
         "summary": {"naive_failed", "stable_failed", "compared"}}

    where each row holds ``case``, ``dtype``, ``inputs`` and the ``naive``, ``stable``
    (floatguard) and ``exact`` values as Python floats (lists for arrays; ``exact``
    is None where float64 cannot hold it, or where no finite answer exists), their
    printed ``*_text`` and the ``naive_verdict`` / ``stable_verdict`` strings.
    """
    from rich.text import Text

    if console is None:
        console = _default_console()
    ex = _Exact()
    torch, torch_missing = _optional("torch")
    skipped: list[str] = []
    formats = {"float16": _numpy_format(np.float16, 6)}
    bf16, why = _bfloat16(torch)
    if bf16 is not None:
        formats["bfloat16"] = bf16
    else:
        skipped.append(why or "bfloat16")
    formats["float32"] = _numpy_format(np.float32, 10)
    formats["float64"] = _numpy_format(np.float64, 17)
    env = _Env(ex, formats, torch, torch_missing, skipped)

    console.print(Text("floatguard demo: floating-point failures and their cures", style="bold"))
    console.print(Text(f"exact values: {ex.name}", style="dim"))
    console.print(Text("✓ within 2 ulp of exact (division: finite)   "
                       "✗ overflow, underflow, NaN or rel. err (digits lost)", style="dim"))
    sections: dict[str, Any] = {}
    for index, (key, build) in enumerate(_SECTIONS, 1):
        section = build(env)
        sections[key] = section
        _print_header(console, index, section)
        if key == "exp":
            _print_exp(console, section, ex)
        else:
            _print_rows(console, section, ex)
        if key == "logsumexp":
            _print_lse_steps(console, section)

    from .demo_detect import run_detection

    detection = run_detection(console, torch, torch_missing, skipped, first=len(_SECTIONS) + 1)
    compared = [r for s in sections.values() for r in s["rows"] if r["stable_verdict"] is not None]
    summary = {
        "compared": len(compared),
        "naive_failed": sum(not r["naive_verdict"].startswith("✓") for r in compared),
        "stable_failed": sum(not r["stable_verdict"].startswith("✓") for r in compared),
    }
    console.print()
    console.rule(Text("summary", style="bold"))
    console.print(Text(f"naive formulas: {summary['naive_failed']} of {summary['compared']} results wrong; "
                       f"floatguard: {summary['compared'] - summary['stable_failed']} of {summary['compared']} ✓"))
    for item in skipped:
        console.print(Text(f"skipped: {item}", style="yellow"))
    if not skipped:
        console.print(Text("skipped: nothing (torch and bfloat16 available)", style="dim"))
    return {
        "exact_method": ex.name,
        "bfloat16": None if bf16 is None else bf16.source,
        "skipped": skipped,
        "sections": sections,
        "detection": detection,
        "summary": summary,
    }
