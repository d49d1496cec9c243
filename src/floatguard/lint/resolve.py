"""Op resolution: a call of any spelling (``np.log``, ``torch.log``, ``x.log()``, ``self.act(x)`` with
``self.act = nn.Sigmoid()``, a one-line helper of the file) as an :class:`~floatguard.lint.names.OpCall`, and the
import aliases of the file."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

from .astwalk import statements as _statements
from .astwalk import walk
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

__all__ = ["OpContext", "may_import_siblings", "parse", "relative_imports", "sibling_files", "walk"]

#: not resolved yet (None is resolved: not an op)
_UNKNOWN = OpCall("", "", ast.Call(func=ast.Name(id="_", ctx=ast.Load()), args=[], keywords=[]), [], {})
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
        self._relimports: dict[str, tuple[Path, str]] | None = None
        self._imported: dict[str, tuple[str, str] | None] = {}
        self._may_call: dict[tuple[str, ...], bool] = {}
        #: whether a call may be a module such as ``nn.Sigmoid()`` (False: the source names none of them)
        self._module_ops = self.may_call(*_MODULE_KINDS)
        self._collect_imports()
        self.frameworks = {family_of(_canonical(q) + ".") or "" for q in self.imports.values()}
        self.frameworks.discard("")

    # -- imports -----------------------------------------------------------
    def _collect_imports(self) -> None:
        for node in _statements(self.tree) if _has_nested_imports(self.source) else self.tree.body:
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

    def may_call(self, *kinds: str) -> bool:
        """Whether the file can name an object of one of ``kinds`` (values of ``_QUAL_TO_OP``: ``"BCELoss"``,
        ``"Sigmoid"``, ...): False when its text holds none of the last parts of their qualified names.

        A cheap test to run before following a callee back through assignments (:meth:`value`, :meth:`self_attr`)
        to see whether it is such an object: :meth:`qualname` only gives names that end in a word written in the
        file (a name, an attribute, or the name an import brings in). A non-ASCII text always may (Python reads
        its names NFKC-normalised)."""
        hit = self._may_call.get(kinds)
        if hit is None:
            hit = self._may_call[kinds] = not self.source.isascii() or _words(kinds).search(self.source) is not None
        return hit

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
        res = self._ops.get(key, _UNKNOWN)
        if res is not _UNKNOWN:
            return res
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
            if self._module_ops and isinstance(func.value, ast.Name) and func.value.id == "self":
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
            mod = self._module_op(self.value(func), node) if self._module_ops else None
            if mod is not None:
                return mod
            wrapped = self._wrapper_op(func, node)
            if wrapped is not None:
                return wrapped
        if isinstance(func, ast.Call):  # nn.Sigmoid()(x)
            return self._module_op(func, node)
        return None

    def _wrapper_op(self, func: ast.Name, call: ast.Call) -> OpCall | None:
        """A call to a function of this module (or one imported from a module of the same package,
        ``from .utils import masked_softmax``) whose every ``return`` is ``op(x, ...)`` of its unmodified first
        parameter (``def _exp(x): return torch.exp(x)``) is that op at the call site."""
        if not call.args or isinstance(call.args[0], ast.Starred):
            return None
        if func.id in self.functions:
            b = self.binding(func)
            if b is not None and b.value is not None:
                return None
            found = self.wrapped_op(func.id)
        elif func.id in self._relative_imports():  # else no helper (and no binding to look up)
            b = self.binding(func)
            found = self._imported_wrapper(func.id) if b is None or b.value is None else None  # None: import *
        else:
            return None
        if found is None:
            return None
        kwargs = {k.arg: k.value for k in call.keywords if k.arg is not None}
        return OpCall(found[0], found[1], call, list(call.args), kwargs, qual=f"{func.id}", module_call=True)

    def wrapped_op(self, name: str) -> tuple[str, str] | None:
        """(op, family) when every return of this module's function ``name`` is that op of its first
        parameter, unmodified in between."""
        fn = self.functions.get(name)
        if fn is None or id(fn) in self._unwrapping:
            return None
        params = [*fn.args.posonlyargs, *fn.args.args]
        rets = self.returns(fn)
        if not params or not rets:
            return None
        self._unwrapping.add(id(fn))
        try:
            kinds = set()
            for r in rets:
                inner = self.op(self.value(r))
                if inner is None or inner.op not in _WRAPPABLE or not isinstance(inner.x, ast.Name) or \
                        inner.x.id != params[0].arg or self.binding(inner.x) is not None:
                    return None
                kinds.add((inner.op, inner.family))
        finally:
            self._unwrapping.discard(id(fn))
        return kinds.pop() if len(kinds) == 1 else None

    def _imported_wrapper(self, name: str) -> tuple[str, str] | None:
        """:meth:`wrapped_op` of a function imported from a module of the same package (once per name)."""
        if name in self._imported:
            return self._imported[name]
        src = self._relative_imports().get(name)
        other = _sibling_context(src[0], type(self)) if src is not None else None
        found = other.wrapped_op(src[1]) if other is not None and src is not None else None
        self._imported[name] = found
        return found

    def _relative_imports(self) -> dict[str, tuple[Path, str]]:
        """``from .mod import f as g`` -> {``g``: (path of mod, ``f``)} for the modules of this package."""
        if self._relimports is None:
            self._relimports = relative_imports(self.tree, self.path, self.source)
        return self._relimports

    def _module_op(self, ctor: ast.AST | None, call: ast.Call) -> OpCall | None:
        if not isinstance(ctor, ast.Call):
            return None
        q = self.qualname(ctor.func)
        kind = _QUAL_TO_OP.get(q or "")
        op = _MODULE_KINDS.get(kind or "")
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
                case ast.Call(func=f, args=[first, *_]) if self.qualname(f) in VIEW_FUNCS:
                    node = first  # before methods: tf.reshape(x, s) is a view of x, not of tf
                case ast.Call(func=ast.Attribute(attr=a, value=v)) if a in VIEW_METHODS:
                    node = v
                case ast.Attribute(attr="T" | "mT" | "data", value=v):
                    node = v
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


#: modules whose call is an op (``self.act = nn.Sigmoid()`` ... ``self.act(x)``): their kind in ``_QUAL_TO_OP`` -> op
_MODULE_KINDS = {"Sigmoid": "sigmoid", "Softmax": "softmax", "LogSoftmax": "log_softmax"}


@lru_cache(maxsize=64)
def _words(kinds: tuple[str, ...]) -> re.Pattern[str]:
    """The last parts of the qualified names of ``kinds`` in ``_QUAL_TO_OP`` (``_canonical`` rewrites prefixes
    only, so a name keeps its last part), as one pattern; one that matches nothing when there are none."""
    words = {q.rsplit(".", 1)[-1] for q, kind in _QUAL_TO_OP.items() if kind in kinds}
    return re.compile("|".join(sorted(map(re.escape, words))) or "(?!)")


def _has_nested_imports(source: str) -> bool:
    return "\n    import " in source or "\n    from " in source or "\n        import " in source


#: a relative import statement's text, ``from .utils import f``, ``from .. import m`` (spaces, tabs and
#: backslash continuations between its words): (dots, module). Every statement that :func:`relative_imports`
#: reads matches; so may text in a string or a comment (a file then only counts an extra dependency). No
#: ``\b`` before ``from``: it would cost the search its literal prefix (15x slower).
_WS = rb"(?:[ \t\f]|\\\r?\n)"
_RELATIVE_IMPORT = re.compile(rb"from" + _WS + rb"+(\.+)" + _WS + rb"*([A-Za-z0-9_.\x80-\xff]*?)" + _WS
                              + rb"*\bimport\b")
_RELATIVE_IMPORT_STR = re.compile(_RELATIVE_IMPORT.pattern.decode().replace("A-Za-z0-9_.\\x80-\\xff", "\\w."))


def may_import_siblings(source: str) -> bool:
    """Whether ``source`` may import from a module of its own package (False: it certainly does not)."""
    return _RELATIVE_IMPORT_STR.search(source) is not None or (
        "*" in source and _STAR_IMPORT_STR.search(source) is not None)


#: ``from model import *`` (no dots; a module next to the importer, :func:`_star_sibling`): the module
_STAR_IMPORT = re.compile(rb"from" + _WS + rb"+([A-Za-z_\x80-\xff][A-Za-z0-9_.\x80-\xff]*)" + _WS + rb"+import"
                          + _WS + rb"*\*")
_STAR_IMPORT_STR = re.compile(_STAR_IMPORT.pattern.decode().replace("A-Za-z0-9_.\\x80-\\xff", "\\w.")
                              .replace("A-Za-z_\\x80-\\xff", "^\\W\\d"))


def _module_file(here: Path, level: int, module: str) -> Path | None:
    """The file of ``from <level dots><module> import ...`` in a module of the directory ``here``."""
    base = here
    for _ in range(level - 1):
        base = base.parent
    target = base.joinpath(*module.split("."))
    for cand in (target.with_suffix(".py"), target / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def relative_imports(tree: ast.Module, path: str, source: str | None = None) -> dict[str, tuple[Path, str]]:
    """``from .mod import f as g`` at the top level of the module at ``path`` -> {``g``: (the file of ``mod``,
    ``f``)}: the functions :class:`OpContext` looks into in the other modules of the package. Empty unless
    ``path`` is a ``.py`` file (and, given ``source``, unless :func:`may_import_siblings`)."""
    out: dict[str, tuple[Path, str]] = {}
    if not path.endswith(".py") or (source is not None and not may_import_siblings(source)):
        return out
    here = Path(path).parent
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
            cand = _module_file(here, node.level, node.module)
            if cand is not None:
                for a in node.names:
                    out[a.asname or a.name] = (cand, a.name)
    for node in tree.body:  # star imports last: a name imported by name wins
        if isinstance(node, ast.ImportFrom) and node.module and [a.name for a in node.names] == ["*"]:
            star = _module_file(here, node.level, node.module) if node.level else _star_sibling(here, node.module)
            if star is not None:
                for name in _module_functions(star):
                    out.setdefault(name, (star, name))
    return out


def _star_sibling(here: Path, module: str) -> Path | None:
    """The module next to the importing file that ``from <module> import *`` names (no dots): ``model.py`` for
    ``model``, or for ``pkg.sub.model`` when the directory is ``.../pkg/sub`` (a script run from the root)."""
    parts = module.split(".")
    if parts[0] in KNOWN_ROOTS:
        return None
    if len(parts) > 1 and list(here.resolve().parts[-(len(parts) - 1):]) != parts[:-1]:
        return None
    cand = here / f"{parts[-1]}.py"
    return cand if cand.is_file() else None


def _module_functions(path: Path) -> list[str]:
    """The names of the top-level functions of the module at ``path`` (what its ``import *`` brings in)."""
    got = _read(path)
    if got is None or not got[1]:
        return []
    try:
        tree = parse(got[1].decode("utf-8"), str(path))
    except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and not n.name.startswith("_")]


def _imported_files(path: Path, data: bytes) -> list[Path]:
    """The files the relative imports in a module's bytes name (:data:`_RELATIVE_IMPORT`): those
    :func:`relative_imports` reads, and maybe more (nested imports, text in strings). Without a parse."""
    here = path.parent
    out: dict[Path, None] = {}
    for dots, mod in _RELATIVE_IMPORT.findall(data):
        if mod:
            try:
                f = _module_file(here, len(dots), mod.decode("utf-8").strip("."))
            except (UnicodeDecodeError, ValueError):
                continue
            if f is not None:
                out[f] = None
    for mod in _STAR_IMPORT.findall(data):  # from model import *: a module next to this one
        try:
            f = _star_sibling(here, mod.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, OSError):
            continue
        if f is not None:
            out[f] = None
    return list(out)


#: how many modules of the package :func:`sibling_files` follows at most
_MAX_SIBLINGS = 256


def sibling_files(path: str, data: bytes) -> list[Path]:
    """Every other file of the package whose text can change the findings of the module at ``path`` (whose bytes
    are ``data``): the modules it imports functions from (:func:`relative_imports`), theirs in turn, and so on (a
    helper may wrap a helper of a third module). In the order first reached; empty when it imports none. Found from
    the text, without a parse (the per-file cache computes this for every file it answers)."""
    if not path.endswith(".py"):
        return []
    start = Path(path)
    seen: dict[Path, None] = {}
    todo = _imported_files(start, data)
    while todo and len(seen) < _MAX_SIBLINGS:
        f = todo.pop(0)
        if f in seen or f == start:
            continue
        seen[f] = None
        try:
            if f.stat().st_size > _SIBLING_MAX_BYTES:  # not read for helpers: its own imports do not matter
                continue
            more = f.read_bytes()
        except OSError:
            continue
        todo += _imported_files(f, more)
    return list(seen)


#: the trees of the texts parsed last, by text: a module of the package is parsed once to be checked and once more
#: for its helpers otherwise (the checker never changes a tree)
_TREES: dict[str, ast.Module] = {}
_MAX_TREES = 32


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source, filename)``, or the same text's tree when it was among the last parsed (:data:`_TREES`)."""
    tree = _TREES.get(source)
    if tree is None:
        tree = ast.parse(source, filename=filename)
        while _TREES and len(_TREES) >= _MAX_TREES:
            del _TREES[next(iter(_TREES))]
        if _MAX_TREES > 0:
            _TREES[source] = tree
    return tree


_SIBLINGS: dict[Path, tuple[tuple[int, int], bytes, OpContext | None]] = {}
#: a module of the same package larger than this is not read for its helpers
_SIBLING_MAX_BYTES = 400_000


def _read(path: Path) -> tuple[tuple[int, int], bytes] | None:
    """(modification time and size, bytes) of a file (no bytes when it is too large to be read for helpers)."""
    try:
        st = path.stat()
        data = path.read_bytes() if st.st_size <= _SIBLING_MAX_BYTES else b""
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size), data


def _fresh(path: Path) -> bool:
    """The parsed module at ``path`` is as the file is now, and so is every module it imports helpers from,
    transitively (its answers, cached in it, came from theirs); an edit within the clock's tick keeps the time,
    so the bytes are compared too."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        hit = _SIBLINGS.get(p)
        if hit is None or _read(p) != (hit[0], hit[1]):
            return False
        if hit[2] is not None:
            todo += [f for f, _ in hit[2]._relative_imports().values()]
    return True


def _sibling_context(path: Path, cls: type[OpContext] = OpContext) -> OpContext | None:
    """The parsed module at ``path`` (None when it cannot be read or parsed), parsed again when it or a module
    it imports helpers from (:func:`_fresh`) changed, or when it was read as a class other than ``cls`` (the
    provenance asks a sibling's functions what they return)."""
    if _fresh(path) and isinstance(_SIBLINGS[path][2], cls | type(None)):
        return _SIBLINGS[path][2]
    now = _read(path)
    if now is None:
        return None
    stamp, data = now
    ctx: OpContext | None = None
    if stamp[1] <= _SIBLING_MAX_BYTES:
        try:
            source = data.decode("utf-8")
            tree = parse(source, str(path))
        except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
        if tree is not None:
            ctx = cls(source, tree, str(path))
            walk(tree, ctx.parents)
    if len(_SIBLINGS) > 512:
        _SIBLINGS.clear()
    _SIBLINGS[path] = (stamp, data, ctx)
    return ctx
