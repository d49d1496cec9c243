"""FG403 absorbed-eps."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, const_value
from ..rule import Finding, Fix, Rule
from ._common import is_const

FP16_TINY = 2.0**-24  # smallest float16 subnormal: anything below rounds to 0
F32_HALF_ULP = 2.0**-24  # 1 + c == 1 in float32 for c <= this
F32_TINY = 2.0**-149


def _small(node: ast.expr | None) -> float | None:
    v = const_value(node)
    return v if v is not None and 0 < v < 1e-3 else None


class AbsorbedEps(Rule):
    """Checks for an eps that rounding absorbs: too small for the dtype, or added before a larger term.

    ## What it does
    Checks for an eps that rounding absorbs: too small for the dtype, or added before a larger term.

    Also reported, without a fix: an eps below the dtype's resolution in code that may run in half precision (`p +
    1e-8` under autocast is `p`); use `torch.finfo(p.dtype).tiny` or `.eps`.

    Opt-in (``--select FG403``): on 23 mature packages it had never seen (``benchmarks/lint_precision``) its 4
    findings were all judged nits: right that the eps is 0 in float16, but the values stay float32 or the
    denominator is >= 1 anyway.

    ## Why is this bad?
    An eps that rounding swallows protects nothing: ``1e-8`` is 0 in float16, ``1e-50`` is 0 in float32, and ``1e-10
    + 1 - x`` rounds ``1 + 1e-10`` to 1 in float32 before ``x`` is subtracted; use a dtype-aware eps and add it
    last.

    ## Example
    ```python
    import torch

    q = torch.log(1e-10 + 1 - p)
    ```

    ## Use instead
    ```python
    import torch

    q = torch.log(1 - p + 1e-10)
    ```

    ## Fix safety
    The fix (add the eps last) is unsafe: the value changes in the last digits.

    ## References
    - [torch.finfo](https://pytorch.org/docs/stable/type_info.html#torch.finfo)
    """

    code = "FG403"
    confidence = "low"  # benchmarks/lint_precision: 4 findings on 23 packages, all nits
    default = False
    name = "absorbed-eps"
    categories = ("half-precision", "rounding")
    nodes = (ast.BinOp,)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        if not isinstance(node, ast.BinOp):
            return
        dl = ctx.frameworks & {"torch", "jax", "tf", "keras"}
        match node:
            case ast.BinOp(left=ast.BinOp(left=a, op=ast.Add(), right=b), op=ast.Sub(), right=x) if dl:
                eps = a if is_const(b, 1.0) else b if is_const(a, 1.0) else None
                c = _small(eps)
                if c is not None and c <= F32_HALF_ULP and const_value(x) is None:
                    assert eps is not None
                    yield Finding(node, f"1 + {ctx.text(eps)} rounds to 1 in float32 before the subtraction",
                                  "add the eps last: (1 - x) + eps",
                                  Fix(node, f"1 - {_p(ctx, x)} + {ctx.text(eps)}", safe=False))
                return
            case ast.BinOp(left=left, op=ast.Add(), right=right):
                c = _small(right) if const_value(left) is None else _small(left) if const_value(right) is None else None
                if c is None or not self._protective(ctx, node):
                    return
                if dl and c < F32_TINY:
                    yield Finding(node, f"eps {c:g} is 0 in float32", "use finfo(dtype).tiny or a larger eps")
                elif dl and c < FP16_TINY and ctx.half_precision:
                    yield Finding(node, f"eps {c:g} is 0 in float16 and this code may run in half precision",
                                  "use finfo(dtype).tiny / an eps >= 6e-8, or compute the loss in float32")

    def _protective(self, ctx: Context, node: ast.AST) -> bool:
        """The sum guards a log, sqrt or division denominator."""
        parent = ctx.parent(node)
        if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div) and parent.right is node:
            return True
        return ctx.ops(parent, "log", "sqrt") is not None


def _p(ctx: Context, node: ast.expr) -> str:
    text = ctx.text(node)
    return f"({text})" if isinstance(node, ast.BinOp) else text
