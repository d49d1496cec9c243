"""FG401 fp16-overflow-constant."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator

from ..analysis import Context, OpCall, const_value, is_pure
from ..rule import Finding, Fix, Rule

FP16_MAX = 65504.0


def big_constant(node: ast.expr | None) -> float | None:
    """A finite literal beyond float16's range (``-1e9``, ``1e10``), else None."""
    v = const_value(node)
    if v is None or math.isinf(v) or math.isnan(v) or abs(v) <= FP16_MAX:
        return None
    if abs(v) >= 2**31 - 1 and not any(isinstance(n, ast.Constant) and isinstance(n.value, float)
                                       for n in ast.walk(node)):  # type: ignore[arg-type]
        return None  # an int32 limit written as an integer: bit patterns, not a float fill value
    return v


class Fp16OverflowConstant(Rule):
    """Checks for fill values beyond float16's range (`-1e9`, `1e10`) in code that may run in half precision.

    ## What it does
    Checks for fill values beyond float16's range (`-1e9`, `1e10`) in code that may run in half precision.

    ## Why is this bad?
    A fill value such as ``-1e9`` is beyond float16's range (65504): under autocast or ``.half()`` it becomes -inf
    (or an overflow error), and a fully masked row then gives NaN; use the dtype's own limit.

    ## Example
    ```python
    import torch

    # under torch.autocast
    scores = scores.masked_fill(mask == 0, -1e9)
    ```

    ## Use instead
    ```python
    import torch

    # under torch.autocast
    scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
    ```

    ## Fix safety
    The fix (`torch.finfo(x.dtype).min`) is unsafe: the fill value changes in float32 too.

    ## References
    - [torch.finfo](https://pytorch.org/docs/stable/type_info.html#torch.finfo)
    """

    code = "FG401"
    confidence = "medium"
    name = "fp16-overflow-constant"
    categories = ("overflow", "half-precision")
    nodes = (ast.Call, ast.Assign)

    def check(self, node: ast.AST, ctx: Context) -> Iterator[Finding]:
        if not ctx.frameworks & {"torch", "jax", "tf", "keras"}:
            return
        if isinstance(node, ast.Assign):
            match node:
                case ast.Assign(targets=[ast.Subscript(value=recv) as target], value=assigned) \
                        if big_constant(assigned) is not None:
                    if isinstance(recv, ast.Name | ast.Attribute) and _maskish(target):
                        yield Finding(node, f"{ctx.text(assigned)} does not fit in float16 (max 65504)",
                                      "use torch.finfo(x.dtype).min / .max")
            return
        o = ctx.ops(node, "masked_fill", "where")
        if o is None:
            return
        if o.op == "masked_fill":
            value = o.arg(2, "value")
            v = big_constant(value)
            if v is None or value is None:
                return
            yield Finding(node, f"fill value {ctx.text(value)} overflows float16 (max 65504)",
                          "use torch.finfo(x.dtype).min", self._fix(ctx, o, value, v))
            return
        if o.family not in ("torch", "jax", "tf") or len(o.node.args) != 3:
            return
        for arg in o.node.args[1:]:
            if big_constant(arg) is not None:
                yield Finding(node, f"fill value {ctx.text(arg)} overflows float16 (max 65504)",
                              "use finfo(dtype).min / .max of the array's dtype")
                return

    def _fix(self, ctx: Context, o: OpCall, value: ast.expr, v: float) -> Fix | None:
        recv = o.x
        if (o.family != "torch" and not o.method) or recv is None or not is_pure(recv):
            return None
        text, imports = ctx.module_ref("torch")
        limit = "min" if v < 0 else "max"
        return Fix(value, f"{text}.finfo({ctx.text(recv)}.dtype).{limit}", safe=False, imports=imports)


def _maskish(target: ast.Subscript) -> bool:
    return "mask" in ast.unparse(target.slice).lower() or isinstance(target.slice, ast.Compare | ast.UnaryOp)
