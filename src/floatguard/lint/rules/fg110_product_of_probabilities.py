"""FG110 product-of-probabilities."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall, const_value
from ..rule import Finding, Fix, Rule
from ._common import STABLE, family, prob_like_name, rest_args


class ProductOfProbabilities(Rule):
    """Checks for `log(prod(p))`, running products of probabilities in a loop, and products of probabilities.

    ## What it does
    Checks for `log(prod(p))`, running products of probabilities in a loop, and products of probabilities.

    Also reported, without a fix: a running product `likelihood *= probs[t, y[t]]` in a loop that starts at 1
    (accumulate log-probabilities with `+` instead), and a product of probabilities.

    Opt-in (``--select FG110``): on 23 mature packages it had never seen (``benchmarks/lint_precision``) its one
    finding was judged a nit (a product of the few token probabilities of a short label, which does not underflow).

    ## Why is this bad?
    A product of many probabilities underflows to 0 (a few hundred factors of 0.1 in float64, 45 in float32), and
    its log is then -inf; add logs instead.

    ## Example
    ```python
    import torch

    seq_logp = torch.log(torch.prod(step_probs, dim=-1))
    ```

    ## Use instead
    ```python
    import torch

    seq_logp = torch.sum(torch.log(step_probs), dim=-1)
    ```

    ## Fix safety
    The fix for `log(prod(p))` is safe: `sum(log(p))` over the same axis is the same function. Running products in a
    loop are reported without one.

    ## References
    - [Log probability (Wikipedia)](https://en.wikipedia.org/wiki/Log_probability)
    """

    code = "FG110"
    confidence = "low"  # benchmarks/lint_precision: 1 finding on 23 packages, a nit
    default = False
    name = "product-of-probabilities"
    categories = ("underflow",)
    nodes = (ast.Call, ast.AugAssign)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        if isinstance(node, ast.AugAssign):
            if isinstance(node.op, ast.Mult) and self._in_loop(ctx, node) and self._starts_at_one(ctx, node) and (
                    ctx.prob_source(node.value) is not None or prob_like_name(ctx, node.value)):
                yield Finding(node, "a running product of probabilities underflows to 0",
                              "accumulate log-probabilities with + instead")
            return
        log = ctx.ops(node, "log")
        if log is not None:
            prod = ctx.ops(log.x, "prod")
            if prod is None or prod.x is None:
                return
            yield Finding(node, "log(prod(p)) is -inf once the product underflows", "sum the logs instead",
                          self._fix(ctx, node, prod))
            return
        prod = ctx.ops(node, "prod")
        if prod is not None and prod.x is not None and ctx.prob_source(prod.x) is not None:
            parent = ctx.parent(node)
            if ctx.ops(parent, "log") is not None:
                return
            yield Finding(node, "the product of probabilities underflows to 0", "work with sums of log-probabilities")

    def _starts_at_one(self, ctx: Context, node: ast.AugAssign) -> bool:
        """The accumulator was set to 1 before the loop (``p = 1.0``)."""
        if not isinstance(node.target, ast.Name):
            return False
        scope = ctx._scope(ctx.scope_of(node))
        return any(isinstance(b.value, ast.expr) and const_value(b.value) == 1.0
                   for b in scope.names.get(node.target.id, []))

    def _in_loop(self, ctx: Context, node: ast.AST) -> bool:
        p = ctx.parent(node)
        while p is not None and not isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
            if isinstance(p, ast.For | ast.While | ast.AsyncFor):
                return True
            p = ctx.parent(p)
        return False

    def _fix(self, ctx: Context, node: ast.AST, prod: OpCall) -> Fix | None:
        fam = family(ctx, prod)
        if fam is None or fam == "math" or "sum" not in STABLE.get(fam, {}) or prod.x is None:
            return None
        if any(k.arg == "dtype" for k in prod.node.keywords):
            return None
        log_f, sum_f = STABLE[fam]["log"], STABLE[fam]["sum"]
        imports: tuple[str, ...] = ()
        names = []
        for qual in (log_f, sum_f):
            module, _, name = qual.rpartition(".")
            text, imp = ctx.module_ref(module)
            names.append(f"{text}.{name}")
            imports += imp
        rest = rest_args(ctx, prod.node, skip=0 if prod.method else 1)
        extra = "".join(", " + r for r in rest)
        return Fix(node, f"{names[1]}({names[0]}({ctx.text(prod.x)}){extra})", imports=tuple(dict.fromkeys(imports)))
