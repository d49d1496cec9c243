"""Stable, accurate, differentiable primitives for NumPy, PyTorch and JAX.

Every op is written once against the array API namespace of its input (see
``_namespace``): NumPy arrays give NumPy arrays, tensors give tensors of the same
dtype and device, JAX arrays give JAX arrays, and autodiff works through them.
This package imports nothing else of floatguard.
"""

from .elementwise import (
    log1mexp,
    log_sigmoid,
    logaddexp,
    logsubexp,
    sigmoid,
    softplus,
    softplus_inverse,
    xlog1py,
    xlogy,
)
from .linear_cross_entropy import linear_cross_entropy
from .losses import binary_cross_entropy_with_logits, cross_entropy
from .products import log_matmul_exp, log_prod
from .reductions import log_softmax, logcumsumexp, logmeanexp, logsumexp, softmax
from .safe import default_eps, safe_div, safe_log, safe_sqrt

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "default_eps",
    "linear_cross_entropy",
    "log1mexp",
    "log_matmul_exp",
    "log_prod",
    "log_sigmoid",
    "log_softmax",
    "logaddexp",
    "logcumsumexp",
    "logmeanexp",
    "logsubexp",
    "logsumexp",
    "safe_div",
    "safe_log",
    "safe_sqrt",
    "sigmoid",
    "softmax",
    "softplus",
    "softplus_inverse",
    "xlog1py",
    "xlogy",
]
