"""Fast tree walks: :func:`ast.walk` and :func:`ast.iter_child_nodes` with the fields that can hold a node looked up
once per node type (a table), and the shared operator and expression-context singletons left out."""

from __future__ import annotations

import ast
from collections.abc import Container

__all__ = ["child_fields", "children", "statements", "walk"]

#: fields that never hold a node worth a visit: names and numbers, and the shared singletons of the operators and
#: expression contexts (``ast.Load()``, ``ast.Add()``: one object for the whole process, so no parent of theirs means
#: anything, and no rule looks at them)
_LEAF_FIELDS = frozenset({"ctx", "op", "ops", "id", "attr", "arg", "name", "asname", "module", "level", "kind",
                          "type_comment", "conversion", "is_async", "simple"})
_CHILD_FIELDS: dict[type[ast.AST], tuple[str, ...]] = {ast.Constant: ()}  # a constant's value is never a node


def child_fields(t: type[ast.AST]) -> tuple[str, ...]:
    """The fields of node type ``t`` that can hold a node (in ``_fields`` order), from the table."""
    fields = _CHILD_FIELDS.get(t)
    if fields is None:
        fields = _CHILD_FIELDS[t] = tuple(f for f in t._fields if f not in _LEAF_FIELDS)
    return fields


def children(node: ast.AST) -> list[ast.AST]:
    """The child nodes of ``node`` in the order of :func:`ast.iter_child_nodes`, the singletons aside."""
    fields = _CHILD_FIELDS.get(node.__class__)
    if fields is None:
        fields = child_fields(node.__class__)
    out: list[ast.AST] = []
    AST = ast.AST
    for name in fields:
        v = getattr(node, name, None)
        if isinstance(v, AST):
            out.append(v)
        elif v.__class__ is list:
            out += [c for c in v if isinstance(c, AST)]
    return out


def walk(tree: ast.AST, parents: dict[int, ast.AST],
         types: Container[type[ast.AST]] | None = None) -> list[ast.AST]:
    """Every node under ``tree`` (the operator and context singletons aside; only those of ``types`` if given),
    parents before children, and the parent of each in ``parents`` (by ``id``): :func:`ast.walk` and
    :func:`ast.iter_child_nodes`, inlined, with the fields that can hold a node looked up once per node type."""
    nodes: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    pop, push, visit, AST = stack.pop, stack.append, nodes.append, ast.AST
    table = _CHILD_FIELDS
    while stack:
        node = pop()
        if types is None or node.__class__ in types:
            visit(node)
        fields = table.get(node.__class__)
        if fields is None:
            fields = child_fields(node.__class__)
        for name in fields:
            v = getattr(node, name, None)
            if isinstance(v, AST):
                parents[id(v)] = node
                push(v)
            elif v.__class__ is list:
                for child in v:
                    if isinstance(child, AST):
                        parents[id(child)] = node
                        push(child)
    return nodes


#: the nodes that hold statements
_HOLDERS = (ast.stmt, ast.excepthandler, ast.match_case)


def statements(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """The statements in the body of ``node`` at every depth (and the handlers and match cases that hold some), in
    the order :func:`ast.walk` visits them (breadth first); expressions, which hold no statement, are not looked
    into."""
    out: list[ast.AST] = list(node.body)
    i = 0
    while i < len(out):
        n = out[i]
        i += 1
        for name in _BLOCK_FIELDS.get(n.__class__, ()):
            out += [c for c in getattr(n, name) if isinstance(c, _HOLDERS)]
    return out


#: the fields that hold statements, handlers or match cases, by node type, in ``_fields`` order
_BLOCK_FIELDS: dict[type[ast.AST], tuple[str, ...]] = {
    t: tuple(f for f in t._fields if f in ("body", "orelse", "finalbody", "handlers", "cases"))
    for t in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.AsyncFor, ast.While, ast.If, ast.With,
              ast.AsyncWith, ast.Try, ast.TryStar, ast.Match, ast.ExceptHandler, ast.match_case)
}
