"""The PyTorch backend of :mod:`._namespace`, made when this module is first imported.

A module attribute behind an import statement, not a global filled by the first call: ``torch.compile`` runs an
import for real while it traces and then reads a constant, where a global that the first traced call filled was
guarded as empty, and a compiled function whose first floatguard op took the generic path on torch tensors
(``logcumsumexp``, ``logmeanexp``, ``linear_cross_entropy``, ...) recompiled at its second call.
"""

from __future__ import annotations

from ..errors import missing
from ._namespace import Backend

try:
    from array_api_compat import torch as xp_torch
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing("array_api_compat", "torch", feature="floatguard's ops on PyTorch tensors") from exc

__all__ = ["BACKEND"]

BACKEND = Backend("torch", xp_torch)
