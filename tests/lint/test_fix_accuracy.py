"""Every autofix is evaluated against mpmath: it never loses accuracy and wins >= 10 bits where the naive form fails.

For each rule the test lints a one-line function written the naive way, applies the
rule's fix with the real fixer (so it tests the text the user gets), executes both
versions on float32 inputs and measures Herbie-style bits of error: ``log2(1 + d)``
with ``d`` the number of float32 values between the result and the correctly
rounded exact value (computed with mpmath at 50 digits on the exact float32 inputs).
"Never loses accuracy" is checked pointwise with a tolerance of one bit (one
rounding of difference) over ordinary inputs and the danger zone together; the
danger-zone gain is the mean of ``bits(before) - bits(after)``.

A fix calls the file's own framework (issue 11: never a new dependency), and some framework ops are a few
bits worse than the naive form at ordinary inputs although they never overflow: each such case states the
measured loss it allows (``max_loss``) and why. Where the file already imports floatguard the fix calls
floatguard's op, and those cases keep the one-bit bound. A loss is judged in absolute terms (``metric="abs"``:
error against ``max(1, |exact|)``, what a sum of losses sees).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import mpmath as mp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from floatguard.lint import fix_source  # noqa: E402

mp.mp.dps = 50
RNG = np.random.default_rng(20240611)

PRELUDE = (
    "import math\n\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n{imports}\n\n"
    "def loss_fn(x, y=None):\n    return {expr}\n"
)


def fixed_pair(expr: str, code: str, imports: str = "") -> tuple[Callable, Callable, str]:
    """The naive function, the fixed one and the fixed source text (``imports``: more import lines)."""
    src = PRELUDE.format(expr=expr, imports=imports)
    new, n, _ = fix_source(src, codes=frozenset({code}), unsafe=True)
    assert n >= 1, f"{code}: no fix applied to {expr!r}"
    ns_before: dict = {}
    ns_after: dict = {}
    exec(compile(src, "<before>", "exec"), ns_before)
    exec(compile(new, "<after>", "exec"), ns_after)
    return ns_before["loss_fn"], ns_after["loss_fn"], new


def ordinal(a: np.ndarray) -> np.ndarray:
    """float32 -> integers in the order of the floats (adjacent floats differ by 1)."""
    i = np.asarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def bits(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Herbie's bits of error of float32 results against correctly rounded exact values."""
    approx = np.asarray(approx, dtype=np.float32)
    exact = np.asarray(exact, dtype=np.float32)
    d = np.abs(ordinal(approx) - ordinal(exact)).astype(np.float64)
    b = np.minimum(np.log2(1.0 + d), 32.0)
    nan_a, nan_e = np.isnan(approx), np.isnan(exact)
    b[nan_a != nan_e] = 32.0
    b[nan_a & nan_e] = 0.0
    return b


def f32(v: mp.mpf) -> np.float32:
    with np.errstate(over="ignore", under="ignore"):
        return np.float32(float(v))


def elementwise(f: Callable[[mp.mpf], mp.mpf]) -> Callable[[np.ndarray], np.ndarray]:
    def ref(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        return np.array([f32(f(mp.mpf(float(v)))) for v in x.ravel()], dtype=np.float32).reshape(x.shape)

    return ref


def rowwise(f: Callable[[list[mp.mpf]], list[mp.mpf] | mp.mpf]) -> Callable[[np.ndarray], np.ndarray]:
    def ref(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        out = []
        for row in x:
            r = f([mp.mpf(float(v)) for v in row])
            out.append([f32(v) for v in r] if isinstance(r, list) else f32(r))
        return np.array(out, dtype=np.float32)

    return ref


def lse(row: list[mp.mpf]) -> mp.mpf:
    return mp.log(mp.fsum(mp.exp(v) for v in row))


def softplus(v: mp.mpf) -> mp.mpf:
    return mp.log1p(mp.exp(v))


def sigmoid(v: mp.mpf) -> mp.mpf:
    return 1 / (1 + mp.exp(-v))


def uniform(lo: float, hi: float, n: int = 64, *shape: int) -> np.ndarray:
    return RNG.uniform(lo, hi, size=(n, *shape)).astype(np.float32)


def both_signs(lo: float, hi: float, n: int = 64) -> np.ndarray:
    mag = np.exp(RNG.uniform(np.log(lo), np.log(hi), size=n))
    return (mag * RNG.choice([-1.0, 1.0], size=n)).astype(np.float32)


@dataclass
class Case:
    code: str
    expr: str
    exact: Callable[..., np.ndarray]
    ordinary: np.ndarray
    danger: np.ndarray
    backend: str = "torch"
    y: Callable[[np.ndarray], np.ndarray] | None = None
    imports: str = ""  # "import floatguard\n": the file already depends on it, the fix calls floatguard's op
    max_loss: float = 1.0  # bits the fix may lose against the naive form at any point (one rounding)
    min_gain: float = 10.0  # mean bits won in the danger zone
    metric: str = "rel"  # "abs": bits of error of a loss against max(1, |exact|)


CASES = [
    Case("FG101", "torch.log(torch.sum(torch.exp(x), dim=-1))", rowwise(lse),
         RNG.normal(0, 3, (64, 8)).astype(np.float32),
         np.concatenate([RNG.normal(100, 5, (32, 8)), RNG.normal(-120, 5, (32, 8))]).astype(np.float32)),
    # NumPy's own np.logaddexp.reduce: one rounding per element, ~log2(n) bits over a row of n (1.6 at n = 8)
    Case("FG101", "np.log(np.sum(np.exp(x), axis=-1))", rowwise(lse),
         RNG.normal(0, 3, (64, 8)).astype(np.float32),
         np.concatenate([RNG.normal(100, 5, (32, 8)), RNG.normal(-120, 5, (32, 8))]).astype(np.float32), "numpy",
         max_loss=2.0),
    Case("FG101", "torch.log(torch.exp(x) + torch.exp(y))", elementwise(lambda v: v + mp.log(2)),
         RNG.normal(0, 3, 64).astype(np.float32), uniform(95, 300), y=lambda x: x),
    # F.log_softmax: up to 2.2 bits worse than the naive form at ordinary inputs, keeps 9.6 of the bits it loses
    Case("FG102", "torch.log(F.softmax(x, dim=-1))", rowwise(lambda r: [v - lse(r) for v in r]),
         RNG.normal(0, 2, (64, 6)).astype(np.float32), RNG.normal(0, 60, (64, 6)).astype(np.float32),
         max_loss=2.5, min_gain=9.0),
    # torch.softmax: up to 2.6 bits worse than the naive form at ordinary inputs
    Case("FG103", "torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True)",
         rowwise(lambda r: [mp.exp(v - lse(r)) for v in r]),
         RNG.normal(0, 2, (64, 6)).astype(np.float32), RNG.normal(100, 3, (64, 6)).astype(np.float32),
         max_loss=3.0),
    Case("FG117", "torch.log(torch.sigmoid(x))", elementwise(lambda v: -softplus(-v)),
         RNG.normal(0, 5, 128).astype(np.float32), uniform(-300, -90)),
    Case("FG105", "torch.log(1 + torch.exp(x))", elementwise(softplus),
         RNG.normal(0, 5, 128).astype(np.float32),
         np.concatenate([uniform(90, 300), uniform(-80, -20)])),
    Case("FG105", "np.log(1 + np.exp(x))", elementwise(softplus),
         RNG.normal(0, 5, 128).astype(np.float32),
         np.concatenate([uniform(90, 300), uniform(-80, -20)]), "numpy"),
    Case("FG106", "torch.log(1 + x)", elementwise(mp.log1p),
         RNG.uniform(-0.9, 10, 128).astype(np.float32), both_signs(1e-7, 1e-4)),
    Case("FG106", "np.log(1 - x)", elementwise(lambda v: mp.log1p(-v)),
         RNG.uniform(-10, 0.9, 128).astype(np.float32), both_signs(1e-7, 1e-4), "numpy"),
    Case("FG107", "torch.exp(x) - 1", elementwise(mp.expm1),
         RNG.normal(0, 5, 128).astype(np.float32), both_signs(1e-7, 1e-4)),
    Case("FG107", "np.exp(x) - 1", elementwise(mp.expm1),
         RNG.normal(0, 5, 128).astype(np.float32), both_signs(1e-7, 1e-4), "numpy"),
    Case("FG108", "torch.log(1 - torch.exp(x))", elementwise(lambda v: mp.log(-mp.expm1(v))),
         -RNG.uniform(0.01, 10, 128).astype(np.float32),
         np.concatenate([-np.exp(RNG.uniform(np.log(1e-7), np.log(1e-3), 64)), uniform(-80, -20)]).astype(np.float32)),
    Case("FG109", "torch.exp(x) / (1 + torch.exp(x))", elementwise(sigmoid),
         RNG.normal(0, 5, 128).astype(np.float32), uniform(90, 300)),
    # torch.sigmoid rounds sigmoid(-90) to 0 as the naive form does: its win is the gradient (test below)
    Case("FG109", "1 / (1 + torch.exp(-x))", elementwise(sigmoid),
         RNG.normal(0, 5, 128).astype(np.float32), uniform(-103, -89), min_gain=0.0),
    # NumPy's 1 / (1 + np.exp(-x)) is not reported (no autograd: 1 / (1 + inf) is the right 0); this form is NaN
    Case("FG109", "np.exp(x) / (1 + np.exp(x))", elementwise(sigmoid),
         RNG.normal(0, 5, 128).astype(np.float32), uniform(90, 300), "numpy"),
    Case("FG110", "torch.log(torch.prod(x, dim=-1))", rowwise(lambda r: mp.fsum(mp.log(v) for v in r)),
         RNG.uniform(0.05, 1, (64, 4)).astype(np.float32), RNG.uniform(1e-3, 0.1, (64, 64)).astype(np.float32)),
    Case("FG112", "torch.log(1 - torch.sigmoid(x))", elementwise(lambda v: -softplus(v)),
         RNG.normal(0, 5, 128).astype(np.float32), uniform(17, 200)),
    Case("FG113", "torch.sqrt(torch.exp(x))", elementwise(lambda v: mp.exp(v / 2)),
         RNG.normal(0, 10, 128).astype(np.float32), uniform(89, 176)),
    # F.binary_cross_entropy_with_logits: log(1 + exp(-|x|)) without log1p loses up to 17 bits relative to a
    # small loss (x = -10.6), under 2 bits against max(1, loss): judged as a loss, in absolute terms
    Case("FG301", 'F.binary_cross_entropy(torch.sigmoid(x), y, reduction="none")',
         elementwise(softplus),  # y = 0 below: the loss is softplus(x)
         RNG.normal(0, 4, 128).astype(np.float32), uniform(20, 90), y=np.zeros_like, max_loss=2.0, metric="abs"),
    Case("FG302", 'F.nll_loss(torch.log(F.softmax(x, dim=1)), y, reduction="none")',
         rowwise(lambda r: lse(r) - r[0]),  # y = 0 below: the loss is lse(x) - x[0]
         RNG.normal(0, 2, (64, 6)).astype(np.float32),
         np.concatenate([RNG.normal(0, 60, (64, 6))]).astype(np.float32),
         y=lambda x: np.zeros(len(x), dtype=np.int64), max_loss=1.5),
    Case("FG114", "1 - torch.exp(-x)", elementwise(lambda v: -mp.expm1(-v)),
         RNG.uniform(0.01, 10, 128).astype(np.float32),
         np.exp(RNG.uniform(np.log(1e-9), np.log(1e-4), 64)).astype(np.float32)),
    Case("FG114", "1.0 - np.exp(-x)", elementwise(lambda v: -mp.expm1(-v)),
         RNG.uniform(0.01, 10, 128).astype(np.float32),
         np.exp(RNG.uniform(np.log(1e-9), np.log(1e-4), 64)).astype(np.float32), "numpy"),
    Case("FG403", "torch.log(1e-10 + 1 - x)", elementwise(lambda v: mp.log(1 + mp.mpf(1e-10) - v)),
         RNG.uniform(-1, 0.99, 128).astype(np.float32),
         (1 - RNG.integers(0, 4, 64) * 2.0**-24).astype(np.float32)),
]

#: the same inputs where the file already imports floatguard (its ops: one bit, the original bound) or SciPy
CASES += [replace(c, imports="import floatguard\n", max_loss=1.0, min_gain=10.0, metric="rel")
          for c in CASES if c.code in ("FG102", "FG103", "FG109", "FG301", "FG302")
          or (c.code == "FG101" and c.backend == "numpy")]
CASES += [replace(c, imports="import scipy.special\n", max_loss=1.0)
          for c in CASES if c.backend == "numpy" and c.code in ("FG101", "FG109") and not c.imports]

def run(fn: Callable, case: Case, x: np.ndarray) -> np.ndarray:
    y = case.y(x) if case.y is not None else None
    if case.backend == "torch":
        ty = torch.from_numpy(np.ascontiguousarray(y)) if y is not None else None
        with torch.no_grad():
            out = fn(torch.from_numpy(x), ty)
        return out.numpy().astype(np.float32)
    with np.errstate(all="ignore"):
        return np.asarray(fn(x, y), dtype=np.float32)


def exact_of(case: Case, x: np.ndarray) -> np.ndarray:
    return case.exact(x, case.y(x) if case.y is not None else None)


def bits_abs(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Bits of error in units of the float32 spacing at ``max(1, |exact|)``: the error a sum of losses sees."""
    approx = np.asarray(approx, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float32)
    scale = np.spacing(np.maximum(np.float32(1), np.abs(exact))).astype(np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(approx - exact.astype(np.float64)) / scale
    b = np.minimum(np.log2(1.0 + np.nan_to_num(d, nan=2.0**32, posinf=2.0**32)), 32.0)
    nan_a, nan_e = np.isnan(approx), np.isnan(exact)
    b[nan_a != nan_e] = 32.0
    b[nan_a & nan_e] = 0.0
    return b


def error_bits(case: Case, approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    return bits_abs(approx, exact) if case.metric == "abs" else bits(approx, exact)


def case_id(i: int, c: Case) -> str:
    return f"{c.code}-{c.backend}{'-floatguard' if 'floatguard' in c.imports else ''}-{i}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(i, c) for i, c in enumerate(CASES)])
def test_fix_never_loses_and_wins_in_danger_zone(case: Case) -> None:
    before, after, new = fixed_pair(case.expr, case.code, case.imports)
    fix_line = new.splitlines()[-1].strip()
    # the fix calls floatguard only where the file already imports it (never a new dependency)
    assert ("floatguard." in fix_line) == ("floatguard" in case.imports) or case.code == "FG108", fix_line
    for x in (case.ordinary, case.danger):
        exact = exact_of(case, x)
        b0, b1 = error_bits(case, run(before, case, x), exact), error_bits(case, run(after, case, x), exact)
        loss = (b1 - b0).reshape(len(x), -1).max(axis=1)
        worst = int(np.argmax(loss))
        assert (loss <= case.max_loss).all(), (
            f"{case.code}: fix {fix_line!r} loses {loss[worst]:.1f} bits at x={x[worst]}")
    exact = exact_of(case, case.danger)
    gain = float(np.mean(error_bits(case, run(before, case, case.danger), exact)
                         - error_bits(case, run(after, case, case.danger), exact)))
    assert gain >= case.min_gain, f"{case.code}: only {gain:.1f} bits gained in the danger zone"


def grad_of(fn: Callable, x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    fn(t).sum().backward()
    assert t.grad is not None
    return t.grad.numpy().astype(np.float32)


@pytest.mark.parametrize("imports", ["", "import floatguard\n"], ids=["torch", "floatguard"])
def test_fg109_sigmoid_gradient_no_longer_nan(imports: str) -> None:
    """``1 / (1 + exp(-x))`` has a NaN gradient once exp overflows; the fix's gradient is finite there. floatguard's
    sigmoid keeps the gradient within a bit of the naive one everywhere; torch's backward ``y * (1 - y)`` loses
    up to 12 bits relative to a tiny gradient, so torch.sigmoid's is held to an absolute bound (one ulp of 1: the
    rounding of y near 1)."""
    before, after, new = fixed_pair("1 / (1 + torch.exp(-x))", "FG109", imports)
    assert "sigmoid(x)" in new and ("floatguard." in new) == bool(imports)
    dsig = elementwise(lambda v: sigmoid(v) * (1 - sigmoid(v)))
    ordinary, danger = RNG.normal(0, 5, 128).astype(np.float32), uniform(-200, -89)
    g0, g1, exact = grad_of(before, ordinary), grad_of(after, ordinary), dsig(ordinary)
    if imports:
        assert (bits(g1, exact) <= bits(g0, exact) + 1.0).all()
    else:
        np.testing.assert_allclose(g1, exact, rtol=0, atol=float(np.spacing(np.float32(1))))
    b0, b1 = bits(grad_of(before, danger), dsig(danger)), bits(grad_of(after, danger), dsig(danger))
    assert np.isnan(grad_of(before, danger)).all() and np.isfinite(grad_of(after, danger)).all()
    assert float(np.mean(b0 - b1)) >= 10.0


def test_fg202_vector_norm_gradient_defined_at_zero() -> None:
    """The fix keeps the value (<= 1 bit anywhere) and gives the 0 subgradient where sqrt(sum(x**2)) gives NaN."""
    before, after, new = fixed_pair("torch.sqrt(torch.sum(x ** 2, dim=-1))", "FG202")
    assert "vector_norm(x, dim=-1)" in new
    x = RNG.normal(0, 3, (64, 5)).astype(np.float32)
    exact = rowwise(lambda r: mp.sqrt(mp.fsum(v * v for v in r)))(x)
    assert (bits(after(torch.from_numpy(x)).detach().numpy(), exact)
            <= bits(before(torch.from_numpy(x)).detach().numpy(), exact) + 1.0).all()
    zero = np.zeros((4, 5), dtype=np.float32)
    assert np.isnan(grad_of(before, zero)).all()
    assert (grad_of(after, zero) == 0).all()
    np.testing.assert_allclose(grad_of(after, x), grad_of(before, x), rtol=2e-6)


def test_fg203_double_where_keeps_value_and_fixes_gradient() -> None:
    before, after, new = fixed_pair("torch.where(x > 0, torch.log(x), torch.zeros_like(x))", "FG203")
    assert "torch.log(torch.where(x > 0, x, 1.0))" in new
    x = np.array([-1.0, 0.0, 1e-30, 0.5, 3.0], dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(before(torch.from_numpy(x)).numpy(), after(torch.from_numpy(x)).numpy())
    g0, g1 = grad_of(before, x), grad_of(after, x)
    assert np.isnan(g0[1])  # log'(0) * 0 = inf * 0
    with np.errstate(divide="ignore"):
        expected = np.where(x > 0, 1 / x.astype(np.float64), 0).astype(np.float32)
    np.testing.assert_array_equal(g1, expected)


def test_fg401_finfo_fill_survives_float16() -> None:
    """-1e9 cannot be stored in float16; the dtype's own minimum can, and a fully masked row stays finite."""
    _, after, new = fixed_pair("F.softmax(x.masked_fill(y, -1e9), dim=-1)", "FG401")
    assert "torch.finfo(x.dtype).min" in new
    x = torch.from_numpy(RNG.normal(0, 1, (3, 4)).astype(np.float16))
    mask = torch.tensor([[False, True, False, True], [True] * 4, [False] * 4])
    with pytest.raises(RuntimeError):
        x.masked_fill(mask, -1e9)
    out = after(x, mask).float()
    assert torch.isfinite(out).all()
    assert (out[0, mask[0]] == 0).all()
    torch.testing.assert_close(out[1], torch.full((4,), 0.25))


def test_fg104_clamped_log_sigmoid_fix_keeps_value_and_restores_gradient() -> None:
    """log(clamp(sigmoid(x), eps, 1 - eps)) is finite but flat where it saturates; logsigmoid agrees where the
    clamp is inactive and has the right gradient (1 - sigmoid(x)) everywhere."""
    before, after, new = fixed_pair("torch.log(torch.clamp(torch.sigmoid(x), 1e-7, 1 - 1e-7))", "FG104")
    assert "F.logsigmoid(x)" in new
    inside = RNG.uniform(-12, 12, 128).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(after(torch.from_numpy(inside)).numpy(), before(torch.from_numpy(inside)).numpy(),
                                   rtol=1e-5, atol=1e-6)
    saturated = uniform(-60, -20)
    assert (grad_of(before, saturated) == 0).all()
    np.testing.assert_allclose(grad_of(after, saturated), 1 - 1 / (1 + np.exp(-saturated.astype(np.float64))),
                               rtol=1e-6)


def test_fg204_normalize_fix_agrees_and_is_finite_at_zero() -> None:
    src = ("import torch\n\n\n@torch.no_grad()\ndef unit(x):\n    return x / x.norm(dim=-1, keepdim=True)\n")
    new, n, _ = fix_source(src, codes=frozenset({"FG204"}), unsafe=True)
    assert n == 1 and "normalize(x, dim=-1)" in new
    ns0: dict = {}
    ns1: dict = {}
    exec(compile(src, "<before>", "exec"), ns0)
    exec(compile(new, "<after>", "exec"), ns1)
    x = torch.from_numpy(RNG.normal(0, 3, (32, 5)).astype(np.float32))
    torch.testing.assert_close(ns1["unit"](x), ns0["unit"](x), rtol=2e-6, atol=1e-7)
    zero = torch.zeros(2, 5)
    assert torch.isnan(ns0["unit"](zero)).all() and (ns1["unit"](zero) == 0).all()
