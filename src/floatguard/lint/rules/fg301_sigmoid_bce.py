"""FG301 sigmoid-bce."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._common import fg_fix, fg_ref, reach, rest_args, uses_floatguard


def criterion_kind(ctx: Context, call: ast.Call) -> str | None:
    """``"BCELoss"`` / ``"CrossEntropyLoss"`` / ``"NLLLoss"`` when ``call`` calls such a loss module."""
    if not ctx.may_call("BCELoss", "CrossEntropyLoss", "NLLLoss"):  # the file names none: follow nothing back
        return None
    func = call.func
    ctor: ast.AST | None = None
    if isinstance(func, ast.Call):
        ctor = func
    elif isinstance(func, ast.Name):
        ctor = ctx.value(func)
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
        ctor = ctx.self_attr(call, func.attr)
    if not isinstance(ctor, ast.Call):
        return None
    from ..analysis import _QUAL_TO_OP

    kind = _QUAL_TO_OP.get(ctx.qualname(ctor.func) or "")
    return kind if kind in ("BCELoss", "CrossEntropyLoss", "NLLLoss") else None


class SigmoidBCE(Rule):
    """Checks for binary cross-entropy on sigmoid outputs (`F.binary_cross_entropy(torch.sigmoid(z), y)`, `nn.BCELoss`
    after a final `Sigmoid`).

    ## What it does
    Checks for binary cross-entropy on sigmoid outputs (`F.binary_cross_entropy(torch.sigmoid(z), y)`, `nn.BCELoss`
    after a final `Sigmoid`).

    ## Why is this bad?
    Binary cross-entropy on ``sigmoid(z)`` takes ``log`` of a probability that saturates: PyTorch clamps it at -100
    (wrong loss, zero gradient), Keras clips it at 1e-7; BCE with logits computes ``softplus`` terms exactly.

    ## Example
    ```python
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    loss = F.binary_cross_entropy(torch.sigmoid(logits), target)
    criterion = nn.BCELoss()
    loss = criterion(model(x), y)       # model ends in nn.Sigmoid()
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    loss = F.binary_cross_entropy_with_logits(logits, target)
    criterion = nn.BCELoss()
    loss = criterion(model(x), y)       # model ends in nn.Sigmoid()
    ```

    ## Fix safety
    The fix is safe when the sigmoid is written inline: `F.binary_cross_entropy_with_logits` takes the same
    arguments in the same places and computes the same loss without the clamp at -100.

    ## References
    - [torch.nn.functional.binary_cross_entropy_with_logits](https://pytorch.org/docs/stable/generated/torch.nn.functional.binary_cross_entropy_with_logits.html)
    """

    code = "FG301"
    confidence = "medium"
    name = "sigmoid-bce"
    categories = ("loss", "accuracy", "gradient")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        if not isinstance(node, ast.Call):
            return
        o = ctx.ops(node, "bce")
        if o is not None:
            inp = o.arg(0, "input") if o.family == "torch" else o.arg(1, "y_pred", "output")
            if o.family != "torch" and o.kwargs.get("from_logits") is not None:
                return
        else:
            if criterion_kind(ctx, node) != "BCELoss":
                return
            inp = node.args[0] if node.args else None
        src = ctx.prob_source(inp)
        if src is None or src[0] != "sigmoid":
            return
        fix = self._fix(ctx, o, src[1], inp) if o is not None and o.family == "torch" else None
        yield Finding(node, "binary cross-entropy on sigmoid outputs saturates: clamped loss, vanishing gradient",
                      "use binary_cross_entropy_with_logits / BCEWithLogitsLoss on the logits", fix)

    def _fix(self, ctx: Context, o: OpCall, sig: OpCall | None, inp: ast.expr | None) -> Fix | None:
        if sig is None or sig.x is None or sig.module_call:
            return None
        how = reach(ctx, inp, sig.node)
        if how is None or not isinstance(o.node.func, ast.Attribute) or not o.node.args:
            return None
        if uses_floatguard(ctx):
            # already a dependency: floatguard's is <= 1 ulp (torch's loses up to 15 bits for moderately
            # negative logits: log of 1 + exp(-|x|) without log1p)
            names = ["target", "weight"]
            rest = []
            for i, a in enumerate(o.node.args[1:3]):
                rest.append(ctx.text(a) if i == 0 else f"{names[i]}={ctx.text(a)}")
            for k in o.node.keywords:
                if k.arg not in ("target", "weight", "reduction"):
                    return None
                rest.append(f"{k.arg}={ctx.text(k.value)}" if k.arg != "target" else ctx.text(k.value))
            if len(o.node.args) > 3 or not rest:
                return None
            f, imports = fg_ref(ctx, "binary_cross_entropy_with_logits")
            return fg_fix(o.node, f"{f}({', '.join([ctx.text(sig.x), *rest])})", imports, safe=how == "inline")
        # binary_cross_entropy(input, target, weight, size_average, reduce, reduction) and the with_logits form
        # take the same arguments in the same places: rename and pass the logits
        head = ctx.text(o.node.func.value)
        rest = rest_args(ctx, o.node)
        return Fix(o.node, f"{head}.binary_cross_entropy_with_logits({', '.join([ctx.text(sig.x), *rest])})",
                   safe=how == "inline")
