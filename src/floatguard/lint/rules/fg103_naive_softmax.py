"""FG103 naive-softmax."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._common import AXIS_KW, exp_bounded, family, fg_call, reduce_args, ref


class NaiveSoftmax(Rule):
    """``exp(x) / sum(exp(x))`` is inf/inf = NaN once any ``x`` passes ~88 in float32 and 0/0 when all are very
    negative; softmax shifts by the max first.

    Bad:
        e = torch.exp(logits)
        probs = e / e.sum(dim=-1, keepdim=True)

    Good:
        probs = torch.softmax(logits, dim=-1)
    """

    code = "FG103"
    confidence = "medium"
    name = "naive-softmax"
    categories = ("overflow", "nan")
    nodes = (ast.BinOp,)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        match node:
            case ast.BinOp(left=left, op=ast.Div(), right=right):
                pass
            case _:
                return
        num = ctx.ops(ctx.value(left), "exp")
        if num is None or num.x is None or exp_bounded(ctx, node, num.x):
            return
        red = ctx.ops(ctx.value(right), "sum")
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
        yield Finding(node, "exp(x) / sum(exp(x)) overflows to inf/inf = NaN for large x",
                      "use softmax, which shifts by the max", self._fix(ctx, node, left, num, red) if same else None)

    def _fix(self, ctx: Context, node: ast.BinOp, left: ast.expr, num: OpCall, red: OpCall) -> Fix | None:
        axis, keep, extra = reduce_args(red)
        if extra or axis is None or keep is None or not (isinstance(keep, ast.Constant) and keep.value is True):
            return None
        fam = family(ctx, num, red)
        if fam is None or fam == "math":
            return None
        inline = left is num.node
        if fam in ("numpy", "torch"):
            # torch.softmax can be 2.6 bits worse than the naive form; floatguard's is <= 1 ulp
            assert num.x is not None
            text, imports = fg_call(ctx, "softmax", num.x, axis)
            return Fix(node, text, safe=inline, imports=imports)
        r = ref(ctx, fam, "softmax")
        if r is None:
            return None
        ak = AXIS_KW[fam][0]
        return Fix(node, f"{r[0]}({ctx.text(num.x)}, {ak}={ctx.text(axis)})", safe=inline, imports=r[1])
