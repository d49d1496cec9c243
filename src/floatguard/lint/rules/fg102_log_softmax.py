"""FG102 log-softmax."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._bounds import guarded
from ._common import fg_call, fg_fix, log_of, reach, uses_floatguard

_HAS_LOG_SOFTMAX = ("torch.", "jax.nn.", "tensorflow.nn.", "tensorflow.math.", "keras.ops.", "scipy.special.")


def swap_func(ctx: Context, o: OpCall, new: str) -> str | None:
    """The call ``o`` with its function renamed (``F.softmax(x, dim=1)`` -> ``F.log_softmax(x, dim=1)``)."""
    call = o.node
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    head = ctx.text(func.value)
    whole = ctx.text(call)
    args = whole[len(ctx.text(func)):]
    return f"{head}.{new}{args}"


class LogSoftmax(Rule):
    """Checks for `log(softmax(x))`, the log of a softmax's probabilities.

    ## What it does
    Checks for `log(softmax(x))`, the log of a softmax's probabilities, also reached through names and through
    an attribute the class sets once (`self.y_conv = tf.nn.softmax(h)`, then `tf.log(self.y_conv)`).

    ## Why is this bad?
    ``log(softmax(x))`` gives -inf (and NaN gradients) as soon as a probability underflows to 0; log_softmax
    computes ``x - logsumexp(x)`` directly.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F

    logp = torch.log(F.softmax(logits, dim=-1))
    probs = logits.softmax(-1)
    loss = -(y * probs.log()).sum(-1)
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn.functional as F

    logp = F.log_softmax(logits, dim=-1)
    probs = logits.softmax(-1)
    loss = -(y * logits.log_softmax(-1)).sum(-1)
    ```

    ## Fix safety
    The fix is safe when the softmax is written inline: it renames the call (`F.softmax` -> `F.log_softmax`,
    `x.softmax(d)` -> `x.log_softmax(d)`, `jax.nn.softmax` -> `jax.nn.log_softmax`) with the same arguments; unsafe
    when the probabilities are reached through a name. Where the file already imports floatguard, the fix calls
    `floatguard.log_softmax` (within one ulp).

    ## References
    - [torch.nn.functional.log_softmax](https://pytorch.org/docs/stable/generated/torch.nn.functional.log_softmax.html)
    - [jax.nn.log_softmax](https://jax.readthedocs.io/en/latest/_autosummary/jax.nn.log_softmax.html)
    """

    code = "FG102"
    name = "log-softmax"
    categories = ("underflow", "gradient")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        found = log_of(ctx, node, "softmax") or self._through_attribute(ctx, node)
        if found is None:
            return
        log, sm = found
        yield Finding(node, "log of softmax underflows to -inf when a probability rounds to 0",
                      "use log_softmax on the logits", self._fix(ctx, log, sm))

    def _through_attribute(self, ctx: Context, node: ast.AST) -> tuple[OpCall, OpCall] | None:
        """``log(self.probs)`` where the class sets ``self.probs = softmax(...)`` once (TF 1.x models keep their
        graph's tensors as attributes: ``self.y_conv = tf.nn.softmax(...)`` in ``__init__``)."""
        log = ctx.ops(node, "log")
        if log is None or log.x is None:
            return None
        attr = ctx.strip_views(log.x)
        if not (isinstance(attr, ast.Attribute) and isinstance(attr.value, ast.Name) and attr.value.id == "self"):
            return None
        cls = ctx.enclosing_class(node)
        if cls is None or guarded(ctx, log.x):
            return None
        sets = [sub.value for sub in ast.walk(cls) if isinstance(sub, ast.Assign | ast.AnnAssign | ast.AugAssign)
                and any(isinstance(t, ast.Attribute) and t.attr == attr.attr and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                        for t in (sub.targets if isinstance(sub, ast.Assign) else [sub.target]))]
        if len(sets) != 1 or not isinstance(sets[0], ast.Call):
            return None  # set more than once (or by a tuple / augmented assignment): no single value to trust
        src = ctx.prob_source(sets[0])
        if src is None or src[0] != "softmax" or src[1] is None or src[2] != "inline":
            return None
        return log, src[1]

    def _fix(self, ctx: Context, log: OpCall, sm: OpCall) -> Fix | None:
        how = reach(ctx, log.x, sm.node)
        if how is None:
            return None
        if sm.module_call or (sm.node.args and isinstance(sm.node.args[0], ast.Starred)):
            return None
        if sm.family == "torch" and uses_floatguard(ctx):
            # already a dependency: floatguard's log_softmax is <= 1 ulp (torch's up to 2 bits worse in places)
            dim = sm.arg(1, "dim")
            if dim is not None and sm.x is not None and not set(sm.kwargs) - {"dim", "input"}:
                call, imports = fg_call(ctx, "log_softmax", sm.x, dim)
                return fg_fix(log.node, call, imports, safe=how == "inline")
        if sm.method or (sm.qual.startswith(_HAS_LOG_SOFTMAX) and sm.qual.endswith(".softmax")):
            text = swap_func(ctx, sm, "log_softmax")
        else:
            return None
        if text is None:
            return None
        safe = how == "inline" and not sm.qual.startswith("scipy.")
        return Fix(log.node, text, safe=safe)
