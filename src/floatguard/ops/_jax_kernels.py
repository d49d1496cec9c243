"""The JAX rows kernels of logsumexp, softmax and log_softmax (see :mod:`._kernels`): :mod:`._jax_fast`.

Each takes non-empty rows ``(R, n)`` and returns the op per row in the input dtype or wider
(the op rounds once to the input dtype). Imported on the first JAX array an op gets.
"""

from __future__ import annotations

from typing import Any

from . import _jax_fast
from ._kernels import register


@register("logsumexp", "jax")
def _logsumexp(rows: Any) -> Any:
    return _jax_fast.logsumexp_rows(rows)


@register("softmax", "jax")
def _softmax(rows: Any) -> Any:
    return _jax_fast.softmax_rows(rows)


@register("log_softmax", "jax")
def _log_softmax(rows: Any) -> Any:
    return _jax_fast.log_softmax_rows(rows)
