"""FG203 where-nan-gradient."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall, const_value, is_pure
from ..rule import Finding, Fix, Rule
from ._bounds import guarded, scalar_param, tally


class WhereNanGradient(Rule):
    """Checks for `where(cond, log(x), y)` (also `sqrt`, division) whose condition masks the unsafe op's input.

    ## What it does
    Checks for `where(cond, log(x), y)` (also `sqrt`, division) whose condition masks the unsafe op's input.

    Opt-in (``--select FG203``): in mature code most such ``where`` calls sit in code nothing differentiates
    (metrics, optimizer state), see ``benchmarks/lint_precision``. Not reported under ``no_grad``, in functions with
    their own derivative, or when the divisor is a count or a scalar hyperparameter (``beta: float = 1.0``).

    ## Why is this bad?
    ``where(cond, log(x), y)`` still differentiates ``log(x)`` where ``cond`` is false, and ``0 * inf`` there makes
    the gradient NaN; mask the input of the unsafe op, not its output.

    ## Example
    ```python
    import torch
    import jax.numpy as jnp

    y = torch.where(x > 0, torch.log(x), torch.zeros_like(x))
    r = jnp.where(d > 0, jnp.sqrt(d), 0.0)
    ```

    ## Use instead
    ```python
    import torch
    import jax.numpy as jnp

    y = torch.where(x > 0, torch.log(torch.where(x > 0, x, 1.0)), torch.zeros_like(x))
    r = jnp.where(d > 0, jnp.sqrt(jnp.where(d > 0, d, 1.0)), 0.0)
    ```

    ## Fix safety
    The fix is safe: masking the input with a second `where` keeps every selected value and makes the discarded
    branch's gradient finite.

    ## References
    - [JAX FAQ: gradients contain NaN where using where](https://jax.readthedocs.io/en/latest/faq.html#gradients-contain-nan-where-using-where)
    """

    code = "FG203"
    confidence = "low"  # benchmarks/lint_precision: mature code masks where nothing differentiates
    default = False
    name = "where-nan-gradient"
    categories = ("gradient", "nan")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        w = ctx.ops(node, "where")
        if w is None or w.family not in ("torch", "jax", "tf", "keras") or len(w.node.args) != 3 or \
                ctx.no_gradient(node, w.family):
            return
        cond, a, b = w.node.args
        cond_names = self._names(ctx, cond)
        for branch, other_side in ((a, False), (b, True)):
            hit = self._unsafe(ctx, branch)
            if hit is None:
                continue
            inner, x = hit
            if not self._names(ctx, x) & cond_names:
                continue  # the condition is not about this input: not the masking idiom
            yield Finding(node, f"where() does not stop the NaN gradient of {inner} in the branch it discards",
                          "mask the input of the op with a second where (the double-where trick)",
                          self._fix(ctx, w, cond, x, other_side))
            return

    def _names(self, ctx: Context, node: ast.expr) -> set[str]:
        """Names in ``node``, and in what names it reads were assigned from (one level)."""
        out: set[str] = set()
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id not in ("self", "cls") and n.id not in ctx.imports:
                out.add(n.id)
                v = ctx.value(n, depth=1)
                if v is not None and v is not n:
                    out |= {m.id for m in ast.walk(v) if isinstance(m, ast.Name)}
            elif isinstance(n, ast.Attribute):
                out.add(ctx.text(n))
        return out

    def _masked(self, ctx: Context, x: ast.expr) -> bool:
        """Some array in ``x`` was already passed through where() (the double-where trick)."""
        return any(isinstance(n, ast.Name) and ctx.ops(ctx.value(n), "where") is not None for n in ast.walk(x)) or \
            ctx.ops(x, "where") is not None

    def _unsafe(self, ctx: Context, branch: ast.expr) -> tuple[str, ast.expr] | None:
        match branch:
            case ast.BinOp(op=ast.Div(), right=den) if const_value(den) is None and not guarded(ctx, den):
                if self._masked(ctx, den) or scalar_param(ctx, den) or tally(ctx, den):
                    return None
                if isinstance(den, ast.Name | ast.Attribute | ast.Subscript):
                    return "a division", den
                return None
            case ast.Call():
                o: OpCall | None = ctx.ops(branch, "log", "sqrt")
                if o is None or o.x is None or guarded(ctx, o.x):
                    return None
                if not self._masked(ctx, o.x):
                    return f"{o.op}()", o.x
        return None

    def _fix(self, ctx: Context, w: OpCall, cond: ast.expr, x: ast.expr, other_side: bool) -> Fix | None:
        if not is_pure(cond) or not is_pure(x):
            return None
        func = ctx.text(w.node.func)
        one = "1.0"
        if w.family == "tf":
            return None
        c, xt = ctx.text(cond), ctx.text(x)
        masked = f"{func}({c}, {one}, {xt})" if other_side else f"{func}({c}, {xt}, {one})"
        return Fix(x, masked)
