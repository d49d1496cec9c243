"""FG201 unguarded-normalization."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from ..analysis import Context, OpCall, const_value
from ..rule import Finding, Fix, Rule
from ._bounds import guarded, positive
from ._common import division_parts, reduce_args


class UnguardedNormalization(Rule):
    """Checks for a division by a norm, a standard deviation or a sum of the same quantity with no eps, in
    differentiated code.

    ## What it does
    Checks for a division by a norm, a standard deviation or a sum of the same quantity with no eps, in
    differentiated code.

    Checked in code that is differentiated: loss functions, ``forward``, methods of Module/Layer classes, and a
    gradient divided by its own norm (``p.grad / p.grad.norm()``) anywhere.

    Opt-in (``--select FG201``): on 23 mature packages it had never seen (``benchmarks/lint_precision``) its 15
    findings were judged 0 true, 9 nits (vectors that are never 0 in practice: features of a trained model, a
    histogram of a non-empty image) and 6 false (zeros replaced just above, a Gram matrix of softmax outputs).
    Not reported when the divisor's zeros were replaced in place before the division (``d[d == 0] = 1``,
    ``np.putmask(d, d == 0, 1)``, ``d.clamp_(min=eps)``, ``d += eps``) or it is positive by construction (a sum
    of exp/softmax/sigmoid terms or of a positive kernel, a Gram matrix of softmax outputs, the identity).

    Also reported, without a fix: `(x - x.mean(0)) / x.std(0)`, `w / w.sum(dim=-1, keepdim=True)` and a division by
    an L1 norm `y / tf.reduce_sum(tf.abs(w), 0)` (add an eps or `clamp_min`). A division written as a call
    (`tf.div(y, s)`, `torch.div`, `x.div(s)`, `np.divide`) counts, and so does a divisor tiled or reshaped from
    the norm (`tf.tile(s, n)`). TensorFlow 1.x graph code (a file with `tf.placeholder`, `tf.Session`,
    `tf.get_variable`, `tf.gradients` or an optimizer's `minimize`) is differentiated throughout.

    ## Why is this bad?
    Dividing by a norm, a standard deviation or a sum of non-negative weights gives 0/0 = NaN the first time that is
    0 (a zero embedding, a constant feature, an all-masked row); add an eps or clamp the denominator.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F

    x = x / x.norm(dim=-1, keepdim=True)
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn.functional as F

    x = F.normalize(x, dim=-1)
    ```

    ## Fix safety
    The fix (`F.normalize` for `x / x.norm(dim=d, keepdim=True)`) is unsafe: it returns 0 instead of NaN for a zero
    vector and clamps tiny norms at 1e-12. Divisions by a standard deviation or a sum are reported without one.

    ## References
    - [torch.nn.functional.normalize](https://pytorch.org/docs/stable/generated/torch.nn.functional.normalize.html)
    """

    code = "FG201"
    confidence = "low"  # benchmarks/lint_precision: 15 findings on 23 packages, 0 true, 9 nits, 6 false
    default = False
    name = "unguarded-normalization"
    categories = ("nan", "division")
    nodes = (ast.BinOp, ast.AugAssign, ast.Call)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        parts = division_parts(ctx, node)
        if parts is None:
            return
        num, den, d = parts
        o = ctx.ops(d, "norm", "std", "sum")
        if o is None or o.x is None or o.family in ("math",) or guarded(ctx, den):
            return
        if not ctx.in_model(node) and not (o.family == "tf" and ctx.tf_graph) and \
                not gradient_normalised(ctx, num, o):
            return  # outside differentiated code, x / x.norm() is FG204 (opt-in)
        l1 = o.op == "sum" and ctx.ops(o.x, "abs") is not None  # sum(abs(w)): an L1 norm, of any numerator
        if o.op == "sum" and not l1:
            # only the normalisation of a quantity by its own total, which can be 0
            if ctx.text(o.x) != ctx.text(num) or guarded(ctx, o.x) or positive(ctx, o.x) or \
                    ctx.prob_source(o.x) is not None:
                return  # a sum of positive terms (exp, softmax, sigmoid, a positive kernel) is > 0
            v = ctx.value(o.x)
            if ctx.ops(v, "exp") is not None or (isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute)
                                                   and v.func.attr == "exp_"):
                return  # FG103 (``e = x.sub_(x.amax(1, keepdim=True)).exp_()``: a sum of exp is > 0)
        what = "an L1 norm" if l1 else {"norm": "a norm", "std": "a standard deviation", "sum": "a sum"}[o.op]
        fix = normalize_fix(ctx, node, num, o) if o.op == "norm" else None
        yield Finding(node, f"division by {what} with no eps: NaN when it is 0",
                      "add an eps to the denominator or clamp it (F.normalize for unit vectors)", fix)


_GRAD_NAME = re.compile(r"^(d_?)?grads?$|^grads?_|_grads?$|^g$", re.IGNORECASE)


def gradient_normalised(ctx: Context, num: ast.expr, o: OpCall) -> bool:
    """``p.grad / p.grad.norm()`` (``lr * grad / grad.norm()``): a gradient divided by its own norm. A zero
    gradient is reachable (an unused parameter, a dead unit, a masked row), and then the update is NaN."""
    if o.op != "norm" or o.x is None:
        return False
    x = o.x
    match x:
        case ast.Attribute(attr="grad"):
            pass
        case ast.Name(id=name) if _GRAD_NAME.search(name):
            pass
        case _:
            return False
    xt = ctx.text(x)
    return any(ctx.text(f) == xt for f in factors(num))


def factors(e: ast.expr) -> list[ast.expr]:
    """``[lr, g]`` for ``lr * g``: the factors of a product (the expression itself otherwise)."""
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Mult):
        return [*factors(e.left), *factors(e.right)]
    return [e]


def normalize_fix(ctx: Context, node: ast.AST, num: ast.expr, o: OpCall) -> Fix | None:
    """``F.normalize(x, dim=d)`` for ``x / x.norm(dim=d, keepdim=True)`` (torch, p = 2): 0 for a zero vector."""
    if o.family != "torch" or not isinstance(node, ast.BinOp) or ctx.text(o.x) != ctx.text(num):  # type: ignore[arg-type]
        return None
    axis, keep, extra = reduce_args(o)
    p = o.kwargs.get("p")
    if (extra and set(o.kwargs) - {"p", "dim", "keepdim"}) or (p is not None and const_value(p) != 2.0):
        return None
    if len(o.args) > 1 and not (o.method and len(o.args) == 1):
        return None  # positional p or dim: keep it simple
    if axis is None or keep is None or not (isinstance(keep, ast.Constant) and keep.value is True):
        return None
    text, imports = ctx.module_ref("torch.nn.functional")
    return Fix(node, f"{text}.normalize({ctx.text(num)}, dim={ctx.text(axis)})", safe=False, imports=imports)
