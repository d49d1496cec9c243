"""Guarded log, division and square root: finite values and gradients at 0.

The classic trap these avoid: ``where(x > 0, log(x), 0)`` has the right value
but a NaN gradient at 0, because autodiff still differentiates the unused
``log(0)`` branch (``0 * inf = NaN``). Here the guarded function only ever sees
safe inputs.

Default ``eps`` by dtype (documented, and what :func:`default_eps` returns):

===========  ========================  ===========================================
function     default eps               value for float16 / bfloat16 / float32 / float64
===========  ========================  ===========================================
safe_log     smallest normal (tiny)    6.1e-05 / 1.2e-38 / 1.2e-38 / 2.2e-308
safe_div     max(eps, 2 / sqrt(max))   7.8e-03 / 7.8e-03 / 1.2e-07 / 2.2e-16
===========  ========================  ===========================================

``safe_div``'s eps keeps both ``a / eps`` and the gradient ``a / eps**2``
finite in the input's own dtype for ``|a| <= 1``.
"""

from __future__ import annotations

from typing import Any

from ._core import nan_where
from ._namespace import as_float, check_real, finfo_of, namespace, quiet
from .elementwise import binary, unary

__all__ = ["default_eps", "safe_div", "safe_log", "safe_sqrt"]


def default_eps(dtype: Any, func: str = "safe_div") -> float:
    """Default ``eps`` of ``safe_log`` (``func="safe_log"``) or ``safe_div`` for a float dtype."""
    if type(dtype).__module__.startswith("torch"):
        import torch

        return _eps_from(torch.finfo(dtype), func)
    import numpy as np

    if np.dtype(dtype).name == "bfloat16":  # ml_dtypes' bfloat16 (NumPy and JAX)
        import ml_dtypes

        return _eps_from(ml_dtypes.finfo(dtype), func)
    return _eps_from(np.finfo(dtype), func)


def _eps_from(fi: Any, func: str) -> float:
    if func == "safe_log":
        return float(fi.smallest_normal)
    return max(float(fi.eps), 2.0 / float(fi.max) ** 0.5)


def _eps(x: Any, eps: float | None, func: str, name: str = "x") -> float:
    be = namespace((name, x), func=func)
    x = as_float(be, x, name, func)
    if eps is None:
        return _eps_from(finfo_of(be, x.dtype), func)
    eps = check_real(eps, "eps", func)
    if not eps > 0:
        raise ValueError(f"floatguard.{func}: argument 'eps' must be > 0, got {eps!r}")
    return float(eps)


@quiet
def safe_log(x: Any, eps: float | None = None) -> Any:
    r"""``log(max(x, eps))``: finite value and gradient at ``x = 0``.

    :math:`\log(\max(x, \epsilon))`; the gradient is ``1/x`` above ``eps`` and
    0 below. Default ``eps`` is the dtype's smallest normal number
    (``log`` of it: -9.7 in float16, -87.3 in float32, -708.4 in float64).
    Negative ``x`` is a domain error and gives NaN (it is not clipped), with a NaN gradient.
    """
    e = _eps(x, eps, "safe_log")

    def f(xp: Any, x: Any) -> Any:
        clipped = xp.maximum(x, xp.full_like(x, e))
        return xp.where(x < 0, x * nan_where(xp, x < 0, x), xp.log(clipped))  # NaN value and gradient below 0

    return unary(x, "safe_log", f)


@quiet
def safe_div(a: Any, b: Any, eps: float | None = None) -> Any:
    r"""``a / b`` with ``|b|`` kept at least ``eps`` (sign kept, +eps for 0).

    :math:`a / \mathrm{sign}(b) \max(|b|, \epsilon)`; finite value and finite
    gradients at ``b = 0``. Default ``eps``: ``max(finfo.eps, 2/sqrt(finfo.max))``
    of the result dtype (2.2e-16 for float64, 1.2e-7 for float32, 2^-7 for
    float16 and bfloat16).
    """
    e = _eps(b if hasattr(b, "dtype") else a, eps, "safe_div", "b" if hasattr(b, "dtype") else "a")

    def f(xp: Any, a: Any, b: Any) -> Any:
        small = xp.abs(b) < e
        guard = xp.where(b < 0, xp.full_like(b, -e), xp.full_like(b, e))
        return a / xp.where(small, guard, b)

    return binary(a, b, ("a", "b"), "safe_div", f)


@quiet
def safe_sqrt(x: Any) -> Any:
    r"""``sqrt(max(x, 0))`` with gradient 0 (not inf) at ``x <= 0``.

    For quantities that are mathematically non-negative but may round below
    zero (a squared norm computed as a difference, a variance): the value is
    0 there and the gradient 0, so ``norm`` of a zero vector backpropagates
    cleanly. Above 0 the gradient is ``1 / (2 sqrt(x))``, finite even at the
    smallest subnormal. NaN gives NaN, with a NaN gradient.
    """

    def f(xp: Any, x: Any) -> Any:
        pos = x > 0
        nan = xp.isnan(x)  # NaN in, NaN out with a NaN gradient (x itself passed the gradient 1)
        return xp.where(pos, xp.sqrt(xp.where(pos, x, xp.ones_like(x))),
                        xp.where(nan, x * nan_where(xp, nan, x), xp.zeros_like(x)))

    return unary(x, "safe_sqrt", f)
