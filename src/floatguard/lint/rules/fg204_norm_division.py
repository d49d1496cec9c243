"""FG204 norm-division."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context
from ..rule import Finding, Rule
from ._bounds import guarded
from ._common import division_parts
from .fg201_unguarded_normalization import gradient_normalised, normalize_fix

_NONZERO_SOURCE = ("normal", "randn", "sample", "eigh", "eig", "svd", "qr", "uniform", "rand")


class NormDivision(Rule):
    """Checks for `x / norm(x)` outside a model or loss (an optimizer step, a feature normalisation).

    ## What it does
    Checks for `x / norm(x)` outside a model or loss (an optimizer step, a feature normalisation).

    Also reported, without a fix: an optimizer step `p -= lr * p.grad / p.grad.norm()` under `torch.no_grad()`
    (clamp the norm: `p.grad.norm().clamp_min(1e-12)`).

    Opt-in (``--select FG204``): on 16 mature packages it had never seen (``benchmarks/lint_precision``) its 21
    findings were judged 2 true, 10 nits and 9 false: most vectors normalised in library code are never 0
    (eigenvectors, null-space vectors, rows selected as non-zero just above).

    ## Why is this bad?
    ``x / norm(x)`` outside a model or loss (an optimizer step ``grad / grad.norm()``, a feature normalisation, an
    eval metric) is 0/0 = NaN for a zero vector: a zero gradient, a padded row, a point cloud of identical points.
    ``F.normalize`` (or ``+ eps``) returns 0 there. Inside differentiated code FG201 reports it.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F

    @torch.no_grad()
    def normalized(x):
        return x / x.norm(dim=-1, keepdim=True)
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn.functional as F

    @torch.no_grad()
    def normalized(x):
        return F.normalize(x, dim=-1)
    ```

    ## Fix safety
    The fix (`F.normalize`) is unsafe: it returns 0 instead of NaN for a zero vector.

    ## References
    - [torch.nn.functional.normalize](https://pytorch.org/docs/stable/generated/torch.nn.functional.normalize.html)
    """

    code = "FG204"
    name = "norm-division"
    categories = ("nan", "division")
    nodes = (ast.BinOp, ast.AugAssign)
    confidence = "low"  # benchmarks/lint_precision: most vectors normalised in library code are never 0
    default = False

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        parts = division_parts(ctx, node)
        if parts is None or ctx.in_model(node):
            return
        num, den, d = parts
        o = ctx.ops(d, "norm")
        if o is None or o.x is None or o.family == "math" or guarded(ctx, den) or gradient_normalised(ctx, num, o):
            return  # a gradient over its norm is FG201
        x = ctx.text(ctx.strip_views(o.x) or o.x)
        if not any(ctx.text(ctx.strip_views(f) or f) == x for f in _factors(num)) or _nonzero(ctx, o.x):
            return
        fix = normalize_fix(ctx, node, num, o)
        yield Finding(node, "division by its own norm with no eps: NaN for a zero vector",
                      "clamp the norm (norm.clamp_min(eps)) or use F.normalize", fix)


def _nonzero(ctx: Context, x: ast.expr | None, depth: int = 0) -> bool:
    """Nonzero by construction: a draw from a continuous distribution, an eigen/singular vector."""
    if x is None or depth > 4:
        return False
    match x:
        case ast.Name():
            v = ctx.value(x, depth=1)
            return v is not x and _nonzero(ctx, v, depth + 1)
        case ast.Subscript(value=v) | ast.Attribute(attr="T", value=v):
            return _nonzero(ctx, v, depth + 1)
        case ast.BinOp(left=a, op=ast.Mult(), right=b):
            return _nonzero(ctx, a, depth + 1) or _nonzero(ctx, b, depth + 1)
        case ast.Call(func=f):
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            return any(name == s or name.endswith("_" + s) for s in _NONZERO_SOURCE)
    return False


def _factors(e: ast.expr) -> list[ast.expr]:
    """``[lr, g]`` for ``lr * g``: the factors of a product (the expression itself otherwise)."""
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Mult):
        return [*_factors(e.left), *_factors(e.right)]
    return [e]
