"""FG105 softplus."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._bounds import exp_bounded
from ._common import family, plus_one, ref


class Softplus(Rule):
    """Checks for `log(1 + exp(x))` and `log1p(exp(x))` whose argument is not bounded.

    ## What it does
    Checks for `log(1 + exp(x))` and `log1p(exp(x))` whose argument is not bounded.

    The `+ 1` may be written `x.exp().add(1).log()` (a method chain), `.add_(1)` or `torch.add(x, 1)`.

    Opt-in (``--select FG105``): on 23 mature packages it had never seen (``benchmarks/lint_precision``) its 3
    findings were all judged nits (NumPy/JAX float64 code where ``exp`` overflows only beyond 709, not reached in
    practice), and none of the 10 findings ever judged was worth a change.

    ## Why is this bad?
    ``log(1 + exp(x))`` overflows to inf for x > 88 in float32 and rounds to 0 for x < -17; softplus is exact at
    both ends.

    ## Example
    ```python
    import numpy as np
    import torch

    y = torch.log(1 + torch.exp(x))
    y = np.log1p(np.exp(-margin))
    ```

    ## Use instead
    ```python
    import numpy as np
    import torch

    y = torch.nn.functional.softplus(x)
    y = np.logaddexp(0, -margin)
    ```

    ## Fix safety
    The fix is safe: `F.softplus`, `jax.nn.softplus` and NumPy's `np.logaddexp(0, x)` are the same function.

    ## References
    - [torch.nn.functional.softplus](https://pytorch.org/docs/stable/generated/torch.nn.functional.softplus.html)
    - [numpy.logaddexp](https://numpy.org/doc/stable/reference/generated/numpy.logaddexp.html)
    """

    code = "FG105"  # exp arguments bounded by a where/if branch or a max-shift are not reported
    confidence = "low"  # benchmarks/lint_precision: 3 findings on 23 packages, all nits; 0 of 10 ever true
    default = False
    name = "softplus"
    categories = ("overflow", "accuracy")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        o = ctx.ops(node, "log", "log1p")
        if o is None or o.x is None:
            return
        inner = o.x if o.op == "log1p" else plus_one(ctx, o.x)
        exp = ctx.ops(inner, "exp")
        if exp is None or exp.x is None or exp_bounded(ctx, node, exp.x):
            return  # exp of a non-positive number cannot overflow
        yield Finding(node, f"{'log1p(exp(x))' if o.op == 'log1p' else 'log(1 + exp(x))'} overflows for large x",
                      "use softplus", self._fix(ctx, o, exp))

    def _fix(self, ctx: Context, o: OpCall, exp: OpCall) -> Fix | None:
        fam = family(ctx, exp, o)
        x = ctx.text(exp.x) if exp.x is not None else ""
        if fam == "numpy":
            r = ref(ctx, "numpy", "logaddexp")
            assert r is not None
            return Fix(o.node, f"{r[0]}(0, {x})", imports=r[1])
        r = ref(ctx, fam, "softplus")
        if r is None:
            return None
        return Fix(o.node, f"{r[0]}({x})", imports=r[1])
