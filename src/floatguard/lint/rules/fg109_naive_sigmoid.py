"""FG109 naive-sigmoid."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._common import exp_bounded, family, fg_ref, is_const, neg_text, one_plus, ref


class NaiveSigmoid(Rule):
    """``1 / (1 + exp(-x))`` overflows in ``exp`` for x < -88 in float32 (a warning in NumPy, inf*0 = NaN gradients
    under autograd) and ``exp(x) / (1 + exp(x))`` is inf/inf = NaN for x > 88; sigmoid is finite everywhere.

    Not reported: ``1 / (1 + exp(-x))`` where nothing is differentiated (plain NumPy, ``math``,
    ``torch.no_grad()``, a function with its own custom_jvp/vjp) since ``1 / (1 + inf)`` is the right 0
    there; an exp whose argument is <= 0 by construction (``-abs(x)``, ``u[u <= 0]``, a branch of
    ``where(x < t, ...)``).

    Bad:
        p = 1 / (1 + np.exp(-z))
        p = torch.exp(z) / (1 + torch.exp(z))

    Good:
        p = scipy.special.expit(z)
        p = torch.sigmoid(z)
    """

    code = "FG109"
    confidence = "medium"
    name = "naive-sigmoid"
    categories = ("overflow", "gradient")
    nodes = (ast.BinOp,)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        match node:
            case ast.BinOp(left=left, op=ast.Div(), right=right):
                pass
            case _:
                return
        exp = ctx.ops(one_plus(right), "exp")
        if exp is None or exp.x is None or exp_bounded(ctx, node, exp.x):
            return  # exp(-|x|) cannot overflow: the stable two-branch sigmoid
        if is_const(left, 1.0):
            if ctx.no_gradient(node, exp.family):
                return  # without autograd 1 / (1 + inf) is the right 0 (NumPy warns, the value is correct)
            match exp.x:
                case ast.UnaryOp(op=ast.USub(), operand=inner):
                    arg = ctx.text(inner)
                case _:
                    arg = neg_text(ctx, exp.x)
        else:
            num = ctx.ops(left, "exp")
            if num is None or num.x is None or ctx.text(num.x) != ctx.text(exp.x):
                return
            arg = ctx.text(exp.x)
        yield Finding(node, "hand-written sigmoid overflows in exp for large |x|", "use sigmoid / expit",
                      self._fix(ctx, node, exp, arg))

    def _fix(self, ctx: Context, node: ast.BinOp, exp: OpCall, arg: str) -> Fix | None:
        fam = family(ctx, exp)
        if fam in ("numpy", "torch"):
            # torch.sigmoid and scipy's expit round sigmoid(-90) to 0 like the naive form, and torch's
            # backward y * (1 - y) loses up to 12 bits; floatguard's sigmoid is <= 1 ulp, gradient included
            f, imports = fg_ref(ctx, "sigmoid")
            return Fix(node, f"{f}({arg})", imports=imports)
        r = ref(ctx, fam, "sigmoid")
        if r is None:
            return None
        return Fix(node, f"{r[0]}({arg})", imports=r[1])
