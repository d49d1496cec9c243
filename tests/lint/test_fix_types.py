"""Safe means equal: every safe fix keeps the type, dtype and shape of what it replaces, and its value.

Each naive expression is fixed with the real fixer (safe fixes only), then both versions
run on random and edge inputs of several shapes and dtypes (Python floats for ``math``);
results must have the same type, dtype and shape, and agree where the naive one is finite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from floatguard.lint import fix_source  # noqa: E402

PRELUDE = "import math\n\nimport numpy as np\nimport torch\n\n\ndef f(x, y):\n    return {expr}\n"
ALL = frozenset(c for c in __import__("floatguard.lint", fromlist=["by_code"]).by_code())

NUMPY = ["np.log(np.exp(x).sum())", "np.log(np.sum(np.exp(x), axis=-1))", "np.log(np.exp(x) + np.exp(y))",
         "np.log(1 + x * x)", "np.exp(x) - 1", "np.log(1 + np.exp(x))",
         "np.sqrt(np.exp(x))", "1 - np.exp(-x)"]
TORCH = ["torch.log(torch.sum(torch.exp(x)))", "torch.log(torch.sum(torch.exp(x), dim=-1))",
         "torch.log(torch.exp(x) + torch.exp(y))", "torch.log(torch.sigmoid(x))",
         "torch.log(torch.softmax(x, dim=-1))", "torch.log(1 + torch.exp(x))", "torch.exp(x) - 1",
         "torch.log(1 + x * x)", "1 - torch.exp(-x)", "1 / (1 + torch.exp(-x))", "torch.sqrt(torch.exp(x))",
         "torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True)"]
MATH = ["math.log(1 + x * x)", "math.exp(x) - 1", "math.sqrt(math.exp(x))"]

EDGE = [0.0, 1e-8, -1e-8, 1.0, -30.0, 30.0, 80.0, -80.0]


def _pair(expr: str) -> tuple[object, object]:
    src = PRELUDE.format(expr=expr)
    new, n, _ = fix_source(src, codes=ALL)
    if n == 0:
        pytest.fail(f"no safe fix for {expr!r}")
    before: dict = {}
    after: dict = {}
    exec(compile(src, "<before>", "exec"), before)
    exec(compile(new, "<after>", "exec"), after)
    return before["f"], after["f"]


def _same(a: object, b: object, expr: str) -> None:
    assert type(a) is type(b), (expr, type(a), type(b))
    assert getattr(a, "dtype", None) == getattr(b, "dtype", None), (expr, a, b)
    assert np.shape(a) == np.shape(b), (expr, np.shape(a), np.shape(b))
    av = np.asarray(a.detach() if hasattr(a, "detach") else a, dtype=np.float64)
    bv = np.asarray(b.detach() if hasattr(b, "detach") else b, dtype=np.float64)
    fin = np.isfinite(av)
    assert np.allclose(av[fin], bv[fin], rtol=2e-5, atol=1e-6), (expr, av, bv)


def _inputs(rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for dtype in (np.float64, np.float32):
        for shape in ((), (7,), (3, 5)):
            out.append(rng.uniform(-6, 6, shape).astype(dtype))
        out.append(np.array(EDGE, dtype=dtype))
    return out


@pytest.mark.parametrize("expr", NUMPY)
def test_numpy_safe_fixes_keep_type_dtype_shape_and_value(expr: str) -> None:
    before, after = _pair(expr)
    rng = np.random.default_rng(7)
    for x in _inputs(rng):
        y = rng.uniform(-6, 6, x.shape).astype(x.dtype)
        with np.errstate(all="ignore"):
            a, b = before(x, y), after(x, y)  # type: ignore[operator]
        _same(a, b, expr)


@pytest.mark.parametrize("expr", TORCH)
def test_torch_safe_fixes_keep_type_dtype_shape_and_value(expr: str) -> None:
    before, after = _pair(expr)
    rng = np.random.default_rng(8)
    for x in _inputs(rng):
        if x.ndim == 0 and "dim=-1" in expr:
            continue  # softmax over dim -1 of a 0-d tensor: both sides raise alike
        tx, ty = torch.from_numpy(x), torch.from_numpy(rng.uniform(-6, 6, x.shape).astype(x.dtype))
        _same(before(tx, ty), after(tx, ty), expr)  # type: ignore[operator]


@pytest.mark.parametrize("expr", MATH)
def test_math_safe_fixes_keep_type_and_value(expr: str) -> None:
    before, after = _pair(expr)
    for x in [*EDGE, 0.5, -2.5]:
        try:
            a = before(x, 0.25)  # type: ignore[operator]
        except (OverflowError, ValueError):
            continue
        b = after(x, 0.25)  # type: ignore[operator]
        assert type(a) is type(b) and (not math.isfinite(a) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))
