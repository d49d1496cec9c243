"""FG115 log-of-log-value."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from ..analysis import Context
from ..rule import Finding, Rule

#: names of quantities kept in log space: ``logvar``, ``log_sigma``, ``z_log_var``, ``log_std``, ``log_probs``
_LOG_NAME = re.compile(r"^(?:.*_)?log_?(?:var|variance|sigma|sigma_sq|sigma2|std|stddev|scale|probs?|lik|"
                       r"likelihood)$", re.IGNORECASE)


class LogOfLogValue(Rule):
    """Checks for `log(logvar)`, the log of a value that is already a logarithm.

    ## What it does
    Checks for `log` applied to a variable named as a log-space quantity (`logvar`, `log_sigma`, `z_log_var`,
    `log_std`, `log_probs`).

    ## Why is this bad?
    A log-variance or log-probability is any real number, negative half the time: its log is NaN there (and -inf
    at 0), and the gradient with it. The code almost always meant `exp` (the variance from its log) or the
    value itself. GRIST's bug ID-4 is a VAE's KL term computing `logvar.log()`.

    ## Example
    ```python
    import torch

    kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.log(), dim=1)
    ```

    ## Use instead
    ```python
    import torch

    kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1)
    ```

    ## Fix safety
    There is no fix: which function was meant (`exp`, or no function at all) needs a reader.

    ## References
    - [Kingma & Welling, Auto-Encoding Variational Bayes, appendix B](https://arxiv.org/abs/1312.6114)
    """

    code = "FG115"
    name = "log-of-log-value"
    categories = ("nan",)
    confidence = "medium"
    default = False

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        log = ctx.ops(node, "log")
        if log is None or log.x is None:
            return
        for base in (log.x, ctx.strip_views(log.x)):
            match base:
                case ast.Name(id=n) | ast.Attribute(attr=n) if _LOG_NAME.match(n.strip("_")):
                    yield Finding(node, f"log of `{n}`, a value already in log space: NaN where it is negative",
                                  f"use `{n}` itself or its exp")
                    return
