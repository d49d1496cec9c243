"""Products in the log domain: ``log_prod`` and ``log_matmul_exp``."""

from __future__ import annotations

import math
from typing import Any

from ._namespace import alias, as_float, check_flag, namespace, normalize_axes, quiet

__all__ = ["log_matmul_exp", "log_prod"]

# exp() of anything above this (in float64) is a normal number: factors whose
# product term is at least e^_SAFE_LOG cannot have underflowed.
_SAFE_LOG = -700.0


@quiet
def log_prod(p: Any, axis: int | tuple[int, ...] | None = None, *, keepdims: bool = False,
             dim: int | tuple[int, ...] | None = None, keepdim: bool | None = None) -> Any:
    r"""Log of a product of probabilities, :math:`\sum_i \log p_i`, without underflow.

    A product of 600 probabilities of 0.3 is 1e-314 (subnormal) and of 700 is 0 in
    float64; its log, -722.4, is an ordinary number. Zeros give ``-inf`` (not NaN),
    negative entries NaN. Summed in float64 for lower-precision inputs.
    Gradient: ``1 / p``. ``dim``, ``keepdim``: PyTorch's names of ``axis``, ``keepdims``.
    Error: at most 1 ulp for float16, bfloat16 and float32 (a sum of logs in float64); float64
    within 2 ulp times the condition number (``tests/ops/test_accuracy.py``).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> p = np.full(700, 0.3)
    >>> float(np.log(np.prod(p)))   # naive: the product underflows  # doctest: +SKIP
    -inf
    >>> round(float(fg.log_prod(p)), 3)
    -842.78
    """
    axis = alias(axis, None, dim, ("axis", "dim"), "log_prod")
    keepdims = check_flag(alias(keepdims, False, keepdim, ("keepdims", "keepdim"), "log_prod"),
                          "keepdims" if keepdim is None else "keepdim", "log_prod")
    be = namespace(("p", p), func="log_prod")
    p = as_float(be, p, "p", "log_prod")
    xp = be.xp
    axes = normalize_axes(axis, p.ndim, "axis", "log_prod")
    if p.ndim == 0:  # one entry: axis 0 (or -1) reduces it, as torch.sum does; the result stays 0-d, as np.sum's
        axes = ()
    pw = xp.astype(p, be.work_dtype(p.dtype), copy=False)
    out = xp.sum(xp.log(pw), axis=axes, keepdims=keepdims)
    return xp.astype(out, p.dtype, copy=False)


@quiet
def log_matmul_exp(a: Any, b: Any) -> Any:
    r"""Log-domain matrix product: :math:`C_{ij} = \log \sum_k e^{a_{ik} + b_{kj}}`.

    The semiring product of HMM and CRF forward passes. Computed as
    :math:`C = \alpha_i + \beta_j + \log(e^{a - \alpha} e^{b - \beta})` with row
    maxima :math:`\alpha` of ``a`` and column maxima :math:`\beta` of ``b`` (one
    BLAS matmul, in float64 for lower precisions). Entries where that product
    underflows (the largest terms pair a small ``a`` with a small ``b``, which
    the shift cannot see) are recomputed exactly as a log-sum-exp over ``k``.
    Batched: leading dimensions broadcast as in ``matmul``.

    ``-inf`` entries are log(0); a row of ``a`` or column of ``b`` of only ``-inf``
    gives ``-inf`` with a zero gradient, and so does an inner dimension of 0 (empty sums).

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> a, b = np.array([[1000.0, 1000.0]]), np.array([[1000.0], [1000.0]])
    >>> np.log(np.exp(a) @ np.exp(b))   # naive: exp overflows  # doctest: +SKIP
    array([[inf]])
    >>> fg.log_matmul_exp(a, b)   # 2000 + log 2
    array([[2000.69314718]])
    """
    be = namespace(("a", a), ("b", b), func="log_matmul_exp")
    xp = be.xp
    a = as_float(be, a, "a", "log_matmul_exp")
    b = as_float(be, b, "b", "log_matmul_exp")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(
            f"floatguard.log_matmul_exp: arguments 'a' and 'b' must have at least 2 dimensions, "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"floatguard.log_matmul_exp: inner dimensions differ: 'a' has shape {tuple(a.shape)} "
            f"and 'b' has shape {tuple(b.shape)} (need a.shape[-1] == b.shape[-2])"
        )
    dtype = xp.result_type(a, b)
    wd = be.work_dtype(dtype)
    aw = xp.astype(a, wd, copy=False)
    bw = xp.astype(b, wd, copy=False)
    if a.shape[-1] == 0:  # sums of no terms: log 0 = -inf (matmul gives the broadcast shape)
        return xp.astype(xp.matmul(aw, bw) - float("inf"), dtype, copy=False)

    def shift(v: Any, axis: int) -> tuple[Any, Any]:
        m = xp.max(be.stop_gradient(v), axis=axis, keepdims=True)
        fin = xp.isfinite(m)
        return xp.where(fin, m, xp.zeros_like(m)), fin

    alpha, fa = shift(aw, -1)  # (..., n, 1)
    beta, fb = shift(bw, -2)  # (..., 1, m)
    ea = xp.exp(xp.where(fa, aw - alpha, xp.full_like(aw, -float("inf"))))
    eb = xp.exp(xp.where(fb, bw - beta, xp.full_like(bw, -float("inf"))))
    dot = xp.matmul(ea, eb)
    ok = dot > 0
    c = alpha + beta + xp.log(xp.where(ok, dot, xp.ones_like(dot)))
    c = xp.where(ok, c, xp.full_like(c, -float("inf")))
    suspect = dot < math.exp(_SAFE_LOG)
    if wd == dtype:
        # float64 inputs: where the row max and the column max come from different k, alpha + beta
        # is far above c and its rounding error (and exp's) cancels into c; recompute those exactly
        suspect = suspect | ((alpha + beta - c) > 0.5 * xp.maximum(xp.abs(c), xp.ones_like(c)))
    # where some row max or column max is +inf / NaN, the result is the limit
    nonfinite = ~(fa & fb)
    if be.is_concrete(dot) and not be.compiling():
        if bool(xp.any(be.host(suspect))) or bool(xp.any(be.host(nonfinite))):
            exact = _exact(be, aw, bw)
            c = xp.where(suspect | nonfinite, exact, c)
    else:  # traced (jax.jit, torch.compile): no data-dependent branch, so always blend in the exact form
        c = xp.where(suspect | nonfinite, _exact(be, aw, bw), c)
    return xp.astype(c, dtype, copy=False)


def _exact(be: Any, a: Any, b: Any) -> Any:
    """``log sum_k exp(a_ik + b_kj)`` by broadcasting (memory n*k*m), via logsumexp."""
    from .reductions import logsumexp

    xp = be.xp
    n, k, m = a.shape[-2], a.shape[-1], b.shape[-1]
    step = max(1, (1 << 22) // max(1, k * m))  # rows per block: ~4M terms in memory
    blocks = []
    for i in range(0, max(n, 1), step):
        terms = xp.expand_dims(a[..., i : i + step, :], axis=-1) + xp.expand_dims(b, axis=-3)
        blocks.append(logsumexp(terms, axis=-2))  # (..., rows, m)
    return blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=-2)
