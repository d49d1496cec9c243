"""``floatguard demo``: the eight cures, one section each (naive formula, floatguard op, exact value
per format), built as data for :func:`floatguard.demo.run_demo` to print."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ops as fg
from .demo_numbers import _Exact, _Format, _row


# -- the sections -------------------------------------------------------------------
@dataclass
class _Env:
    ex: _Exact
    formats: dict[str, _Format]
    torch: Any
    torch_missing: str | None  # why torch could not be imported
    skipped: list[str]


def _section(title: str, why: str, naive_code: str, stable_code: str | None, rows: list[Any],
             **extra: Any) -> dict[str, Any]:
    """One section as :func:`floatguard.demo.run_demo` prints it: the failure and why it happens, the naive
    code and floatguard's, one row per case, then any section-specific data."""
    return {"title": title, "why": why, "naive_code": naive_code, "stable_code": stable_code, "rows": rows, **extra}


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
    return _section(
        "exp leaves every floating-point format",
        ("e^x is inf once x > ln(max) and 0 once x < ln(smallest subnormal / 2), only 11 and -17 in "
         "float16, so any formula that exponentiates raw logits is one large input away from inf or 0."),
        "np.exp(x)",
        None,
        rows,
        formats=formats,
        exact_1000=ex.text(ex.exp(ex.num(1000.0)), 17),
        **{"exact_-1000": ex.text(ex.exp(ex.num(-1000.0)), 17)},
    )


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
    return _section(
        "log-sum-exp: shift by the maximum",
        ("log Σ e^z = α + log Σ e^(z−α) with α = max z: every exponent is ≤ 0, so nothing overflows, and the "
         "largest term is exactly 1, so the sum cannot underflow to 0."),
        "np.log(np.sum(np.exp(z)))",
        "fg.logsumexp(z)",
        rows,
    )


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
    return _section(
        "Products of probabilities: add logs instead",
        ("600 probabilities multiply to less than the smallest float64 (about e^-745), so the product is 0 "
         "and its log -inf, while the sum of their logs is an ordinary number."),
        "np.log(np.prod(p))",
        "fg.log_prod(p)",
        rows,
    )


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
    return _section(
        "Division by zero: guard the denominator",
        ("a/0 is inf and 0/0 is NaN, and the gradients 1/b and −a/b² are infinite at b = 0; safe_div "
         f"divides by sign(b)·max(|b|, eps) (eps = {eps:.3g} for float32) so value and gradients stay finite."),
        "a / b",
        "fg.safe_div(a, b)",
        rows,
        eps=eps,
    )


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
    return _section(
        "softmax: inf / inf = NaN",
        ("float16 ends at 65504 = e^11.09, so e^12 is inf and inf/inf is NaN (float32 ends at e^88.7); "
         "floatguard subtracts the max and computes in float64, rounding once."),
        "e = np.exp(z); e / e.sum()",
        "fg.softmax(z)",
        rows,
    )


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
    return _section(
        "log_softmax: never take the log of a softmax",
        ("probabilities below the smallest subnormal (e^-17 in float16, e^-104 in float32) round to 0 and "
         "log(0) = -inf; z − logsumexp(z) never forms the tiny probability."),
        "np.log(softmax(z))",
        "fg.log_softmax(z)",
        rows,
    )


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
    return _section(
        "softplus: log(1 + e^x)",
        ("for large x, e^x overflows although the answer is about x; for negative x, 1 + e^x rounds toward 1 "
         "and the digits of e^x are lost; max(x, 0) + log1p(e^−|x|) avoids both."),
        "np.log(1 + np.exp(x))",
        "fg.softplus(x)",
        rows,
    )


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
    return _section(
        "A fully masked attention row",
        ("with every key masked the scores are all -inf, and even the max-shifted softmax computes "
         "-inf − (-inf) = NaN; floatguard treats the row as an empty sum: zeros, with gradient 0."),
        "e = np.exp(z - z.max()); e / e.sum()",
        "fg.softmax(z) / fg.softmax(scores, where=mask)",
        rows,
    )


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
