"""Differential tests of every fix kind: the fixed code computes the same function as the code it replaces.

For each rule with a fix and each framework spelling, a one-expression function is linted and fixed
through the public API (:func:`floatguard.lint.fix_source`, unsafe fixes included), then the original and
the fixed function are run on random and edge inputs:

- in float64, where the original is finite, the fixed result agrees with it to 1e-6 relative, 1e-12 absolute
  (the same mathematical function: no operand dropped, no axis changed; the tolerance is the naive float64
  form's own error where it cancels, ~30 bits at ``log(1 - exp(-1e-9))``);
- in float32, where the original evaluated in float64 is finite and representable in float32 (the exact
  value is), the fixed result is finite and within a few float32 roundings of it (1e-15 absolute, the float64
  reference's own error), whether or not the original float32 code overflowed.

Fixes that change the value by design are not here: FG302's ``cross_entropy(softmax(x))`` -> ``cross_entropy(x)``
and FG303's ``from_logits`` (a double softmax removed), FG104's clamped form (differs where the clamp acts),
FG403 (moves an absorbed eps).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from floatguard.lint import fix_source, lint_source

torch = pytest.importorskip("torch")

HEADERS = {
    "numpy": "import numpy as np\n",
    "scipy": "import numpy as np\nimport scipy.special\n",
    "torch": "import torch\nimport torch.nn.functional as F\n",
    "floatguard": "import torch\nimport torch.nn.functional as F\nimport floatguard\n",
    "jax": "import jax\nimport jax.numpy as jnp\n",
}
#: the function's name tells the linter the code is differentiated (FG201/FG202 look only there)
TEMPLATE = "{header}\n\ndef forward(x, y, start_transitions):\n    return {expr}\n"


@dataclass(frozen=True)
class Variant:
    code: str
    frame: str  # a key of HEADERS: the imports of the file
    expr: str
    inputs: str = "real"  # real | moderate | positive | unit | negative | small
    fixed: str = ""  # a substring the fixed expression must contain (the framework's op)
    rtol32: float = 2e-6
    atol32: float = 0.0


V = Variant
VARIANTS = [
    V("FG101", "torch", "torch.log(torch.sum(torch.exp(x), dim=-1))", fixed="torch.logsumexp"),
    V("FG101", "torch", "torch.log(torch.sum(torch.exp(x)))", fixed="torch.logsumexp(torch.flatten"),
    V("FG101", "torch", "torch.log(torch.exp(x).mean(-1))", fixed="math.log(x.shape[-1])"),
    V("FG101", "torch", "torch.log(torch.exp(x) + torch.exp(y))", fixed="torch.logaddexp"),
    # the CRF forward pass: every operand of the sum survives the rewrite
    V("FG101", "torch", "torch.log(torch.sum(torch.exp(start_transitions + x), dim=-1))",
      fixed="torch.logsumexp(start_transitions + x"),
    V("FG101", "torch", "(start_transitions + x.unsqueeze(1) + y.unsqueeze(2)).exp().sum(1).log()",
      fixed="start_transitions + x.unsqueeze(1) + y.unsqueeze(2)", rtol32=8e-6),
    V("FG101", "numpy", "np.log(np.sum(np.exp(x), axis=-1))", fixed="np.logaddexp.reduce", rtol32=4e-6),
    V("FG101", "numpy", "np.log(np.sum(np.exp(x)))", fixed="axis=None", rtol32=1e-5),
    V("FG101", "numpy", "np.log(np.mean(np.exp(x), axis=1, keepdims=True))", fixed="np.logaddexp.reduce",
      rtol32=4e-6, atol32=1e-6),
    V("FG101", "scipy", "np.log(np.sum(np.exp(x), axis=-1))", fixed="scipy.special.logsumexp"),
    V("FG101", "numpy", "np.log(np.exp(x) + np.exp(y))", fixed="np.logaddexp"),
    V("FG101", "jax", "jnp.log(jnp.sum(jnp.exp(x), axis=-1))", fixed="jax.nn.logsumexp"),
    V("FG101", "jax", "jnp.log(jnp.mean(jnp.exp(x), axis=0))", fixed="jax.nn.logsumexp", atol32=1e-6),
    V("FG102", "torch", "torch.log(F.softmax(x, dim=-1))", fixed="F.log_softmax(x, dim=-1)", rtol32=4e-6,
      atol32=1e-6),
    V("FG102", "torch", "x.softmax(-1).log()", fixed="x.log_softmax(-1)", rtol32=4e-6, atol32=1e-6),
    V("FG102", "floatguard", "torch.log(torch.softmax(x, 1))", fixed="floatguard.log_softmax"),
    V("FG102", "jax", "jnp.log(jax.nn.softmax(x, axis=-1))", fixed="jax.nn.log_softmax", rtol32=4e-6,
      atol32=1e-6),
    V("FG103", "torch", "torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True)", fixed="torch.softmax",
      rtol32=4e-6, atol32=1e-30),
    V("FG103", "numpy", "np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)", fixed="floatguard.softmax",
      atol32=1e-30),
    V("FG103", "scipy", "np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)", fixed="scipy.special.softmax",
      rtol32=4e-6, atol32=1e-30),
    V("FG103", "jax", "jnp.exp(x) / jnp.exp(x).sum(axis=-1, keepdims=True)", fixed="jax.nn.softmax", rtol32=4e-6,
      atol32=1e-30),
    V("FG117", "torch", "torch.log(torch.sigmoid(x))", fixed="F.logsigmoid"),
    V("FG117", "torch", "torch.log(torch.sigmoid(x)) ** 2", fixed="F.logsigmoid", rtol32=4e-6),
    V("FG117", "scipy", "np.log(scipy.special.expit(x))", fixed="scipy.special.log_expit"),
    V("FG117", "jax", "jnp.log(jax.nn.sigmoid(x))", fixed="jax.nn.log_sigmoid"),
    V("FG105", "torch", "torch.log(1 + torch.exp(x))", fixed="F.softplus"),
    V("FG105", "numpy", "np.log1p(np.exp(x))", fixed="np.logaddexp(0, x)"),
    V("FG105", "jax", "jnp.log(1 + jnp.exp(x))", fixed="jax.nn.softplus"),
    V("FG106", "torch", "torch.log(1 + x)", "unit", fixed="torch.log1p(x)"),
    V("FG106", "numpy", "np.log(1 - x)", "unit", fixed="np.log1p(-x)"),
    V("FG106", "jax", "jnp.log(1 + y * x)", "unit", fixed="jnp.log1p(y * x)"),
    V("FG106", "torch", "(1 + x).log()", "unit", fixed="x.log1p()"),
    V("FG107", "torch", "torch.exp(x) - 1", "small", fixed="torch.expm1(x)"),
    V("FG107", "numpy", "np.exp(x) - 1", "small", fixed="np.expm1(x)"),
    V("FG107", "torch", "x.exp() - 1", "small", fixed="x.expm1()"),
    V("FG108", "torch", "torch.log(1 - torch.exp(x))", "negative", fixed="floatguard.log1mexp"),
    V("FG108", "floatguard", "torch.log(1 - torch.exp(x))", "negative", fixed="floatguard.log1mexp"),
    V("FG109", "torch", "1 / (1 + torch.exp(-x))", fixed="torch.sigmoid(x)", atol32=1e-38),
    V("FG109", "torch", "torch.exp(x) / (1 + torch.exp(x))", fixed="torch.sigmoid(x)", atol32=1e-38),
    V("FG109", "numpy", "np.exp(x) / (1 + np.exp(x))", fixed="np.exp(np.minimum(x, 0))", atol32=1e-38),
    V("FG109", "scipy", "np.exp(x) / (1 + np.exp(x))", fixed="scipy.special.expit(x)", atol32=1e-38),
    V("FG109", "floatguard", "1 / (1 + torch.exp(-x))", fixed="floatguard.sigmoid(x)"),
    V("FG109", "jax", "1 / (1 + jnp.exp(-x))", fixed="jax.nn.sigmoid(x)", atol32=1e-38),
    V("FG110", "torch", "torch.log(torch.prod(x, dim=-1))", "positive", fixed="torch.sum(torch.log(x), dim=-1)",
      atol32=1e-6),
    V("FG110", "numpy", "np.log(np.prod(x, axis=0))", "positive", fixed="np.sum(np.log(x), axis=0)", atol32=1e-6),
    V("FG110", "jax", "jnp.log(jnp.prod(x))", "positive", fixed="jnp.sum(jnp.log(x))", rtol32=1e-5),
    V("FG112", "torch", "torch.log(1 - torch.sigmoid(x))", "moderate", fixed="F.logsigmoid(-x)", atol32=1e-6),
    V("FG112", "jax", "jnp.log(1 - jax.nn.sigmoid(x))", "moderate", fixed="jax.nn.log_sigmoid(-x)", atol32=1e-6),
    V("FG113", "torch", "torch.sqrt(torch.exp(x))", fixed="torch.exp(0.5 * x)"),
    V("FG113", "numpy", "np.exp(x) ** 0.5", fixed="np.exp(0.5 * x)"),
    V("FG113", "torch", "x.exp().sqrt()", fixed="(0.5 * x).exp()"),
    V("FG114", "torch", "1 - torch.exp(-x)", "small", fixed="-torch.expm1(-x)"),
    V("FG114", "numpy", "1.0 - np.exp(-y * x)", "small", fixed="-np.expm1(-y * x)"),
    V("FG114", "jax", "1 - jnp.exp(-x)", "small", fixed="-jnp.expm1(-x)"),
    V("FG201", "torch", "x / x.norm(dim=-1, keepdim=True)", fixed="F.normalize(x, dim=-1)"),
    V("FG202", "torch", "torch.sqrt(torch.sum(x ** 2, dim=-1))", fixed="torch.linalg.vector_norm(x, dim=-1)"),
    V("FG203", "torch", "torch.where(x > 0, torch.log(x), torch.zeros_like(x))",
      fixed="torch.log(torch.where(x > 0, x, 1.0))"),
    V("FG203", "jax", "jnp.where(x > 0, jnp.sqrt(x), 0.0)", fixed="jnp.sqrt(jnp.where(x > 0, x, 1.0))"),
    # torch's binary_cross_entropy clamps the log at -100: compared where it does not (|x| <= 20)
    V("FG301", "torch", 'F.binary_cross_entropy(torch.sigmoid(x), y.sigmoid(), reduction="none")', "moderate",
      fixed="F.binary_cross_entropy_with_logits(x, y.sigmoid()", atol32=2e-6),
    V("FG301", "floatguard", "F.binary_cross_entropy(torch.sigmoid(x), y.sigmoid())", "moderate",
      fixed="floatguard.binary_cross_entropy_with_logits(x, y.sigmoid()"),
]
#: FG302's nll_loss needs integer targets: its own test below


def inputs(kind: str, rng: np.random.Generator, shape: tuple[int, ...] = (6, 5)) -> np.ndarray:
    """Random values of the kind plus edge values: 0, tiny and huge magnitudes, the float32 overflow edge."""
    n = int(np.prod(shape))
    if kind == "positive":
        base = np.exp(rng.uniform(-60, 3, n))
        edges = np.array([1e-30, 1e-7, 0.5, 1.0, 2.0])
    elif kind == "unit":  # where log(1 + x) and log(1 - x) are defined
        base = rng.uniform(-0.99, 0.99, n) * np.exp(rng.uniform(-18, 0, n))
        edges = np.array([0.0, 1e-9, -1e-9, 0.5, -0.5])
    elif kind == "negative":
        base = -np.exp(rng.uniform(-18, 4, n))
        edges = np.array([-1e-9, -1e-3, -np.log(2), -20.0, -100.0])
    elif kind == "moderate":  # |x| <= 20: the naive float64 form of log(1 - sigmoid(x)) still holds 9 digits
        base = rng.uniform(-20, 20, n)
        edges = np.array([0.0, 17.0, 19.5, -19.5, -17.0])
    elif kind == "small":
        base = rng.choice([-1, 1], n) * np.exp(rng.uniform(-20, 1, n))
        edges = np.array([0.0, 1e-12, -1e-12, 1e-5, -1e-5])
    else:
        base = rng.normal(0, 40, n)
        edges = np.array([0.0, -1e-30, 95.0, -95.0, 300.0, -300.0, 88.5, -104.0])
    out = base.copy()
    out[: len(edges)] = edges
    rng.shuffle(out)
    return out.reshape(shape)


def namespace(frame: str) -> Callable[[np.ndarray], Any]:
    if frame == "jax":
        jnp = pytest.importorskip("jax.numpy")
        return jnp.asarray
    if frame in ("torch", "floatguard"):
        return torch.from_numpy
    return lambda a: a


def to_numpy(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach()
    return np.asarray(v, dtype=np.float64)


def compile_pair(v: Variant) -> tuple[Callable[..., Any], Callable[..., Any], str]:
    src = TEMPLATE.format(header=HEADERS[v.frame], expr=v.expr)
    found = [e for e in lint_source(src, select=[v.code]) if e.code == v.code]
    assert found, f"{v.code} does not report {v.expr!r}"
    new, n, _ = fix_source(src, codes=frozenset({v.code}), unsafe=True)
    assert n >= 1, f"{v.code}: no fix for {v.expr!r}"
    fixed = new.split("def forward(x, y, start_transitions):\n", 1)[1]
    assert v.fixed in fixed, f"{v.code}: {fixed.strip()!r} lacks {v.fixed!r}"
    if "floatguard" not in v.fixed:  # no framework op for it (log1mexp, NumPy softmax): floatguard, unsafe
        assert "floatguard" not in new, f"{v.code}: the fix adds floatguard to {v.frame} code: {new}"
    ns0: dict[str, Any] = {}
    ns1: dict[str, Any] = {}
    exec(compile(src, "<before>", "exec"), ns0)
    exec(compile(new, "<after>", "exec"), ns1)
    return ns0["forward"], ns1["forward"], new


def call(fn: Callable[..., Any], frame: str, x: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    conv = namespace(frame)
    with np.errstate(all="ignore"):
        if frame == "jax" and x.dtype == np.float64:
            import jax

            with jax.enable_x64(True):
                return to_numpy(fn(conv(x), conv(y), conv(s)))
        return to_numpy(fn(conv(x), conv(y), conv(s)))


@pytest.mark.parametrize("v", VARIANTS, ids=[f"{v.code}-{v.frame}-{i}" for i, v in enumerate(VARIANTS)])
def test_fix_computes_the_same_function(v: Variant) -> None:
    if v.frame in ("jax", "scipy"):
        pytest.importorskip(v.frame)
    before, after, new = compile_pair(v)
    rng = np.random.default_rng(zlib.crc32(f"{v.code} {v.frame} {v.expr}".encode()))
    for _ in range(3):
        x = inputs(v.inputs, rng)
        y = inputs("unit" if v.inputs in ("unit", "small") else "real", rng)
        s = np.asarray(rng.normal(0, 3, x.shape[-1]), dtype=np.float64)
        ref = call(before, v.frame, x, y, s)
        # float64: where the original is finite the fix agrees with it to a few roundings
        got64 = call(after, v.frame, x, y, s)
        ok = np.isfinite(ref)
        np.testing.assert_allclose(got64[ok], ref[ok], rtol=1e-6, atol=1e-12,
                                   err_msg=f"{v.code} float64: {new.splitlines()[-1].strip()}")
        # float32: finite wherever the exact value (the float64 original) is representable, and close to it
        x32, y32, s32 = x.astype(np.float32), y.astype(np.float32), s.astype(np.float32)
        ref = call(before, v.frame, x32.astype(np.float64), y32.astype(np.float64), s32.astype(np.float64))
        got32 = call(after, v.frame, x32, y32, s32)
        representable = np.isfinite(ref) & (np.abs(ref) < np.finfo(np.float32).max / 2)
        assert np.isfinite(got32[representable]).all(), (
            f"{v.code}: the fix overflows where the exact value is finite: {new.splitlines()[-1].strip()}")
        np.testing.assert_allclose(got32[representable], ref[representable], rtol=v.rtol32,
                                   atol=max(v.atol32, 1e-15),
                                   err_msg=f"{v.code} float32: {new.splitlines()[-1].strip()}")


@pytest.mark.parametrize("frame", ["torch", "floatguard"])
def test_fg302_nll_of_log_softmax_is_cross_entropy(frame: str) -> None:
    """``nll_loss(log(softmax(x, dim=1)), t)`` -> ``cross_entropy(x, t)``: the same loss, targets and reductions
    kept (``ignore_index`` included)."""
    src = TEMPLATE.format(header=HEADERS[frame], expr='F.nll_loss(torch.log(F.softmax(x, dim=1)), y, '
                                                      'ignore_index=2, reduction="none")')
    new, n, _ = fix_source(src, codes=frozenset({"FG302"}), unsafe=True)
    assert n == 1 and ("floatguard.cross_entropy" in new) == (frame == "floatguard")
    assert ("F.cross_entropy(x, y, ignore_index=2" in new) == (frame == "torch")
    ns0: dict[str, Any] = {}
    ns1: dict[str, Any] = {}
    exec(compile(src, "<before>", "exec"), ns0)
    exec(compile(new, "<after>", "exec"), ns1)
    rng = np.random.default_rng(302)
    x = torch.from_numpy(rng.normal(0, 30, (64, 5)))
    t = torch.from_numpy(rng.integers(0, 5, 64))
    ref, got = ns0["forward"](x, t, None), ns1["forward"](x, t, None)
    ok = torch.isfinite(ref)
    torch.testing.assert_close(got[ok], ref[ok], rtol=1e-9, atol=1e-12)
    assert torch.isfinite(ns1["forward"](x.float() * 10, t, None)).all()


def test_softmax_over_another_dim_is_not_rewritten_to_cross_entropy() -> None:
    """nll_loss reads classes along dim 1: a log_softmax over dim 2 is not a cross_entropy (no fix)."""
    src = TEMPLATE.format(header=HEADERS["torch"], expr="F.nll_loss(torch.log(F.softmax(x, dim=2)), y)")
    new, n, _ = fix_source(src, codes=frozenset({"FG302"}), unsafe=True)
    assert n == 0 and new == src
