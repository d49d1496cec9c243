"""FG101 log-sum-exp."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..analysis import Context, OpCall, is_pure
from ..rule import Finding, Fix, Rule
from ._bounds import elementwise_max_args, empty_guarded, exp_bounded, shifted
from ._common import (
    arg_by_text,
    dep_hint,
    family,
    fg_fix,
    fg_ref,
    int_axis,
    numpy_ref,
    paren,
    reduce_args,
    ref,
    scipy_special_ref,
    uses_floatguard,
)


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


def _add_terms(e: ast.expr) -> list[ast.expr]:
    """The terms of a chain of additions ``a + b + c``."""
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
        return _add_terms(e.left) + _add_terms(e.right)
    return [e]


def _max_shifted(ctx: Context, terms: list[ast.expr]) -> bool:
    """``exp(a - m) + exp(b - m)`` with ``m = max(a, b)`` (``torch.max``, ``np.maximum``, nested maxima): the
    hand-written stable log-add-exp. One term is ``exp(0) = 1`` and none exceeds 1, so the sum lies in
    ``[1, n]``: no overflow, no log of 0."""
    shifts: set[str] = set()
    bases: set[str] = set()
    m: ast.expr | None = None
    for t in terms:
        e = ctx.ops(t, "exp")
        x = ctx.value(e.x) if e is not None and isinstance(e.x, ast.Name) else e.x if e is not None else None
        if not isinstance(x, ast.BinOp) or not isinstance(x.op, ast.Sub):
            return False
        shifts.add(ctx.text(x.right))
        bases.add(ctx.text(x.left))
        m = x.right
    args = elementwise_max_args(ctx, m) if len(shifts) == 1 else None
    return args is not None and set(args) == bases


class LogSumExp(Rule):
    """Checks for `log(sum(exp(x)))`, `log(mean(exp(x)))` and `log(exp(a) + exp(b))` written out.

    ## What it does
    Checks for `log(sum(exp(x)))`, `log(mean(exp(x)))` and `log(exp(a) + exp(b))` written out.

    Not reported: the stable form written out, `m + log(exp(a - m) + exp(b - m))` with `m = max(a, b)`
    (`torch.max`, `np.maximum`, `jnp.maximum`, `max`), or a sum of `exp(x - m)` shifted by a max; an `exp` that
    undoes a log, also one a function of the module returns (`def _cov(x): ...; return v.log()`).

    ## Why is this bad?
    ``log(sum(exp(x)))`` overflows to inf once any ``x`` passes ~88 in float32 (709 in float64) and underflows to
    -inf when all are very negative; logsumexp shifts by the max first.

    ## Example
    ```python
    import numpy as np
    import torch

    lse = torch.log(torch.sum(torch.exp(scores), dim=-1))
    z = np.log(np.exp(a) + np.exp(b))
    ```

    ## Use instead
    ```python
    import numpy as np
    import torch

    lse = torch.logsumexp(scores, dim=-1)
    z = np.logaddexp(a, b)
    ```

    ## Fix safety
    The fix is safe when the `exp` is written inline: `logsumexp` (`torch.logsumexp`, `jax.nn.logsumexp`,
    `scipy.special.logsumexp` where SciPy is imported, else NumPy's own `np.logaddexp.reduce`) and `logaddexp` are
    the same function. It is unsafe when the `exp` is reached through a name (the intermediate may be used
    elsewhere) and for the mean form, which re-spells the reduction as `logsumexp(x) - log(n)`.

    ## References
    - [torch.logsumexp](https://pytorch.org/docs/stable/generated/torch.logsumexp.html)
    - [numpy.logaddexp](https://numpy.org/doc/stable/reference/generated/numpy.logaddexp.html)
    - [jax.nn.logsumexp](https://jax.readthedocs.io/en/latest/_autosummary/jax.nn.logsumexp.html)
    """

    code = "FG101"
    name = "log-sum-exp"
    categories = ("overflow", "accuracy")

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        log = ctx.ops(node, "log")
        if log is None or log.x is None or empty_guarded(ctx, node):
            return
        inner: ast.expr | None = log.x
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
            hint = "use logsumexp(x) - log(n)" if mean else "use logsumexp, which shifts by the max"
            fix = self._fix(ctx, log, red, exp, flowed)
            yield Finding(node, msg, dep_hint(hint, fix), fix)
            return
        match inner:
            case ast.BinOp(left=left, op=ast.Add(), right=right):
                a, b = ctx.ops(left, "exp"), ctx.ops(right, "exp")
                if a is None or b is None or a.x is None or b.x is None or _max_shifted(ctx, _add_terms(inner)):
                    return
                fix = None
                r = ref(ctx, family(ctx, log, a), "logaddexp")
                if r is not None:
                    fix = Fix(node, f"{r[0]}({ctx.text(a.x)}, {ctx.text(b.x)})", safe=not flowed, imports=r[1])
                yield Finding(node, "log(exp(a) + exp(b)) overflows for large inputs", "use logaddexp", fix)

    def _fix(self, ctx: Context, log: OpCall, red: OpCall, exp: OpCall, flowed: bool) -> Fix | None:
        axis, keep, extra = reduce_args(red)
        if extra or exp.x is None:
            return None
        fam = family(ctx, exp, red, log)
        if red.op == "mean":
            return self._mean_fix(ctx, log, exp.x, fam, axis, keep)
        x = ctx.text(exp.x)
        if fam is None or fam == "math":
            return None
        if fam == "numpy":
            if uses_floatguard(ctx):  # already a dependency: its logsumexp is <= 1 ulp
                f, imports = fg_ref(ctx, "logsumexp")
                return fg_fix(log.node, f"{f}({x}{arg_by_text(ctx, fam, axis, keep)})", imports, not flowed)
            sp = scipy_special_ref(ctx, "logsumexp")
            if sp is not None:
                return Fix(log.node, f"{sp[0]}({x}{arg_by_text(ctx, fam, axis, keep)})", safe=not flowed,
                           imports=sp[1])
            # NumPy's own: logaddexp.reduce (its default axis is 0, sum's is None: always pass it)
            f, imports = numpy_ref(ctx, "logaddexp")
            rest = f", axis={ctx.text(axis) if axis is not None else 'None'}"
            rest += "" if keep is None else f", keepdims={ctx.text(keep)}"
            return Fix(log.node, f"{f}.reduce({x}{rest})", safe=not flowed, imports=imports)
        r = ref(ctx, fam, "logsumexp")
        if r is None:
            return None
        if fam == "torch" and axis is None:
            flat, imp = ctx.module_ref("torch")
            return Fix(log.node, f"{r[0]}({flat}.flatten({x}), dim=0)", safe=not flowed,
                       imports=tuple(dict.fromkeys(r[1] + imp)))
        return Fix(log.node, f"{r[0]}({x}{arg_by_text(ctx, fam, axis, keep)})", safe=not flowed, imports=r[1])

    def _mean_fix(self, ctx: Context, log: OpCall, xn: ast.expr, fam: str | None, axis: ast.expr | None,
                  keep: ast.expr | None) -> Fix | None:
        """``log(mean(exp(x)))`` = ``logsumexp(x) - log(n)`` in the file's framework (x read twice: only a name or
        an attribute), else floatguard.logmeanexp. Unsafe: the reduction's arguments are re-spelled."""
        x = ctx.text(xn)
        if not uses_floatguard(ctx) and fam in ("torch", "numpy", "jax") and is_pure(xn) and int_axis(axis):
            math_ref, imports = ctx.module_ref("math")
            px = paren(ctx, xn)
            n = f"{px}.shape[{ctx.text(axis)}]" if axis is not None else f"{px}.numel()" if fam == "torch" \
                else f"{px}.size"
            if fam == "numpy":
                lse, imp = numpy_ref(ctx, "logaddexp")
                call = f"{lse}.reduce({x}, axis={ctx.text(axis) if axis is not None else 'None'}"
                call += ")" if keep is None else f", keepdims={ctx.text(keep)})"
            else:
                lse, imp = ref(ctx, fam, "logsumexp") or ("", ())
                if fam == "torch" and axis is None:
                    flat, imp2 = ctx.module_ref("torch")
                    call, imp = f"{lse}({flat}.flatten({x}), dim=0)", imp + imp2
                else:
                    call = f"{lse}({x}{arg_by_text(ctx, fam, axis, keep)})"
            text = f"{call} - {math_ref}.log({n})"
            return Fix(log.node, text, safe=False, imports=tuple(dict.fromkeys(imp + imports)))
        f, imports = fg_ref(ctx, "logmeanexp")
        rest = "" if axis is None else f", axis={ctx.text(axis)}"
        rest += "" if keep is None else f", keepdims={ctx.text(keep)}"
        return fg_fix(log.node, f"{f}({x}{rest})", imports, safe=False)
