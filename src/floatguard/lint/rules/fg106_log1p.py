"""FG106 log1p."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall, const_value
from ..rule import Finding, Fix, Rule
from ._bounds import integer_valued
from ._common import family, neg_text, one_minus, one_plus, paren, prob_like_name, ref

_LOGS = ("numpy.log", "torch.log", "math.log", "jax.numpy.log", "tensorflow.math.log", "keras.ops.log")


def same_module_fix(ctx: Context, o: OpCall, op: str, arg: str) -> tuple[str, tuple[str, ...]] | None:
    """``<same module>.op(arg)``: ``np.log(...)`` -> ``np.log1p(arg)``, ``x.exp()`` -> ``arg.expm1()``."""
    if o.method:
        return None
    func = o.node.func
    if o.qual in _LOGS + tuple(q.replace(".log", ".exp") for q in _LOGS) and isinstance(func, ast.Attribute):
        return f"{ctx.text(func.value)}.{op}({arg})", ()
    r = ref(ctx, family(ctx, o), op)
    if r is None:
        return None
    return f"{r[0]}({arg})", r[1]


class Log1p(Rule):
    """Checks for `log(1 + x)` and `log(1 - x)` where `x` may be small.

    ## What it does
    Checks for `log(1 + x)` and `log(1 - x)` where `x` may be small.

    ## Why is this bad?
    ``log(1 + x)`` loses all digits of ``x`` below 2**-24 (float32) because ``1 + x`` rounds first; log1p keeps
    them.

    ## Example
    ```python
    import numpy as np
    import torch

    y = torch.log(1 + rate)
    z = np.log(1 - x)
    ```

    ## Use instead
    ```python
    import numpy as np
    import torch

    y = torch.log1p(rate)
    z = np.log1p(-x)
    ```

    ## Fix safety
    The fix is safe: `log1p` of the same module (`torch.log1p`, `np.log1p`, `math.log1p`, `x.log1p()`) is the same
    function.

    ## References
    - [numpy.log1p](https://numpy.org/doc/stable/reference/generated/numpy.log1p.html)
    - [Goldberg, What every computer scientist should know about floating-point arithmetic](https://docs.oracle.com/cd/E19957-01/806-3568/ncg_goldberg.html)
    """

    code = "FG106"
    severity = "warning"
    confidence = "low"
    default = False
    name = "log1p"
    categories = ("accuracy",)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        log = ctx.ops(node, "log")
        if log is None or log.x is None:
            return
        x = one_plus(log.x)
        negate = False
        if x is None:
            x = one_minus(log.x)
            negate = True
            if x is None or ctx.prob_source(x) is not None or prob_like_name(ctx, x):
                return  # FG111 / FG112 territory
        if const_value(x) is not None or ctx.ops(x, "exp", "sigmoid") is not None or integer_valued(ctx, x):
            return  # a constant or a count: 1 + x is exact or x is never small
        arg = neg_text(ctx, x) if negate else ctx.text(x)
        if log.method:
            fix: Fix | None = Fix(node, f"{paren(ctx, x) if not negate else '(' + arg + ')'}.log1p()")
        else:
            r = same_module_fix(ctx, log, "log1p", arg)
            fix = Fix(node, r[0], imports=r[1]) if r is not None else None
        what = "1 - x" if negate else "1 + x"
        yield Finding(node, f"log({what}) loses the low digits of x when x is small", "use log1p", fix)
