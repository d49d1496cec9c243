"""Value flow: which assignment a name reads, the scopes, functions, classes and ``self`` attributes of a file, and
its source text by node."""

from __future__ import annotations

import ast
import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from .astwalk import children, statements
from .fixes import split_lines
from .names import INPLACE_GUARDS

__all__ = ["Binding", "FlowContext", "char_col", "segment"]

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Module, ast.ClassDef)


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
    #: statements that write into the elements of a name (``d[d == 0] = 1``, ``np.putmask(d, m, 1)``), by position
    writes: dict[str, list[tuple[tuple[int, int], ast.stmt]]] = field(default_factory=dict)


class FlowContext:
    """Where values come from in one file: scopes, bindings, definitions and the source text of nodes."""

    def __init__(self, source: str, tree: ast.Module, path: str = "<string>") -> None:
        self.source = source
        self.tree = tree
        self.path = path
        self._scopes: dict[int, _Scope] = {}
        self._lines: list[str] | None = None
        self._classes: dict[str, ast.ClassDef] | None = None
        self._functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] | None = None
        self._self_attrs: dict[int, dict[str, ast.expr]] = {}
        self.parents: dict[int, ast.AST] = {}

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
            for w in sc.writes.values():
                w.sort(key=lambda pw: pw[0])
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
            if isinstance(scope, ast.Lambda) and not keys:
                arg = self._lambda_arg(scope, name.id)
                if arg is not None:
                    return arg
            if scope is self.tree or (is_fn and (keys or _is_param(scope, name.id))):
                return None
            scope = self.scope_of(scope)
            while isinstance(scope, ast.ClassDef):
                scope = self.scope_of(scope)
            pos = (1 << 30, 0)

    def _lambda_arg(self, lam: ast.Lambda, name: str) -> Binding | None:
        """``(lambda z: z.exp())(x.masked_fill(m, 0))``: a parameter of a lambda called where it is written is
        the argument it is called with."""
        call = self.parent(lam)
        if not isinstance(call, ast.Call) or call.func is not lam or call.keywords:
            return None
        params = [*lam.args.posonlyargs, *lam.args.args]
        for i, a in enumerate(params):
            if a.arg == name and i < len(call.args) and not isinstance(call.args[i], ast.Starred) and \
                    not any(isinstance(c, ast.Starred) for c in call.args[:i]):
                return Binding((lam.lineno, lam.col_offset), call.args[i])
        return None

    def element_writes(self, name: ast.Name) -> list[ast.stmt]:
        """Statements of ``name``'s scope that write into the elements of the array it reads, after the assignment
        in effect and before the read: ``d[d == 0] = 1``, ``d[:, 0] = x``, ``np.putmask(d, d == 0, 1)``."""
        sc = self._scope(self.scope_of(name))
        writes = sc.writes.get(name.id)
        if not writes:
            return []
        pos = (name.lineno, name.col_offset)
        keys = sc.keys.get(name.id) or []
        i = bisect.bisect_left(keys, pos)
        start = keys[i - 1] if i else (0, 0)
        return [w for p, w in writes if start <= p < pos]

    def lambda_values(self, name: ast.Name) -> list[ast.expr]:
        """The values a parameter of a lambda takes where the lambda is mapped over written-out sequences:
        ``map(lambda t: t / t.norm(), (qs, ks))`` gives ``[qs, ks]`` for ``t`` (empty when unknown)."""
        lam = self.scope_of(name)
        if not isinstance(lam, ast.Lambda) or name.id in self._scope(lam).keys:
            return []
        call = self.parent(lam)
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "map"
                and call.args and call.args[0] is lam and not call.keywords):
            return []
        b = self.binding(call.func)
        if b is not None:
            return []  # map rebound in this file
        params = [*lam.args.posonlyargs, *lam.args.args]
        for i, a in enumerate(params):
            if a.arg == name.id and i + 1 < len(call.args):
                seq = call.args[i + 1]
                if isinstance(seq, ast.Tuple | ast.List) and seq.elts and \
                        not any(isinstance(e, ast.Starred) for e in seq.elts):
                    return list(seq.elts)
        return []

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
            for sub in statements(cls):  # ast.walk's order (the last assignment wins): statements only
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
                stack += children(n)
        return out

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

    def write(name: str, stmt: ast.stmt) -> None:
        sc.writes.setdefault(name, []).append((_end(stmt), stmt))

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
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                        write(t.value.id, n)
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
            case ast.Expr(value=ast.Call(func=ast.Attribute() | ast.Name() as f, args=[ast.Name(id=name), *_])) \
                    if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == name):
                write(name, n)  # np.putmask(d, d == 0, 1), np.copyto(d, v, where=m)
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
        stack += children(n)


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
