"""FG303 keras-from-logits."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import _QUAL_TO_OP, Context
from ..rule import Finding, Fix, Rule
from ._common import reach

_LOSS_STRINGS = {"binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"}


def _true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


class KerasFromLogits(Rule):
    """Checks for Keras/TF losses whose `from_logits` disagrees with the model's last activation.

    ## What it does
    Checks for Keras/TF losses whose `from_logits` disagrees with the model's last activation.

    Also reported, without a fix: `from_logits=True` on a model whose last layer already applies softmax or sigmoid,
    and the default `from_logits=False` on a linear last layer.

    ## Why is this bad?
    Keras/TF losses must be told whether they get logits: ``from_logits=True`` on softmax/sigmoid outputs applies
    the activation twice, and the default ``from_logits=False`` on a linear last layer treats logits as
    probabilities (clipped to [1e-7, 1 - 1e-7]).

    ## Example
    ```python
    import tensorflow as tf

    loss = tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=tf.nn.softmax(z))
    ```

    ## Use instead
    ```python
    import tensorflow as tf

    loss = tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=z)
    ```

    ## Fix safety
    The fix (pass the logits, not the softmax) is unsafe: it changes the loss.

    ## References
    - [keras.losses.SparseCategoricalCrossentropy](https://keras.io/api/losses/probabilistic_losses/#sparsecategoricalcrossentropy-class)
    """

    code = "FG303"
    confidence = "medium"
    name = "keras-from-logits"
    categories = ("loss", "accuracy")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        if not isinstance(node, ast.Call):
            return
        func = node.func
        o = ctx.op(node)
        if o is not None and o.op == "tf_ce_logits":
            logits = o.kwargs.get("logits")
            src = ctx.prob_source(logits)
            if logits is not None and src is not None:
                fix = None
                if src[1] is not None and src[1].x is not None and reach(ctx, logits, src[1].node):
                    fix = Fix(logits, ctx.text(src[1].x), safe=False)
                yield Finding(node, f"logits= receives {src[0]} outputs: the activation is applied twice",
                              "pass the pre-activation logits", fix)
            return
        if o is not None and o.op in ("cce", "bce") and o.family == "keras" and _true(o.kwargs.get("from_logits")):
            src = ctx.prob_source(o.arg(1, "y_pred"))
            if src is not None:
                yield Finding(node, f"from_logits=True on {src[0]} outputs applies the activation twice",
                              "pass the logits, or drop from_logits=True")
            return
        # loss object called directly: SparseCategoricalCrossentropy(from_logits=True)(y, softmax(z))
        ctor = func if isinstance(func, ast.Call) else ctx.value(func) \
            if isinstance(func, ast.Name) and ctx.may_call("KerasCE") else None
        if isinstance(ctor, ast.Call) and self._keras_loss(ctx, ctor) == "logits" and len(node.args) >= 2:
            src = ctx.prob_source(node.args[1])
            if src is not None:
                yield Finding(node, f"from_logits=True on {src[0]} outputs applies the activation twice",
                              "pass the logits, or drop from_logits=True")
            return
        if isinstance(func, ast.Attribute) and func.attr == "compile" and isinstance(func.value, ast.Name):
            loss = next((k.value for k in node.keywords if k.arg == "loss"), None)
            kind = self._keras_loss(ctx, loss)
            if kind is None:
                return
            act = self._last_activation(ctx, func.value)
            if act is None:
                return
            if kind == "logits" and act in ("softmax", "sigmoid"):
                yield Finding(node, f"from_logits=True but the model ends in {act}: the activation is applied twice",
                              "drop the final activation (keep from_logits=True)")
            elif kind == "probs" and act == "linear":
                yield Finding(node, "the model outputs logits but the loss expects probabilities (from_logits=False)",
                              "set from_logits=True on the loss")

    def _keras_loss(self, ctx: Context, loss: ast.expr | None) -> str | None:
        """``"logits"``/``"probs"`` for a Keras cross-entropy loss (object or string), else None."""
        if isinstance(loss, ast.Constant) and loss.value in _LOSS_STRINGS:
            return "probs"
        if isinstance(loss, ast.Name):
            loss = ctx.value(loss)
        if isinstance(loss, ast.Call) and _QUAL_TO_OP.get(ctx.qualname(loss.func) or "") == "KerasCE":
            fl = next((k.value for k in loss.keywords if k.arg == "from_logits"), None)
            return "logits" if _true(fl) else "probs"
        return None

    def _last_activation(self, ctx: Context, model: ast.Name) -> str | None:
        value = ctx.value(model)
        layer: ast.expr | None = None
        if isinstance(value, ast.Call) and _QUAL_TO_OP.get(ctx.qualname(value.func) or "") == "Sequential":
            if value.args and isinstance(value.args[0], ast.List) and value.args[0].elts:
                layer = value.args[0].elts[-1]
            else:
                adds = []
                for n in ast.walk(ctx.scope_of(model)):
                    match n:
                        case ast.Call(func=ast.Attribute(value=ast.Name(id=name), attr="add"), args=[arg]) \
                                if name == model.id:
                            adds.append(((n.lineno, n.col_offset), arg))
                layer = max(adds, key=lambda t: t[0])[1] if adds else None
        if not isinstance(layer, ast.Call):
            return None
        kind = _QUAL_TO_OP.get(ctx.qualname(layer.func) or "")
        if kind != "Dense":
            return None
        act = next((k.value for k in layer.keywords if k.arg == "activation"), None)
        if (ctx.qualname(layer.func) or "").endswith("Activation") and layer.args:
            act = layer.args[0]
        if act is None or (isinstance(act, ast.Constant) and act.value in (None, "linear")):
            return "linear"
        if isinstance(act, ast.Constant) and act.value in ("softmax", "sigmoid"):
            return str(act.value)
        q = _QUAL_TO_OP.get(ctx.qualname(act) or "")
        return q if q in ("softmax", "sigmoid") else None
