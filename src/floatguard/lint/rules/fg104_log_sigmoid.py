"""FG104 log-sigmoid."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._common import as_operand, family, has_scipy, log_of, neg_text, numpy_ref, reach, ref, scipy_special_ref


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
    """Checks for `log(sigmoid(x))`, and `log(clamp(sigmoid(x), eps, 1 - eps))`.

    ## What it does
    Checks for `log(sigmoid(x))`, and `log(clamp(sigmoid(x), eps, 1 - eps))`.

    ## Why is this bad?
    ``log(sigmoid(x))`` is -inf once ``sigmoid(x)`` underflows (x < -88 in float32, and inaccurate well before);
    log_sigmoid computes ``-softplus(-x)`` directly.

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
    `scipy.special.log_expit` compute the same function. It is unsafe for the clamped form, whose value differs
    where the clamp acts (that is the point: the gradient there is no longer 0).

    ## References
    - [torch.nn.functional.logsigmoid](https://pytorch.org/docs/stable/generated/torch.nn.functional.logsigmoid.html)
    - [jax.nn.log_sigmoid](https://jax.readthedocs.io/en/latest/_autosummary/jax.nn.log_sigmoid.html)
    """

    code = "FG104"
    name = "log-sigmoid"
    categories = ("underflow", "gradient")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        found = log_of(ctx, node, "sigmoid")
        if found is None:
            yield from self._clamped(node, ctx)
            return
        log, sig = found
        yield Finding(node, "log of sigmoid underflows to -inf for very negative inputs",
                      "use log_sigmoid (F.logsigmoid, jax.nn.log_sigmoid, tf.math.log_sigmoid)",
                      log_sigmoid_fix(ctx, node, log.x, sig, negate=False))

    def _clamped(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
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
