"""FG302 softmax-cross-entropy."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall, const_value
from ..rule import Finding, Fix, Rule
from ._common import fg_fix, fg_ref, reach, rest_args, uses_floatguard
from .fg301_sigmoid_bce import criterion_kind


class SoftmaxCrossEntropy(Rule):
    """Checks for `cross_entropy(softmax(x))` and `nll_loss(log(softmax(x)))`.

    ## What it does
    Checks for `cross_entropy(softmax(x))` and `nll_loss(log(softmax(x)))`.

    ## Why is this bad?
    ``cross_entropy`` already applies log_softmax, so feeding it softmax outputs computes a double softmax (flat
    loss, tiny gradients), and ``nll_loss`` wants log-probabilities, not ``log(softmax(x))`` (underflow) or
    probabilities.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F

    loss = F.cross_entropy(F.softmax(logits, dim=1), y)
    loss = F.nll_loss(torch.log(F.softmax(logits, dim=1)), y)
    ```

    ## Use instead
    ```python
    import torch
    import torch.nn.functional as F

    loss = F.cross_entropy(logits, y)
    loss = F.cross_entropy(logits, y)
    ```

    ## Fix safety
    The `nll_loss(log(softmax(x, dim=1)))` fix is safe: `F.cross_entropy(x, ...)` takes the same arguments and is
    the same loss (with `dim=-1` it is unsafe: the same only for 2-d scores). The `cross_entropy(softmax(x))` fix is
    unsafe: it changes the loss, removing the double softmax.

    ## References
    - [torch.nn.functional.cross_entropy](https://pytorch.org/docs/stable/generated/torch.nn.functional.cross_entropy.html)
    """

    code = "FG302"
    confidence = "medium"
    name = "softmax-cross-entropy"
    categories = ("loss", "accuracy")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        if not isinstance(node, ast.Call):
            return
        o = ctx.ops(node, "cross_entropy", "nll_loss")
        kind = o.op if o is not None else {"CrossEntropyLoss": "cross_entropy", "NLLLoss": "nll_loss"}.get(
            criterion_kind(ctx, node) or "")
        if kind is None:
            return
        inp = o.arg(0, "input") if o is not None else (node.args[0] if node.args else None)
        if inp is None:
            return
        if kind == "cross_entropy":
            src = ctx.prob_source(inp)
            if src is None or src[0] != "softmax":
                return
            fix = None
            if o is not None and src[1] is not None and src[1].x is not None and reach(ctx, inp, src[1].node):
                fix = Fix(inp, ctx.text(src[1].x), safe=False)
            yield Finding(node, "cross_entropy applies log_softmax itself: softmax before it is a double softmax",
                          "pass the logits", fix)
            return
        log = ctx.ops(inp, "log")
        src = ctx.prob_source(log.x if log is not None else inp)
        if src is None or src[0] != "softmax":
            return
        if log is None:
            yield Finding(node, "nll_loss expects log-probabilities but receives softmax probabilities",
                          "use cross_entropy on the logits")
            return
        yield Finding(node, "nll_loss(log(softmax(x))) underflows; it is cross_entropy(x)",
                      "use cross_entropy on the logits", self._fix(ctx, o, log, src[1]))

    def _fix(self, ctx: Context, o: OpCall | None, log: OpCall, sm: OpCall | None) -> Fix | None:
        if o is None or sm is None or sm.x is None or sm.module_call or not isinstance(o.node.func, ast.Attribute):
            return None
        how = reach(ctx, log.x, sm.node)
        if how is None or not o.qual.startswith("torch.nn.functional"):
            return None
        dim = sm.arg(1, "dim")
        target = o.arg(1, "target")
        kw = {k.arg: k.value for k in o.node.keywords if k.arg not in ("input", "target")}
        if dim is None or target is None:
            return None
        if uses_floatguard(ctx):
            if len(o.node.args) > 2 or set(kw) - {"reduction", "ignore_index"}:
                return None
            # already a dependency: floatguard's is <= 1 ulp (torch's cross_entropy keeps ~10 of the bits
            # log(softmax) loses and rounds small losses to 0). nll_loss ignores class -100 by default.
            extra = f", ignore_index={ctx.text(kw['ignore_index'])}" if "ignore_index" in kw else ", ignore_index=-100"
            if "reduction" in kw:
                extra += f", reduction={ctx.text(kw['reduction'])}"
            f, imports = fg_ref(ctx, "cross_entropy")
            text = f"{f}({ctx.text(sm.x)}, {ctx.text(target)}, axis={ctx.text(dim)}{extra})"
            return fg_fix(o.node, text, imports, safe=how == "inline")
        # nll_loss(input, target, weight, size_average, ignore_index, reduce, reduction) and cross_entropy take the
        # same arguments in the same places, and both read the classes along dim 1: the softmax must be over it
        # (dim=-1 is dim 1 only for 2-d scores: unsafe)
        d = const_value(dim)
        if d not in (1.0, -1.0) or not o.node.args or any(k.arg is None for k in o.node.keywords):
            return None
        head = ctx.text(o.node.func.value)
        rest = rest_args(ctx, o.node)
        return Fix(o.node, f"{head}.cross_entropy({', '.join([ctx.text(sm.x), *rest])})",
                   safe=how == "inline" and d == 1.0)
