"""FG111 log-of-probability."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context
from ..rule import Finding, Rule
from ._bounds import guarded
from ._common import one_minus, prob_like_name


class LogOfProbability(Rule):
    """Checks for `log(p)` of a probability with no clamp or eps in a loss.

    ## What it does
    Checks for `log(p)` of a probability with no clamp or eps in a loss.

    The probability is often produced in another function or file (the model's ``forward`` ends in a sigmoid or
    softmax), so the rule judges the ``log`` by what guards it: an ``eps`` added, a clamp/clip (also inside a helper
    of the file), ``p[p > 0]``, or a value that is positive by construction silence it. Where only a name says
    "probability" (``proba``, ``predict_proba(X)``) and nothing is differentiated (NumPy), or the value is a
    distribution object's own parameter (``self.probs`` outside a Module/Layer/Model/Loss), ``log(0) = -inf`` is the
    exact answer and nothing is reported.

    ## Why is this bad?
    A hand-written loss that takes ``log`` of a probability with nothing keeping it from 0 gives -inf, then NaN (``0
    * -inf``) once a prediction saturates; compute the loss from the logits.

    ## Example
    ```python
    import torch

    def bce(p, y):
        return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()

    probs = model(x)              # forward() ends in softmax
    loss = -torch.log(probs[range(n), y]).mean()
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn.functional as F

    loss = F.binary_cross_entropy_with_logits(logits, y)
    loss = F.cross_entropy(logits, y)
    loss = -(y * torch.log(p.clamp_min(1e-7))).sum()   # if only probabilities exist
    ```

    ## Fix safety
    There is no fix: the stable form needs the logits, which the rule cannot always see.

    ## References
    - [torch.nn.functional.binary_cross_entropy_with_logits](https://pytorch.org/docs/stable/generated/torch.nn.functional.binary_cross_entropy_with_logits.html)
    - [torch.nn.functional.cross_entropy](https://pytorch.org/docs/stable/generated/torch.nn.functional.cross_entropy.html)
    """

    code = "FG111"
    confidence = "medium"
    name = "log-of-probability"
    categories = ("nan", "loss")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        log = ctx.ops(node, "log")
        if log is None or log.x is None or log.family == "math":
            return
        arg = log.x
        inner = ctx.op(arg)
        if inner is not None and inner.op == "abs" and inner.x is not None:
            arg = inner.x  # log(abs(p)): abs does not keep p away from 0
        q = one_minus(arg)
        target = q if q is not None else arg
        if guarded(ctx, arg) or (q is not None and guarded(ctx, q)):
            return
        src = ctx.prob_source(target)
        if src is not None:
            if src[1] is not None and (q is None or src[0] == "sigmoid"):
                return  # FG102 / FG104 / FG112 report it with a fix
            if src[1] is None and src[2] == "inline":
                return  # a hand-written softmax / sigmoid right here: FG103 / FG109
            if src[2] == "name" and ctx.no_gradient(node, log.family):
                return  # predict_proba named so, no autograd: log(0) = -inf is the documented result
            what = f"the output of a {src[0]}"
        else:
            if isinstance(target, ast.BinOp) and isinstance(target.op, ast.Div):
                target = target.left  # log(p / q) of a KL divergence
            if not prob_like_name(ctx, target):
                return
            if not (q is not None or ctx.in_loss(node) or self._cross_entropy_shape(ctx, node)):
                return
            if self._own_parameter(ctx, node, target):
                return  # log(self.probs) of a distribution: its own parameter, log(0) = -inf is the exact value
            if ctx.no_gradient(node, log.family):
                return  # only a name says probability, and no gradient flows: log(0) = -inf is the right value
            what = "a probability"
        yield Finding(node, f"log of {what} with no clamp or eps: -inf and NaN gradients when it saturates",
                      "compute the loss from logits (log_softmax, BCE/cross-entropy with logits) or clamp first")

    def _own_parameter(self, ctx: Context, node: ast.AST, target: ast.expr) -> bool:
        """``target`` is an attribute of the object (``self.probs``, ``jnp.asarray(self._probs)``) and the object is
        not a model (no Module/Layer/Model/Loss base): a parameter the caller chose, not a prediction."""
        base = ctx.strip_views(target)
        if not isinstance(base, ast.Attribute):
            return False
        if not (isinstance(base.value, ast.Name) and base.value.id == "self"):
            return not (ctx.in_model(node) or ctx.in_loss(node))
        cls = ctx.enclosing_class(node)
        return cls is not None and not ctx.is_model_class(cls)

    def _cross_entropy_shape(self, ctx: Context, node: ast.AST) -> bool:
        """``y * log(p)`` / ``log(p) * y``, the body of a hand-written cross-entropy."""
        parent = ctx.parent(node)
        if isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.USub):
            parent = ctx.parent(parent)
        return isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Mult)
