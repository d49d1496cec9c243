"""FG104 log-sigmoid."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._common import as_operand, family, has_scipy, neg_text, numpy_ref, reach, ref, scipy_special_ref


def log_sigmoid_fix(ctx: Context, outer: ast.AST, via: ast.expr | None, sig: OpCall, negate: bool,
                    safe: bool = True) -> Fix | None:
    """``log_sigmoid(x)`` (or of ``-x``) in place of ``outer``, when the sigmoid's input is at hand: the framework's
    own (``F.logsigmoid``, ``jax.nn.log_sigmoid``, ``scipy.special.log_expit``), in NumPy ``-logaddexp(0, -x)``."""
    how = reach(ctx, via, sig.node)
    if how is None or sig.module_call or sig.x is None:
        return None
    arg = neg_text(ctx, sig.x) if negate else ctx.text(sig.x)
    safe = safe and how == "inline"
    fam = "scipy" if sig.qual.startswith("scipy.") else family(ctx, sig)
    r: tuple[str, tuple[str, ...]] | None
    if fam == "scipy" or (fam == "numpy" and has_scipy(ctx)):
        r = scipy_special_ref(ctx, "log_expit")
    elif fam == "numpy":  # log(1 / (1 + exp(-x))) = -log(exp(0) + exp(-x))
        f, imports = numpy_ref(ctx, "logaddexp")
        minus = neg_text(ctx, sig.x) if not negate else ctx.text(sig.x)
        return Fix(outer, as_operand(ctx, outer, f"-{f}(0, {minus})"), safe=safe, imports=imports)
    else:
        r = ref(ctx, fam, "log_sigmoid")
    if r is None:
        return None
    return Fix(outer, f"{r[0]}({arg})", safe=safe, imports=r[1])


class LogSigmoid(Rule):
    """Checks for `log(clamp(sigmoid(x), eps, 1 - eps))`: a log of a sigmoid clamped or clipped away from 0.

    ## What it does
    Checks for `log(clamp(sigmoid(x), eps, 1 - eps))`: a log of a sigmoid clamped or clipped away from 0.

    The plain `log(sigmoid(x))` is the opt-in rule FG117 (log-of-sigmoid): on 32 mature packages it had never seen
    (``benchmarks/lint_precision``, rounds 1-3) its 4 findings were nits (it breaks only for x < -87 in float32 and
    bfloat16, x < -17 in float16), while the one true finding of this rule was the clamped form, which loses its
    gradient at moderate x.

    ## Why is this bad?
    The clamp keeps the log finite, but where it acts (``sigmoid(x) < eps``: x < -16 for eps = 1e-7) its gradient
    is 0, so a confidently wrong prediction stops learning; log_sigmoid computes ``-softplus(-x)`` directly, exact
    and with a gradient everywhere.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F

    logp = torch.log(torch.clamp(torch.sigmoid(z), 1e-7, 1 - 1e-7))
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn.functional as F

    logp = F.logsigmoid(z)
    ```

    ## Fix safety
    The fix (`F.logsigmoid`, `jax.nn.log_sigmoid`, `scipy.special.log_expit`) is unsafe: its value differs from
    the clamped one where the clamp acts (that is the point: the gradient there is no longer 0).

    ## References
    - [torch.nn.functional.logsigmoid](https://pytorch.org/docs/stable/generated/torch.nn.functional.logsigmoid.html)
    - [jax.nn.log_sigmoid](https://jax.readthedocs.io/en/latest/_autosummary/jax.nn.log_sigmoid.html)
    """

    code = "FG104"
    name = "log-sigmoid"
    categories = ("underflow", "gradient")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        """``log(clip(sigmoid(x), eps, 1 - eps))``: finite, but the clamp's gradient is 0 where the sigmoid
        saturates, so a confidently wrong prediction stops learning."""
        log = ctx.ops(node, "log")
        if log is None or log.x is None:
            return
        clamp = ctx.ops(ctx.value(log.x) if isinstance(log.x, ast.Name) else log.x, "clamp")
        if clamp is None or clamp.x is None or ctx.no_gradient(node, clamp.family):
            return
        src = ctx.prob_source(clamp.x)
        if src is None or src[0] != "sigmoid" or src[1] is None:
            return
        # unsafe: differs from the clamped value where the sigmoid saturates
        fix = log_sigmoid_fix(ctx, node, clamp.x, src[1], negate=False, safe=False)
        yield Finding(node, "log of a clamped sigmoid: finite, but its gradient is 0 where the sigmoid saturates",
                      "use log_sigmoid (F.logsigmoid, jax.nn.log_sigmoid), exact and with a gradient everywhere", fix)
