"""Patterns and fix builders shared by the rules."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from ..analysis import Context, OpCall, const_value
from ..rule import Fix
from ._bounds import guarded

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


@dataclass(frozen=True, slots=True)
class _FloatguardImports:
    """How a file imports floatguard: the name of the module (``floatguard``, ``fg``), if imported, and the
    names ``from floatguard import op as name`` binds (op -> name)."""

    module: str | None
    names: dict[str, str]


#: each file's floatguard imports, found once per file (a fix asks for each finding)
_FG_IMPORTS: WeakKeyDictionary[Context, _FloatguardImports] = WeakKeyDictionary()


def _floatguard_imports(ctx: Context) -> _FloatguardImports:
    found = _FG_IMPORTS.get(ctx)
    if found is None:
        module: str | None = None
        names: dict[str, str] = {}
        for node in ast.walk(ctx.tree) if "floatguard" in ctx.source else ():
            match node:
                case ast.Import(names=aliases):
                    for a in aliases:
                        if a.name == "floatguard" or (a.name.startswith("floatguard.") and a.asname is None):
                            module = module or a.asname or "floatguard"
                case ast.ImportFrom(module="floatguard", names=aliases, level=0):
                    for a in aliases:
                        names.setdefault(a.name, a.asname or a.name)
        found = _FG_IMPORTS[ctx] = _FloatguardImports(module, names)
    return found


def floatguard_ref(ctx: Context, op: str) -> str | None:
    """How this file already names floatguard's ``op`` (``floatguard.op``, ``fg.op``, ``op`` after
    ``from floatguard import op``), or None when the file does not import floatguard."""
    imports = _floatguard_imports(ctx)
    name = imports.names.get(op)
    if name is not None:
        return name
    return None if imports.module is None else f"{imports.module}.{op}"


def uses_floatguard(ctx: Context) -> bool:
    """The file imports floatguard already: a fix may call it without adding a dependency."""
    return floatguard_ref(ctx, "_") is not None


def fg_ref(ctx: Context, op: str) -> tuple[str, tuple[str, ...]]:
    """Text naming floatguard's ``op`` in this file, and the imports it needs (``("floatguard",)`` when the file
    does not import it yet: a new dependency, so such a fix is never safe)."""
    found = floatguard_ref(ctx, op)
    if found is not None:
        return found, ()
    return f"floatguard.{op}", ("floatguard",)


def adds_floatguard(fix: Fix | None) -> bool:
    """The fix adds ``import floatguard`` to the file."""
    return fix is not None and any(i.split(".")[0] == "floatguard" for i in fix.imports)


def fg_fix(node: ast.AST, text: str, imports: tuple[str, ...], safe: bool) -> Fix:
    """A fix calling floatguard: unsafe when it adds the dependency (``import floatguard``)."""
    return Fix(node, text, safe=safe and not any(i.split(".")[0] == "floatguard" for i in imports),
               imports=imports)


def dep_hint(hint: str, fix: Fix | None, why: str = "no framework op computes it") -> str:
    """``hint``, with a note when the fix adds floatguard as a dependency (the fix's title says so)."""
    if not adds_floatguard(fix):
        return hint
    return f"{hint}; the fix calls floatguard ({why}) and adds `import floatguard`: unsafe"


def has_scipy(ctx: Context) -> bool:
    """The file imports SciPy (``scipy.special`` may then be used by a fix)."""
    return any(full.split(".")[0] == "scipy" for full in ctx.imports.values())


def numpy_ref(ctx: Context, name: str) -> tuple[str, tuple[str, ...]]:
    """Text naming ``numpy.<name>`` in this file (``np.logaddexp``) and the imports it needs."""
    text, imports = ctx.module_ref("numpy")
    return f"{text}.{name}", imports


def scipy_special_ref(ctx: Context, name: str) -> tuple[str, tuple[str, ...]] | None:
    """Text naming ``scipy.special.<name>`` where the file already imports SciPy, else None."""
    if not has_scipy(ctx):
        return None
    for local, full in ctx.imports.items():
        if full == f"scipy.special.{name}":
            return local, ()
    text, imports = ctx.module_ref("scipy.special")
    return f"{text}.{name}", imports


def int_axis(node: ast.expr | None) -> bool:
    """An axis argument that is absent or a literal integer (so ``x.shape[axis]`` is its length)."""
    if node is None:
        return True
    v = const_value(node)
    return v is not None and v.is_integer()


def as_operand(ctx: Context, node: ast.AST, text: str) -> str:
    """``text`` (starting with a unary minus) parenthesised where it replaces ``node`` inside an expression that
    binds tighter than a negation (``a ** -f(x)`` is fine, ``-f(x) ** 2`` and ``-f(x).sum()`` are not)."""
    parent = ctx.parent(node)
    if isinstance(parent, ast.BinOp | ast.UnaryOp | ast.Attribute | ast.Subscript | ast.Await) or (
            isinstance(parent, ast.Call) and parent.func is node):
        return f"({text})"
    return text


def fg_call(ctx: Context, op: str, x: ast.expr, axis: ast.expr | None, extra: str = "") -> tuple[str, tuple[str, ...]]:
    """``floatguard.op(x, axis=...)``: the fix where the framework's own function is not accurate enough."""
    f, imports = fg_ref(ctx, op)
    rest = f", axis={ctx.text(axis)}" if axis is not None else ""
    return f"{f}({ctx.text(x)}{rest}{extra})", imports


def division_parts(ctx: Context, node: ast.AST) -> tuple[ast.expr, ast.expr, ast.expr | None] | None:
    """``(numerator, denominator, the denominator's defining call)`` of a division (``a / b``, ``a /= b``,
    ``tf.div(a, b)``, ``torch.div(a, b)``, ``a.div(b)``, ``np.divide(a, b)``: :meth:`Context.division`) whose
    numerator is not a constant; the call is ``b`` itself or the value a name ``b`` was given, through views that
    keep its values (``tf.reshape(tf.tile(s, n), shape)``, ``s.unsqueeze(-1)``)."""
    parts = ctx.division(node)
    if parts is None:
        return None
    num, den = parts
    if const_value(num) is not None:
        return None
    d = den if isinstance(den, ast.Call) else ctx.value(den) if isinstance(den, ast.Name) else None
    if isinstance(d, ast.Call) and ctx.op(d) is None:
        inner = ctx.strip_views(d)
        d = inner if isinstance(inner, ast.Call) else d
    return num, den, d


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


#: functions that add their two arguments (``torch.add(x, 1)`` is ``x + 1``)
_ADD_FUNCS = frozenset({"torch.add", "numpy.add", "jax.numpy.add", "tensorflow.add", "tensorflow.math.add",
                        "keras.ops.add"})


def plus_one(ctx: Context, node: ast.expr | None) -> ast.expr | None:
    """``e`` when ``node`` adds 1 to ``e``: ``1 + e``, ``e + 1``, ``e.add(1)``, ``e.add_(1)``, ``torch.add(e, 1)``
    (``tf.add``, ``np.add``; either order)."""
    inner = one_plus(node)
    if inner is not None or not isinstance(node, ast.Call) or node.keywords:
        return inner
    match node:
        case ast.Call(func=ast.Attribute(attr="add" | "add_", value=recv) as f, args=[one]) if \
                is_const(one, 1.0) and ctx.qualname(f) is None:
            return recv
        case ast.Call(func=f, args=[a, b]) if ctx.qualname(f) in _ADD_FUNCS:
            return b if is_const(a, 1.0) else a if is_const(b, 1.0) else None
    return None


def one_minus(node: ast.expr | None) -> ast.expr | None:
    """``e`` when ``node`` is ``1 - e``."""
    match node:
        case ast.BinOp(left=left, op=ast.Sub(), right=right) if is_const(left, 1.0):
            return right
    return None


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
            case ast.Attribute(value=ast.Name(id=mod)) if mod in ctx.imports:
                continue  # np.pi is a constant, not a probability
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

