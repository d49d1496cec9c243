"""PyTorch path of the fused losses, gathered: the one module :mod:`.losses` loads.

The generic array-API cross-entropy records a dozen ops per call and keeps their (N, C)
temporaries for autograd; here each loss is one ``torch.autograd.Function`` whose forward is one
compiled pass per row keeping per-row residuals, and whose backward is one pass in the input dtype
(double backward: the same formula in differentiable torch ops). The work is split by job:

- :mod:`._torch_rows`: NumPy views of tensors, row chunks over threads, the reduced scalar;
- :mod:`._torch_ce`: cross-entropy on the CPU (class indices or probabilities, weights, label
  smoothing, z-loss, soft-capping; :func:`cross_entropy_plain` the common case with fewer steps);
- :mod:`._torch_ce_compile`: the custom op ``floatguard::cross_entropy_rows`` for ``torch.compile``;
- :mod:`._torch_ce_device`: the same semantics in torch ops for tensors on other devices (CUDA, XPU,
  MPS; tested on the CPU with ``FLOATGUARD_FORCE_DEVICE_PATH``);
- :mod:`._torch_bce`: binary cross-entropy from logits;
- :mod:`._torch_elementwise`: softplus, log_sigmoid, log1mexp and logaddexp.

Inputs: CPU tensors, float32, float64 or bfloat16 (read through their int16 bits); float16 is
computed through a float32 copy. Callers check :func:`usable` first and fall back to the generic
path otherwise.
"""

from __future__ import annotations

from . import _numba_losses as K
from ._torch_bce import bce_plain, binary_cross_entropy_with_logits
from ._torch_ce import cross_entropy, cross_entropy_features, cross_entropy_plain
from ._torch_ce_compile import (
    cross_entropy_backward_op,
    cross_entropy_compiled,
    cross_entropy_features_compiled,
    cross_entropy_op,
)
from ._torch_ce_device import cross_entropy_device, cross_entropy_rows_torch
from ._torch_elementwise import LOG1MEXP, LOG_SIGMOID, SOFTPLUS, logaddexp, unary
from ._torch_rows import usable

__all__ = [
    "LOG1MEXP", "LOG_SIGMOID", "SOFTPLUS", "K", "bce_plain", "binary_cross_entropy_with_logits", "cross_entropy",
    "cross_entropy_backward_op", "cross_entropy_compiled", "cross_entropy_device", "cross_entropy_features",
    "cross_entropy_features_compiled",
    "cross_entropy_op",
    "cross_entropy_plain", "cross_entropy_rows_torch", "logaddexp", "unary", "usable",
]
