"""FG114 one-minus-exp."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, const_value
from ..rule import Finding, Fix, Rule
from ._common import one_minus, paren
from .fg106_log1p import same_module_fix


class OneMinusExp(Rule):
    """Checks for `1 - exp(x)` where `x` may be small.

    ## What it does
    Checks for `1 - exp(x)` where `x` may be small.

    ## Why is this bad?
    ``1 - exp(-x)`` cancels for small ``x``: a probability ``1 - exp(-rate * t)`` or a decay loses every digit below
    2**-24 in float32 (and is exactly 0 below that); ``-expm1(-x)`` keeps them.

    ## Example
    ```python
    import torch

    p_event = 1 - torch.exp(-rate * t)
    ```

    ## Use instead
    ```python
    import torch

    p_event = -torch.expm1(-rate * t)
    ```

    ## Fix safety
    The fix is safe: `-expm1(x)` of the same module is the same function.

    ## References
    - [numpy.expm1](https://numpy.org/doc/stable/reference/generated/numpy.expm1.html)
    """

    code = "FG114"
    name = "one-minus-exp"
    categories = ("accuracy", "cancellation")
    nodes = (ast.BinOp,)
    severity = "warning"
    confidence = "low"  # benchmarks/lint_precision: a real loss in tails and small rates, mostly last digits
    default = False

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        exp = ctx.ops(one_minus(node), "exp")  # type: ignore[arg-type]
        if exp is None or exp.x is None or const_value(exp.x) is not None or exp.family == "math":
            return
        if ctx.ops(ctx.parent(node), "log") is not None:
            return  # log(1 - exp(x)): FG108
        if _offset(exp.x):
            return  # exp(-13.4 + 101 * a): the argument is not small, 1 - exp(...) loses nothing
        if _log_prob(ctx, exp.x):
            return  # 1 - exp(logp): the complement of a probability the code holds as a log (focal loss)
        if exp.method:
            fix: Fix | None = Fix(node, f"-{paren(ctx, exp.x)}.expm1()")
        else:
            r = same_module_fix(ctx, exp, "expm1", ctx.text(exp.x))
            fix = Fix(node, f"-{r[0]}", imports=r[1]) if r is not None else None
        yield Finding(node, "1 - exp(x) cancels for small x", f"use -expm1({ctx.text(exp.x)})", fix)


def _log_prob(ctx: Context, x: ast.expr) -> bool:
    """``x`` is a log-probability: named ``log*`` or the output of log_softmax / log_sigmoid."""
    match x:
        case ast.Name(id=n) | ast.Attribute(attr=n) if n.lower().startswith("log"):
            return True
        case ast.Name():
            v = ctx.value(x)
            return v is not x and ctx.ops(v, "log_softmax", "log_sigmoid") is not None
    return ctx.ops(x, "log_softmax", "log_sigmoid") is not None


def _offset(x: ast.expr) -> bool:
    """``c + ...`` or ``... - c`` with a constant ``|c| >= 1`` at the top of the sum: far from 0."""
    while isinstance(x, ast.BinOp) and isinstance(x.op, ast.Add | ast.Sub):
        for side in (x.left, x.right):
            v = const_value(side)
            if v is not None and abs(v) >= 1:
                return True
        x = x.left
    return False
