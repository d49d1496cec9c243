"""FG101 log-sum-exp."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall
from ..rule import Finding, Fix, Rule
from ._common import arg_by_text, empty_guarded, exp_bounded, family, fg_ref, reduce_args, ref, shifted


def _exp_factor(ctx: Context, e: ast.expr | None, depth: int = 0) -> OpCall | None:
    """An ``exp(...)`` among the factors of a product (``pi * exp(-d**2) / sigma``), followed through names."""
    if e is None or depth > 6:
        return None
    if isinstance(e, ast.Name):
        v = ctx.value(e, depth=1)
        if v is e:
            return None
        e = v
    match e:
        case ast.Call():
            return ctx.ops(e, "exp")
        case ast.BinOp(left=a, op=ast.Mult(), right=b):
            return _exp_factor(ctx, a, depth + 1) or _exp_factor(ctx, b, depth + 1)
        case ast.BinOp(left=a, op=ast.Div()):
            return _exp_factor(ctx, a, depth + 1)
    return None


class LogSumExp(Rule):
    """``log(sum(exp(x)))`` overflows to inf once any ``x`` passes ~88 in float32 (709 in float64) and underflows to
    -inf when all are very negative; logsumexp shifts by the max first.

    Bad:
        lse = torch.log(torch.sum(torch.exp(scores), dim=-1))
        z = np.log(np.exp(a) + np.exp(b))

    Good:
        lse = torch.logsumexp(scores, dim=-1)
        z = np.logaddexp(a, b)
    """

    code = "FG101"
    name = "log-sum-exp"
    categories = ("overflow", "accuracy")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        log = ctx.ops(node, "log")
        if log is None or log.x is None or empty_guarded(ctx, node):
            return
        inner = log.x
        flowed = False
        if isinstance(inner, ast.Name):
            inner, flowed = ctx.value(inner), True
        red = ctx.ops(inner, "sum", "mean")
        if red is not None:
            rx = red.x
            if isinstance(rx, ast.Name):
                rx, flowed = ctx.value(rx), True
            exp = ctx.ops(rx, "exp")
            if exp is None and isinstance(red.x, ast.GeneratorExp | ast.ListComp):
                exp = ctx.ops(red.x.elt, "exp")
                if exp is not None and not shifted(exp.x, ctx):
                    yield Finding(node, "log(sum(exp(...))) overflows for large inputs", "use logsumexp")
                return
            if exp is None:
                w = _exp_factor(ctx, red.x)
                if w is not None and w.x is not None and not shifted(w.x, ctx):
                    yield Finding(node, f"log({red.op}(w * exp(x))) underflows to -inf (and overflows) where "
                                  "logsumexp with log-weights does not", "use logsumexp(x + log(w))")
                return
            if exp.x is None or exp_bounded(ctx, node, exp.x):
                return
            mean = red.op == "mean"
            msg = f"log({red.op}(exp(x))) overflows for large x and underflows for very negative x"
            hint = "use logmeanexp (floatguard.logmeanexp)" if mean else "use logsumexp, which shifts by the max"
            yield Finding(node, msg, hint, self._fix(ctx, log, red, exp, flowed))
            return
        match inner:
            case ast.BinOp(left=left, op=ast.Add(), right=right):
                a, b = ctx.ops(left, "exp"), ctx.ops(right, "exp")
                if a is None or b is None or a.x is None or b.x is None:
                    return
                fix = None
                r = ref(ctx, family(ctx, log, a), "logaddexp")
                if r is not None:
                    fix = Fix(node, f"{r[0]}({ctx.text(a.x)}, {ctx.text(b.x)})", safe=not flowed, imports=r[1])
                yield Finding(node, "log(exp(a) + exp(b)) overflows for large inputs", "use logaddexp", fix)

    def _fix(self, ctx: Context, log: OpCall, red: OpCall, exp: OpCall, flowed: bool) -> Fix | None:
        axis, keep, extra = reduce_args(red)
        if extra:
            return None
        x = ctx.text(exp.x)
        if red.op == "mean":
            f, imports = fg_ref(ctx, "logmeanexp")
            rest = "" if axis is None else f", axis={ctx.text(axis)}"
            rest += "" if keep is None else f", keepdims={ctx.text(keep)}"
            return Fix(log.node, f"{f}({x}{rest})", safe=False, imports=imports)
        fam = family(ctx, exp, red, log)
        if fam is None or fam == "math":
            return None
        if fam == "numpy":
            # NumPy has no logsumexp of its own (logaddexp.reduce accumulates error): floatguard's is <= 1 ulp
            f, imports = fg_ref(ctx, "logsumexp")
            return Fix(log.node, f"{f}({x}{arg_by_text(ctx, fam, axis, keep)})", safe=not flowed, imports=imports)
        r = ref(ctx, fam, "logsumexp")
        if r is None:
            return None
        if fam == "torch" and axis is None:
            flat, imp = ctx.module_ref("torch")
            return Fix(log.node, f"{r[0]}({flat}.flatten({x}), dim=0)", safe=not flowed, imports=r[1] + imp)
        return Fix(log.node, f"{r[0]}({x}{arg_by_text(ctx, fam, axis, keep)})", safe=not flowed, imports=r[1])
