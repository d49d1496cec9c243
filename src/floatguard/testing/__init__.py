"""Test support: errors in ulps and high-precision references (like ``numpy.testing``).

The references evaluate each op in mpmath with at least :data:`DPS` decimal
digits on the *exact* values of the floating inputs (every float is converted
with ``mpmath.mpf(float(v))``, which is exact), so they are the true values of
the functions at those inputs. Wherever a formula could cancel, the reference
is recomputed with more digits until the result keeps at least :data:`DPS`
significant digits of its own.

:func:`ulp_error` measures a computed result against a reference in units of
the last place of the target dtype, and the ``cond_*`` functions give the
relative (componentwise) condition numbers that the float64 accuracy bound
``2 ulp * max(1, cond)`` refers to.

mpmath is a development dependency, imported on first use::

    pip install 'floatguard[dev]'

The package is split by job: :mod:`.ulp` (errors in ulps), :mod:`.references` (the mpmath
references), :mod:`.conditions` (condition numbers), :mod:`.gradients`
(mpmath references and condition numbers of the gradients); every public name is importable from
``floatguard.testing`` itself.
"""

from __future__ import annotations

from ._precision import DPS, dtype_info, to_float64
from .conditions import (
    cond_bce_with_logits,
    cond_cross_entropy_row,
    cond_log1mexp,
    cond_log_matmul_exp,
    cond_log_prod,
    cond_log_sigmoid,
    cond_log_softmax,
    cond_logaddexp,
    cond_logcumsumexp,
    cond_logmeanexp,
    cond_logsubexp,
    cond_logsumexp,
    cond_sigmoid,
    cond_softmax,
    cond_softplus,
    cond_softplus_inverse,
    cond_xlog1py,
    cond_xlogy,
)
from .gradients import (
    cond_grad_bce_with_logits,
    cond_grad_cross_entropy,
    cond_grad_log1mexp,
    cond_grad_log_sigmoid,
    cond_grad_log_softmax,
    cond_grad_logaddexp,
    cond_grad_logsumexp,
    cond_grad_sigmoid,
    cond_grad_softmax,
    cond_grad_softplus,
    grad_bce_with_logits,
    grad_cross_entropy,
    grad_log1mexp,
    grad_log_sigmoid,
    grad_log_softmax,
    grad_logaddexp,
    grad_logsumexp,
    grad_sigmoid,
    grad_softmax,
    grad_softplus,
    grad_ulp_error,
)
from .references import (
    ref_bce_with_logits,
    ref_cross_entropy_row,
    ref_log1mexp,
    ref_log_matmul_exp,
    ref_log_prod,
    ref_log_sigmoid,
    ref_log_softmax,
    ref_logaddexp,
    ref_logcumsumexp,
    ref_logmeanexp,
    ref_logsubexp,
    ref_logsumexp,
    ref_sigmoid,
    ref_softmax,
    ref_softplus,
    ref_softplus_inverse,
    ref_xlog1py,
    ref_xlogy,
)
from .ulp import cond_elementwise, max_ulp, ulp_error, vectorize

__all__ = [
    "DPS",
    "cond_bce_with_logits",
    "cond_cross_entropy_row",
    "cond_elementwise",
    "cond_grad_bce_with_logits",
    "cond_grad_cross_entropy",
    "cond_grad_log1mexp",
    "cond_grad_log_sigmoid",
    "cond_grad_log_softmax",
    "cond_grad_logaddexp",
    "cond_grad_logsumexp",
    "cond_grad_sigmoid",
    "cond_grad_softmax",
    "cond_grad_softplus",
    "cond_log1mexp",
    "cond_log_matmul_exp",
    "cond_log_prod",
    "cond_log_sigmoid",
    "cond_log_softmax",
    "cond_logaddexp",
    "cond_logcumsumexp",
    "cond_logmeanexp",
    "cond_logsubexp",
    "cond_logsumexp",
    "cond_sigmoid",
    "cond_softmax",
    "cond_softplus",
    "cond_softplus_inverse",
    "cond_xlog1py",
    "cond_xlogy",
    "dtype_info",
    "grad_bce_with_logits",
    "grad_cross_entropy",
    "grad_log1mexp",
    "grad_log_sigmoid",
    "grad_log_softmax",
    "grad_logaddexp",
    "grad_logsumexp",
    "grad_sigmoid",
    "grad_softmax",
    "grad_softplus",
    "grad_ulp_error",
    "max_ulp",
    "ref_bce_with_logits",
    "ref_cross_entropy_row",
    "ref_log1mexp",
    "ref_log_matmul_exp",
    "ref_log_prod",
    "ref_log_sigmoid",
    "ref_log_softmax",
    "ref_logaddexp",
    "ref_logcumsumexp",
    "ref_logmeanexp",
    "ref_logsubexp",
    "ref_logsumexp",
    "ref_sigmoid",
    "ref_softmax",
    "ref_softplus",
    "ref_softplus_inverse",
    "ref_xlog1py",
    "ref_xlogy",
    "to_float64",
    "ulp_error",
    "vectorize",
]
