"""The PyTorch path of softmax, log_softmax and logsumexp for tensors off the CPU (CUDA, XPU, MPS).

Torch ops with the max split of the other backends, accumulating in float32 for 16-bit and float32
inputs (float64 stays float64). Tested on the CPU with ``FLOATGUARD_FORCE_DEVICE_PATH`` set, which
sends every tensor here (:func:`on_device`).
"""

from __future__ import annotations

import torch

from . import _namespace as _ns
from ._torch_sweep import fix_limits


def on_device(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the path of tensors off the CPU (:func:`device_softmax`, :func:`device_logsumexp`):
    not on the CPU, or any tensor while ``FLOATGUARD_FORCE_DEVICE_PATH`` is set (tests)."""
    return not x.is_cpu or _ns.FORCE_DEVICE_PATH


def grad_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the analytic gradients of ``t``'s softmax are computed in: float64 on the CPU, else the
    compute dtype (float32, float64 for float64)."""
    return torch.float64 if t.dtype == torch.float64 or not on_device(t) else torch.float32


def split_diff(y: torch.Tensor, m0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``d = y - m0`` and its rounding error ``lo``: ``d + lo = y - m0`` exactly (TwoSum) in float32
    (``lo = 0`` where it is not finite: a ``-inf`` entry loses nothing); ``lo = 0`` in float64."""
    d = y - m0
    if y.dtype != torch.float32:
        return d, torch.zeros_like(m0)
    bb = d - y
    lo = (y - (d - bb)) - (m0 + bb)
    return d, torch.where(torch.isfinite(lo), lo, 0.0)


def device_stats(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``m``, ``d = x - m`` as ``(d, lo)`` (float32: ``d + lo`` exact, TwoSum), ``e = exp(d + lo)``,
    ``s = sum_{i != k} e_i`` and ``finite``, for rows ``x`` (R, n), in the compute dtype.

    The max-split of BHH: ``k = argmax``; the compute dtype is float32 for 16-bit and float32 inputs
    (float64 stays). ``x - m`` rounds in float32 when the two are far apart in magnitude, and the
    exp of a rounded ``d`` has a relative error ``|d| eps``: the TwoSum keeps the lost bits ``lo`` and
    ``exp(d + lo) = exp(d) (1 + lo)`` to a float32 rounding.
    """
    wd = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x.to(wd)
    m, k = xw.max(dim=-1, keepdim=True)
    finite = torch.isfinite(m)
    m0 = torch.where(finite, m, 0.0)
    d, lo = split_diff(xw, m0)
    e = torch.exp(d) * (1.0 + lo)
    s = e.scatter(-1, k, 0.0).sum(dim=-1, keepdim=True)
    return m, d, lo, e, torch.where(finite, s, 0.0), finite


def device_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``m + log1p(s)`` of rows ``x`` (R, n) as (R, 1) in the compute dtype (float32, or float64), torch ops."""
    m, _, _, _, s, finite = device_stats(x.detach())
    return torch.where(finite, m + torch.log1p(s), m)


def device_softmax(x: torch.Tensor, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax (``e / (1 + s)``) or log_softmax (``d - log1p(s)``) of rows ``x`` with torch ops, and ``finite``."""
    _, d, lo, e, s, finite = device_stats(x.detach())
    out = ((d - torch.log1p(s)) + lo) if log else (e / (1.0 + s))
    out = out.to(x.dtype)
    if not bool(finite.all()):
        out = fix_limits(x, out, finite, log)
    return out, finite
