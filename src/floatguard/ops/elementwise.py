"""Elementwise log-domain functions, accurate over the whole floating range.

Each is computed in float64 for float16, bfloat16 and float32 inputs and rounded
once (at most 1 ulp), and with formulas that need no threshold in float64 (at
most 2 ulp times the condition number). Where a formula splits into branches,
the split point depends only on the math (``-log 2`` for log1mexp, the sign of
``x`` for softplus and sigmoid), never on a fixed cutoff like PyTorch's
``softplus`` threshold of 20, which costs it 4e5 ulp in float64 for x in (20, 37).

Branches are evaluated on "safe" inputs and chosen with ``where``, so gradients
are finite wherever the derivative is (no NaN from the unused branch).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from . import _complex
from ._core import nan_where
from ._kernels import select_call
from ._namespace import Backend, as_float, namespace, quiet

__all__ = [
    "log1mexp",
    "log_sigmoid",
    "logaddexp",
    "logsubexp",
    "sigmoid",
    "softplus",
    "softplus_inverse",
    "xlog1py",
    "xlogy",
]

_LN2 = math.log(2.0)


def _fast(op: str, arity: int = 1) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Try the backend's kernel of ``op`` for the plain call (``arity`` positional arguments; see
    :func:`._kernels.select_call`: a CPU tensor goes to the fused kernels) before any generic work;
    the kernel returns None where it does not apply."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def op_fn(*args: Any, **kwargs: Any) -> Any:
            if len(args) == arity and not kwargs:
                kernel = select_call(op, args[0])
                if kernel is not None:
                    out = kernel(*args)
                    if out is not None:
                        return out
            return fn(*args, **kwargs)

        return op_fn

    return wrap


def unary(x: Any, func: str, f: Callable[[Any, Any], Any], name: str = "x") -> Any:
    """Apply ``f(xp, x_work)`` in the working dtype and round back to ``x``'s dtype (``name``: the argument's)."""
    be = namespace((name, x), func=func)
    x = as_float(be, x, name, func)
    xp = be.xp
    return xp.astype(f(xp, xp.astype(x, be.work_dtype(x.dtype), copy=False)), x.dtype, copy=False)


def binary(a: Any, b: Any, names: tuple[str, str], func: str, f: Callable[[Any, Any, Any], Any]) -> Any:
    """Two-argument form of :func:`unary`; arguments broadcast, result dtype is their promotion."""
    be: Backend = namespace((names[0], a), (names[1], b), func=func)
    xp = be.xp
    if hasattr(a, "dtype") or not hasattr(b, "dtype"):
        a = as_float(be, a, names[0], func)
        b = as_float(be, b, names[1], func, like=a)
    else:
        b = as_float(be, b, names[1], func)
        a = as_float(be, a, names[0], func, like=b)
    dtype = xp.result_type(a, b)
    try:
        a, b = xp.broadcast_arrays(a, b)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"floatguard.{func}: arguments {names[0]!r} (shape {tuple(a.shape)}) and "
            f"{names[1]!r} (shape {tuple(b.shape)}) do not broadcast together"
        ) from exc
    wd = be.work_dtype(dtype)
    out = f(xp, xp.astype(a, wd, copy=False), xp.astype(b, wd, copy=False))
    return xp.astype(out, dtype, copy=False)


def _log1mexp(xp: Any, x: Any) -> Any:
    # Maechler (2012): log(-expm1(x)) near 0, log1p(-exp(x)) below -log 2.
    # x > 0 has no real value: NaN, and a NaN gradient too, as the compiled kernels' (autodiff of log(-expm1(x)) gave
    # the finite slope e^x / expm1(x) there, also to logsubexp's a < b)
    x = x + nan_where(xp, x > 0, x)
    near = x > -_LN2
    x_near = xp.where(near, x, -xp.ones_like(x))
    x_far = xp.where(near, -xp.ones_like(x), x)  # NaN goes this way
    # "+ 0.0" turns expm1(0) = -0.0 into +0.0, so log gives -inf with a -inf slope
    return xp.where(near, xp.log(-xp.expm1(x_near) + 0.0), xp.log1p(-xp.exp(x_far)))


def _softplus(xp: Any, x: Any) -> Any:
    # two branches on safe inputs rather than max(x, 0) + log1p(exp(-|x|)): the same values,
    # and a derivative of 1/2 at 0 in every library (JAX takes d|x|/dx = 1 at 0)
    neg = x <= 0
    zero = xp.zeros_like(x)
    x_neg = xp.where(neg, x, zero)
    x_pos = xp.where(neg, zero, x)  # NaN goes this way
    return xp.where(neg, xp.log1p(xp.exp(x_neg)), x_pos + xp.log1p(xp.exp(-x_pos)))


@_fast("logaddexp", 2)
@quiet
def logaddexp(a: Any, b: Any) -> Any:
    r"""``log(exp(a) + exp(b))``: :math:`\max(a, b) + \log1p(e^{-|a - b|})`.

    ``-inf`` is log(0): ``logaddexp(-inf, -inf) = -inf`` with zero gradient;
    ``+inf`` wins; NaN propagates, to both gradients too. Gradient: ``sigmoid(a - b)``, ``sigmoid(b - a)``.

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> float(np.log(np.exp(1000.0) + np.exp(1000.0)))   # naive: exp overflows  # doctest: +SKIP
    inf
    >>> float(fg.logaddexp(np.float64(1000.0), np.float64(1000.0)))   # 1000 + log 2
    1000.6931471805599
    """

    def f(xp: Any, a: Any, b: Any) -> Any:
        a_hi = (a >= b) | xp.isnan(a)
        hi = xp.where(a_hi, a, b)  # a NaN in either goes to hi
        lo = xp.where(a_hi, b, a)
        # finite or NaN: the formula, through which a NaN reaches the value and both gradients (as PyTorch's)
        fin = ~xp.isinf(hi)
        delta = xp.where(fin, lo - hi, xp.zeros_like(hi))
        # -inf (both empty) is a constant: zero gradient; +inf passes through (gradient 1 on its side)
        limit = xp.where(hi == -float("inf"), xp.full_like(hi, -float("inf")), hi)
        return xp.where(fin, hi + xp.log1p(xp.exp(delta)), limit)

    namespace(("a", a), ("b", b), func="logaddexp")  # checks the arguments, naming them
    if _complex.is_complex_input(a, b):  # the phase as imaginary part, as SciPy's logsumexp
        return _complex.logaddexp(a, b)
    return binary(a, b, ("a", "b"), "logaddexp", f)


@quiet
def logsubexp(a: Any, b: Any) -> Any:
    r"""``log(exp(a) - exp(b))`` for ``a >= b``: :math:`a + \mathrm{log1mexp}(b - a)`.

    ``a == b`` gives ``-inf``; ``b = -inf`` gives ``a``; ``a < b`` has no real
    log and gives NaN (never a silently clipped value).

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> float(np.log(np.exp(1000.0) - np.exp(999.0)))   # naive: inf - inf  # doctest: +SKIP
    nan
    >>> float(fg.logsubexp(np.float64(1000.0), np.float64(999.0)))
    999.5413248546129
    """

    def f(xp: Any, a: Any, b: Any) -> Any:
        b_empty = b == -float("inf")
        delta = xp.where(b_empty, -xp.ones_like(a), b - a)
        return xp.where(b_empty, a, a + _log1mexp(xp, delta))

    return binary(a, b, ("a", "b"), "logsubexp", f)


@_fast("log1mexp")
@quiet
def log1mexp(x: Any) -> Any:
    r"""``log(1 - exp(x))`` for ``x <= 0``, accurate everywhere (Mächler 2012).

    .. math:: \mathrm{log1mexp}(x) = \begin{cases} \log(-\mathrm{expm1}(x)) & -\log 2 < x \le 0 \\
              \mathrm{log1p}(-e^{x}) & x \le -\log 2 \end{cases}

    ``log1mexp(0) = -inf``, ``log1mexp(-inf) = 0``, ``x > 0`` gives NaN.

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> float(np.log(1 - np.exp(-1e-20)))      # naive: log(0)  # doctest: +SKIP
    -inf
    >>> float(fg.log1mexp(np.float64(-1e-20)))
    -46.051701859880914
    """
    return unary(x, "log1mexp", _log1mexp)


@_fast("softplus")
@quiet
def softplus(x: Any) -> Any:
    r"""``log(1 + exp(x))`` without overflow and without a threshold.

    .. math:: \mathrm{softplus}(x) = \max(x, 0) + \mathrm{log1p}(e^{-|x|})

    Both terms are non-negative, so nothing cancels: at most 1 ulp in float32
    and about 1 ulp in float64 for every ``x`` (PyTorch switches to ``x`` at
    ``x > 20``, which is 4e5 ulp off in float64 up to x = 37).
    Gradient: ``sigmoid(x)``.

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> float(np.log1p(np.exp(1000.0)))   # naive overflows  # doctest: +SKIP
    inf
    >>> float(fg.softplus(np.float64(1000.0)))
    1000.0
    """
    return unary(x, "softplus", _softplus)


@quiet
def softplus_inverse(y: Any) -> Any:
    r"""Inverse of softplus, ``log(exp(y) - 1)`` for ``y > 0``: :math:`y + \mathrm{log1mexp}(-y)`.

    ``softplus_inverse(0) = -inf``, ``softplus_inverse(inf) = inf``, ``y < 0`` gives NaN.

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> float(np.log(np.exp(1e-20) - 1))   # naive: exp(1e-20) rounds to 1, log(0)  # doctest: +SKIP
    -inf
    >>> float(fg.softplus_inverse(np.float64(1e-20)))   # log(1e-20)
    -46.051701859880914
    """
    return unary(y, "softplus_inverse", lambda xp, y: y + _log1mexp(xp, -y), "y")


@quiet
def sigmoid(x: Any) -> Any:
    r"""Logistic function :math:`1 / (1 + e^{-x})`, evaluated without overflow.

    ``1 / (1 + exp(-x))`` for ``x >= 0`` and ``exp(x) / (1 + exp(x))`` below,
    so no ``exp`` ever overflows and tiny results keep full relative accuracy.

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> float(np.exp(1000.0) / (1 + np.exp(1000.0)))   # naive: inf / inf  # doctest: +SKIP
    nan
    >>> float(fg.sigmoid(np.float64(1000.0)))
    1.0
    """

    def f(xp: Any, x: Any) -> Any:
        pos = x >= 0
        zero = xp.zeros_like(x)
        xp_pos = xp.where(pos, x, zero)
        e = xp.exp(xp.where(pos, zero, x))  # NaN goes this way
        return xp.where(pos, 1 / (1 + xp.exp(-xp_pos)), e / (1 + e))

    return unary(x, "sigmoid", f)


@_fast("log_sigmoid")
@quiet
def log_sigmoid(x: Any) -> Any:
    r"""``log(sigmoid(x)) = -softplus(-x)``: :math:`\min(x, 0) - \mathrm{log1p}(e^{-|x|})`.

    Exact to the last bit for large negative ``x`` (where ``log(sigmoid(x))``
    naively gives ``log(0) = -inf``) and for large positive ``x`` (where it gives 0).

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> float(np.log(1 / (1 + np.exp(1000.0))))   # naive: log(0)  # doctest: +SKIP
    -inf
    >>> float(fg.log_sigmoid(np.float64(-1000.0)))
    -1000.0
    """
    return unary(x, "log_sigmoid", lambda xp, x: -_softplus(xp, -x))


def _x_times(
    xp: Any, x: Any, y: Any, log_fn: Callable[[Any], Any], bad: Callable[[Any], Any], neutral: float
) -> Any:
    # x * log_fn(y), with 0 where x == 0 (unless y is NaN) and no NaN gradient there:
    # such y are replaced by the value whose log_fn is 0 (1 for log, 0 for log1p)
    y_safe = xp.where((x == 0) & (bad(y) | (y == float("inf"))), xp.full_like(y, neutral), y)
    return x * log_fn(y_safe)


@quiet
def xlogy(x: Any, y: Any) -> Any:
    r"""``x * log(y)``, defined as 0 where ``x == 0`` (unless ``y`` is NaN), as in SciPy.

    The zero-times-log(0) entries of an entropy or cross-entropy give 0 and a
    zero gradient, not NaN.

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> float(np.float64(0.0) * np.log(0.0))   # naive: 0 * -inf  # doctest: +SKIP
    nan
    >>> float(fg.xlogy(np.float64(0.0), np.float64(0.0)))
    0.0
    """
    return binary(x, y, ("x", "y"), "xlogy", lambda xp, x, y: _x_times(xp, x, y, xp.log, lambda y: y <= 0, 1.0))


@quiet
def xlog1py(x: Any, y: Any) -> Any:
    r"""``x * log1p(y)``, defined as 0 where ``x == 0`` (unless ``y`` is NaN), as in SciPy.

    Error: at most 1 ulp for float16, bfloat16 and float32; float64 within 2 ulp times the
    condition number (``tests/ops/test_accuracy.py``, against mpmath).

    Examples
    --------
    >>> import numpy as np, floatguard as fg
    >>> float(np.float64(0.0) * np.log1p(-1.0))   # naive: 0 * -inf  # doctest: +SKIP
    nan
    >>> float(fg.xlog1py(np.float64(0.0), np.float64(-1.0)))
    0.0
    """
    return binary(
        x, y, ("x", "y"), "xlog1py", lambda xp, x, y: _x_times(xp, x, y, xp.log1p, lambda y: y <= -1, 0.0)
    )
