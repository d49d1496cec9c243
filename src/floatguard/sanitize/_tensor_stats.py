"""Tensor statistics: the finite/non-finite tests and the numbers a finding carries."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._torch_util import stored_values

__all__ = ["COMPLEX", "FLOAT8", "absmax", "dtype_name", "first_bad", "flatten", "has_zero", "is_float", "nonfinite",
           "stored_values", "taint", "tensor_stats"]

_Tensor = torch.Tensor
_strided = torch.strided
_INF = math.inf

FLOAT8 = frozenset(dt for dt in (getattr(torch, n, None) for n in ("float8_e4m3fn", "float8_e5m2",
                                                                    "float8_e4m3fnuz", "float8_e5m2fnuz"))
                    if dt is not None)
COMPLEX = frozenset({torch.complex32, torch.complex64, torch.complex128})


def dtype_name(dt: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dt).removeprefix("torch.")



def tensor_stats(t: Any, prefix: str) -> dict[str, Any]:
    """min/max/absmax over the finite entries, counts of NaN, inf, zeros, subnormals.

    Of a sparse tensor: over its stored values (``stored`` counts them; ``numel`` is the dense size).
    """
    if not isinstance(t, _Tensor):
        return {f"{prefix}.value": float(t)}
    with torch.no_grad():
        x = t.detach()
        if x.device.type == "meta" or (vals := stored_values(x)) is None:
            return {f"{prefix}.numel": x.numel()}
        d: dict[str, Any] = {f"{prefix}.numel": x.numel()}
        if vals is not x:
            d[f"{prefix}.stored"] = vals.numel()
            x = vals
        if x.is_complex():  # real and imaginary parts together
            x = torch.view_as_real(x.resolve_conj() if x.is_conj() else x)
        if x.is_floating_point():
            tiny = torch.finfo(x.dtype).tiny
        else:
            tiny = 0.0
        x = x.to(torch.float64)
        fin = torch.isfinite(x)
        vals = x[fin]
        if vals.numel():
            d[f"{prefix}.min"] = vals.min().item()
            d[f"{prefix}.max"] = vals.max().item()
            d[f"{prefix}.absmax"] = vals.abs().max().item()
        d[f"{prefix}.nan"] = int(torch.isnan(x).sum())
        d[f"{prefix}.inf"] = int(torch.isinf(x).sum())
        d[f"{prefix}.zeros"] = int((x == 0).sum())
        d[f"{prefix}.subnormal"] = int(((x != 0) & (x.abs() < tiny)).sum()) if tiny else 0
    return d


def nonfinite(v: Any) -> tuple[bool, bool]:
    """(has NaN, has inf) of a tensor or scalar."""
    if isinstance(v, _Tensor):
        if not (v.is_floating_point() or v.is_complex()) or v.numel() == 0:
            return False, False
        if v.dtype in FLOAT8:  # no isinf for float8_e4m3fn
            v = v.float()
        elif v.is_complex():
            v = torch.view_as_real(v.resolve_conj() if v.is_conj() else v)
        lo, hi = torch.aminmax(v.detach())  # one pass for the common case: a finite input
        if lo.item() > -_INF and hi.item() < _INF:
            return False, False
        return bool(torch.isnan(v).any()), bool(torch.isinf(v).any())
    return v != v, v in (_INF, -_INF)


def has_zero(v: Any) -> bool:
    if isinstance(v, _Tensor):
        return v.numel() > 0 and bool((v == 0).any())
    return v == 0


def absmax(v: Any) -> float:
    if isinstance(v, _Tensor):
        if not (v.is_floating_point() or v.is_complex()) or v.numel() == 0:
            return 0.0
        return float(v.detach().abs().max().double())  # float64 values beyond the float32 range stay finite
    return abs(float(v))



def first_bad(tensors: list[Any]) -> list[int]:
    """Indices of the tensors holding a NaN or inf.

    The common case — all finite — costs one reduction pass over each tensor and one
    read: a NaN or an inf anywhere makes the sum NaN or ±inf (inf − inf is NaN), so
    an all-finite group is proved by one finite total. On the CPU the pass is a plain
    ``sum`` per tensor (the cheapest vectorised read; float16/bfloat16 accumulate in
    float32); on accelerators one fused ``torch._foreach_norm`` launch over the group.
    A total that merely overflows from finite values is re-checked tensor by tensor.
    """
    ts: list[Any] = []
    idx: list[int] = []
    for i, t in enumerate(tensors):
        if isinstance(t, _Tensor) and t.is_floating_point() and t.numel():
            if t.layout is not _strided or t.is_nested:  # sparse gradients: their stored values
                t = stored_values(t)
                if t is None or not t.numel():
                    continue
            ts.append(t.detach())
            idx.append(i)
    if not ts:
        return []
    if len(ts) == 1 and ts[0].numel() == 1:  # a loss: one read, no reduction
        v = ts[0].item()
        return [] if -_INF < v < _INF else [idx[0]]
    with torch.no_grad():
        dev = ts[0].device
        if dev.type == "cpu":
            parts = [t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum() for t in ts]
        else:
            parts = list(torch._foreach_norm(ts, 2.0))
        if len(parts) == 1:
            total = parts[0].item()
        else:
            if len({(p.dtype, p.device) for p in parts}) > 1:
                parts = [p.to(dev, torch.float64) for p in parts]
            total = torch.stack(parts).sum().item()
        if -_INF < total < _INF:
            return []
        return [i for i, t in zip(idx, ts, strict=True)
                if not bool(torch.isfinite(t if t.element_size() > 1 else t.float()).all())]  # float8: no isfinite


def is_float(v: Any) -> bool:
    return isinstance(v, _Tensor) and (v.is_floating_point() or v.is_complex()) and v.layout is _strided


def taint(v: Any) -> Any:
    """``v`` with each non-finite entry replaced by NaN (a tensor, a number, or a list of them)."""
    if is_float(v):
        return torch.where(torch.isfinite(v), v, torch.full((), math.nan, dtype=v.dtype, device=v.device))
    if isinstance(v, float) and not math.isfinite(v):
        return math.nan
    if isinstance(v, (list, tuple)):
        out = [taint(x) for x in v]
        return out if isinstance(v, list) else tuple(out)
    return v


def flatten(value: Any) -> list[Any]:
    if isinstance(value, _Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flatten(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten(v)]
    return []
