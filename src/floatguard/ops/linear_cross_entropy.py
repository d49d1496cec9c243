"""The LM head and its cross-entropy in one op, without the (tokens × vocabulary) logits.

A language model's last layer computes ``logits = hidden @ weight.T + bias`` for every token
and every vocabulary entry, only to reduce each row to one number: with 4096 tokens and a
32,000-word vocabulary that is 131 million floats (0.5 GB in float32) made, kept for the
backward, and matched by a gradient of the same size. :func:`linear_cross_entropy` computes
the same loss a block of logits at a time (Liger Kernel's fused linear cross-entropy, Cut
Cross-Entropy of Wijmans et al. 2024), so only one block exists at once:

* PyTorch (:mod:`._lce_torch`): blocks of tokens, all vocabulary entries, gradients formed in
  the forward pass while the block is in cache;
* JAX (:mod:`._lce_jax`): blocks of vocabulary entries, all tokens, an online log-sum-exp
  (running max and rescaled running sum) scanned with ``lax.scan``, and a ``custom_vjp``;
* NumPy: blocks of vocabulary entries with the online log-sum-exp, in float64 (values only).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ._lce_options import Options
from ._namespace import Backend, check_real, finite, namespace, torch_generic_only

__all__ = ["linear_cross_entropy"]

_FUNC = "linear_cross_entropy"
_REDUCTIONS = ("mean", "sum", "none")
_NUMPY_BLOCK = 4096  # vocabulary entries per block on the NumPy path


def linear_cross_entropy(
    hidden: Any,
    weight: Any,
    target: Any,
    *,
    bias: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> Any:
    r"""Cross-entropy of class indices ``target`` under the logits ``hidden @ weight.T + bias``.

    .. math:: z = \mathrm{cap}\,\tanh\!\big((h W^\top + b)/\mathrm{cap}\big), \quad
              \log Z = \log \sum_v e^{z_v}, \quad
              \ell = (1 - \varepsilon)(\log Z - z_t) + \varepsilon\,(\log Z - \bar z)
                     + \lambda (\log Z)^2

    per token, with ``ε`` the ``label_smoothing``, ``z̄`` the mean logit (PyTorch's smoothing:
    the target becomes ``(1 - ε) onehot + ε / V``), ``λ`` the ``z_loss`` coefficient (PaLM's
    auxiliary loss, keeping ``log Z`` near 0) and ``cap`` the ``softcap`` (Gemma 2; no capping
    when None). Tokens whose target is ``ignore_index`` add 0 and are left out of the mean
    (the z-loss too); a mean over no token is NaN, as in PyTorch.

    The logits are never formed in full: they are made a block at a time and reduced with the
    max-shifted log-sum-exp ``log Z = m + log Σ e^{z - m}`` (online over vocabulary blocks on
    JAX and NumPy: a running max ``m`` and a running sum rescaled by ``e^{m_old - m_new}``), so
    nothing overflows — logits of ``1e4`` give the exact loss where ``exp`` alone is ``inf`` —
    and the memory beyond the inputs and gradients is one block. Values and gradients equal the
    unfused float64 computation within the rounding of the input dtype (float32 and bfloat16
    accumulate in float32, float64 in float64); tested in ``tests/ops/test_linear_cross_entropy.py``.
    Inside ``torch.autocast`` the arguments are cast as ``F.linear``'s (to the autocast dtype) and the
    loss is float32, as ``F.cross_entropy(lm_head(hidden), target)`` gives it there.

    Parameters
    ----------
    hidden : array (..., H)
        Final hidden states, one row per token.
    weight : array (V, H)
        The output embedding (``lm_head.weight``), of ``hidden``'s dtype.
    target : integer array (...)
        Class indices in ``[0, V)`` (or ``ignore_index``), of ``hidden``'s shape without its last axis.
    bias : array (V,), optional
    ignore_index, label_smoothing, reduction : as in ``torch.nn.functional.cross_entropy``
    z_loss : float
        Coefficient of ``(log Z)^2`` (``1e-4`` in PaLM); 0 turns it off.
    softcap : float, optional
        Soft cap of the logits, ``cap * tanh(logit / cap)`` (30 in Gemma 2).
    chunk_size : int, optional
        How many logit rows are alive at once: tokens per chunk (PyTorch, and JAX gradients of a
        scalar loss) or vocabulary entries per block (JAX forward and ``reduction="none"``,
        NumPy). By default chosen from the sizes: about 4M logits alive on CPU, 64M on CUDA.
    """
    be = namespace(("hidden", hidden), ("weight", weight), ("target", target), ("bias", bias), func=_FUNC)
    o = _options(ignore_index, label_smoothing, reduction, z_loss, softcap, chunk_size)
    out_dtype = None
    if be.name == "torch":
        hidden, weight, bias, out_dtype = _autocast(hidden, weight, bias)
    lead = _check_arrays(be, hidden, weight, target, bias, o.ignore_index)
    h2 = be.xp.reshape(hidden, (-1, hidden.shape[-1]))
    t1 = be.xp.reshape(target, (-1,))
    if be.name == "torch":
        if torch_generic_only(sys.modules["torch"]):
            out = _composed(h2, weight, bias, t1, o, out_dtype)
        else:
            from . import _lce_torch

            out = _lce_torch.linear_cross_entropy(h2, weight, bias, t1, o, out_dtype)
    elif be.name == "jax":
        from . import _lce_jax

        out = _lce_jax.linear_cross_entropy(h2, weight, bias, t1, o)
    else:
        out = _numpy(h2, weight, bias, t1, o)
    return be.xp.reshape(out, lead) if o.reduction == "none" else out


def _options(ignore_index: Any, label_smoothing: Any, reduction: Any, z_loss: Any, softcap: Any,
             chunk_size: Any) -> Options:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"floatguard.{_FUNC}: argument 'reduction' must be one of 'mean', 'sum', 'none', "
                         f"got {reduction!r}")
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"floatguard.{_FUNC}: argument 'ignore_index' must be an int, got {ignore_index!r}")
    eps = check_real(label_smoothing, "label_smoothing", _FUNC)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"floatguard.{_FUNC}: argument 'label_smoothing' must be in [0, 1], got {eps!r}")
    z = check_real(z_loss, "z_loss", _FUNC)
    if not (z >= 0 and finite(z)):
        raise ValueError(f"floatguard.{_FUNC}: argument 'z_loss' must be a finite number >= 0, got {z!r}")
    cap = None
    if softcap is not None:
        cap = check_real(softcap, "softcap", _FUNC)
        if not (cap > 0 and finite(cap)):
            raise ValueError(f"floatguard.{_FUNC}: argument 'softcap' must be a finite number > 0 or None, "
                             f"got {cap!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"floatguard.{_FUNC}: argument 'chunk_size' must be an int >= 1 or None, "
                         f"got {chunk_size!r}")
    return Options(int(ignore_index), eps, reduction, z, cap, None if chunk_size is None else int(chunk_size))


def _dtype_kind(be: Backend, a: Any) -> str:
    """'f' (real floating), 'i' (integer) or 'x' (anything else) for an array of backend ``be``."""
    dt = a.dtype
    if be.name == "torch":
        if dt.is_floating_point:
            return "f"
        return "x" if dt.is_complex or dt == be.xp.bool else "i"
    if np.dtype(dt).name == "bfloat16":  # ml_dtypes' bfloat16 (NumPy, JAX) is of kind "V"
        return "f"
    kind = np.dtype(dt).kind
    return {"f": "f", "i": "i", "u": "i"}.get(kind, "x")


def _check_arrays(be: Backend, hidden: Any, weight: Any, target: Any, bias: Any, ignore_index: int
                  ) -> tuple[int, ...]:
    """Shapes, dtypes and target range; returns the token shape (``hidden.shape[:-1]``)."""
    for name, a in (("hidden", hidden), ("weight", weight), ("target", target), ("bias", bias)):
        if a is not None and not hasattr(a, "dtype"):
            raise TypeError(f"floatguard.{_FUNC}: argument {name!r} must be an array (NumPy, PyTorch or JAX), "
                            f"got {type(a).__name__}")
    for name, a in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if a is not None and _dtype_kind(be, a) != "f":
            raise TypeError(f"floatguard.{_FUNC}: argument {name!r} must be a real floating-point array, "
                            f"got dtype {a.dtype}")
    if _dtype_kind(be, target) != "i":
        raise TypeError(f"floatguard.{_FUNC}: argument 'target' must hold integer class indices, "
                        f"got dtype {target.dtype}")
    if hidden.ndim < 1:
        raise ValueError(f"floatguard.{_FUNC}: argument 'hidden' must have at least one axis (..., H), got a scalar")
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"floatguard.{_FUNC}: argument 'weight' has shape {tuple(weight.shape)}; expected "
                         f"(V, {hidden.shape[-1]}), one row of the hidden size per vocabulary entry")
    n_cls = int(weight.shape[0])
    if n_cls < 1:
        raise ValueError(f"floatguard.{_FUNC}: argument 'weight' has no rows: the vocabulary is empty")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"floatguard.{_FUNC}: arguments 'hidden' ({hidden.dtype}) and 'weight' ({weight.dtype}) "
                        "must have the same dtype; cast one")
    if bias is not None:
        if tuple(bias.shape) != (n_cls,):
            raise ValueError(f"floatguard.{_FUNC}: argument 'bias' has shape {tuple(bias.shape)}; expected "
                             f"({n_cls},), one per vocabulary entry")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"floatguard.{_FUNC}: arguments 'hidden' ({hidden.dtype}) and 'bias' ({bias.dtype}) "
                            "must have the same dtype; cast one")
    lead = tuple(int(d) for d in hidden.shape[:-1])
    if tuple(target.shape) != lead:
        raise ValueError(f"floatguard.{_FUNC}: argument 'target' has shape {tuple(target.shape)}; expected "
                         f"{lead}, the shape of 'hidden' without its last axis")
    if be.name == "torch" and not hidden.device == weight.device == target.device:
        raise ValueError(f"floatguard.{_FUNC}: arguments 'hidden' ({hidden.device}), 'weight' ({weight.device}) "
                         f"and 'target' ({target.device}) must be on one device")
    if be.compiling():  # torch.compile, torch.export: a runtime assertion in the graph, no branch on values
        bad = ((target < 0) | (target >= n_cls)) & (target != ignore_index)
        sys.modules["torch"]._assert_async(~bad.any(), f"floatguard.{_FUNC}: argument 'target' has class indices "
                                           f"outside [0, {n_cls}); set ignore_index for padding entries")
    elif be.is_concrete(target):  # JAX: a concrete array read through NumPy (its own ops would trace under jit)
        tv = be.host(target)
        bad = ((tv < 0) | (tv >= n_cls)) & (tv != ignore_index)
        if bool(bad.any()):
            raise ValueError(f"floatguard.{_FUNC}: argument 'target' has class indices outside [0, {n_cls}) "
                             f"(e.g. {int(tv[bad][0])}); set ignore_index for padding entries")
    return lead


def _autocast(hidden: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any, Any]:
    """``hidden``, ``weight``, ``bias`` and the loss's dtype (None: ``hidden``'s) as PyTorch's autocast would run
    ``F.cross_entropy(F.linear(hidden, weight, bias), target)``: inside an autocast region for ``hidden``'s device
    the linear layer's floating arguments but float64 ones are cast to the autocast dtype (a bfloat16 ``hidden``
    with the float32 ``lm_head.weight`` of an autocast model) and the loss is float32 (cross-entropy's policy), here
    without rounding it to the autocast dtype first. Outside autocast the arguments are returned unchanged."""
    torch = sys.modules["torch"]
    if not torch._C._is_any_autocast_enabled() or not isinstance(hidden, torch.Tensor) \
            or not torch.is_autocast_enabled(hidden.device.type):
        return hidden, weight, bias, None
    low = torch.get_autocast_dtype(hidden.device.type)

    def cast(a: Any) -> Any:
        ok = isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype is not torch.float64
        return a.to(low) if ok else a

    hidden, weight, bias = cast(hidden), cast(weight), cast(bias)
    return hidden, weight, bias, None if hidden.dtype is torch.float64 else torch.float32


def _composed(h: Any, w: Any, b: Any, t: Any, o: Options, out_dtype: Any) -> Any:
    """The loss under a ``torch.func`` transform (:func:`._namespace.torch_generic_only`), whose wrapped tensors the
    fused path's autograd Function cannot take: the logits in full, in the fused path's accumulation dtype
    (float32 for 16-bit inputs, float64 for float64), and :func:`.cross_entropy` on them. The unfused loss's
    memory; its values and gradients those of the fused path within rounding. The loss in ``out_dtype`` (None:
    ``h``'s; float32 under autocast, see :func:`_autocast`)."""
    from .losses import cross_entropy

    torch = sys.modules["torch"]
    wd = torch.float64 if h.dtype == torch.float64 else torch.float32
    z = h.to(wd) @ w.to(wd).T
    if b is not None:
        z = z + b.to(wd)
    loss = cross_entropy(z, t, ignore_index=o.ignore_index, label_smoothing=o.label_smoothing,
                         reduction=o.reduction, z_loss=o.z_loss, softcap=o.softcap)
    return loss.to(out_dtype or h.dtype)


def _numpy(h: Any, w: Any, b: Any, t: Any, o: Options) -> Any:
    """Loss on NumPy arrays in float64: vocabulary blocks, online log-sum-exp."""
    dtype = h.dtype
    h64, w64 = np.asarray(h, dtype=np.float64), np.asarray(w, dtype=np.float64)
    b64 = None if b is None else np.asarray(b, dtype=np.float64)
    n, v = h64.shape[0], w64.shape[0]
    block = o.chunk_size or _NUMPY_BLOCK
    valid = t != o.ignore_index
    idx = np.where(valid, t, 0)
    m = np.full(n, -np.inf)
    s = np.zeros(n)
    x_t = np.zeros(n)
    sum_x = np.zeros(n)
    with np.errstate(all="ignore"):
        for c0 in range(0, v, block):
            c1 = min(v, c0 + block)
            z = h64 @ w64[c0:c1].T
            if b64 is not None:
                z += b64[c0:c1]
            if o.softcap is not None:
                z = o.softcap * np.tanh(z / o.softcap)
            inside = (idx >= c0) & (idx < c1)
            x_t += np.where(inside, z[np.arange(n), np.clip(idx - c0, 0, c1 - c0 - 1)], 0.0)
            sum_x += z.sum(axis=1)
            # s: the running sum of exp(z - m) without the max's own term, so log Z = m + log1p(s)
            bm, at = z.max(axis=1), z.argmax(axis=1)
            e = np.exp(z - bm[:, None])
            e[np.arange(n), at] = 0.0
            rest = e.sum(axis=1)
            grows = bm > m
            s = np.where(grows, (s + 1) * np.exp(m - bm) + rest, s + (rest + 1) * np.exp(np.where(grows, 0, bm - m)))
            m = np.maximum(m, bm)
        l1p = np.log1p(s)
        lse = m + l1p
        loss = l1p + (m - x_t)
        if o.label_smoothing:
            loss = (1 - o.label_smoothing) * loss + o.label_smoothing * (lse - sum_x / v)
        if o.z_loss:
            loss = loss + o.z_loss * lse**2
        loss = np.where(valid, loss, 0.0)
        if o.reduction == "sum":
            loss = loss.sum()
        elif o.reduction == "mean":
            loss = loss.sum() / valid.sum()
    return np.asarray(loss).astype(dtype)
