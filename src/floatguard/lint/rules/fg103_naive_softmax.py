"""FG103 naive-softmax."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._bounds import exp_bounded
from ._common import AXIS_KW, dep_hint, family, fg_call, fg_fix, reduce_args, ref, scipy_special_ref, uses_floatguard


class NaiveSoftmax(Rule):
    """Checks for `exp(x) / sum(exp(x))`, a softmax written out without the max-shift.

    ## What it does
    Checks for `exp(x) / sum(exp(x))`, a softmax written out without the max-shift.

    The division may be a call (`tf.div(e, s)`, `torch.div`, `e.div(s)`, `np.divide`) and the sum tiled or
    reshaped to the shape of `e` (`tf.tile(tf.reduce_sum(e, 3, keep_dims=True), ...)`).

    ## Why is this bad?
    ``exp(x) / sum(exp(x))`` is inf/inf = NaN once any ``x`` passes ~88 in float32 and 0/0 when all are very
    negative; softmax shifts by the max first.

    ## Example
    ```python
    import torch

    e = torch.exp(logits)
    probs = e / e.sum(dim=-1, keepdim=True)
    ```

    ## Use instead
    ```python
    import torch

    e = torch.exp(logits)
    probs = torch.softmax(logits, dim=-1)
    ```

    ## Fix safety
    The fix is safe when the numerator is written inline: `torch.softmax`, `jax.nn.softmax` or, where SciPy is
    imported, `scipy.special.softmax`. NumPy has no softmax of its own: there the fix calls `floatguard.softmax`,
    adds `import floatguard` and is unsafe (unless the file already imports floatguard).

    ## References
    - [torch.softmax](https://pytorch.org/docs/stable/generated/torch.softmax.html)
    - [scipy.special.softmax](https://docs.scipy.org/doc/scipy/reference/generated/scipy.special.softmax.html)
    """

    code = "FG103"
    confidence = "medium"
    name = "naive-softmax"
    categories = ("overflow", "nan")
    nodes = (ast.BinOp, ast.Call)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        div = ctx.division(node) if isinstance(node, ast.BinOp | ast.Call) else None
        if div is None:
            return
        left, right = div
        num = ctx.ops(ctx.value(left), "exp")
        if num is None or num.x is None or exp_bounded(ctx, node, num.x):
            return
        red = ctx.ops(ctx.strip_views(right), "sum")  # also tiled or reshaped: tf.tile(reduce_sum(e), n)
        if red is None:
            return
        den = red.x
        same = (ctx.text(den) == ctx.text(left)) if den is not None else False
        if not same:
            dexp = ctx.ops(ctx.value(den), "exp")
            same = dexp is not None and dexp.x is not None and ctx.text(dexp.x) == ctx.text(num.x)
        if not same:
            dexp = ctx.ops(ctx.value(den), "exp")
            if dexp is None or dexp.x is None or exp_bounded(ctx, node, dexp.x):
                return
        fix = self._fix(ctx, node, left, num, red) if same else None
        yield Finding(node, "exp(x) / sum(exp(x)) overflows to inf/inf = NaN for large x",
                      dep_hint("use softmax, which shifts by the max", fix, "NumPy has no softmax"), fix)

    def _fix(self, ctx: Context, node: ast.AST, left: ast.expr, num: OpCall, red: OpCall) -> Fix | None:
        axis, keep, extra = reduce_args(red)
        if extra or axis is None or keep is None or not (isinstance(keep, ast.Constant) and keep.value is True):
            return None
        fam = family(ctx, num, red)
        if fam is None or fam == "math":
            return None
        inline = left is num.node
        assert num.x is not None
        if fam in ("numpy", "torch") and uses_floatguard(ctx):
            # already a dependency: floatguard's softmax is <= 1 ulp (torch.softmax up to 2.6 bits worse)
            text, imports = fg_call(ctx, "softmax", num.x, axis)
            return fg_fix(node, text, imports, safe=inline)
        if fam == "numpy":
            sp = scipy_special_ref(ctx, "softmax")
            if sp is not None:
                return Fix(node, f"{sp[0]}({ctx.text(num.x)}, axis={ctx.text(axis)})", safe=inline, imports=sp[1])
            # NumPy has no softmax of its own
            text, imports = fg_call(ctx, "softmax", num.x, axis)
            return fg_fix(node, text, imports, safe=False)
        r = ref(ctx, fam, "softmax")
        if r is None:
            return None
        ak = AXIS_KW[fam][0]
        return Fix(node, f"{r[0]}({ctx.text(num.x)}, {ak}={ctx.text(axis)})", safe=inline, imports=r[1])
