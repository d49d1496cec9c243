"""FG117 log-of-sigmoid."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context
from ..rule import Finding, Rule
from ._common import log_of
from .fg104_log_sigmoid import log_sigmoid_fix


class LogOfSigmoid(Rule):
    """Checks for `log(sigmoid(x))` written out.

    ## What it does
    Checks for `log(sigmoid(x))` written out.

    Opt-in (``--select FG117``): on 32 mature packages it had never seen (``benchmarks/lint_precision``, rounds 1-3)
    its 4 findings were all nits: the log of a coupling scale ``sigmoid(s + 2)``, which underflows only for
    s < -87 in float32, where the flow has already broken elsewhere. The clamped form
    `log(clamp(sigmoid(x), eps, 1 - eps))`, which loses its gradient at moderate x, stays in the default selection
    as FG104.

    ## Why is this bad?
    ``log(sigmoid(x))`` is -inf once ``sigmoid(x)`` underflows (x < -87 in float32 and bfloat16, x < -17 in
    float16) and loses digits well before; log_sigmoid computes ``-softplus(-x)`` directly.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F

    logp = torch.log(torch.sigmoid(z))
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn.functional as F

    logp = F.logsigmoid(z)
    ```

    ## Fix safety
    The fix is safe for `log(sigmoid(x))` written inline: `F.logsigmoid`, `jax.nn.log_sigmoid`,
    `scipy.special.log_expit` (in NumPy without SciPy, `-logaddexp(0, -x)`) compute the same function. It is
    unsafe when the sigmoid is reached through a name (the intermediate may be used elsewhere).

    ## References
    - [torch.nn.functional.logsigmoid](https://pytorch.org/docs/stable/generated/torch.nn.functional.logsigmoid.html)
    - [jax.nn.log_sigmoid](https://jax.readthedocs.io/en/latest/_autosummary/jax.nn.log_sigmoid.html)
    """

    code = "FG117"
    confidence = "low"  # benchmarks/lint_precision: 4 findings on 32 packages, 0 true, 4 nits
    default = False
    name = "log-of-sigmoid"
    categories = ("underflow", "gradient")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        found = log_of(ctx, node, "sigmoid")
        if found is None:
            return
        log, sig = found
        yield Finding(node, "log of sigmoid underflows to -inf for very negative inputs",
                      "use log_sigmoid (F.logsigmoid, jax.nn.log_sigmoid, tf.math.log_sigmoid)",
                      log_sigmoid_fix(ctx, node, log.x, sig, negate=False))
