"""Compiled (numba) kernels of the fused losses, gathered: the one module their callers load.

The kernels are modules of one job: :mod:`._numba_loss_dtypes` (loading and storing each storage
dtype, and the ``exp`` / ``log1p`` / reciprocal accurate enough for it), :mod:`._numba_ce` (the
cross-entropy rows: class indices or probabilities, weights, label smoothing, soft-capping, z-loss;
:mod:`._numba_ce_fused` their forwards that write the gradient), :mod:`._numba_ce_plain` (the plain
common case), :mod:`._numba_ce_rows` (their row steps by dtype) and :mod:`._numba_elementwise`
(binary cross-entropy, softplus, log_sigmoid, log1mexp, logaddexp, and their raw-pointer route).

Without numba this module imports, ``AVAILABLE`` is False and callers use the generic path.
"""

from __future__ import annotations

from ._numba_bits import AVAILABLE
from ._numba_ce import ce_index_backward, ce_index_forward, ce_prob_backward, ce_prob_forward
from ._numba_ce_plain import ce_plain_backward, ce_plain_forward
from ._numba_elementwise import (
    bce_backward,
    bce_forward,
    logaddexp_backward,
    logaddexp_forward,
    ptr_logaddexp,
    ptr_unary,
    unary_backward,
    unary_forward,
)

__all__ = [
    "AVAILABLE",
    "bce_backward",
    "bce_forward",
    "ce_index_backward",
    "ce_index_forward",
    "ce_plain_backward",
    "ce_plain_forward",
    "ce_prob_backward",
    "ce_prob_forward",
    "logaddexp_backward",
    "logaddexp_forward",
    "ptr_logaddexp",
    "ptr_unary",
    "unary_backward",
    "unary_forward",
]
