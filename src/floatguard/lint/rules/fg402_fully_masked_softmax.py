"""FG402 fully-masked-softmax."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterator

from ..analysis import VIEW_METHODS, Context, const_value
from ..rule import Finding, Rule

_CAUSAL = re.compile(r"causal|triu|tril|future|subsequent|look_?ahead", re.IGNORECASE)
_GUARDS = {"nan_to_num", "nan_to_num_"}
_CASTS = VIEW_METHODS | {"type_as", "float", "half", "bfloat16", "to"}


def is_neg_inf(node: ast.expr | None) -> bool:
    v = const_value(node)
    return v is not None and math.isinf(v) and v < 0


def _chain_top(ctx: Context, node: ast.AST) -> ast.AST:
    """The end of a method chain that only casts or reshapes: ``s.float().masked_fill_(m, -inf).type_as(s)``."""
    while True:
        attr = ctx.parent(node)
        call = ctx.parent(attr)
        if isinstance(attr, ast.Attribute) and isinstance(call, ast.Call) and call.func is attr and \
                attr.attr in _CASTS:
            node = call
            continue
        return node


#: methods that keep a mask's pattern of rows: devices, dtypes, views, broadcasts
_MASK_KEEPS = frozenset({"to", "cuda", "cpu", "bool", "detach", "contiguous", "view", "reshape", "expand",
                         "expand_as", "unsqueeze", "type_as", "clone"})


def _strict_upper(ctx: Context, call: ast.Call) -> bool:
    """``triu(ones, diagonal=k)`` with ``k >= 1`` (``torch.triu(o, 1)``, ``o.triu(diagonal=1)``): true only above
    the diagonal, so column 0 of every row is kept."""
    f = call.func
    q = ctx.qualname(f) or ""
    if q.split(".")[-1] == "triu" and q.split(".")[0] in ("torch", "numpy", "jax"):
        base, diag = (call.args[0] if call.args else None), (call.args[1] if len(call.args) > 1 else None)
    elif isinstance(f, ast.Attribute) and f.attr == "triu" and not q:
        base, diag = f.value, (call.args[0] if call.args else None)
    else:
        return False
    diag = diag if diag is not None else next((k.value for k in call.keywords if k.arg == "diagonal"), None)
    d = const_value(diag)
    if d is None or d < 1:
        return False
    base = ctx.value(base) if isinstance(base, ast.Name) else base
    return ctx.ops(base, "ones") is not None


def _class_member(ctx: Context, cls: ast.ClassDef, attr: str) -> list[ast.expr]:
    """What ``obj.attr`` reads for an instance of ``cls``: a property's returns, else ``self.attr = ...``."""
    for item in cls.body:
        if isinstance(item, ast.FunctionDef) and item.name == attr and any(
                isinstance(d, ast.Name) and d.id in ("property", "cached_property") for d in item.decorator_list):
            return ctx.returns(item)
    v = ctx.class_attrs(cls).get(attr)
    return [v] if v is not None else []


def keeps_every_row(ctx: Context, mask: ast.expr | None, depth: int = 0) -> bool:
    """A causal mask that leaves every row a key: ``triu(ones, diagonal=1)`` (inline, through names, devices,
    views and row selections, or as the ``mask`` property/attribute of a small class of the module such as a
    ``TriangularCausalMask``). Masking with it cannot give a fully masked row."""
    if mask is None or depth > 16:
        return False
    match mask:
        case ast.Name():
            v = ctx.value(mask, depth=1)
            return v is not mask and keeps_every_row(ctx, v, depth + 1)
        case ast.Subscript(value=v, slice=idx):  # rows or batches selected, the columns (last axis) all kept
            last = idx.elts[-1] if isinstance(idx, ast.Tuple) and idx.elts else None
            columns_kept = not isinstance(idx, ast.Tuple) or (
                isinstance(last, ast.Slice) and last.lower is None and last.upper is None and last.step is None) or (
                isinstance(last, ast.Constant) and last.value is Ellipsis)
            return columns_kept and keeps_every_row(ctx, v, depth + 1)
        case ast.Attribute(value=ast.Name(id="self"), attr=attr):
            v = ctx.self_attr(mask, attr)
            return v is not None and keeps_every_row(ctx, v, depth + 1)
        case ast.Attribute(value=obj, attr=attr):
            inst = ctx.value(obj) if isinstance(obj, ast.Name) else obj
            b = ctx.binding(inst.func) if isinstance(inst, ast.Call) and isinstance(inst.func, ast.Name) else None
            if isinstance(inst, ast.Call) and isinstance(inst.func, ast.Name) and inst.func.id in ctx.classes and \
                    (b is None or b.value is None):  # a class of this module, not rebound
                vals = _class_member(ctx, ctx.classes[inst.func.id], attr)
                return bool(vals) and all(keeps_every_row(ctx, v, depth + 1) for v in vals)
        case ast.Call(func=ast.Attribute(value=recv, attr=meth)) if meth in _MASK_KEEPS and \
                ctx.qualname(mask.func) is None:
            return keeps_every_row(ctx, recv, depth + 1)
        case ast.Call():
            return _strict_upper(ctx, mask)
    return False


class FullyMaskedSoftmax(Rule):
    """Checks for a softmax over scores masked with `-inf`.

    ## What it does
    Checks for a softmax over scores masked with `-inf`.

    Not reported: a causal mask, `triu(ones, diagonal=1)` inline, through names and views, or as the `mask`
    property or attribute of a small class of the module (a `TriangularCausalMask`): every row keeps its
    diagonal, so no row is fully masked.

    ## Why is this bad?
    Masking with -inf before a softmax gives ``exp(-inf - (-inf))`` = NaN for a row whose every entry is masked (an
    empty sequence, a padded query); use a masked softmax that returns zeros there.

    ## Example
    ```python
    import torch

    scores = scores.masked_fill(~mask, float("-inf"))
    attn = scores.softmax(dim=-1)
    ```

    ## Use instead
    ```python
    import torch

    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    attn = scores.softmax(dim=-1) * mask.any(dim=-1, keepdim=True)
    ```

    ## Fix safety
    There is no fix: whether a fully masked row should give zeros depends on the caller.

    ## References
    - [PyTorch issue 41508: softmax of all -inf gives NaN](https://github.com/pytorch/pytorch/issues/41508)
    """

    code = "FG402"
    name = "fully-masked-softmax"
    categories = ("nan", "masking")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        o = ctx.ops(node, "masked_fill", "where")
        if o is None:
            return
        if o.op == "masked_fill":
            if not is_neg_inf(o.arg(2, "value")):
                return
            mask = o.arg(1, "mask")
        else:
            if len(o.node.args) != 3 or not any(is_neg_inf(a) for a in o.node.args[1:]):
                return
            mask = o.node.args[0]
        if mask is not None and (_CAUSAL.search(ctx.text(mask)) or keeps_every_row(ctx, mask)):
            return
        top = _chain_top(ctx, node)
        parent = ctx.parent(top)
        if ctx.ops(parent, "softmax") is not None:
            if not self._guarded_after(ctx, node, mask):
                yield self._finding(node)
            return
        names = self._names(ctx, node, top)
        if not names:
            return
        fn = ctx.scope_of(node)
        after = (getattr(node, "end_lineno", 0), getattr(node, "end_col_offset", 0))
        for n in ast.walk(fn):
            if isinstance(n, ast.Call) and (n.lineno, n.col_offset) >= after:
                sm = ctx.ops(n, "softmax")
                if sm is not None and sm.x is not None and self._uses(sm.x, names):
                    if not self._guarded_after(ctx, node, mask):
                        yield self._finding(node)
                    return

    def _finding(self, node: ast.AST) -> Finding:
        return Finding(node, "-inf mask before softmax: a fully masked row gives NaN",
                       "use a masked softmax (floatguard.softmax(x, where=mask)) or finfo(dtype).min")

    def _names(self, ctx: Context, node: ast.AST, top: ast.AST) -> set[str]:
        """Names that hold the masked scores: the assignment target (of the method chain the fill sits in), or
        the receiver of masked_fill_."""
        out: set[str] = set()
        parent = ctx.parent(top)
        if isinstance(parent, ast.Assign):
            out |= {t.id for t in parent.targets if isinstance(t, ast.Name)}
        match node:
            case ast.Call(func=ast.Attribute(attr=attr, value=ast.Name(id=name))) if attr.endswith("_"):
                out.add(name)
        return out

    def _uses(self, expr: ast.AST, names: set[str]) -> bool:
        return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(expr))

    def _guarded_after(self, ctx: Context, node: ast.AST, mask: ast.expr | None) -> bool:
        """NaNs cleaned after the softmax (nan_to_num, a zero fill), or rows checked with any()/all()."""
        fn = ctx.scope_of(node)
        mask_name = ctx.text(mask).lstrip("~(") if mask is not None else None
        for n in ast.walk(fn):
            if not isinstance(n, ast.Call) or not isinstance(n.func, ast.Attribute):
                continue
            attr = n.func.attr
            if attr in _GUARDS:
                return True
            if attr in ("masked_fill", "masked_fill_") and len(n.args) == 2 and const_value(n.args[1]) == 0.0:
                return True
            if attr in ("all", "any") and mask_name and ctx.text(n.func.value).lstrip("~(").startswith(mask_name):
                return True
        return False
