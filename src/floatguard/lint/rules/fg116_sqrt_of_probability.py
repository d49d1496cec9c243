"""FG116 sqrt-of-probability."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context
from ..rule import Finding, Rule
from ._bounds import guarded


class SqrtOfProbability(Rule):
    """Checks for `sqrt(softmax(x))` and `sqrt(sigmoid(x))`, the square root of a probability.

    ## What it does
    Checks for `sqrt` of a softmax or sigmoid output, written inline or reached through names.

    ## Why is this bad?
    The derivative of ``sqrt(p)`` is ``1 / (2 sqrt(p))``: inf where the probability underflows to 0, which
    happens for any confident input (``softmax`` of logits 104 apart in float32), so the backward pass turns
    NaN. ``exp(0.5 * log_softmax(x))`` is the same value with a finite gradient.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F

    score = torch.sum(labels * torch.sqrt(F.softmax(logits, dim=-1)), dim=-1)
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn.functional as F

    score = torch.sum(labels * torch.exp(0.5 * F.log_softmax(logits, dim=-1)), dim=-1)
    ```

    ## Fix safety
    There is no fix yet: the rewrite needs the log-space op of each framework.

    ## References
    - [torch.nn.functional.log_softmax](https://pytorch.org/docs/stable/generated/torch.nn.functional.log_softmax.html)
    """

    code = "FG116"
    name = "sqrt-of-probability"
    categories = ("gradient",)
    confidence = "medium"
    default = False

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        sq = ctx.ops(node, "sqrt")
        if sq is None or sq.x is None or guarded(ctx, sq.x):
            return
        src = ctx.prob_source(sq.x)
        if src is None or src[2] == "name":
            return
        yield Finding(node, f"sqrt of the output of a {src[0]}: its gradient is inf where a probability is 0",
                      "take exp(0.5 * log_softmax(x)) (or exp(0.5 * log_sigmoid(x)))")
