"""FG104 log-sigmoid."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._common import family, log_of, reach, ref


def log_sigmoid_fix(ctx: Context, outer: ast.AST, via: ast.expr | None, sig: OpCall, negate: bool) -> Fix | None:
    """``log_sigmoid(x)`` (or of ``-x``) in place of ``outer``, when the sigmoid's input is at hand."""
    how = reach(ctx, via, sig.node)
    if how is None or sig.module_call or sig.x is None:
        return None
    fam = family(ctx, sig)
    if sig.qual.startswith("scipy."):
        fam = "scipy"
    if fam == "scipy":
        text, imports = ctx.module_ref("scipy.special")
        r: tuple[str, tuple[str, ...]] | None = (f"{text}.log_expit", imports)
    else:
        r = ref(ctx, fam, "log_sigmoid")
    if r is None:
        return None
    from ._common import neg_text

    arg = neg_text(ctx, sig.x) if negate else ctx.text(sig.x)
    return Fix(outer, f"{r[0]}({arg})", safe=how == "inline", imports=r[1])


class LogSigmoid(Rule):
    """``log(sigmoid(x))`` is -inf once ``sigmoid(x)`` underflows (x < -88 in float32, and inaccurate well before);
    log_sigmoid computes ``-softplus(-x)`` directly.

    Bad:
        logp = torch.log(torch.sigmoid(z))

    Good:
        logp = F.logsigmoid(z)
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
        fix = log_sigmoid_fix(ctx, node, clamp.x, src[1], negate=False)
        if fix is not None:
            fix.safe = False  # differs from the clamped value where the sigmoid saturates
        yield Finding(node, "log of a clamped sigmoid: finite, but its gradient is 0 where the sigmoid saturates",
                      "use log_sigmoid (F.logsigmoid, jax.nn.log_sigmoid), exact and with a gradient everywhere", fix)
