"""Canonical names: what a library call is (``F.softmax`` is ``torch.nn.functional.softmax``, op ``softmax``), constant
folding, and :class:`OpCall`, a call seen as an operation."""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["DIV_FUNCS", "DIV_METHODS", "KNOWN_ROOTS", "VIEW_FUNCS", "VIEW_METHODS", "OpCall", "const_value",
           "dotted_name", "family_of", "is_pure"]

# ---------------------------------------------------------------------------
# canonical names
# ---------------------------------------------------------------------------

#: import roots the checker understands; anything else is not resolved
KNOWN_ROOTS = frozenset({"numpy", "math", "torch", "jax", "tensorflow", "keras", "tf_keras", "scipy", "cupy",
                         "builtins"})

_PREFIX_REWRITES = (
    ("tensorflow.compat.v1.", "tensorflow."),
    ("tensorflow.compat.v2.", "tensorflow."),
    ("tensorflow.keras.", "keras."),
    ("tf_keras.", "keras."),
    ("keras.src.", "keras."),
    ("torch.nn.modules.loss.", "torch.nn."),
    ("torch.nn.modules.activation.", "torch.nn."),
    ("torch.nn.modules.container.", "torch.nn."),
    ("torch.nn.modules.", "torch.nn."),
    ("jax._src.numpy.", "jax.numpy."),
    ("cupy.", "numpy."),
)

_NP, _TO, _JX, _TF, _KO, _KB = "numpy.", "torch.", "jax.numpy.", "tensorflow.", "keras.ops.", "keras.backend."
_F = "torch.nn.functional."

_OPS: dict[str, tuple[str, ...]] = {
    "exp": (_NP + "exp", "math.exp", _TO + "exp", _JX + "exp", "jax.lax.exp", _TF + "exp", _TF + "math.exp",
            _KO + "exp", _KB + "exp"),
    "log": (_NP + "log", "math.log", _TO + "log", _JX + "log", "jax.lax.log", _TF + "log", _TF + "math.log",
            _KO + "log", _KB + "log"),
    "sum": (_NP + "sum", _TO + "sum", _JX + "sum", _TF + "reduce_sum", _TF + "math.reduce_sum", _KO + "sum",
            _KB + "sum", "builtins.sum", "math.fsum"),
    "mean": (_NP + "mean", _TO + "mean", _JX + "mean", _TF + "reduce_mean", _TF + "math.reduce_mean", _KO + "mean",
             _KB + "mean"),
    "softmax": (_TO + "softmax", _F + "softmax", _TO + "special.softmax", "jax.nn.softmax", _TF + "nn.softmax",
                _TF + "math.softmax", "keras.activations.softmax", _KO + "softmax", _KB + "softmax",
                "scipy.special.softmax"),
    "log_softmax": (_TO + "log_softmax", _F + "log_softmax", _TO + "special.log_softmax", "jax.nn.log_softmax",
                    _TF + "nn.log_softmax", _TF + "math.log_softmax", _KO + "log_softmax",
                    "scipy.special.log_softmax"),
    "sigmoid": (_TO + "sigmoid", _F + "sigmoid", _TO + "special.expit", "jax.nn.sigmoid", "jax.scipy.special.expit",
                _TF + "sigmoid", _TF + "math.sigmoid", _TF + "nn.sigmoid", "keras.activations.sigmoid",
                _KO + "sigmoid", _KB + "sigmoid", "scipy.special.expit"),
    "log_sigmoid": (_F + "logsigmoid", "jax.nn.log_sigmoid", _TF + "math.log_sigmoid", _KO + "log_sigmoid",
                    "scipy.special.log_expit"),
    "sqrt": (_NP + "sqrt", "math.sqrt", _TO + "sqrt", _JX + "sqrt", "jax.lax.sqrt", _TF + "sqrt", _TF + "math.sqrt",
             _KO + "sqrt", _KB + "sqrt"),
    "log1p": (_NP + "log1p", "math.log1p", _TO + "log1p", _TO + "special.log1p", _JX + "log1p", _TF + "math.log1p",
              _KO + "log1p"),
    "expm1": (_NP + "expm1", "math.expm1", _TO + "expm1", _TO + "special.expm1", _JX + "expm1", _TF + "math.expm1",
              _KO + "expm1"),
    "softplus": (_F + "softplus", "jax.nn.softplus", _TF + "nn.softplus", _TF + "math.softplus",
                 "keras.activations.softplus", _KO + "softplus", _KB + "softplus"),
    "logsumexp": (_TO + "logsumexp", _TO + "special.logsumexp", "jax.nn.logsumexp", "jax.scipy.special.logsumexp",
                  "scipy.special.logsumexp", _TF + "reduce_logsumexp", _TF + "math.reduce_logsumexp",
                  _KO + "logsumexp", _KB + "logsumexp"),
    "prod": (_NP + "prod", _TO + "prod", _JX + "prod", _TF + "reduce_prod", _TF + "math.reduce_prod", _KO + "prod",
             _KB + "prod", "math.prod"),
    "clamp": (_TO + "clamp", _TO + "clip", _TO + "clamp_min", _NP + "clip", _JX + "clip", _TF + "clip_by_value",
              _KO + "clip", _KB + "clip"),
    "maximum": (_NP + "maximum", _NP + "fmax", _TO + "maximum", _TO + "fmax", _JX + "maximum", _TF + "maximum",
                _TF + "math.maximum", _KO + "maximum", _KB + "maximum"),
    "max": (_NP + "max", _NP + "amax", _TO + "max", _TO + "amax", _JX + "max", _JX + "amax", _TF + "reduce_max",
            _TF + "math.reduce_max", _KO + "max", _KB + "max", "builtins.max"),
    "where": (_NP + "where", _TO + "where", _JX + "where", _TF + "where", _KO + "where"),
    "norm": (_NP + "linalg.norm", _TO + "norm", _TO + "linalg.norm", _TO + "linalg.vector_norm", _JX + "linalg.norm",
             _TF + "norm", _TF + "linalg.norm"),
    "std": (_NP + "std", _TO + "std", _JX + "std", _TF + "math.reduce_std", _KO + "std", _KB + "std"),
    "square": (_NP + "square", _TO + "square", _JX + "square", _TF + "square", _TF + "math.square", _KO + "square",
               _KB + "square"),
    "pow": (_TO + "pow", _NP + "power", _JX + "power", _TF + "pow", _TF + "math.pow", _KO + "power"),
    "abs": (_NP + "abs", _NP + "absolute", _TO + "abs", _JX + "abs", _TF + "abs", _TF + "math.abs", "builtins.abs"),
    "masked_fill": (_TO + "masked_fill",),
    "neg": (_TO + "neg", _TO + "negative", _NP + "negative", _JX + "negative", _TF + "negative",
            _TF + "math.negative", _KO + "negative"),
    "ones": (_TO + "ones", _TO + "ones_like", _NP + "ones", _NP + "ones_like", _JX + "ones", _JX + "ones_like",
             _TF + "ones", _TF + "ones_like"),
    "finfo": (_NP + "finfo", _TO + "finfo", _JX + "finfo"),
    "bce": (_F + "binary_cross_entropy", "keras.losses.binary_crossentropy", _KB + "binary_crossentropy"),
    "bce_logits": (_F + "binary_cross_entropy_with_logits",),
    "cross_entropy": (_F + "cross_entropy",),
    "nll_loss": (_F + "nll_loss",),
    "cce": ("keras.losses.categorical_crossentropy", "keras.losses.sparse_categorical_crossentropy",
            _KB + "categorical_crossentropy", _KB + "sparse_categorical_crossentropy"),
    "tf_ce_logits": (_TF + "nn.softmax_cross_entropy_with_logits", _TF + "nn.softmax_cross_entropy_with_logits_v2",
                     _TF + "nn.sparse_softmax_cross_entropy_with_logits", _TF + "nn.sigmoid_cross_entropy_with_logits"),
    # modules / classes
    "Sigmoid": ("torch.nn.Sigmoid",),
    "Softmax": ("torch.nn.Softmax",),
    "LogSoftmax": ("torch.nn.LogSoftmax",),
    "Sequential": ("torch.nn.Sequential", "keras.Sequential", "keras.models.Sequential"),
    "BCELoss": ("torch.nn.BCELoss",),
    "CrossEntropyLoss": ("torch.nn.CrossEntropyLoss",),
    "NLLLoss": ("torch.nn.NLLLoss",),
    "KerasCE": ("keras.losses.BinaryCrossentropy", "keras.losses.CategoricalCrossentropy",
                "keras.losses.SparseCategoricalCrossentropy"),
    "Dense": ("keras.layers.Dense", "keras.layers.Conv2D", "keras.layers.Conv1D", "keras.layers.Activation"),
}

_QUAL_TO_OP: dict[str, str] = {q: op for op, quals in _OPS.items() for q in quals}

#: tensor/array methods understood on any receiver: name -> (op, max positional args or None)
_METHODS: dict[str, tuple[str, int | None]] = {
    "log": ("log", 0), "exp": ("exp", 0), "sigmoid": ("sigmoid", 0), "sqrt": ("sqrt", 0), "log1p": ("log1p", 0),
    "expm1": ("expm1", 0), "square": ("square", 0), "abs": ("abs", 0),
    "sum": ("sum", None), "mean": ("mean", None), "softmax": ("softmax", 1), "log_softmax": ("log_softmax", 1),
    "prod": ("prod", None), "clamp": ("clamp", 2), "clip": ("clamp", 2), "clamp_min": ("clamp", 1),
    "norm": ("norm", None), "std": ("std", None), "max": ("max", None), "amax": ("max", None),
    "masked_fill": ("masked_fill", 2), "masked_fill_": ("masked_fill", 2), "pow": ("pow", 1),
    "logsumexp": ("logsumexp", 2), "logsigmoid": ("log_sigmoid", 0), "neg": ("neg", 0), "negative": ("neg", 0),
}
#: ops that only torch tensors have as methods: the family of ``x.op()``
_TORCH_METHODS = frozenset({"log", "exp", "sigmoid", "sqrt", "log1p", "expm1", "softmax", "log_softmax", "clamp",
                            "masked_fill", "logsumexp", "log_sigmoid", "square", "pow", "norm"})

_FAMILIES = (
    ("torch.", "torch"), ("jax.", "jax"), ("tensorflow.", "tf"), ("keras.", "keras"), ("numpy.", "numpy"),
    ("scipy.", "numpy"), ("math.", "math"), ("builtins.", "math"),
)

#: methods that keep the values of the receiver (followed when asking where a value comes from)
VIEW_METHODS = frozenset({
    "view", "reshape", "squeeze", "unsqueeze", "flatten", "float", "double", "half", "contiguous", "to", "type",
    "clone", "detach", "permute", "transpose", "gather", "index_select", "t", "expand", "expand_as", "view_as",
    "reshape_as", "masked_select", "take_along_dim", "narrow", "select", "cpu", "cuda", "numpy", "astype", "squeeze_",
    "unsqueeze_", "repeat", "chunk", "split", "take", "tile",
})
VIEW_FUNCS = frozenset({
    "torch.gather", "torch.squeeze", "torch.unsqueeze", "torch.flatten", "torch.take_along_dim", "torch.index_select",
    "torch.masked_select", "numpy.take_along_axis", "numpy.squeeze", "numpy.take", "jax.numpy.take_along_axis",
    "jax.numpy.squeeze", "tensorflow.gather", "tensorflow.squeeze", "tensorflow.reshape", "tensorflow.gather_nd",
    "torch.reshape", "numpy.reshape", "jax.numpy.reshape", "numpy.asarray", "numpy.array", "torch.as_tensor",
    "jax.numpy.asarray", "jax.numpy.array", "tensorflow.tile", "torch.tile", "numpy.tile", "jax.numpy.tile",
})
#: functions that divide their first argument by their second (``tf.div(y, s)`` is ``y / s``)
DIV_FUNCS = frozenset({
    "tensorflow.div", "tensorflow.divide", "tensorflow.truediv", "tensorflow.realdiv", "tensorflow.math.divide",
    "tensorflow.math.truediv", "tensorflow.math.realdiv", "torch.div", "torch.divide", "torch.true_divide",
    "numpy.divide", "numpy.true_divide", "jax.numpy.divide", "jax.numpy.true_divide", "keras.ops.divide",
    "keras.ops.true_divide",
})
#: methods that divide their receiver by their argument (``x.div(y)`` is ``x / y``, ``x.div_(y)`` is ``x /= y``)
DIV_METHODS = frozenset({"div", "divide", "true_divide", "div_", "divide_", "true_divide_"})
#: methods that modify the receiver in place so that its log is safe afterwards
INPLACE_GUARDS = frozenset({"clamp_", "clamp_min_", "clip_", "add_", "maximum_", "masked_fill_", "nan_to_num_"})


def dotted_name(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _canonical(qual: str) -> str:
    for old, new in _PREFIX_REWRITES:
        if qual.startswith(old):
            return new + qual[len(old):]
    return qual


def family_of(qual: str) -> str | None:
    for prefix, fam in _FAMILIES:
        if qual.startswith(prefix):
            return fam
    return None


def const_value(node: ast.expr | None) -> float | None:
    """The number a literal expression stands for (``-1e9``, ``float('-inf')``, ``-math.inf``), else None."""
    match node:
        case ast.Constant(value=bool()):
            return None
        case ast.Constant(value=int() | float() as v):
            return float(v)
        case ast.UnaryOp(op=ast.USub(), operand=inner):
            neg = const_value(inner)
            return None if neg is None else -neg
        case ast.UnaryOp(op=ast.UAdd(), operand=inner):
            return const_value(inner)
        case ast.Call(func=ast.Name(id="float"), args=[ast.Constant(value=str() as s)]):
            try:
                return float(s)
            except ValueError:
                return None
        case ast.Attribute(attr="inf"):
            return float("inf")
        case ast.BinOp(left=left, op=op, right=right):
            a, b = const_value(left), const_value(right)
            if a is None or b is None:
                return None
            try:
                match op:
                    case ast.Add():
                        return a + b
                    case ast.Sub():
                        return a - b
                    case ast.Mult():
                        return a * b
                    case ast.Div():
                        return a / b
                    case ast.Pow():
                        return float(a**b)
            except (ZeroDivisionError, OverflowError):
                return None
    return None


def is_pure(node: ast.expr) -> bool:
    """True for expressions cheap and side-effect free to evaluate twice (names, attributes, literals)."""
    match node:
        case ast.Name() | ast.Constant():
            return True
        case ast.Attribute(value=v):
            return is_pure(v)
        case ast.Subscript(value=v, slice=s):
            return is_pure(v) and (is_pure(s) or isinstance(s, ast.Slice | ast.Tuple))
        case ast.UnaryOp(operand=v):
            return is_pure(v)
        case ast.Compare(left=left, comparators=rest):
            return is_pure(left) and all(is_pure(c) for c in rest)
        case ast.BinOp(left=left, right=right):
            return is_pure(left) and is_pure(right)
    return False


# ---------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class OpCall:
    """A call seen as an operation: ``op`` (canonical), ``family`` (torch/numpy/jax/tf/keras/math)."""

    op: str
    family: str
    node: ast.Call
    args: list[ast.expr]
    kwargs: dict[str, ast.expr]
    method: bool = False
    qual: str = ""
    module_call: bool = False  # an nn.Module instance called (self.sigmoid(x))

    def arg(self, index: int, *names: str) -> ast.expr | None:
        """Positional ``index`` (after the receiver for methods) or the first keyword of ``names``."""
        if index < len(self.args) and not isinstance(self.args[index], ast.Starred):
            return self.args[index]
        for n in names:
            if n in self.kwargs:
                return self.kwargs[n]
        return None

    @property
    def x(self) -> ast.expr | None:
        """The main input (receiver of a method call, else the first argument)."""
        return self.args[0] if self.args else self.kwargs.get("input", self.kwargs.get("x"))
