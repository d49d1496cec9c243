"""Patterns and fix builders shared by the rules."""

from __future__ import annotations

import ast
import re

from ..analysis import Context, OpCall, const_value

#: the framework's own stable function for each (family, op); None: the family has none
STABLE: dict[str, dict[str, str]] = {
    "torch": {
        "logsumexp": "torch.logsumexp", "log_softmax": "torch.log_softmax", "softmax": "torch.softmax",
        "log_sigmoid": "torch.nn.functional.logsigmoid", "softplus": "torch.nn.functional.softplus",
        "log1p": "torch.log1p", "expm1": "torch.expm1", "sigmoid": "torch.sigmoid", "exp": "torch.exp",
        "logaddexp": "torch.logaddexp", "sum": "torch.sum", "log": "torch.log", "where": "torch.where",
        "vector_norm": "torch.linalg.vector_norm", "normalize": "torch.nn.functional.normalize",
        "cross_entropy": "torch.nn.functional.cross_entropy", "finfo": "torch.finfo",
    },
    "numpy": {
        "log1p": "numpy.log1p", "expm1": "numpy.expm1", "exp": "numpy.exp", "logaddexp": "numpy.logaddexp",
        "sum": "numpy.sum", "log": "numpy.log", "where": "numpy.where", "finfo": "numpy.finfo",
    },
    "jax": {
        "logsumexp": "jax.nn.logsumexp", "log_softmax": "jax.nn.log_softmax", "softmax": "jax.nn.softmax",
        "log_sigmoid": "jax.nn.log_sigmoid", "softplus": "jax.nn.softplus", "log1p": "jax.numpy.log1p",
        "expm1": "jax.numpy.expm1", "sigmoid": "jax.nn.sigmoid", "exp": "jax.numpy.exp",
        "logaddexp": "jax.numpy.logaddexp", "sum": "jax.numpy.sum", "log": "jax.numpy.log",
        "where": "jax.numpy.where", "finfo": "jax.numpy.finfo",
    },
    "tf": {
        "logsumexp": "tensorflow.math.reduce_logsumexp", "log_softmax": "tensorflow.nn.log_softmax",
        "softmax": "tensorflow.nn.softmax", "log_sigmoid": "tensorflow.math.log_sigmoid",
        "softplus": "tensorflow.math.softplus", "log1p": "tensorflow.math.log1p", "expm1": "tensorflow.math.expm1",
        "sigmoid": "tensorflow.math.sigmoid", "exp": "tensorflow.math.exp", "sum": "tensorflow.reduce_sum",
        "log": "tensorflow.math.log", "where": "tensorflow.where",
    },
    "keras": {
        "logsumexp": "keras.ops.logsumexp", "log_softmax": "keras.ops.log_softmax", "softmax": "keras.ops.softmax",
        "log_sigmoid": "keras.ops.log_sigmoid", "softplus": "keras.ops.softplus", "log1p": "keras.ops.log1p",
        "expm1": "keras.ops.expm1", "sigmoid": "keras.ops.sigmoid", "exp": "keras.ops.exp",
        "logaddexp": "keras.ops.logaddexp", "sum": "keras.ops.sum", "log": "keras.ops.log", "where": "keras.ops.where",
    },
    "math": {"log1p": "math.log1p", "expm1": "math.expm1", "exp": "math.exp", "log": "math.log"},
}

#: where each family's reductions take their axis and keepdims
AXIS_KW = {"torch": ("dim", "keepdim"), "numpy": ("axis", "keepdims"), "jax": ("axis", "keepdims"),
           "tf": ("axis", "keepdims"), "keras": ("axis", "keepdims")}

_PROB_NAME = re.compile(
    r"^(p|q|pi|ps|qs|pt|p_t|probs?|probas?|probabilit\w*|\w*_probs?|probs?_\w*|\w*_prob_\w*|preds?|predictions?|"
    r"predicted|y_?pred\w*|y_?hat|yhat|pred_\w*|\w*_pred|outputs?|out|likelihoods?|\w*_likelihood|posteriors?|"
    r"confidences?|scores?|sigmoid\w*|softmax\w*|activations?|y_?prob\w*)$",
    re.IGNORECASE,
)
_GUARD_FUNC = re.compile(r"clamp|clip|safe|stable", re.IGNORECASE)
_EPS_NAME = re.compile(r"eps|epsilon|tiny|smooth|delta|min_?val|_EPS|clamp|floor|offset", re.IGNORECASE)


def family(ctx: Context, *calls: OpCall | None) -> str | None:
    """The framework a fix should use: the first call with a known family (methods of tensors count as torch)."""
    fams = [c.family for c in calls if c is not None]
    for f in fams:
        if f in STABLE:
            return f
    if "array" in fams:
        for f in ("torch", "jax", "numpy"):
            if f in ctx.frameworks:
                return f
    return None


def ref(ctx: Context, fam: str | None, op: str) -> tuple[str, tuple[str, ...]] | None:
    """Text naming the stable function ``op`` of ``fam`` in this file, and the imports it needs."""
    if fam is None:
        return None
    qual = STABLE.get(fam, {}).get(op)
    if qual is None:
        return None
    module, _, name = qual.rpartition(".")
    text, imports = ctx.module_ref(module)
    return f"{text}.{name}", imports


def fg_ref(ctx: Context, op: str) -> tuple[str, tuple[str, ...]]:
    """Text naming floatguard's ``op`` in this file, and the imports it needs."""
    for local, full in ctx.imports.items():
        if full == "floatguard":
            return f"{local}.{op}", ()
    return f"floatguard.{op}", ("floatguard",)


def nonneg(ctx: Context, node: ast.expr | None) -> bool:
    """Provably >= 0: squares, abs, exp, non-negative constants, and sums/products of those."""
    v = const_value(node)
    if v is not None:
        return v >= 0
    match node:
        case ast.BinOp(left=a, op=ast.Pow(), right=e) if (const_value(e) or 1) % 2 == 0:
            return True
        case ast.BinOp(left=a, op=ast.Mult(), right=b) if ctx.text(a) == ctx.text(b):
            return True
        case ast.BinOp(left=a, op=ast.Add() | ast.Mult() | ast.Div(), right=b):
            return nonneg(ctx, a) and nonneg(ctx, b)
        case ast.Call():
            o = ctx.op(node)
            if o is None:
                return False
            if o.op in ("abs", "exp", "square", "sigmoid", "softmax", "norm", "softplus", "ones"):
                return True
            if o.op == "pow":
                e = const_value(o.arg(1, "exponent"))
                return e is not None and e % 2 == 0
            if o.op in ("sum", "mean"):
                return nonneg(ctx, o.x)
    return False


def nonpositive(ctx: Context, node: ast.expr | None) -> bool:
    """Provably <= 0: ``-x**2``, ``-0.5 * (x / s) ** 2``, ``-abs(x)``."""
    v = const_value(node)
    if v is not None:
        return v <= 0
    match node:
        case ast.UnaryOp(op=ast.USub(), operand=inner):
            return nonneg(ctx, inner)
        case ast.BinOp(left=a, op=ast.Mult() | ast.Div(), right=b):
            return (nonpositive(ctx, a) and nonneg(ctx, b)) or (nonneg(ctx, a) and nonpositive(ctx, b))
        case ast.BinOp(left=a, op=ast.Sub(), right=b):
            return nonpositive(ctx, a) and nonneg(ctx, b)
        case ast.BinOp(left=a, op=ast.Add(), right=b):
            return nonpositive(ctx, a) and nonpositive(ctx, b)
    return False


def fg_call(ctx: Context, op: str, x: ast.expr, axis: ast.expr | None, extra: str = "") -> tuple[str, tuple[str, ...]]:
    """``floatguard.op(x, axis=...)``: the fix where the framework's own function is not accurate enough."""
    f, imports = fg_ref(ctx, op)
    rest = f", axis={ctx.text(axis)}" if axis is not None else ""
    return f"{f}({ctx.text(x)}{rest}{extra})", imports


def is_const(node: ast.expr | None, value: float) -> bool:
    return const_value(node) == value


def one_plus(node: ast.expr | None) -> ast.expr | None:
    """``e`` when ``node`` is ``1 + e`` or ``e + 1``."""
    match node:
        case ast.BinOp(left=left, op=ast.Add(), right=right):
            if is_const(left, 1.0):
                return right
            if is_const(right, 1.0):
                return left
    return None


def one_minus(node: ast.expr | None) -> ast.expr | None:
    """``e`` when ``node`` is ``1 - e``."""
    match node:
        case ast.BinOp(left=left, op=ast.Sub(), right=right) if is_const(left, 1.0):
            return right
    return None


def shifted(node: ast.expr | None, ctx: Context | None = None) -> bool:
    """True for ``x - m`` with a non-constant ``m``: the max-shift of a stable softmax or logsumexp."""
    if ctx is not None and isinstance(node, ast.Name):
        node = ctx.value(node)
    match node:
        case ast.BinOp(op=ast.Sub(), right=right) if const_value(right) is None:
            return True
        case ast.BinOp(op=ast.Mult(), left=a, right=b):  # a temperature times the shifted scores
            return shifted(a, ctx) or shifted(b, ctx)
        case ast.BinOp(op=ast.Div(), left=a):
            return shifted(a, ctx)
    return False


def neg_text(ctx: Context, node: ast.expr) -> str:
    """Source of ``-node``, unwrapping a negation (``-(-x)`` -> ``x``)."""
    match node:
        case ast.UnaryOp(op=ast.USub(), operand=inner):
            return ctx.text(inner)
    return "-" + paren(ctx, node)


def paren(ctx: Context, node: ast.expr) -> str:
    """Source of ``node``, parenthesised unless it is an atom."""
    text = ctx.text(node)
    if isinstance(node, ast.Name | ast.Call | ast.Attribute | ast.Subscript | ast.Constant):
        return text
    return f"({text})"


def rest_args(ctx: Context, call: ast.Call, skip: int = 1) -> list[str]:
    """Source texts of the arguments of ``call`` after the first ``skip`` positional ones."""
    out = [ctx.text(a) for a in call.args[skip:]]
    for k in call.keywords:
        out.append(f"{k.arg}={ctx.text(k.value)}" if k.arg else f"**{ctx.text(k.value)}")
    return out


def reduce_args(o: OpCall) -> tuple[ast.expr | None, ast.expr | None, bool]:
    """(axis, keepdims, other-arguments-present) of a reduction call."""
    axis = o.arg(1, "dim", "axis")
    keep = o.arg(2, "keepdim", "keepdims")
    known = {"dim", "axis", "keepdim", "keepdims", "input", "x", "a"}
    extra = any(k not in known for k in o.kwargs) or len(o.args) > 3 or any(
        k.arg is None for k in o.node.keywords)
    return axis, keep, extra


def arg_by_text(ctx: Context, fam: str, axis: ast.expr | None, keep: ast.expr | None) -> str:
    """``, dim=1, keepdim=True`` in the family's keyword names."""
    if axis is None:
        return ""
    ak, kk = AXIS_KW.get(fam, ("axis", "keepdims"))
    out = f", {ak}={ctx.text(axis)}"
    if keep is not None:
        out += f", {kk}={ctx.text(keep)}"
    return out


def eps_like(ctx: Context, node: ast.expr | None) -> bool:
    """A small positive constant or a name that says eps."""
    v = const_value(node)
    if v is not None:
        return v > 0
    match node:
        case ast.Name(id=n) | ast.Attribute(attr=n):
            return bool(_EPS_NAME.search(n))
        case ast.Attribute(attr="eps" | "tiny" | "smallest_normal"):
            return True
        case ast.Call():
            o = ctx.op(node)
            return o is not None and o.op in ("exp", "softplus", "abs")
        case ast.BinOp(left=left, right=right):
            return eps_like(ctx, left) and eps_like(ctx, right)
    return False


def guarded(ctx: Context, node: ast.expr | None, depth: int = 0) -> bool:
    """True when a value passed to log/sqrt/division cannot be 0: eps added, clamped, or positive by construction."""
    if node is None or depth > 6:
        return False
    match node:
        case ast.Constant():
            return True
        case ast.BinOp(op=ast.Add(), left=left, right=right):
            return eps_like(ctx, left) or eps_like(ctx, right) or (guarded(ctx, left, depth + 1)
                                                                   and guarded(ctx, right, depth + 1))
        case ast.BinOp(op=ast.Mult(), left=left, right=right):
            return guarded(ctx, left, depth + 1) and guarded(ctx, right, depth + 1)
        case ast.BinOp(op=ast.Div(), left=left, right=right):
            return guarded(ctx, left, depth + 1) and const_value(right) is not None
        case ast.Call():
            o = ctx.op(node)
            if o is not None:
                if o.op in ("clamp", "maximum"):
                    return True
                if o.op == "max":
                    second = o.arg(1)
                    v = const_value(second)
                    return second is not None and eps_like(ctx, second) and not (v is not None and v.is_integer())
                if o.op in ("exp", "softplus", "logsumexp", "ones"):
                    return True
                if o.op in ("sum", "mean"):
                    return guarded(ctx, o.x, depth + 1)
                return False
            if isinstance(node.func, ast.Attribute) and node.func.attr in ("nan_to_num", "clamp_", "clip_"):
                return True
            fname = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if _GUARD_FUNC.search(fname):
                return True
            base = ctx.strip_views(node)
            if base is not node and base is not None:
                return guarded(ctx, base, depth + 1)
            return False
        case ast.Subscript(value=v):
            return guarded(ctx, v, depth + 1)
        case ast.Attribute(value=ast.Name(id="self"), attr=attr):
            value = ctx.self_attr(node, attr)
            return value is not None and guarded(ctx, value, depth + 1)
        case ast.Name():
            if ctx.inplace_guarded(node):
                return True
            v = ctx.value(node)
            if v is None or v is node:
                return False
            return guarded(ctx, v, depth + 1)
    return False


def log_of(ctx: Context, node: ast.AST, kind: str) -> tuple[OpCall, OpCall] | None:
    """``(log, src)`` when ``node`` is an unguarded ``log`` of the output of a ``kind`` call (softmax, sigmoid)."""
    log = ctx.ops(node, "log")
    if log is None or log.x is None or guarded(ctx, log.x):
        return None
    src = ctx.prob_source(log.x)
    if src is None or src[0] != kind or src[1] is None:
        return None
    return log, src[1]


def prob_like_name(ctx: Context, node: ast.expr | None) -> bool:
    """The expression, stripped of views and indexing, is named like a probability (``probs``, ``y_pred``, ``p``)."""
    for base in (node, ctx.strip_views(node)):
        match base:
            case ast.Name(id=n) | ast.Attribute(attr=n) if _PROB_NAME.match(n):
                return True
    return False


def reach(ctx: Context, expr: ast.expr | None, target: ast.AST) -> str | None:
    """``"inline"`` if ``expr`` is ``target``, ``"named"`` if it is a name bound to it, else None (no fix then)."""
    if expr is target:
        return "inline"
    if isinstance(expr, ast.Name) and ctx.value(expr) is target:
        return "named"
    return None
