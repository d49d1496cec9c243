"""FG112 log-one-minus-sigmoid."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context
from ..rule import Finding, Rule
from ._bounds import guarded
from ._common import one_minus
from .fg104_log_sigmoid import log_sigmoid_fix


class LogOneMinusSigmoid(Rule):
    """Checks for `log(1 - sigmoid(x))`, the log of a sigmoid's complement.

    ## What it does
    Checks for `log(1 - sigmoid(x))`, the log of a sigmoid's complement.

    ## Why is this bad?
    ``log(1 - sigmoid(x))`` is -inf once ``sigmoid(x)`` rounds to 1 (x > 17 in float32) and cancels well before; it
    equals ``log_sigmoid(-x)``.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F

    loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - torch.sigmoid(z)))
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn.functional as F

    loss = -(y * torch.log(p) + (1 - y) * F.logsigmoid(-z))
    ```

    ## Fix safety
    The fix is safe when the sigmoid is written inline: `log_sigmoid(-x)` is the same function.

    ## References
    - [torch.nn.functional.logsigmoid](https://pytorch.org/docs/stable/generated/torch.nn.functional.logsigmoid.html)
    """

    code = "FG112"
    confidence = "medium"
    name = "log-one-minus-sigmoid"
    categories = ("cancellation", "underflow")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        o = ctx.ops(node, "log", "log1p")
        if o is None or o.x is None:
            return
        if o.op == "log":
            p = one_minus(o.x)
        else:
            p = o.x.operand if isinstance(o.x, ast.UnaryOp) and isinstance(o.x.op, ast.USub) else None
        if p is None or guarded(ctx, o.x):
            return
        src = ctx.prob_source(p)
        if src is None or src[0] != "sigmoid" or src[2] in ("model", "name") or src[1] is None:
            return
        yield Finding(node, "log(1 - sigmoid(x)) is -inf once sigmoid(x) rounds to 1", "use log_sigmoid(-x)",
                      log_sigmoid_fix(ctx, node, p, src[1], negate=True))
