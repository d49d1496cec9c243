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
                _logsumexp_of(ctx, bd.value.value, node):
            return True
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
            return (nonpositive(ctx, a) and nonneg(ctx, b)) or _logsumexp_of(ctx, b, a)
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
                if o.op == "norm":  # the norm of where(small, unit, v): the double-where trick
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
            if ctx.inplace_guarded(node):
                return True
            nxt = ctx.value(node)
            if nxt is None or nxt is node:
                return False
            return guarded(ctx, nxt, depth + 1)
    return False


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
    (``exp(log(p))``), a branch condition keeps it small, or the code only runs on an empty array."""
    if x is None:
        return False
    if shifted(x, ctx) or nonpositive(ctx, x) or fill_bounded(ctx, x):
        return True
    if ctx.ops(ctx.value(x) if isinstance(x, ast.Name) else x, "log", "log_softmax", "log_sigmoid") is not None:
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
