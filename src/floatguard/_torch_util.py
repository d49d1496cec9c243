"""Small torch helpers shared by the parts of floatguard that must not import each other (sanitizer, monitor)."""

from __future__ import annotations

import torch

__all__ = ["stored_values"]

_COMPRESSED = frozenset({torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc})


def stored_values(t: torch.Tensor, *, coalesce: bool = False) -> torch.Tensor | None:
    """The entries a tensor stores, as a strided tensor: ``t`` itself, or the values of a sparse tensor.

    A sparse gradient (``nn.Embedding(..., sparse=True)``) is non-finite exactly where one
    of its stored values is; the entries it does not store are zeros. With ``coalesce`` a
    COO tensor is coalesced first (repeated indices summed, as an optimizer will), so that
    the norm of its values is the dense tensor's. Nested and other layouts give None (not
    judged).
    """
    layout = t.layout
    if layout is torch.strided:
        return None if t.is_nested else t
    if layout is torch.sparse_coo:
        return (t.coalesce() if coalesce else t)._values()
    if layout in _COMPRESSED:
        return t.values()
    return None
