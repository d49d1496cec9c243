"""FG108 log1mexp."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context
from ..rule import Finding, Fix, Rule
from ._common import fg_ref, one_minus


class Log1mExp(Rule):
    """``log(1 - exp(x))`` (x < 0) cancels for x near 0 and rounds ``1 - exp(x)`` to 1 for x below -17; log1mexp
    switches between ``log(-expm1(x))`` and ``log1p(-exp(x))`` at -ln 2.

    Bad:
        log_surv = torch.log(1 - torch.exp(log_cdf))

    Good:
        log_surv = floatguard.log1mexp(log_cdf)
    """

    code = "FG108"
    confidence = "medium"
    name = "log1mexp"
    categories = ("accuracy", "cancellation")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        log = ctx.ops(node, "log")
        if log is None:
            return
        exp = ctx.ops(one_minus(log.x), "exp")
        if exp is None or exp.x is None:
            return
        f, imports = fg_ref(ctx, "log1mexp")
        yield Finding(node, "log(1 - exp(x)) cancels near x = 0 and loses everything below x = -17",
                      "use log1mexp (floatguard.log1mexp)", Fix(node, f"{f}({ctx.text(exp.x)})",
                                                                 imports=imports))
