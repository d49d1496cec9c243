"""What the rules see: canonical op names, import aliases and value flow.

A rule never looks at raw names. :meth:`Context.op` turns a call into an
:class:`OpCall` (``op="log"``, ``family="torch"``) whatever the import aliases
(``np``/``numpy``, ``F``/``torch.nn.functional``, ``jnp``, ``tf.math``, ``K``) or the
spelling (``torch.log(x)``, ``x.log()``, ``self.sigmoid(x)`` with
``self.sigmoid = nn.Sigmoid()``). :meth:`Context.value` follows a name back to the
expression last assigned to it in the same function (or module), so
``h = torch.sigmoid(z)`` … ``torch.log(h)`` reads like ``torch.log(torch.sigmoid(z))``.
"""

from __future__ import annotations

import ast
import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .fixes import split_lines

__all__ = ["Context", "OpCall", "const_value", "dotted_name", "is_pure"]

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
    "isclose_zero": (),
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
    "unsqueeze_", "repeat", "chunk", "split", "take",
})
VIEW_FUNCS = frozenset({
    "torch.gather", "torch.squeeze", "torch.unsqueeze", "torch.flatten", "torch.take_along_dim", "torch.index_select",
    "torch.masked_select", "numpy.take_along_axis", "numpy.squeeze", "numpy.take", "jax.numpy.take_along_axis",
    "jax.numpy.squeeze", "tensorflow.gather", "tensorflow.squeeze", "tensorflow.reshape", "tensorflow.gather_nd",
    "torch.reshape", "numpy.reshape", "jax.numpy.reshape", "numpy.asarray", "numpy.array", "torch.as_tensor",
    "jax.numpy.asarray", "jax.numpy.array",
})
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
            v = const_value(inner)
            return None if v is None else -v
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


#: elementwise ops a one-line helper of the module may wrap (its call site is then that op)
_WRAPPABLE = frozenset({"exp", "log", "sigmoid", "softmax", "log_softmax", "sqrt", "log1p", "expm1"})
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Module, ast.ClassDef)
_UNKNOWN = object()


@dataclass(slots=True)
class Binding:
    """One assignment to a name: where it takes effect and what was assigned (None when unknown)."""

    pos: tuple[int, int]
    value: ast.AST | None


@dataclass
class _Scope:
    node: ast.AST
    names: dict[str, list[Binding]] = field(default_factory=dict)
    keys: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


_LOSS_NAME = re.compile(r"loss|nll|entropy|likelihood|criterion|kl_?div|(^|_)(ce|bce|kl|elbo|cost|objective)(_|$)",
                        re.IGNORECASE)


class Context:
    """Everything the rules need about one file: source, imports, op resolution and value flow."""

    def __init__(self, source: str, tree: ast.Module, path: str = "<string>") -> None:
        self.source = source
        self.tree = tree
        self.path = path
        self.imports: dict[str, str] = {}
        self.star: list[str] = []
        self._ops: dict[int, OpCall | None] = {}
        self._scopes: dict[int, _Scope] = {}
        self._lines: list[str] | None = None
        self._classes: dict[str, ast.ClassDef] | None = None
        self._functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] | None = None
        self._self_attrs: dict[int, dict[str, ast.expr]] = {}
        self._unwrapping: set[int] = set()
        self._collect_imports()
        self.frameworks = {family_of(_canonical(q) + ".") or "" for q in self.imports.values()}
        self.frameworks.discard("")
        self._half: bool | None = None
        self.parents: dict[int, ast.AST] = {}

    # -- imports -----------------------------------------------------------
    def _collect_imports(self) -> None:
        for node in ast.walk(self.tree) if _has_nested_imports(self.source) else self.tree.body:
            match node:
                case ast.Import(names=names):
                    for a in names:
                        if a.name.split(".")[0] not in KNOWN_ROOTS:
                            continue
                        if a.asname:
                            self.imports[a.asname] = a.name
                        else:
                            root = a.name.split(".")[0]
                            self.imports[root] = root
                case ast.ImportFrom(module=str() as mod, names=names, level=0):
                    if mod.split(".")[0] not in KNOWN_ROOTS:
                        continue
                    for a in names:
                        if a.name == "*":
                            self.star.append(mod)
                        else:
                            self.imports[a.asname or a.name] = f"{mod}.{a.name}"

    def qualname(self, node: ast.expr) -> str | None:
        """Canonical dotted name of a library object: ``F.softmax`` -> ``torch.nn.functional.softmax``."""
        name = dotted_name(node)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        full = self.imports.get(head)
        if full is None:
            if head in ("sum", "max", "abs") and not rest:
                return "builtins." + head
            for mod in self.star:
                cand = _canonical(f"{mod}.{name}")
                if cand in _QUAL_TO_OP:
                    return cand
            return None
        return _canonical(f"{full}.{rest}" if rest else full)

    def module_ref(self, module: str) -> tuple[str, tuple[str, ...]]:
        """How this file names ``module``: (text, imports to add); ``torch.nn.functional`` -> ``F`` if so imported."""
        parts = module.split(".")
        for n in range(len(parts), 0, -1):
            prefix = ".".join(parts[:n])
            for local, full in self.imports.items():
                if full == prefix or _canonical(full) == prefix:
                    return ".".join([local, *parts[n:]]), ()
        return module, (module,)

    # -- ops -----------------------------------------------------------------
    def op(self, node: ast.AST) -> OpCall | None:
        """The call as an :class:`OpCall`, or None when it is not a known operation."""
        if not isinstance(node, ast.Call):
            return None
        key = id(node)
        if key in self._ops:
            return self._ops[key]
        res = self._op(node)
        self._ops[key] = res
        return res

    def _op(self, node: ast.Call) -> OpCall | None:
        func = node.func
        kwargs = {k.arg: k.value for k in node.keywords if k.arg is not None}
        qual = self.qualname(func)
        if qual is not None:
            op = _QUAL_TO_OP.get(qual)
            if op is not None and not (op == "log" and qual == "math.log" and len(node.args) > 1):
                return OpCall(op, family_of(qual) or "", node, list(node.args), kwargs, qual=qual)
            if qual.split(".")[0] in KNOWN_ROOTS:
                return None
        if isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name) and func.value.id == "self":
                # self.sigmoid(x) where self.sigmoid = nn.Sigmoid()
                mod = self._module_op(self.self_attr(node, func.attr), node)
                if mod is not None:
                    return mod
            spec = _METHODS.get(func.attr)
            if spec is not None:
                op, max_args = spec
                if max_args is not None and len(node.args) > max_args:
                    return None
                if op in ("log", "exp", "sqrt") and node.keywords:
                    return None
                fam = "torch" if op in _TORCH_METHODS else "array"
                return OpCall(op, fam, node, [func.value, *node.args], kwargs, method=True, qual="." + func.attr)
        elif isinstance(func, ast.Name):
            mod = self._module_op(self.value(func), node)
            if mod is not None:
                return mod
            wrapped = self._wrapper_op(func, node)
            if wrapped is not None:
                return wrapped
        if isinstance(func, ast.Call):  # nn.Sigmoid()(x)
            return self._module_op(func, node)
        return None

    def _wrapper_op(self, func: ast.Name, call: ast.Call) -> OpCall | None:
        """A call to a function of this module whose body is ``return op(x, ...)`` of its first parameter
        (``def _exp(x): return torch.exp(x)``) is that op at the call site."""
        fn = self.functions.get(func.id)
        if fn is None or id(fn) in self._unwrapping or not call.args or isinstance(call.args[0], ast.Starred):
            return None
        b = self.binding(func)
        if b is not None and b.value is not None:
            return None
        body = [st for st in fn.body if not (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant))]
        params = [*fn.args.posonlyargs, *fn.args.args]
        if len(body) != 1 or not isinstance(body[0], ast.Return) or not isinstance(body[0].value, ast.Call) or \
                not params:
            return None
        self._unwrapping.add(id(fn))
        try:
            inner = self.op(body[0].value)
        finally:
            self._unwrapping.discard(id(fn))
        if inner is None or inner.op not in _WRAPPABLE or not isinstance(inner.x, ast.Name) or \
                inner.x.id != params[0].arg:
            return None
        kwargs = {k.arg: k.value for k in call.keywords if k.arg is not None}
        return OpCall(inner.op, inner.family, call, list(call.args), kwargs, qual=f"{func.id}", module_call=True)

    def _module_op(self, ctor: ast.AST | None, call: ast.Call) -> OpCall | None:
        if not isinstance(ctor, ast.Call):
            return None
        q = self.qualname(ctor.func)
        kind = _QUAL_TO_OP.get(q or "")
        op = {"Sigmoid": "sigmoid", "Softmax": "softmax", "LogSoftmax": "log_softmax"}.get(kind or "")
        if op is None:
            return None
        kwargs = {k.arg: k.value for k in ctor.keywords if k.arg is not None}
        if ctor.args:
            kwargs.setdefault("dim", ctor.args[0])
        return OpCall(op, "torch", call, list(call.args), kwargs, qual=q or "", module_call=True)

    def ops(self, node: ast.AST, *names: str) -> OpCall | None:
        """:meth:`op` filtered to ``names``."""
        o = self.op(node)
        return o if o is not None and o.op in names else None

    # -- scopes and value flow -------------------------------------------------
    def scope_of(self, node: ast.AST) -> ast.AST:
        p = self.parent(node)
        while p is not None and not isinstance(p, _SCOPES):
            p = self.parent(p)
        return p if p is not None else self.tree

    def _scope(self, node: ast.AST) -> _Scope:
        sc = self._scopes.get(id(node))
        if sc is None:
            sc = _Scope(node)
            _index_scope(sc)
            for name, lst in sc.names.items():
                lst.sort(key=lambda b: b.pos)
                sc.keys[name] = [b.pos for b in lst]
            self._scopes[id(node)] = sc
        return sc

    def binding(self, name: ast.Name) -> Binding | None:
        """The assignment to ``name`` in effect where it is read (None: parameter, import or unknown)."""
        scope = self.scope_of(name)
        pos = (name.lineno, name.col_offset)
        while True:
            sc = self._scope(scope)
            keys = sc.keys.get(name.id)
            if keys:
                i = bisect.bisect_left(keys, pos)
                if i:
                    return sc.names[name.id][i - 1]
            is_fn = isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if scope is self.tree or (is_fn and (keys or _is_param(scope, name.id))):
                return None
            scope = self.scope_of(scope)
            while isinstance(scope, ast.ClassDef):
                scope = self.scope_of(scope)
            pos = (1 << 30, 0)

    def value(self, node: ast.expr | None, depth: int = 6) -> ast.expr | None:
        """Follow names back to the expression last assigned to them (in-place guards and unknowns stop)."""
        seen = 0
        while isinstance(node, ast.Name) and seen < depth:
            b = self.binding(node)
            if b is None or not isinstance(b.value, ast.expr):
                return node
            node = b.value
            seen += 1
        return node

    def inplace_guarded(self, node: ast.expr | None) -> bool:
        """True when the name was last modified in place by a guard (``p.clamp_(min=eps)``, ``p.add_(eps)``)."""
        if not isinstance(node, ast.Name):
            return False
        b = self.binding(node)
        return b is not None and isinstance(b.value, ast.Call) and isinstance(b.value.func, ast.Attribute) and \
            b.value.func.attr in INPLACE_GUARDS

    def strip_views(self, node: ast.expr | None, depth: int = 8) -> ast.expr | None:
        """The array a value is a view, gather, index or cast of (``p[:, 1]``, ``p.gather(1, y)``, ``p.view(-1)``)."""
        for _ in range(depth):
            match node:
                case ast.Subscript(value=v):
                    node = v
                case ast.Call(func=ast.Attribute(attr=a, value=v)) if a in VIEW_METHODS:
                    node = v
                case ast.Attribute(attr="T" | "mT" | "data", value=v):
                    node = v
                case ast.Call(func=f, args=[first, *_]) if self.qualname(f) in VIEW_FUNCS:
                    node = first
                case ast.Name():
                    b = self.binding(node)
                    if b is None or not isinstance(b.value, ast.expr):
                        return node
                    nxt = b.value
                    if isinstance(nxt, ast.Subscript | ast.Call | ast.Attribute | ast.Name):
                        node = nxt
                    else:
                        return nxt
                case _:
                    return node
        return node

    # -- classes, functions, self attributes -----------------------------------
    def _index_defs(self) -> None:
        self._classes, self._functions = {}, {}
        for node in self.tree.body:
            if isinstance(node, ast.ClassDef):
                self._classes[node.name] = node
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self._functions[node.name] = node

    @property
    def classes(self) -> dict[str, ast.ClassDef]:
        if self._classes is None:
            self._index_defs()
        assert self._classes is not None
        return self._classes

    @property
    def functions(self) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
        if self._functions is None:
            self._index_defs()
        assert self._functions is not None
        return self._functions

    def enclosing_class(self, node: ast.AST) -> ast.ClassDef | None:
        p = self.parent(node)
        while p is not None and not isinstance(p, ast.ClassDef):
            p = self.parent(p)
        return p

    def enclosing_function(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        p = self.parent(node)
        while p is not None and not isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef):
            p = self.parent(p)
        return p

    def self_attr(self, node: ast.AST, attr: str) -> ast.expr | None:
        """What ``self.attr`` was set to in the class around ``node`` (``self.act = nn.Sigmoid()``)."""
        cls = self.enclosing_class(node)
        if cls is None:
            return None
        return self.class_attrs(cls).get(attr)

    def class_attrs(self, cls: ast.ClassDef) -> dict[str, ast.expr]:
        attrs = self._self_attrs.get(id(cls))
        if attrs is None:
            attrs = {}
            for sub in ast.walk(cls):
                if isinstance(sub, ast.Assign) and len(sub.targets) == 1:
                    t = sub.targets[0]
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        attrs[t.attr] = sub.value
            self._self_attrs[id(cls)] = attrs
        return attrs

    def returns(self, func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
        out: list[ast.expr] = []
        stack: list[ast.AST] = list(func.body)
        while stack:
            n = stack.pop()
            if isinstance(n, ast.Return) and n.value is not None:
                out.append(n.value)
            elif not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                stack.extend(ast.iter_child_nodes(n))
        return out

    # -- where a probability comes from ---------------------------------------------
    def prob_source(self, node: ast.expr | None, depth: int = 0) -> tuple[str, OpCall | None, str] | None:
        """Whether ``node`` holds the output of a sigmoid or softmax.

        Returns ``(kind, op, how)``: kind ``"sigmoid"``/``"softmax"``; ``how`` is ``"inline"`` (the
        call itself), ``"flow"`` (through assignments, views and indexing in this function),
        ``"model"`` (the output of a model, module or function of this file that ends in one) or
        ``"name"`` (a function named like one: ``predict_proba``, ``stable_softmax``).
        """
        if node is None or depth > 4:
            return None
        how = "inline"
        base = node
        for _ in range(10):
            o = self.op(base) if isinstance(base, ast.Call) else None
            if o is not None:
                if o.op in ("sigmoid", "softmax"):
                    return o.op, o, how if not o.module_call else "flow"
                return None
            naive = self._naive_prob(base)
            if naive is not None:
                return naive, None, how
            nxt = self._step_back(base)
            if nxt is None:
                break
            base, how = nxt, "flow"
        # a call to a model / local function / Sequential
        if isinstance(base, ast.Call):
            out = self._callee_output(base, depth)
            if out is not None:
                return out[0], None, "name" if out[1] else "model"
        return None

    def _naive_prob(self, node: ast.expr) -> str | None:
        """``1 / (1 + exp(-x))`` is a sigmoid, ``exp(x) / sum(exp(x))`` a softmax."""
        match node:
            case ast.BinOp(left=num, op=ast.Div(), right=den):
                if const_value(num) == 1.0 and isinstance(den, ast.BinOp) and isinstance(den.op, ast.Add) and any(
                        self.ops(s, "exp") is not None for s in (den.left, den.right)):
                    return "sigmoid"
                if self.ops(self.value(num), "exp") is not None and self.ops(self.value(den), "sum") is not None:
                    return "softmax"
        return None

    def _step_back(self, node: ast.expr) -> ast.expr | None:
        match node:
            case ast.Subscript(value=v):
                return v
            case ast.Call(func=ast.Attribute(attr=a, value=v)) if a in VIEW_METHODS:
                return v
            case ast.Attribute(attr="T" | "mT" | "data", value=v):
                return v
            case ast.Call(func=f, args=[first, *_]) if self.qualname(f) in VIEW_FUNCS:
                return first
            case ast.Name():
                b = self.binding(node)
                if b is not None and isinstance(b.value, ast.expr):
                    return b.value
        return None

    def _callee_output(self, call: ast.Call, depth: int) -> tuple[str, bool] | None:
        """(kind, only the function's name says so) of what a called model / function returns."""
        func = call.func
        target: ast.AST | None = None
        if isinstance(func, ast.Name):
            b = self.binding(func)
            if func.id in self.functions and (b is None or b.value is None):
                fn = self.functions[func.id]
                return _kind_or_name(self._returns_prob(fn, depth), func.id)
            if func.id not in self.imports or self.qualname(func) is None:
                named = _prob_func_name(func.id)
                if named is not None and b is None:
                    return named, True
            target = self.value(func)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            cls = self.enclosing_class(call)
            if cls is not None:
                for item in cls.body:
                    if isinstance(item, ast.FunctionDef) and item.name == func.attr:
                        return _kind_or_name(self._returns_prob(item, depth), func.attr)
            target = self.self_attr(call, func.attr)
        if isinstance(target, ast.Call):
            q = self.qualname(target.func)
            if _QUAL_TO_OP.get(q or "") == "Sequential" and target.args:
                last = target.args[-1]
                if isinstance(last, ast.Call):
                    lk = _QUAL_TO_OP.get(self.qualname(last.func) or "")
                    if lk in ("Sigmoid", "Softmax"):
                        return lk.lower(), False
            if isinstance(target.func, ast.Name) and target.func.id in self.classes:
                cls = self.classes[target.func.id]
                for item in cls.body:
                    if isinstance(item, ast.FunctionDef) and item.name in ("forward", "__call__", "call"):
                        kind = self._returns_prob(item, depth)
                        return (kind, False) if kind is not None else None
        return None

    def _returns_prob(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, depth: int) -> str | None:
        rets = self.returns(fn)
        kinds = set()
        for r in rets:
            if isinstance(r, ast.Tuple):
                return None
            src = self.prob_source(r, depth + 1)
            if src is None:
                return None
            kinds.add(src[0])
        return kinds.pop() if len(kinds) == 1 else None

    # -- misc --------------------------------------------------------------
    def in_loss(self, node: ast.AST) -> bool:
        """True when ``node`` sits in a function or assignment whose name says loss/NLL/entropy/likelihood."""
        p = self.parent(node)
        while p is not None:
            match p:
                case ast.Assign(targets=targets):
                    for t in targets:
                        n = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else ""
                        if _LOSS_NAME.search(n):
                            return True
                case ast.AugAssign(target=ast.Name(id=n)) | ast.AnnAssign(target=ast.Name(id=n)):
                    if _LOSS_NAME.search(n):
                        return True
                case ast.FunctionDef(name=n) | ast.AsyncFunctionDef(name=n):
                    if _LOSS_NAME.search(n):
                        return True
                    cls = self.enclosing_class(p)
                    return cls is not None and bool(_LOSS_NAME.search(cls.name))
            p = self.parent(p)
        return False

    def in_model(self, node: ast.AST) -> bool:
        """True in code that autograd differentiates: a loss or forward function, a method of a Module/Layer."""
        fn = self.enclosing_function(node)
        while fn is not None:
            if fn.name in _MODEL_FUNCS or _LOSS_NAME.search(fn.name):
                return True
            cls = self.parent(fn)
            if isinstance(cls, ast.ClassDef) and fn.name not in _SETUP_FUNCS and any(
                    _MODEL_BASE.search(ast.unparse(b)) for b in cls.bases):
                return True
            fn = self.enclosing_function(fn)
        return False

    def is_model_class(self, cls: ast.ClassDef) -> bool:
        """A class with a Module/Layer/Model/Loss base: what it computes is differentiated."""
        return any(_MODEL_BASE.search(self.text(b)) for b in cls.bases)

    def no_grad(self, node: ast.AST) -> bool:
        """True where autograd records nothing: under ``with torch.no_grad()`` / ``torch.inference_mode()`` or in
        a function decorated with either."""
        p = self.parent(node)
        while p is not None:
            if isinstance(p, ast.With | ast.AsyncWith) and any(
                    _NO_GRAD.search(self.text(item.context_expr)) for item in p.items):
                return True
            if isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                    _NO_GRAD.search(self.text(d)) for d in p.decorator_list):
                return True
            p = self.parent(p)
        return False

    def custom_grad(self, node: ast.AST) -> bool:
        """True inside a function that defines its own derivative: ``@jax.custom_jvp``/``custom_vjp`` (or a
        ``f.defjvp``/``f.defvjp`` in the file), or a method of a ``torch.autograd.Function``."""
        fn = self.enclosing_function(node)
        while fn is not None:
            if any(_CUSTOM_GRAD.search(self.text(d)) for d in fn.decorator_list):
                return True
            if f"{fn.name}.defjvp" in self.source or f"{fn.name}.defvjp" in self.source:
                return True
            cls = self.parent(fn)
            if isinstance(cls, ast.ClassDef) and any(
                    re.search(r"(^|\.)(autograd\.)?Function$", self.text(b)) for b in cls.bases):
                return True
            fn = self.enclosing_function(fn)
        return False

    def no_gradient(self, node: ast.AST, fam: str | None) -> bool:
        """True where a NaN-gradient rule does not apply: plain NumPy / ``math`` (no autograd), ``no_grad`` code,
        or a function with its own derivative."""
        return fam in ("numpy", "math") or self.no_grad(node) or self.custom_grad(node)

    @property
    def half_precision(self) -> bool:
        """True when the file mentions float16 / half / autocast: code that may run in half precision."""
        if self._half is None:
            self._half = bool(_HALF.search(self.source))
        return self._half

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = split_lines(self.source)
        return self._lines

    def text(self, node: ast.AST) -> str:
        """The source text of a node, as written."""
        return segment(self.lines, node)

    def parent(self, node: ast.AST | None) -> ast.AST | None:
        """The node containing ``node`` (None for the module)."""
        return self.parents.get(id(node))


_MODEL_BASE = re.compile(r"Module$|Layer$|Model$|Loss$|^nn\.Module$")
_SETUP_FUNCS = frozenset({"__init__", "reset_parameters", "extra_repr", "__repr__", "init_weights", "_init_weights"})
_MODEL_FUNCS = frozenset({"forward", "__call__", "call", "training_step", "validation_step", "compute_loss",
                          "train_step", "loss_fn", "criterion"})
_NO_GRAD = re.compile(r"(^|\.)(no_grad|inference_mode)\b")
_CUSTOM_GRAD = re.compile(r"(^|\.)custom_(jvp|vjp|gradient)\b")
_HALF = re.compile(r"(?<!b)float16|\.half\(|autocast|\bfp16\b|GradScaler|mixed_precision|torch\.half")


_PROB_FUNC = re.compile(r"^_?(\w+_)?(sigmoid|logistic|expit|softmax|predict_proba|predict_probs?)$", re.IGNORECASE)


def _kind_or_name(kind: str | None, name: str) -> tuple[str, bool] | None:
    if kind is not None:
        return kind, False
    named = _prob_func_name(name)
    return (named, True) if named is not None else None


def _prob_func_name(name: str) -> str | None:
    """A helper named like ``sigmoid``/``stable_softmax`` returns probabilities."""
    m = _PROB_FUNC.match(name)
    if m is None:
        return None
    return "softmax" if m.group(2).lower() in ("softmax", "predict_proba", "predict_probs", "predict_prob") \
        else "sigmoid"


def _has_nested_imports(source: str) -> bool:
    return "\n    import " in source or "\n    from " in source or "\n        import " in source


def _is_param(fn: ast.AST, name: str) -> bool:
    args = fn.args  # type: ignore[attr-defined]
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if args.vararg:
        every.append(args.vararg)
    if args.kwarg:
        every.append(args.kwarg)
    return any(a.arg == name for a in every)


def _end(node: ast.AST) -> tuple[int, int]:
    return (node.end_lineno or node.lineno, node.end_col_offset or 0)  # type: ignore[attr-defined]


def _targets(t: ast.expr) -> Iterator[tuple[ast.Name, bool]]:
    """Names bound by an assignment target; the flag is False when the value is not the whole RHS."""
    match t:
        case ast.Name():
            yield t, True
        case ast.Tuple(elts=elts) | ast.List(elts=elts):
            for e in elts:
                for n, _ in _targets(e.value if isinstance(e, ast.Starred) else e):
                    yield n, False
        case ast.Starred(value=v):
            yield from ((n, False) for n, _ in _targets(v))


def _index_scope(sc: _Scope) -> None:
    names = sc.names

    def bind(name: str, pos: tuple[int, int], value: ast.AST | None) -> None:
        names.setdefault(name, []).append(Binding(pos, value))

    root = sc.node
    stack: list[ast.AST] = list(root.body) if not isinstance(root, ast.Lambda) else []  # type: ignore[attr-defined]
    while stack:
        n = stack.pop()
        match n:
            case ast.Assign(targets=targets, value=value):
                pos = _end(n)
                for t in targets:
                    for name, whole in _targets(t):
                        bind(name.id, pos, value if whole else None)
            case ast.AnnAssign(target=ast.Name(id=name), value=value) if value is not None:
                bind(name, _end(n), value)
            case ast.AugAssign(target=ast.Name(id=name)):
                bind(name, _end(n), n)
            case ast.NamedExpr(target=ast.Name(id=name), value=value):
                bind(name, _end(n), value)
            case ast.For(target=t) | ast.AsyncFor(target=t) | ast.comprehension(target=t):
                for name, _ in _targets(t):
                    bind(name.id, (t.lineno, t.col_offset), None)
            case ast.withitem(optional_vars=t) if t is not None:
                for name, _ in _targets(t):
                    bind(name.id, (t.lineno, t.col_offset), None)
            case ast.Expr(value=ast.Call(func=ast.Attribute(value=ast.Name(id=name), attr=attr)) as call) \
                    if attr.endswith("_") and not attr.startswith("_"):
                bind(name, _end(n), call)
            case ast.Import(names=aliases) | ast.ImportFrom(names=aliases):
                for a in aliases:
                    bind((a.asname or a.name).split(".")[0], _end(n), None)
            case ast.FunctionDef(name=name) | ast.AsyncFunctionDef(name=name) | ast.ClassDef(name=name):
                bind(name, (n.lineno, n.col_offset), None)
                continue
            case ast.Lambda():
                continue
        if isinstance(n, ast.ExceptHandler) and n.name:
            bind(n.name, (n.lineno, n.col_offset), None)
        stack.extend(ast.iter_child_nodes(n))


def segment(lines: list[str], node: ast.AST) -> str:
    """Source text of ``node`` from the file's lines (ast columns are UTF-8 byte offsets)."""
    l0, l1 = node.lineno - 1, (node.end_lineno or node.lineno) - 1  # type: ignore[attr-defined]
    c0, c1 = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
    if l0 == l1:
        return lines[l0].encode()[c0:c1].decode()
    first = lines[l0].encode()[c0:].decode()
    last = lines[l1].encode()[:c1].decode()
    return first + "".join(lines[l0 + 1:l1]) + last


def char_col(lines: list[str], lineno: int, byte_col: int) -> int:
    """Character column (0-based) of a UTF-8 byte column."""
    line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    if line.isascii():
        return byte_col
    return len(line.encode()[:byte_col].decode(errors="replace"))

