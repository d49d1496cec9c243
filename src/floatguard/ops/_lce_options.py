"""The checked options of :func:`floatguard.linear_cross_entropy`, one record for every backend."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Options"]


@dataclass(frozen=True)
class Options:
    """The loss's options, checked by the caller (hashable: a static argument of JAX's ``custom_vjp``)."""

    ignore_index: int
    label_smoothing: float
    reduction: str
    z_loss: float
    softcap: float | None
    chunk_size: int | None
