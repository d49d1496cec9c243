"""What is known about a value at a site: its sign, a guard (clamp, eps, mask), a bound from a branch, whole
numbers and counts. The rules ask these to stay quiet where the code is safe."""

from __future__ import annotations

import ast
import re

from ..analysis import Context, const_value

_GUARD_FUNC = re.compile(r"clamp|clip|safe|stable", re.IGNORECASE)
_EPS_NAME = re.compile(r"eps|epsilon|tiny|smooth|delta|min_?val|_EPS|clamp|floor|offset", re.IGNORECASE)
def mask_bound(ctx: Context, node: ast.expr | None) -> tuple[str, float, bool] | None:
    """``("lower", c, strict)`` for ``x[x > c]``/``x[x >= c]``, ``("upper", c, strict)`` for ``x[x < c]``: the
    elements an index mask keeps (the mask inline, in a name, or through ``flatnonzero``/``where``/``nonzero``)."""
    if not isinstance(node, ast.Subscript):
        return None
    base = ctx.text(node.value)
    cond: ast.expr | None = node.slice
    for _ in range(3):
        if isinstance(cond, ast.Name):
            cond = ctx.value(cond, depth=1)
        if isinstance(cond, ast.Call) and cond.args and (
                (isinstance(cond.func, ast.Attribute) and cond.func.attr in ("flatnonzero", "nonzero", "where",
                                                                              "argwhere"))
                or (isinstance(cond.func, ast.Name) and cond.func.id in ("flatnonzero", "nonzero", "where"))):
            cond = cond.args[0] if len(cond.args) == 1 else None
            continue
        break
    match cond:
        case ast.Compare(left=left, ops=[op], comparators=[right]):
            for a, b, o in ((left, right, type(op)), (right, left, _FLIP.get(type(op)))):
                c = const_value(b)
                if c is None or ctx.text(a) != base or o is None:
                    continue
                if o in (ast.Gt, ast.GtE):
                    return "lower", c, o is ast.Gt
                if o in (ast.Lt, ast.LtE):
                    return "upper", c, o is ast.Lt
    return None


_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Lt: ast.Gt, ast.LtE: ast.GtE}


def nonneg(ctx: Context, node: ast.expr | None, depth: int = 0) -> bool:
    """Provably >= 0: squares, abs, exp, non-negative constants, and sums/products of those."""
    v = const_value(node)
    if v is not None:
        return v >= 0
    if depth > 4:
        return False
    if isinstance(node, ast.Name):
        nxt = ctx.value(node, depth=1)
        return nxt is not node and nonneg(ctx, nxt, depth + 1)
    bound = mask_bound(ctx, node)
    if bound is not None:
        return bound[0] == "lower" and bound[1] >= 0
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
            if o.op == "neg":
                return nonpositive(ctx, o.x, depth + 1)
            if o.op == "pow":
                ex = const_value(o.arg(1, "exponent"))
                return ex is not None and ex % 2 == 0
            if o.op in ("sum", "mean"):
                return nonneg(ctx, o.x)
    return False


def nonpositive(ctx: Context, node: ast.expr | None, depth: int = 0) -> bool:
    """Provably <= 0: ``-x**2``, ``-0.5 * (x / s) ** 2``, ``-abs(x)``, ``x.abs().neg()``, a log-softmax, the
    elements ``u[u <= 0]`` a mask keeps, log-weights minus their logsumexp (``lw - logsumexp(lw)``, also as
    ``lw -= logsumexp(lw)``), ``linspace(-a, 0)``, and what a function of this file returns when every return is
    one of those (``f(x)`` or ``f(x)[0]`` of a returned tuple)."""
    v = const_value(node)
    if v is not None:
        return v <= 0
    if depth > 4:
        return False
    if isinstance(node, ast.Name):
        bd = ctx.binding(node)
        if bd is not None and isinstance(bd.value, ast.AugAssign) and isinstance(bd.value.op, ast.Sub) and \
                (_logsumexp_of(ctx, bd.value.value, node) or max_of(ctx, bd.value.value, node)):
            return True  # lw -= logsumexp(lw); w -= w.max()
        nxt = ctx.value(node, depth=1)
        return nxt is not node and nonpositive(ctx, nxt, depth + 1)
    bound = mask_bound(ctx, node)
    if bound is not None:
        return bound[0] == "upper" and bound[1] <= 0
    match node:
        case ast.UnaryOp(op=ast.USub(), operand=inner):
            return nonneg(ctx, inner, depth + 1)
        case ast.Subscript(value=ast.Call() as call, slice=ast.Constant(value=int() as i)):
            helper = local_function(ctx, call)
            if helper is None:
                return False
            rets = ctx.returns(helper)
            return bool(rets) and all(isinstance(r, ast.Tuple) and i < len(r.elts) and
                                      nonpositive(ctx, r.elts[i], depth + 2) for r in rets)
        case ast.Call():
            o = ctx.op(node)
            if o is not None and o.op == "neg":
                return nonneg(ctx, o.x, depth + 1)
            if o is not None:
                return o.op in ("log_softmax", "log_sigmoid")
            if _linspace_nonpositive(ctx, node):
                return True
            helper = local_function(ctx, node)
            if helper is None:
                return False
            rets = ctx.returns(helper)
            return bool(rets) and all(nonpositive(ctx, r, depth + 2) for r in rets)
        case ast.BinOp(left=a, op=ast.Mult() | ast.Div(), right=b):
            return (nonpositive(ctx, a) and nonneg(ctx, b)) or (nonneg(ctx, a) and nonpositive(ctx, b))
        case ast.BinOp(left=a, op=ast.Sub(), right=b):
            return (nonpositive(ctx, a) and nonneg(ctx, b)) or _logsumexp_of(ctx, b, a) or max_of(ctx, b, a)
        case ast.BinOp(left=a, op=ast.Add(), right=b):
            return nonpositive(ctx, a) and nonpositive(ctx, b)
    return False


_LSE_NAME = re.compile(r"(^|_)(logsumexp|log_sum_exp|lse)$", re.IGNORECASE)


def _logsumexp_of(ctx: Context, node: ast.expr | None, x: ast.expr) -> bool:
    """``node`` is the logsumexp of ``x`` over all or some axes (``logsumexp(x, axis=-1, keepdims=True)``; also a
    project's own ``_logsumexp``): ``x - logsumexp(x)`` is a normalised log-weight, <= 0."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    o = ctx.ops(node, "logsumexp")
    if o is not None:
        arg = o.x
    else:
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if not _LSE_NAME.search(name):
            return False
        arg = node.args[0]
    return arg is not None and ctx.text(arg) == ctx.text(x)


def max_of(ctx: Context, node: ast.expr | None, x: ast.expr) -> bool:
    """``node`` is a max that ``x`` takes part in, so ``x - node <= 0``: a reduction over all or some axes
    (``w.max()``, ``np.max(w, axis=0, keepdims=True)``, ``w.amax(-1, keepdim=True)``, ``w.max(-1, keepdim=True)[0]``
    or ``.values``) or an elementwise max with ``x`` among its arguments (``torch.max(x, y)``, ``np.maximum``,
    ``max(x, y)``), followed through names."""
    if isinstance(node, ast.Name):
        node = ctx.value(node)
    match node:
        case ast.Subscript(value=v, slice=ast.Constant(value=0)) | ast.Attribute(value=v, attr="values"):
            node = v
    o = ctx.ops(node, "max", "maximum")
    if o is None or o.x is None:
        return False
    xt = ctx.text(x)
    return ctx.text(o.x) == xt or any(ctx.text(a) == xt for a in o.node.args)


def elementwise_max_args(ctx: Context, node: ast.expr | None, depth: int = 0) -> list[str] | None:
    """The source texts of the terms an elementwise max is taken over (``torch.max(a, b)``, ``np.maximum(a, b)``,
    ``max(a, b)``, nested: ``torch.maximum(torch.maximum(a, b), c)``), followed through names; None otherwise."""
    if node is None or depth > 4:
        return None
    if isinstance(node, ast.Name):
        node = ctx.value(node)
    o = ctx.ops(node, "max", "maximum")
    if o is None or o.x is None or o.node.keywords:
        return None
    recv = o.node.args[:1] != [o.x]  # a method: x.max(y)
    args: list[ast.expr] = [o.x, *o.node.args] if recv else list(o.node.args)
    if len(args) < 2 or any(isinstance(a, ast.Starred) or const_value(a) is not None for a in args):
        return None  # a reduction (x.max(-1), torch.max(x, 1)) or a clamp (max(x, 0))
    out: list[str] = []
    for a in args:
        inner = elementwise_max_args(ctx, a, depth + 1) if isinstance(a, ast.Call) else None
        out += inner if inner is not None else [ctx.text(a)]
    return out


def log_value(ctx: Context, x: ast.expr | None, depth: int = 0) -> bool:
    """``x`` is a log: ``log(p)`` (a log-softmax, a log-sigmoid) computed above, or what a function of this file
    returns when every return is such a log (``def _cov(x): ...; return diag.log()``): ``exp(x)`` undoes it and
    cannot overflow beyond the value the log was taken of."""
    if x is None or depth > 4:
        return False
    v = ctx.value(x) if isinstance(x, ast.Name) else x
    if ctx.ops(v, "log", "log_softmax", "log_sigmoid") is not None:
        return True
    if isinstance(v, ast.Call) and ctx.op(v) is None:
        helper = local_function(ctx, v)
        if helper is not None:
            rets = ctx.returns(helper)
            return bool(rets) and all(log_value(ctx, r, depth + 1) for r in rets)
    return False


def _linspace_nonpositive(ctx: Context, call: ast.Call) -> bool:
    """``linspace(-eta, 0, n)``: the points lie between a negated (or non-positive) start and a stop <= 0."""
    q = ctx.qualname(call.func) or ""
    if not q.endswith(".linspace") or len(call.args) < 2:
        return False
    start, stop = call.args[0], call.args[1]
    v = const_value(stop)
    if v is None or v > 0:
        return False
    sv = const_value(start)
    return sv <= 0 if sv is not None else isinstance(start, ast.UnaryOp) and isinstance(start.op, ast.USub)


def fill_bounded(ctx: Context, x: ast.expr | None) -> bool:
    """``x`` is ``y.masked_fill(m, c)`` or ``where(m, y, c)`` that keeps ``y`` only where a comparison bounds it
    above by :data:`EXP_SAFE` and fills the rest with a constant no larger (``x.masked_fill(~(x <= 18), 0)``)."""
    v = ctx.value(x) if isinstance(x, ast.Name) else x
    o = ctx.ops(v, "masked_fill", "where")
    if o is None:
        return False
    if o.op == "masked_fill":
        y, m, c = o.arg(0), o.arg(1, "mask"), o.arg(2, "value")
        if y is None or m is None:
            return False
        cond, holds = _cond(ctx, m)
        cv = const_value(c)
        return cv is not None and cv <= EXP_SAFE and cond is not None and _bound_in(ctx, cond, y, not holds)
    if len(o.node.args) != 3:
        return False
    cond, holds = _cond(ctx, o.node.args[0])
    if cond is None:
        return False
    for branch, h in ((o.node.args[1], holds), (o.node.args[2], not holds)):
        bv = const_value(branch)
        if not ((bv is not None and bv <= EXP_SAFE) or _bound_in(ctx, cond, branch, h)):
            return False
    return True


def _cond(ctx: Context, m: ast.expr) -> tuple[ast.expr | None, bool]:
    """A mask as (comparison, whether the mask is true where the comparison holds): ``~mask`` with
    ``mask = x <= 18`` is (``x <= 18``, False)."""
    holds = True
    for _ in range(4):
        if isinstance(m, ast.UnaryOp) and isinstance(m.op, ast.Invert | ast.Not):
            m, holds = m.operand, not holds
        elif isinstance(m, ast.Name):
            nxt = ctx.value(m, depth=1)
            if nxt is None or nxt is m:
                return None, holds
            m = nxt
        else:
            break
    return (m, holds) if isinstance(m, ast.Compare) else (None, holds)


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
        case ast.BinOp(op=ast.Pow(), left=left):
            return guarded(ctx, left, depth + 1)
        case ast.BinOp(op=ast.Div(), left=left, right=right):
            return guarded(ctx, left, depth + 1) and (const_value(right) is not None or (
                guarded(ctx, right, depth + 1) and not any(ctx.ops(n, "exp") for n in ast.walk(right))))
        case ast.Attribute(value=ast.Name(id=mod), attr="pi" | "e" | "tau") if mod in ctx.imports:
            return True  # np.pi, math.e: a positive constant
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
                if o.op == "pow":
                    return guarded(ctx, o.x, depth + 1)  # a power of a value that cannot be 0
                if o.op == "norm":  # the norm of where(small, unit, v): the double-where trick
                    if nonzero_array(ctx, o.x):
                        return True  # zeros replaced above, positive by construction, the identity, a Gram matrix
                    nv = ctx.value(o.x) if isinstance(o.x, ast.Name) else o.x
                    w = ctx.ops(nv, "where")
                    return w is not None and len(w.node.args) == 3 and any(
                        ctx.ops(a, "ones") is not None or (const_value(a) or 0) != 0 or
                        (isinstance(a, ast.Name) and ctx.ops(ctx.value(a), "ones", "eye") is not None) or
                        _has_ones(ctx, a) for a in w.node.args[1:])
                return False
            if isinstance(node.func, ast.Attribute) and node.func.attr in ("nan_to_num", "clamp_", "clip_"):
                return True
            fname = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if _GUARD_FUNC.search(fname):
                return True
            helper = local_function(ctx, node)
            if helper is not None and depth < 4:
                rets = ctx.returns(helper)
                if rets and all(guarded(ctx, r, depth + 2) for r in rets):
                    return True  # a helper of this file that clamps (def _clean(p): return np.clip(p, eps, 1))
            base = ctx.strip_views(node)
            if base is not node and base is not None:
                return guarded(ctx, base, depth + 1)
            return False
        case ast.Subscript(value=v):
            bound = mask_bound(ctx, node)
            if bound is not None and bound[0] == "lower" and (bound[1] > 0 or (bound[1] == 0 and bound[2])):
                return True  # p[p > 0]
            return guarded(ctx, v, depth + 1)
        case ast.Attribute(value=ast.Name(id="self"), attr=attr):
            value = ctx.self_attr(node, attr)
            return value is not None and guarded(ctx, value, depth + 1)
        case ast.Name():
            if ctx.inplace_guarded(node) or zeros_replaced(ctx, node):
                return True
            b = ctx.binding(node)
            if b is not None and isinstance(b.value, ast.AugAssign) and isinstance(b.value.op, ast.Add) and \
                    eps_like(ctx, b.value.value):
                return True  # d += eps
            if b is None:
                vals = ctx.lambda_values(node)
                if vals and all(guarded(ctx, v, depth + 1) for v in vals):
                    return True
            nxt = ctx.value(node)
            if nxt is None or nxt is node:
                return False
            return guarded(ctx, nxt, depth + 1)
    return False


def _zero_mask(ctx: Context, mask: ast.expr | None) -> bool:
    """An index mask that selects zeros or tiny values: ``d == 0``, ``s.sum(-1) == 0.0``, ``x < eps``,
    ``x <= 0`` (also through a name, ``abs(x) < eps`` included)."""
    if isinstance(mask, ast.Name):
        mask = ctx.value(mask, depth=2)
    match mask:
        case ast.Compare(left=left, ops=[op], comparators=[right]):
            if isinstance(op, ast.Eq):
                return const_value(left) == 0 or const_value(right) == 0
            if isinstance(op, ast.Lt | ast.LtE):  # x < eps, x <= 0 (x < 0 keeps the zeros)
                return _small_bound(ctx, right, isinstance(op, ast.LtE))
            if isinstance(op, ast.Gt | ast.GtE):  # eps > x, 0 >= x
                return _small_bound(ctx, left, isinstance(op, ast.GtE))
    return False


def _small_bound(ctx: Context, b: ast.expr, inclusive: bool) -> bool:
    """``x < b`` (``x <= b`` when ``inclusive``) holds at ``x = 0``: ``b`` is an eps, or 0 inclusive."""
    c = const_value(b)
    if c is not None:
        return 0 < c < 1 or (inclusive and c == 0)
    return eps_like(ctx, b)


def _nonzero_fill(ctx: Context, v: ast.expr | None) -> bool:
    """A fill value that is not 0: a non-zero constant or an eps."""
    c = const_value(v)
    return c != 0 if c is not None else eps_like(ctx, v)


def zeros_replaced(ctx: Context, name: ast.Name) -> bool:
    """The zeros (or tiny values) of ``name`` were replaced in place above the read: ``qs[qs == 0] = eps``,
    ``denom[s.sum(-1) == 0] = 1``, ``x[x < eps] = eps``, ``np.putmask(d, d == 0, 1)``."""
    for w in ctx.element_writes(name):
        match w:
            case ast.Assign(targets=[ast.Subscript(slice=mask)], value=v):
                if _zero_mask(ctx, mask) and _nonzero_fill(ctx, v):
                    return True
            case ast.Expr(value=ast.Call(func=f, args=[_, mask, v])) if (ctx.qualname(f) or "").endswith(".putmask"):
                if _zero_mask(ctx, mask) and _nonzero_fill(ctx, v):
                    return True
    return False


_EYE_FUNCS = ("eye", "identity")
_MATMUL_FUNCS = ("matmul", "mm", "bmm", "dot")
_PASS_METHODS = frozenset({"type_as", "to", "type", "float", "double", "half", "contiguous", "detach", "clone",
                           "view", "reshape", "permute", "transpose", "t", "unsqueeze", "squeeze", "flatten"})


def _matmul_operands(ctx: Context, node: ast.expr) -> tuple[ast.expr, ast.expr] | None:
    """``(a, b)`` of ``a @ b``, ``matmul(a, b)`` (also ``mm``, ``bmm``, ``dot``) and ``a.matmul(b)``."""
    match node:
        case ast.BinOp(left=a, op=ast.MatMult(), right=b):
            return a, b
        case ast.Call(func=ast.Attribute(attr=attr, value=recv), args=[b]) if attr in _MATMUL_FUNCS and \
                not (ctx.qualname(node.func) or "").count("."):
            return recv, b
        case ast.Call(func=f, args=[a, b]):
            q = ctx.qualname(f) or ""
            if q.split(".")[0] in ("torch", "numpy", "jax") and q.rsplit(".", 1)[-1] in _MATMUL_FUNCS:
                return a, b
    return None


def _through_views(ctx: Context, node: ast.expr | None) -> ast.expr | None:
    """The array a value reshapes, casts or transposes (``torch.eye(c).type_as(s)`` -> ``torch.eye(c)``)."""
    for _ in range(8):
        match node:
            case ast.Call(func=ast.Attribute(attr=a, value=v)) if a in _PASS_METHODS and \
                    ctx.qualname(node.func) is None:
                node = v
            case ast.Attribute(attr="T" | "mT", value=v):
                node = v
            case _:
                return node
    return node


def positive(ctx: Context, node: ast.expr | None, depth: int = 0) -> bool:
    """Every element > 0 by construction: exp, softmax, sigmoid, softplus, ones, positive constants, and sums,
    products, powers, matrix products and reductions of those (``(1 + d ** 2) ** -0.5`` included)."""
    v = const_value(node)
    if v is not None:
        return v > 0
    if node is None or depth > 6:
        return False
    node = _through_views(ctx, node)
    match node:
        case ast.Name():
            vals = ctx.lambda_values(node) if ctx.binding(node) is None else []
            if vals:
                return all(positive(ctx, x, depth + 1) for x in vals)
            nxt = ctx.value(node, depth=1)
            return nxt is not node and positive(ctx, nxt, depth + 1)
        case ast.BinOp(left=a, op=ast.Add(), right=b):
            return (positive(ctx, a, depth + 1) and nonneg(ctx, b)) or (nonneg(ctx, a) and positive(ctx, b, depth + 1))
        case ast.BinOp(left=a, op=ast.Mult() | ast.Div() | ast.MatMult(), right=b):
            return positive(ctx, a, depth + 1) and positive(ctx, b, depth + 1)
        case ast.BinOp(left=a, op=ast.Pow()):
            return positive(ctx, a, depth + 1)
        case ast.Call():
            mm = _matmul_operands(ctx, node)
            if mm is not None:
                return positive(ctx, mm[0], depth + 1) and positive(ctx, mm[1], depth + 1)
            o = ctx.op(node)
            if o is None:
                return False
            if o.op in ("exp", "softmax", "sigmoid", "softplus", "ones"):
                return True
            if o.op in ("pow", "sum", "mean"):
                return positive(ctx, o.x, depth + 1)
    return False


def nonzero_array(ctx: Context, node: ast.expr | None, depth: int = 0) -> bool:
    """Not all zero by construction, so its norm is > 0: zeros replaced in place above (``qs[qs == 0] = eps``),
    every element positive (:func:`positive`), the identity (``eye``), or a Gram matrix ``x.T @ x`` of such a
    value (the Gram matrix of softmax outputs)."""
    if node is None or depth > 6:
        return False
    if positive(ctx, node):
        return True
    node = _through_views(ctx, node)
    match node:
        case ast.Name():
            if zeros_replaced(ctx, node):
                return True
            vals = ctx.lambda_values(node) if ctx.binding(node) is None else []
            if vals:
                return all(nonzero_array(ctx, x, depth + 1) for x in vals)
            nxt = ctx.value(node, depth=1)
            return nxt is not node and nonzero_array(ctx, nxt, depth + 1)
        case ast.Call(func=f):
            q = ctx.qualname(f) or ""
            if q.split(".")[0] in ("torch", "numpy", "jax", "tensorflow") and q.rsplit(".", 1)[-1] in _EYE_FUNCS:
                return True
            mm = _matmul_operands(ctx, node)
            if mm is not None:
                return _gram(ctx, mm[0], mm[1]) and nonzero_array(ctx, mm[1], depth + 1)
        case ast.BinOp(op=ast.MatMult(), left=a, right=b):
            return _gram(ctx, a, b) and nonzero_array(ctx, b, depth + 1)
    return False


def _gram(ctx: Context, a: ast.expr, b: ast.expr) -> bool:
    """``a`` is a transpose of ``b`` (``x.T``, ``x.transpose(1, 2)``, ``x.mT``, ``x.t()``): ``a @ b`` is a Gram
    matrix, 0 only when ``b`` is."""
    is_t = (isinstance(a, ast.Attribute) and a.attr in ("T", "mT")) or (
        isinstance(a, ast.Call) and isinstance(a.func, ast.Attribute) and a.func.attr in ("transpose", "t", "permute"))
    base = _through_views(ctx, a)
    return is_t and base is not None and ctx.text(base) == ctx.text(b)


def clamp_bounds(ctx: Context, x: ast.expr | None) -> tuple[float | None, float | None]:
    """The constant ``(lower, upper)`` bounds a clamp puts on ``x`` (inline or on a line above):
    ``torch.clamp(z, -50, 50)``, ``np.clip(z, -50, 50)``, ``z.clamp(max=50)``, ``z.clamp_(min=-50)``."""
    v = ctx.value(x) if isinstance(x, ast.Name) else x
    if not isinstance(v, ast.Call):
        return None, None
    f = v.func
    if isinstance(f, ast.Attribute) and f.attr in ("clamp_", "clip_") and ctx.qualname(f) is None:
        lo = v.args[0] if v.args else _kw(v, "min")
        hi = v.args[1] if len(v.args) > 1 else _kw(v, "max")
    else:
        o = ctx.ops(v, "clamp")
        if o is None:
            return None, None
        if (isinstance(f, ast.Attribute) and f.attr == "clamp_min") or (ctx.qualname(f) or "").endswith("clamp_min"):
            return _bound_value(ctx, o.arg(1, "min")), None
        lo = o.arg(1, "min", "a_min", "clip_value_min")
        hi = o.arg(2, "max", "a_max", "clip_value_max")
    return _bound_value(ctx, lo), _bound_value(ctx, hi)


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    """The keyword argument ``name`` of ``call``."""
    return next((k.value for k in call.keywords if k.arg == name), None)


def _bound_value(ctx: Context, node: ast.expr | None) -> float | None:
    if isinstance(node, ast.Name):
        return param_default(ctx, node)
    return const_value(node)


def clamped_exponent(ctx: Context, x: ast.expr) -> bool:
    """``exp(x)`` of a clamped exponent cannot overflow: ``z = clamp(z, -50, 50); exp(z)``, or ``exp(-z)`` with
    ``z`` clamped from below."""
    if isinstance(x, ast.UnaryOp) and isinstance(x.op, ast.USub):
        lo, _ = clamp_bounds(ctx, x.operand)
        return lo is not None and lo >= -EXP_SAFE
    _, hi = clamp_bounds(ctx, x)
    return hi is not None and hi <= EXP_SAFE


def local_function(ctx: Context, call: ast.Call) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The function of this file a call runs: ``helper(x)`` (module level) or ``self.helper(x)`` (a method of the
    enclosing class), when the name is not rebound."""
    func = call.func
    if isinstance(func, ast.Name):
        if func.id in ctx.functions:
            b = ctx.binding(func)
            if b is None or b.value is None:
                return ctx.functions[func.id]
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
        cls = ctx.enclosing_class(call)
        if cls is not None:
            for item in cls.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == func.attr:
                    return item
    return None


#: largest argument whose exp is finite in float32 (exp(88.7) overflows)
EXP_SAFE = 80.0


def _bound_in(ctx: Context, test: ast.expr, x: ast.expr, holds: bool) -> bool:
    """``test`` (true when ``holds``, else false) bounds ``x`` above by at most :data:`EXP_SAFE`."""
    xt = ctx.text(x)
    match test:
        case ast.Compare(left=left, ops=[op], comparators=[right]):
            for a, b, o in ((left, right, type(op)), (right, left, _FLIP.get(type(op)))):
                c = const_value(b) if not isinstance(b, ast.Name) else param_default(ctx, b)
                if c is None or ctx.text(a) != xt or o is None or c > EXP_SAFE:
                    continue
                if (holds and o in (ast.Lt, ast.LtE)) or (not holds and o in (ast.Gt, ast.GtE)):
                    return True
    return False


def branch_bounded(ctx: Context, site: ast.AST, x: ast.expr) -> bool:
    """``site`` runs only where ``x`` is small: a ``where(x > t, x, log1p(exp(x)))`` branch, an ``if x < t:``
    body or the ``else`` of ``if x > t:`` (also as a conditional expression)."""
    child: ast.AST = site
    p = ctx.parent(site)
    while p is not None and not isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
        w = ctx.ops(p, "where") if isinstance(p, ast.Call) else None
        if w is not None and len(w.node.args) == 3 and child in w.node.args[1:]:
            if _bound_in(ctx, w.node.args[0], x, child is w.node.args[1]):
                return True
        elif isinstance(p, ast.IfExp) and child is not p.test:
            if _bound_in(ctx, p.test, x, child is p.body):
                return True
        elif isinstance(p, ast.If) and child is not p.test and _bound_in(ctx, p.test, x, child in p.body):
            return True
        elif isinstance(p, ast.Assign) and len(p.targets) == 1 and isinstance(p.targets[0], ast.Name):
            return _named_branch_bounded(ctx, p, p.targets[0].id, x)
        child, p = p, ctx.parent(p)
    return False


def _named_branch_bounded(ctx: Context, assign: ast.Assign, name: str, x: ast.expr) -> bool:
    """``rhs = log1p(exp(x))`` later used only as ``where(x > t, x, rhs)``: the value is kept where x <= t."""
    scope = ctx.scope_of(assign)
    uses = [n for n in ast.walk(scope) if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)]
    if not uses:
        return False
    for use in uses:
        w = ctx.ops(ctx.parent(use), "where")
        if w is None or len(w.node.args) != 3 or use not in w.node.args[1:]:
            return False
        if not _bound_in(ctx, w.node.args[0], x, use is w.node.args[1]):
            return False
    return True


def empty_guarded(ctx: Context, site: ast.AST) -> bool:
    """``site`` runs only for an empty array: ``if x.numel() == 0:`` (``x.size == 0``, ``len(x) == 0``) body."""
    child: ast.AST = site
    p = ctx.parent(site)
    while p is not None and not isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
        if isinstance(p, ast.If) and child in p.body:
            match p.test:
                case ast.Compare(left=left, ops=[ast.Eq()], comparators=[right]) if const_value(right) == 0:
                    t = ctx.text(left)
                    if t.endswith((".numel()", ".size", ".nelement()")) or t.startswith("len("):
                        return True
        child, p = p, ctx.parent(p)
    return False


def exp_bounded(ctx: Context, site: ast.AST, x: ast.expr | None) -> bool:
    """``exp(x)`` at ``site`` cannot overflow: ``x`` is max-shifted or <= 0, it undoes a log computed just above
    (``exp(log(p))``, also a log a helper of this file returns), a branch condition keeps it small, or the code
    only runs on an empty array."""
    if x is None:
        return False
    if shifted(x, ctx) or nonpositive(ctx, x) or fill_bounded(ctx, x) or clamped_exponent(ctx, x):
        return True
    if log_value(ctx, x):
        return True
    return branch_bounded(ctx, site, x) or empty_guarded(ctx, site)


_COUNT_NAME = re.compile(r"(^|_)(n|num|nb|count|counts|cnt|idx|index|indices|hist|len|length|epoch|"
                         r"iter|iters|rank|coords?|coordinates?|positions?|particles)(_|$)|_count_?$|hist$|^num",
                         re.IGNORECASE)
_INT_FUNCS = frozenset({"len", "range", "arange", "bincount", "histogram", "argmax", "argmin", "randint",
                        "count_nonzero", "int", "round", "floor", "ceil", "numel", "nonzero"})


def integer_valued(ctx: Context, node: ast.expr | None, depth: int = 0) -> bool:
    """Holds whole numbers: ``np.arange(n)``, ``len(x)``, counts (``feature_count_``, ``num_particles``,
    ``layer_idx``), relative coordinates, and sums, differences, products and ``abs`` of those."""
    if node is None or depth > 4:
        return False
    c = const_value(node)
    if c is not None:
        return c.is_integer()
    match node:
        case ast.Name(id=n) | ast.Attribute(attr=n):
            if _COUNT_NAME.search(n):
                return True
            if isinstance(node, ast.Name):
                nxt = ctx.value(node, depth=1)
                return nxt is not node and integer_valued(ctx, nxt, depth + 1)
        case ast.BinOp(left=a, op=ast.Add() | ast.Sub() | ast.Mult(), right=b):
            return integer_valued(ctx, a, depth + 1) and integer_valued(ctx, b, depth + 1)
        case ast.Subscript(value=v):
            return integer_valued(ctx, v, depth + 1)
        case ast.Call(func=f):
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in _INT_FUNCS:
                return True
            if isinstance(f, ast.Attribute) and f.attr in ("float", "double", "abs", "sum", "astype", "to",
                                                           "reshape", "flatten"):
                return integer_valued(ctx, f.value, depth + 1)
            o = ctx.op(node)
            if o is not None and o.op in ("abs", "sum"):
                return integer_valued(ctx, o.x, depth + 1)
    return False


def param_default(ctx: Context, node: ast.Name) -> float | None:
    """The constant default of the enclosing function's parameter ``node`` (``threshold=20``), if not rebound."""
    fn = ctx.enclosing_function(node)
    if fn is None or ctx.binding(node) is not None:
        return None
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True),
             *((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None)]
    for a, d in pairs:
        if a.arg == node.id:
            return const_value(d)
    return None


def scalar_param(ctx: Context, node: ast.expr | None) -> bool:
    """A parameter of the enclosing function that is a Python number: annotated ``float``/``int`` or defaulting
    to a positive constant (``beta: float = 1.0``): a hyperparameter, not an array that can hold a 0."""
    if not isinstance(node, ast.Name) or ctx.binding(node) is not None:
        return False
    fn = ctx.enclosing_function(node)
    if fn is None:
        return False
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    defaults: dict[str, ast.expr] = {a.arg: d for a, d in zip(positional[len(positional) - len(args.defaults):],
                                                               args.defaults, strict=True)}
    defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None})
    for a in (*positional, *args.kwonlyargs):
        if a.arg != node.id:
            continue
        ann = ctx.text(a.annotation) if a.annotation is not None else ""
        if ann in ("float", "int"):
            return True
        v = const_value(defaults.get(a.arg))
        return v is not None and v > 0
    return False


_TALLY_NAME = re.compile(r"positives?|negatives?|(^|_)(tp|fp|fn|tn|support|total|occurrences|hits|matches)(_|$)",
                         re.IGNORECASE)


def tally(ctx: Context, node: ast.expr | None, depth: int = 0) -> bool:
    """A count or an arithmetic of counts (``true_positives + 0.5 * false_positives``): integer data that
    autograd does not differentiate, so a NaN-gradient rule does not apply to dividing by it."""
    if node is None or depth > 4:
        return False
    if integer_valued(ctx, node):
        return True
    match node:
        case ast.Name(id=n) | ast.Attribute(attr=n) if _TALLY_NAME.search(n):
            return True
        case ast.Name():
            nxt = ctx.value(node, depth=1)
            return nxt is not node and tally(ctx, nxt, depth + 1)
        case ast.BinOp(left=a, op=ast.Add() | ast.Sub() | ast.Mult(), right=b):
            return (tally(ctx, a, depth + 1) or const_value(a) is not None) and \
                (tally(ctx, b, depth + 1) or const_value(b) is not None)
    return False


def _has_ones(ctx: Context, node: ast.expr) -> bool:
    """A value built from ``ones``/``eye`` (a unit vector such as ``cat((ones, zeros))``)."""
    if isinstance(node, ast.Name):
        node = ctx.value(node)  # type: ignore[assignment]
    return any(ctx.ops(n, "ones") is not None for n in ast.walk(node))
