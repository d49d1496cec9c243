"""FG109 naive-sigmoid."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall, is_pure
from ..rule import Finding, Fix, Rule
from ._bounds import exp_bounded
from ._common import (
    dep_hint,
    family,
    fg_fix,
    fg_ref,
    is_const,
    neg_text,
    numpy_ref,
    one_plus,
    ref,
    scipy_special_ref,
    uses_floatguard,
)


class NaiveSigmoid(Rule):
    """Checks for `1 / (1 + exp(-x))` and `exp(x) / (1 + exp(x))` written out where a gradient flows.

    ## What it does
    Checks for `1 / (1 + exp(-x))` and `exp(x) / (1 + exp(x))` written out where a gradient flows.

    Opt-in (``--select FG109``): on 32 mature packages it had never seen (``benchmarks/lint_precision``, rounds 1-3)
    none of its 44 judged findings was true (14 nits, 30 false). Where it is still reported (a gradient flows) the
    NaN gradient needs x < -88 in float32, which the decoder outputs of round 3 never reach: both were nits.

    Not reported: ``1 / (1 + exp(-x))`` where nothing is differentiated (plain NumPy, ``math``, ``torch.no_grad()``,
    a function with its own custom_jvp/vjp) since ``1 / (1 + inf)`` is the right 0 there; an exp whose argument is
    <= 0 by construction (``-abs(x)``, ``u[u <= 0]``, a branch of ``where(x < t, ...)``).

    ## Why is this bad?
    ``1 / (1 + exp(-x))`` overflows in ``exp`` for x < -88 in float32 (a warning in NumPy, inf*0 = NaN gradients
    under autograd) and ``exp(x) / (1 + exp(x))`` is inf/inf = NaN for x > 88; sigmoid is finite everywhere.

    ## Example
    ```python
    import torch

    p = 1 / (1 + torch.exp(-z))
    q = torch.exp(z) / (1 + torch.exp(z))
    ```

    ## Use instead
    ```python
    import torch

    p = torch.sigmoid(z)
    q = torch.sigmoid(z)
    ```

    ## Fix safety
    The fix is safe: `torch.sigmoid`, `jax.nn.sigmoid`, `scipy.special.expit` (where SciPy is imported) or, in NumPy
    without SciPy, the two-branch form `exp(minimum(x, 0)) / (1 + exp(-abs(x)))` compute the same function.

    ## References
    - [torch.sigmoid](https://pytorch.org/docs/stable/generated/torch.sigmoid.html)
    - [scipy.special.expit](https://docs.scipy.org/doc/scipy/reference/generated/scipy.special.expit.html)
    """

    code = "FG109"
    confidence = "low"  # benchmarks/lint_precision: 44 judged findings on 32 packages, 0 true, 14 nits, 30 false
    default = False
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
        fix = self._fix(ctx, node, exp, arg)
        yield Finding(node, "hand-written sigmoid overflows in exp for large |x|",
                      dep_hint("use sigmoid / expit", fix, "NumPy has no sigmoid"), fix)

    def _fix(self, ctx: Context, node: ast.BinOp, exp: OpCall, arg: str) -> Fix | None:
        fam = family(ctx, exp)
        if fam in ("numpy", "torch") and uses_floatguard(ctx):
            # already a dependency: floatguard's sigmoid is <= 1 ulp, gradient included (torch.sigmoid rounds
            # sigmoid(-90) to 0 and its backward y * (1 - y) loses up to 12 bits)
            f, imports = fg_ref(ctx, "sigmoid")
            return fg_fix(node, f"{f}({arg})", imports, safe=True)
        if fam == "numpy":
            sp = scipy_special_ref(ctx, "expit")
            if sp is not None:
                return Fix(node, f"{sp[0]}({arg})", imports=sp[1])
            if exp.x is not None and is_pure(exp.x):
                # NumPy has no sigmoid: the two-branch form as one expression, exp of a non-positive number only
                f, imports = numpy_ref(ctx, "exp")
                m, _ = numpy_ref(ctx, "minimum")
                a, _ = numpy_ref(ctx, "abs")
                return Fix(node, f"{f}({m}({arg}, 0)) / (1 + {f}(-{a}({arg})))", imports=imports)
            f, imports = fg_ref(ctx, "sigmoid")
            return fg_fix(node, f"{f}({arg})", imports, safe=True)
        r = ref(ctx, fam, "sigmoid")
        if r is None:
            return None
        return Fix(node, f"{r[0]}({arg})", imports=r[1])
