"""FG113 sqrt-exp."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall, const_value
from ..rule import Finding, Fix, Rule
from ._common import paren


class SqrtExp(Rule):
    """Checks for `sqrt(exp(x))` and `exp(x) ** 0.5`.

    ## What it does
    Checks for `sqrt(exp(x))` and `exp(x) ** 0.5`.

    Opt-in (``--select FG113``): on 32 mature packages it had never seen (``benchmarks/lint_precision``, rounds 1-3)
    its 2 findings were both nits: `exp(p).sqrt()` of a learned log-scale or a log1p target scale, which overflows
    only for p > 88 in float32, far from where such parameters live. `exp(0.5 * p)` is cleaner, not needed.

    ## Why is this bad?
    ``sqrt(exp(x))`` overflows to inf for x > 88 in float32 although the result ``exp(x / 2)`` is finite up to 177
    (the VAE ``std`` from ``logvar``).

    ## Example
    ```python
    import torch

    std = torch.sqrt(torch.exp(logvar))
    std = torch.exp(logvar) ** 0.5
    ```

    ## Use instead
    ```python
    import torch

    std = torch.exp(0.5 * logvar)
    std = torch.exp(0.5 * logvar)
    ```

    ## Fix safety
    The fix is safe: `exp(0.5 * x)` is the same function.

    ## References
    - [torch.exp](https://pytorch.org/docs/stable/generated/torch.exp.html)
    """

    code = "FG113"
    confidence = "low"  # benchmarks/lint_precision: 2 findings on 32 packages, 0 true, 2 nits
    default = False
    name = "sqrt-exp"
    categories = ("overflow",)
    nodes = (ast.Call, ast.BinOp)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        inner: ast.expr | None
        match node:
            case ast.BinOp(left=left, op=ast.Pow(), right=right) if const_value(right) == 0.5:
                inner = left
            case ast.Call():
                o = ctx.op(node)
                if o is None:
                    return
                if o.op == "sqrt" or (o.op == "pow" and const_value(o.arg(1, "exponent")) == 0.5):
                    inner = o.x
                else:
                    return
            case _:
                return
        exp = ctx.ops(inner, "exp")
        if exp is None or exp.x is None:
            return
        yield Finding(node, "sqrt(exp(x)) overflows for x beyond half the exp range", "use exp(0.5 * x)",
                      self._fix(ctx, node, exp))

    def _fix(self, ctx: Context, node: ast.AST, exp: OpCall) -> Fix | None:
        assert exp.x is not None
        half = f"0.5 * {paren(ctx, exp.x)}"
        if exp.method:
            return Fix(node, f"({half}).exp()")
        whole = ctx.text(exp.node)
        func = ctx.text(exp.node.func)
        if not whole.startswith(func) or len(exp.node.args) != 1 or exp.node.keywords:
            return None
        return Fix(node, f"{func}({half})")
