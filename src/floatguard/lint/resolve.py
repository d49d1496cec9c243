"""Op resolution: a call of any spelling (``np.log``, ``torch.log``, ``x.log()``, ``self.act(x)`` with
``self.act = nn.Sigmoid()``, a one-line helper of the file) as an :class:`~floatguard.lint.names.OpCall`, and the
import aliases of the file."""

from __future__ import annotations

import ast

from .flow import FlowContext
from .names import (
    _METHODS,
    _QUAL_TO_OP,
    _TORCH_METHODS,
    KNOWN_ROOTS,
    VIEW_FUNCS,
    VIEW_METHODS,
    OpCall,
    _canonical,
    dotted_name,
    family_of,
)

__all__ = ["OpContext"]

#: elementwise ops a one-line helper of the module may wrap (its call site is then that op)
_WRAPPABLE = frozenset({"exp", "log", "sigmoid", "softmax", "log_softmax", "sqrt", "log1p", "expm1"})


class OpContext(FlowContext):
    """A file's imports and its calls as operations."""

    def __init__(self, source: str, tree: ast.Module, path: str = "<string>") -> None:
        super().__init__(source, tree, path)
        self.imports: dict[str, str] = {}
        self.star: list[str] = []
        self._ops: dict[int, OpCall | None] = {}
        self._unwrapping: set[int] = set()
        self._collect_imports()
        self.frameworks = {family_of(_canonical(q) + ".") or "" for q in self.imports.values()}
        self.frameworks.discard("")

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
    def op(self, node: ast.AST | None) -> OpCall | None:
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

    def ops(self, node: ast.AST | None, *names: str) -> OpCall | None:
        """:meth:`op` filtered to ``names``."""
        o = self.op(node)
        return o if o is not None and o.op in names else None

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


def _has_nested_imports(source: str) -> bool:
    return "\n    import " in source or "\n    from " in source or "\n        import " in source
