"""The aten op table: what each op's output needs checked, and how (one :class:`Policy` per op)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "CAST",
    "CHECK",
    "LOGLIKE",
    "SKIP",
    "UF_CAST",
    "UF_FLUSH",
    "UF_NONE",
    "UF_NONNEG",
    "UF_PROD",
    "Policy",
    "flat_tensors",
]

SKIP, CHECK, CAST = 0, 1, 2
UF_NONE, UF_NONNEG, UF_FLUSH, UF_PROD, UF_CAST = 0, 1, 2, 3, 4

# Ops whose outputs need no check: views and copies, factories and random fills,
# selections and order statistics — none creates inf/NaN from finite inputs.
_SKIP = frozenset({
    "detach", "detach_", "alias", "clone", "contiguous", "lift_fresh", "lift_fresh_copy", "_unsafe_view",
    "_reshape_alias", "view_copy", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
    "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "zero_", "zero", "arange", "linspace",
    "logspace", "eye", "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm",
    "bernoulli", "bernoulli_", "normal", "normal_", "uniform_", "exponential_", "geometric_", "cauchy_",
    "log_normal_", "random_", "multinomial", "native_dropout_mask", "cat", "stack", "index", "index_select",
    "gather", "take", "select_backward", "slice_backward", "diagonal_backward", "as_strided_backward", "embedding",
    "masked_select", "where", "relu", "relu_", "threshold", "threshold_", "threshold_backward", "clamp", "clamp_",
    "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "clip", "clip_", "hardtanh", "hardtanh_",
    "hardtanh_backward", "abs", "abs_", "neg", "neg_", "sign", "sgn", "floor", "ceil", "round", "trunc", "max",
    "min", "amax", "amin", "maximum", "minimum", "fmax", "fmin", "sort", "topk", "argsort", "argmax", "argmin",
    "kthvalue", "median", "nanmedian", "mode", "flip", "roll", "rot90", "repeat", "tile", "constant_pad_nd",
    "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d", "nonzero",
    "_local_scalar_dense", "equal", "resize_", "resize_as_", "set_", "record_stream", "tril", "triu", "tril_",
    "triu_", "max_pool2d_with_indices", "max_pool1d", "max_pool2d", "max_pool3d_with_indices",
    "adaptive_max_pool2d", "im2col", "unfold_copy", "_pin_memory", "isnan", "isinf", "isfinite", "signbit",
    "logical_not", "logical_and", "logical_or", "eq", "ne", "lt", "le", "gt", "ge", "masked_scatter", "_to_dense",
    "_nested_tensor_from_mask", "copy_sparse_to_sparse_", "_foreach_zero_", "_unique2", "unique_dim", "one_hot",
    "_copy_from", "_copy_from_and_resize"
})
_CASTS = {"_to_copy", "copy_", "copy", "to", "_to_copy_"}
_UF_NONNEG = {"exp", "exp_", "exp2", "exp2_", "sigmoid", "sigmoid_", "_softmax", "softmax", "_safe_softmax"}
_UF_FLUSH = {"mul", "mul_", "div", "div_", "pow", "pow_", "mm", "bmm", "addmm", "baddbmm", "matmul", "addmv",
             "mv", "dot", "convolution", "_convolution", "square", "_foreach_mul", "_foreach_div"}
_UF_PROD = {"prod", "cumprod", "cumprod_"}
_DIVLIKE = {"div", "div_", "reciprocal", "reciprocal_", "log", "log_", "log2", "log2_", "log10", "log10_",
            "log1p", "log1p_", "rsqrt", "rsqrt_", "pow", "pow_", "xlogy", "xlogy_", "special_xlogy", "digamma",
            "lgamma", "polygamma", "atanh", "atanh_", "logit", "logit_", "erfinv", "floor_divide", "true_divide",
            "_foreach_div", "_foreach_div_", "_foreach_reciprocal", "_foreach_log", "_foreach_rsqrt"}
LOGLIKE = {"log", "log_", "log2", "log2_", "log10", "log10_", "xlogy", "special_xlogy", "logit"}
_REDUCTIONS = {"sum", "mean", "mm", "bmm", "addmm", "baddbmm", "matmul", "nansum", "dot", "mv", "addmv",
               "logsumexp", "cumsum", "einsum"}


class Policy:
    __slots__ = ("base", "check", "divlike", "dot", "is_view", "kw", "mutated", "name", "pos", "reduction", "uf")

    def __init__(self, func: Any) -> None:
        schema = func._schema
        self.name = schema.name if "::" in schema.name else f"aten::{schema.name}"
        base = func._overloadpacket.__name__
        self.base = base
        self.mutated = tuple(i for i, a in enumerate(schema.arguments)
                             if a.alias_info is not None and a.alias_info.is_write)
        tags = getattr(func, "tags", ())
        self.is_view = bool(getattr(func, "is_view", False))
        if base in _CASTS:
            self.check = CAST
        elif (base in _SKIP or getattr(func, "is_view", False) or torch.Tag.nondeterministic_seeded in tags
              or base.startswith("_record_function")):
            self.check = SKIP
        else:
            self.check = CHECK
        self.uf = (UF_NONNEG if base in _UF_NONNEG else UF_FLUSH if base in _UF_FLUSH else
                   UF_PROD if base in _UF_PROD else UF_CAST if base in _CASTS else UF_NONE)
        self.divlike = base in _DIVLIKE
        self.reduction = base in _REDUCTIONS
        # the sum-of-squares check suffices unless an underflow judgment needs the exact minimum (a zero
        # among non-negative outputs); whole-tensor flushes to 0 (UF_FLUSH, UF_CAST) are found from s == 0
        self.dot = self.uf not in (UF_NONNEG, UF_PROD)
        # arguments that carry values (tensors, numbers), not dims or flags
        vals = [(i, a.name, a.kwarg_only) for i, a in enumerate(schema.arguments)
                if str(a.type).rstrip("?").split("[")[0] in ("Tensor", "Scalar", "number", "float", "complex")]
        self.pos = tuple(i for i, _, kw in vals if not kw)
        self.kw = tuple(n for _, n, kw in vals if kw)



def flat_tensors(pol: Any, args: Any, kwargs: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """``(label, value)`` of the value arguments: tensors (lists flattened) and numbers."""
    out: list[tuple[str, Any]] = []
    items: list[tuple[str, Any]] = [(f"input{i}", args[i]) for i in pol.pos if i < len(args)]
    if kwargs:
        items += [(k, kwargs[k]) for k in pol.kw if k in kwargs]
    for label, a in items:
        if isinstance(a, torch.Tensor):
            out.append((label, a))
        elif isinstance(a, (list, tuple)):
            out.extend((f"{label}[{j}]", b) for j, b in enumerate(a) if isinstance(b, torch.Tensor | float | int))
        elif isinstance(a, float | int) and not isinstance(a, bool):
            out.append((label, a))
    return out
