"""FG107 expm1."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, const_value
from ..rule import Finding, Fix, Rule
from ._common import is_const, paren
from .fg106_log1p import same_module_fix


class Expm1(Rule):
    """Checks for `exp(x) - 1`, which cancels where `x` is small.

    ## What it does
    Checks for `exp(x) - 1`, which cancels where `x` is small.

    ## Why is this bad?
    ``exp(x) - 1`` cancels catastrophically for small ``x`` (all digits lost below 2**-24 in float32); expm1 keeps
    them.

    ## Example
    ```python
    import torch

    g = torch.exp(t) - 1
    ```

    ## Use instead
    ```python
    import torch

    g = torch.expm1(t)
    ```

    ## Fix safety
    The fix is safe: `expm1` of the same module (`torch.expm1`, `np.expm1`, `x.expm1()`) is the same function.

    ## References
    - [numpy.expm1](https://numpy.org/doc/stable/reference/generated/numpy.expm1.html)
    - [torch.expm1](https://pytorch.org/docs/stable/generated/torch.expm1.html)
    """

    code = "FG107"
    severity = "warning"
    confidence = "low"
    default = False
    name = "expm1"
    categories = ("accuracy", "cancellation")
    nodes = (ast.BinOp,)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        match node:
            case ast.BinOp(left=left, op=ast.Sub(), right=right) if is_const(right, 1.0):
                exp = ctx.ops(left, "exp")
            case _:
                return
        if exp is None or exp.x is None or const_value(exp.x) is not None:
            return
        if exp.method:
            fix: Fix | None = Fix(node, f"{paren(ctx, exp.x)}.expm1()")
        else:
            r = same_module_fix(ctx, exp, "expm1", ctx.text(exp.x))
            fix = Fix(node, r[0], imports=r[1]) if r is not None else None
        yield Finding(node, "exp(x) - 1 cancels for small x", "use expm1", fix)
