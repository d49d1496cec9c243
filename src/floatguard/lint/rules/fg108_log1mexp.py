"""FG108 log1mexp."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context
from ..rule import Finding, Rule
from ._common import dep_hint, fg_fix, fg_ref, one_minus


class Log1mExp(Rule):
    """Checks for `log(1 - exp(x))`, the log of a complement given as a log.

    ## What it does
    Checks for `log(1 - exp(x))`, the log of a complement given as a log.

    ## Why is this bad?
    ``log(1 - exp(x))`` (x < 0) cancels for x near 0 and rounds ``1 - exp(x)`` to 1 for x below -17; log1mexp
    switches between ``log(-expm1(x))`` and ``log1p(-exp(x))`` at -ln 2.

    ## Example
    ```python
    import torch

    log_surv = torch.log(1 - torch.exp(log_cdf))
    ```

    ## Use instead
    ```python
    import floatguard
    import torch

    log_surv = floatguard.log1mexp(log_cdf)
    ```

    ## Fix safety
    No framework has `log1mexp`: the fix calls `floatguard.log1mexp` and adds `import floatguard`, a new dependency,
    so it is unsafe; where the file already imports floatguard it is safe.

    ## References
    - [Mächler, Accurately computing log(1 - exp(-|a|))](https://cran.r-project.org/web/packages/Rmpfr/vignettes/log1mexp-note.pdf)
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
        fix = fg_fix(node, f"{f}({ctx.text(exp.x)})", imports, safe=True)
        yield Finding(node, "log(1 - exp(x)) cancels near x = 0 and loses everything below x = -17",
                      dep_hint("use log1mexp (floatguard.log1mexp)", fix, "no framework has log1mexp"), fix)
