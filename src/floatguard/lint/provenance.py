"""Provenance and context: whether a value is the output of a sigmoid or softmax (inline, through assignments, or
from a model of the file), and whether code is differentiated (a loss, a model, ``no_grad``, a custom derivative)."""

from __future__ import annotations

import ast
import re

from .names import _QUAL_TO_OP, DIV_FUNCS, DIV_METHODS, VIEW_FUNCS, VIEW_METHODS, OpCall, const_value
from .resolve import OpContext, _sibling_context

__all__ = ["Context"]

_LOSS_NAME = re.compile(r"loss|nll|entropy|likelihood|criterion|kl_?div|(^|_)(ce|bce|kl|elbo|cost|objective)(_|$)",
                        re.IGNORECASE)


class Context(OpContext):
    """Everything the rules need about one file: source, imports, op resolution, value flow and provenance."""

    def __init__(self, source: str, tree: ast.Module, path: str = "<string>") -> None:
        super().__init__(source, tree, path)
        self._half: bool | None = None
        self._tf_graph: bool | None = None

    # -- divisions ---------------------------------------------------------------------
    def division(self, node: ast.AST | None) -> tuple[ast.expr, ast.expr] | None:
        """``(numerator, denominator)`` of a division written as an operator or a call: ``a / b``, ``a /= b``,
        ``tf.div(a, b)`` (``divide``, ``truediv``, ``realdiv``), ``torch.div(a, b)``, ``np.divide(a, b)``,
        ``a.div(b)``, ``a.div_(b)``; None otherwise (and for ``torch.div(a, b, rounding_mode=...)``)."""
        match node:
            case ast.BinOp(left=num, op=ast.Div(), right=den) | ast.AugAssign(target=num, op=ast.Div(), value=den):
                return num, den
            case ast.Call(func=ast.Attribute(attr=attr, value=recv) as func, args=args, keywords=kws) \
                    if attr in DIV_METHODS or attr in _DIV_LAST:
                if any(k.arg is None or k.arg in ("rounding_mode", "out") for k in kws):
                    return None
                if attr in DIV_METHODS and len(args) == 1 and not kws and not isinstance(args[0], ast.Starred) \
                        and self.qualname(func) is None:
                    return recv, args[0]
                return self._div_call(node)
            case ast.Call(func=ast.Name(id=attr), keywords=kws) if attr in _DIV_LAST:
                if any(k.arg is None or k.arg in ("rounding_mode", "out") for k in kws):
                    return None
                return self._div_call(node)
        return None

    def _div_call(self, node: ast.Call) -> tuple[ast.expr, ast.expr] | None:
        """``(x, y)`` of ``tf.div(x, y)`` and the other functions of :data:`DIV_FUNCS`."""
        if self.qualname(node.func) not in DIV_FUNCS:
            return None
        kw = {k.arg: k.value for k in node.keywords}
        args = [a for a in node.args if not isinstance(a, ast.Starred)]
        if len(args) != len(node.args) or len(args) > 2:
            return None
        num = args[0] if args else kw.get("x", kw.get("input", kw.get("x1")))
        den = args[1] if len(args) > 1 else kw.get("y", kw.get("other", kw.get("x2")))
        return (num, den) if num is not None and den is not None else None

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
            naive = self._naive_prob(base)  # also tf.div(e, reduce_sum(e)), not an op of its own
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
        div = self.division(node) if isinstance(node, ast.BinOp | ast.Call) else None
        if div is None:
            return None
        num, den = div
        if const_value(num) == 1.0 and isinstance(den, ast.BinOp) and isinstance(den.op, ast.Add) and any(
                self.ops(s, "exp") is not None for s in (den.left, den.right)):
            return "sigmoid"
        if self.ops(self.value(num), "exp") is not None and self.ops(self.strip_views(den), "sum") is not None:
            return "softmax"
        return None

    def _step_back(self, node: ast.expr) -> ast.expr | None:
        match node:
            case ast.Subscript(value=v):
                return v
            case ast.Call(func=f, args=[first, *_]) if self.qualname(f) in VIEW_FUNCS:
                return first  # before methods: tf.reshape(p, s) is a view of p, not of tf
            case ast.Call(func=ast.Attribute(attr=a, value=v)) if a in VIEW_METHODS:
                return v
            case ast.Attribute(attr="T" | "mT" | "data", value=v):
                return v
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
            if (b is None or b.value is None) and func.id not in self.imports:
                kind = self._sibling_returns(func.id, depth)
                if kind is not None:
                    return kind, False
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

    def _sibling_returns(self, name: str, depth: int) -> str | None:
        """What a function imported from a module of the same package returns (``from .model import VI_Block``,
        or ``from model import *`` of a module next to this one): ``"softmax"``/``"sigmoid"`` or None."""
        src = self._relative_imports().get(name)
        other = _sibling_context(src[0], Context) if src is not None else None
        if src is None or not isinstance(other, Context) or src[1] not in other.functions:
            return None
        return other._returns_prob(other.functions[src[1]], depth + 1)

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
    def tf_graph(self) -> bool:
        """True when the file builds a TensorFlow 1.x graph (``tf.placeholder``, ``tf.Session``,
        ``tf.get_variable``, ``tf.gradients``, ``.minimize(``): every TensorFlow op in it is then differentiated."""
        if self._tf_graph is None:
            self._tf_graph = "tf" in self.frameworks and bool(_TF_GRAPH.search(self.source))
        return self._tf_graph

    @property
    def half_precision(self) -> bool:
        """True when the file mentions float16 / half / autocast: code that may run in half precision."""
        if self._half is None:
            self._half = bool(_HALF.search(self.source))
        return self._half


#: the last part of the names of :data:`DIV_FUNCS` (a cheap test before the qualified name is looked up)
_DIV_LAST = frozenset(q.rsplit(".", 1)[1] for q in DIV_FUNCS)
_MODEL_BASE = re.compile(r"Module$|Layer$|Model$|Loss$|^nn\.Module$")
_SETUP_FUNCS = frozenset({"__init__", "reset_parameters", "extra_repr", "__repr__", "init_weights", "_init_weights"})
_MODEL_FUNCS = frozenset({"forward", "__call__", "call", "training_step", "validation_step", "compute_loss",
                          "train_step", "loss_fn", "criterion"})
_NO_GRAD = re.compile(r"(^|\.)(no_grad|inference_mode)\b")
_CUSTOM_GRAD = re.compile(r"(^|\.)custom_(jvp|vjp|gradient)\b")
_TF_GRAPH = re.compile(r"\b(placeholder|Session|get_variable|gradients)\(|\.minimize\(")
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
