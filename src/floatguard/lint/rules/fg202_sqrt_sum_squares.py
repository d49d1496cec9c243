"""FG202 sqrt-sum-squares-gradient."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall, const_value
from ..rule import Finding, Fix, Rule
from ._bounds import guarded
from ._common import AXIS_KW, reduce_args

_AUTOGRAD = ("torch", "jax", "tf", "keras", "array")


def square_of(ctx: Context, node: ast.expr | None) -> ast.expr | None:
    """``a`` when ``node`` is ``a ** 2``, ``a * a``, ``square(a)`` or ``a.pow(2)``."""
    match node:
        case ast.BinOp(left=a, op=ast.Pow(), right=two) if const_value(two) == 2.0:
            return a
        case ast.BinOp(left=a, op=ast.Mult(), right=b) if ctx.text(a) == ctx.text(b):
            return a
        case ast.Call():
            o = ctx.op(node)
            if o is not None and o.op == "square":
                return o.x
            if o is not None and o.op == "pow" and const_value(o.arg(1, "exponent")) == 2.0:
                return o.x
    return None


class SqrtSumSquares(Rule):
    """Checks for `sqrt(sum(x ** 2))` in differentiated code.

    ## What it does
    Checks for `sqrt(sum(x ** 2))` in differentiated code.

    Checked in code that is differentiated: loss functions, ``forward``, methods of Module/Layer classes.

    Opt-in (``--select FG202``): on 23 mature packages it had never seen (``benchmarks/lint_precision``) its 3
    findings were all judged nits: the vector is 0 only for two atoms at one position or an all-zero weight row,
    not reached in practice.

    ## Why is this bad?
    The gradient of ``sqrt(sum(x**2))`` is ``x / sqrt(...)``, 0/0 = NaN when the vector is 0 (identical points,
    padding), even though the value 0 is fine; use a norm whose gradient is defined at 0 or add an eps inside the
    sqrt.

    ## Example
    ```python
    import torch

    d = torch.sqrt(((a - b) ** 2).sum(-1))
    ```

    ## Use instead
    ```python
    import torch

    d = torch.linalg.vector_norm(a - b, dim=-1)
    ```

    ## Fix safety
    The fix is safe: `torch.linalg.vector_norm` has the same value, and its gradient at 0 is 0.

    ## References
    - [torch.linalg.vector_norm](https://pytorch.org/docs/stable/generated/torch.linalg.vector_norm.html)
    - [JAX FAQ: gradients contain NaN where using where](https://jax.readthedocs.io/en/latest/faq.html#gradients-contain-nan-where-using-where)
    """

    code = "FG202"
    confidence = "low"  # benchmarks/lint_precision: 3 findings on 23 packages, all nits
    default = False
    name = "sqrt-sum-squares-gradient"
    categories = ("gradient", "nan")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        sq = ctx.ops(node, "sqrt")
        if sq is None or sq.x is None or sq.family not in _AUTOGRAD or guarded(ctx, sq.x):
            return
        if not ctx.frameworks & {"torch", "jax", "tf", "keras"} or not ctx.in_model(node):
            return
        inner = ctx.value(sq.x) if isinstance(sq.x, ast.Name) else sq.x
        red = ctx.ops(inner, "sum")
        if red is not None and red.family in _AUTOGRAD:
            base = square_of(ctx, red.x)
            if base is None:
                return
            yield Finding(node, "sqrt of a sum of squares has a NaN gradient where the sum is 0",
                          "use torch.linalg.vector_norm / add an eps inside the sqrt",
                          self._fix(ctx, sq, red, base, inner is sq.x))
            return
        match inner:
            case ast.BinOp(left=a, op=ast.Add(), right=b) if square_of(ctx, a) is not None and square_of(ctx, b) \
                    is not None:
                yield Finding(node, "sqrt(a**2 + b**2) has a NaN gradient at 0",
                              "add an eps inside the sqrt (and prefer hypot for the value)")

    def _fix(self, ctx: Context, sq: OpCall, red: OpCall, base: ast.expr, inline: bool) -> Fix | None:
        fam = "torch" if sq.family == "torch" or red.family == "torch" else None
        if fam is None or not inline:
            return None
        axis, keep, extra = reduce_args(red)
        if extra:
            return None
        text, imports = ctx.module_ref("torch.linalg")
        rest = ""
        if axis is not None:
            rest = f", {AXIS_KW['torch'][0]}={ctx.text(axis)}"
            if keep is not None:
                rest += f", keepdim={ctx.text(keep)}"
        return Fix(sq.node, f"{text}.vector_norm({ctx.text(base)}{rest})", imports=imports)
