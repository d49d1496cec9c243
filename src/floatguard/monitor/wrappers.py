"""The model and optimizer inside the wrappers training frameworks put around them."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["unwrap_model", "unwrap_optimizer"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    inner = getattr(model, "module", None)
    if isinstance(inner, torch.nn.Module) and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
        return inner
    return model


def unwrap_optimizer(opt: Any) -> Any:
    """The torch optimizer inside wrappers (accelerate's AcceleratedOptimizer, LightningOptimizer)."""
    for _ in range(4):
        if opt is None or (isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "_optimizer_step_pre_hooks")):
            return opt  # a wrapper may subclass Optimizer without initializing it
        inner = getattr(opt, "optimizer", None) or getattr(opt, "_optimizer", None)
        if inner is None:
            return opt
        opt = inner
    return opt
