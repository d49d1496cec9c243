"""mpmath references of the gradients (vector-Jacobian products) of floatguard's ops, and their
condition numbers: the ``kappa`` in the gradient bound ``2 ulp * max(1, kappa)`` (every dtype).

Each ``grad_*`` returns the exact VJP ``d/dx sum(w * f(x))`` at the exact values of the floating
inputs ``x`` and cotangent ``w`` (an object array of mpf, at least
:data:`~floatguard.testing.DPS` digits, more where a formula cancels), from the closed forms

* ``logsumexp``: ``w p`` (``p = softmax(x)``, ``w`` a scalar);
* ``softmax``: ``p (w - <w, p>)``; ``log_softmax``: ``w - p sum(w)``;
* ``cross_entropy``: ``(Q p - q) / D`` with ``q = w ((1 - eps) t + eps / C)`` (``t`` one-hot or
  probabilities, ``w`` the class weights, ``eps`` the label smoothing), ``Q = sum q``, ``D`` the divisor of the
  reduction (``(p - onehot) / N`` for the plain mean of class indices);
* ``softplus``: ``w sigmoid(x)``; ``log_sigmoid``: ``w sigmoid(-x)``; ``sigmoid``: ``w s (1 - s)``;
* ``logaddexp``: ``(w sigmoid(a - b), w sigmoid(b - a))``;
* ``binary_cross_entropy_with_logits`` (mean): ``(sigmoid(x) - y) / N``;
* ``log1mexp``: ``-w / expm1(-x)``.

Special points follow floatguard's contract: ``-inf`` entries of a row get 0, a row of only
``-inf`` gets zeros, ``logaddexp(-inf, -inf)`` gets ``(0, 0)``, ``log1mexp'(-inf) = 0``.

The condition number of a gradient entry ``g_i`` is ``kappa_i = kappa_in + kappa_out``:

* ``kappa_in``: the relative condition number of the exact ``g_i`` under relative perturbations
  of the op's inputs (``sum_k |x_k dg_i/dx_k| / |g_i|``), the forward tables' ``cond`` applied to
  the gradient;
* ``kappa_out``: the condition of the backward formula evaluated on the forward's rounded
  output (which PyTorch, JAX and floatguard all read): ``1 + |out|`` where it takes
  ``e^{x - out}`` of a log-domain output (logsumexp, cross_entropy, logaddexp), and
  ``(|a| + |b|) / |a - b|`` for a subtraction ``a - b`` that cancels:
  ``(|w_i| + sum_j |w_j p_j|) / |w_i - <w, p>|`` for softmax,
  ``(|w_i| + p_i |sum w| max(1, |log p_i|)) / |w_i - p_i sum w|`` for log_softmax,
  ``(Q p + |q|) / |Q p - q|`` for cross_entropy (``(p + 1) / (1 - p)`` at a plain target; plus the
  ``1 + |lse|``), ``(1 + s) / (1 - s)`` for sigmoid,
  ``(s + |y|) / |s - y|`` for the BCE; 1 where nothing cancels. The weighted mean of the cross-entropy adds
  ``sum_r |w[t_r]| / |sum_r w[t_r]|``, the condition of its divisor.

They are evaluated in float64 with NumPy (a couple of correct digits is all they need).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ._precision import _add, _mp, _obj_array, _precise, to_float64
from .conditions import _np_lse, _softmax_conds
from .references import _lse_parts, _nonfinite_row, ref_sigmoid
from .ulp import ulp_error

__all__ = [
    "cond_grad_bce_with_logits",
    "cond_grad_cross_entropy",
    "cond_grad_log1mexp",
    "cond_grad_log_sigmoid",
    "cond_grad_log_softmax",
    "cond_grad_logaddexp",
    "cond_grad_logsumexp",
    "cond_grad_sigmoid",
    "cond_grad_softmax",
    "cond_grad_softplus",
    "grad_bce_with_logits",
    "grad_cross_entropy",
    "grad_log1mexp",
    "grad_log_sigmoid",
    "grad_log_softmax",
    "grad_logaddexp",
    "grad_logsumexp",
    "grad_sigmoid",
    "grad_softmax",
    "grad_softplus",
    "grad_ulp_error",
]


# -- row ops (1-D rows; the cross-entropy takes (N, C) rows) ------------------------------------
def _row(x: Any) -> tuple[float, ...]:
    x64 = to_float64(x)
    if x64.ndim != 1:
        raise ValueError("floatguard.testing: gradient references of the row ops take a 1-D row x")
    xs = tuple(x64.tolist())
    if _nonfinite_row(xs) in ("nan", "+inf"):
        raise ValueError("floatguard.testing: gradient references need x without NaN or +inf")
    return xs


def _probs(xs: tuple[float, ...]) -> tuple[list[Any], list[Any], int]:
    """``(e, p, k)`` at the current precision: ``e_i = e^{x_i - max}``, ``p = softmax``, ``k`` the argmax."""
    mp = _mp()
    if _nonfinite_row(xs) == "empty":
        return [mp.zero] * len(xs), [mp.zero] * len(xs), 0
    _, k, s, _, e = _lse_parts(xs)
    return e, [ei / (1 + s) for ei in e], k


def _weights(w: Any, n: int) -> list[Any]:
    mp = _mp()
    return [mp.mpf(v) for v in np.broadcast_to(to_float64(w), (n,)).tolist()]


@_precise
def _grad_rows(xs: tuple[float, ...], ws: tuple[float, ...], kind: str) -> list[Any]:
    mp = _mp()
    _, p, _ = _probs(xs)
    w = _weights(ws, len(xs))
    if kind == "logsumexp":
        return [w[0] * pi for pi in p]
    if kind == "softmax":
        if sum(pi != 0 for pi in p) <= 1:  # one entry carries all the mass: the gradient is 0
            return [mp.zero] * len(xs)
        dot = mp.fsum(wi * pi for wi, pi in zip(w, p, strict=True))
        return [pi * _add(wi, -dot) if pi != 0 else mp.zero for wi, pi in zip(w, p, strict=True)]
    total = mp.fsum(w)  # log_softmax
    return [_add(wi, -pi * total) for wi, pi in zip(w, p, strict=True)]


def grad_logsumexp(x: Any, w: Any) -> np.ndarray:
    """``d/dx (w lse(x)) = w softmax(x)`` of a 1-D row ``x`` and a scalar ``w``: object array of mpf."""
    return _obj_array(_grad_rows(_row(x), (float(w),), "logsumexp"))


def grad_softmax(x: Any, w: Any) -> np.ndarray:
    """``d/dx sum(w softmax(x)) = p (w - <w, p>)`` of a 1-D row: object array of mpf."""
    xs = _row(x)
    return _obj_array(_grad_rows(xs, tuple(np.broadcast_to(to_float64(w), (len(xs),)).tolist()), "softmax"))


def grad_log_softmax(x: Any, w: Any) -> np.ndarray:
    """``d/dx sum(w log_softmax(x)) = w - p sum(w)`` of a 1-D row: object array of mpf."""
    xs = _row(x)
    return _obj_array(_grad_rows(xs, tuple(np.broadcast_to(to_float64(w), (len(xs),)).tolist()), "log_softmax"))


def _ce_args(
    x: Any, target: Any, weight: Any, label_smoothing: float, reduction: str, name: str
) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
    """``(x, target, probabilities?, weight)`` of a cross-entropy reference, checked: ``x`` (N, C); ``target``
    class indices (N,) or probabilities (N, C) (a floating array of ``x``'s shape); ``weight`` (C,) (ones if
    None)."""
    x64 = to_float64(x)
    if x64.ndim != 2:
        raise ValueError(f"floatguard.testing.{name}: need x (N, C), got shape {x64.shape}")
    n, c = x64.shape
    if hasattr(target, "detach"):  # torch, without importing it
        target = target.detach().cpu()
        target = (target.double() if target.is_floating_point() else target).numpy()
    t = np.asarray(target)
    probs = t.ndim == 2
    if probs:
        if t.shape != x64.shape or t.dtype.kind in "biu":
            raise ValueError(
                f"floatguard.testing.{name}: need target (N,) class indices or (N, C) probabilities "
                f"like x {x64.shape}, got {t.dtype} {t.shape}"
            )
        t = to_float64(t)
    else:
        t = t.reshape(-1)
        if t.shape != (n,):
            raise ValueError(
                f"floatguard.testing.{name}: need target (N,) class indices or (N, C) probabilities "
                f"like x {x64.shape}, got shape {np.shape(target)}"
            )
        if t.size and (np.min(t) < 0 or np.max(t) >= c):
            raise ValueError(f"floatguard.testing.{name}: target class indices must lie in [0, {c})")
    w = np.ones(c) if weight is None else to_float64(weight)
    if w.shape != (c,):
        raise ValueError(f"floatguard.testing.{name}: need weight (C,) = ({c},), got shape {w.shape}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"floatguard.testing.{name}: label_smoothing must lie in [0, 1], got {label_smoothing}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"floatguard.testing.{name}: reduction must be 'mean' or 'sum', got {reduction!r}")
    return x64, t, probs, w


def _others(v: list[Any]) -> list[Any]:
    """``sum_{i != j} v_i`` for every ``j``, from prefix and suffix sums (no ``total - v_j`` to cancel; the one
    addition checked, for signed ``v``)."""
    mp = _mp()
    pre, suf = [mp.zero] * (len(v) + 1), [mp.zero] * (len(v) + 1)
    for i, vi in enumerate(v):
        pre[i + 1] = pre[i] + vi
    for i in range(len(v) - 1, -1, -1):
        suf[i] = suf[i + 1] + v[i]
    return [_add(pre[j], suf[j + 1]) for j in range(len(v))]


@_precise
def _grad_ce_row(
    xs: tuple[float, ...], t: tuple[float, ...], w: tuple[float, ...], eps: float, den: tuple[float, ...]
) -> list[Any]:
    """``d/dx -sum_i q_i log softmax(x)_i / D`` of one row, ``q_i = w_i ((1 - eps) t_i + eps / C)`` (``t`` the
    one-hot target or the probabilities), ``D = sum(den)``: ``(Q p_j - q_j) / D`` with ``Q = sum q``, evaluated as
    ``(p_j sum_{i != j} q_i - q_j sum_{i != j} e_i / sum e) / D`` (``1 - p_j = rest / total``: nothing cancels but
    the one subtraction, checked)."""
    mp = _mp()
    d = mp.fsum(mp.mpf(v) for v in den)
    if _nonfinite_row(xs) == "empty":  # floatguard's contract: a row without a finite max has gradient 0
        return [mp.zero] * len(xs)
    if d == 0:
        return [mp.nan] * len(xs)
    e, p, _ = _probs(xs)
    ep = mp.mpf(eps)
    q = [
        mp.mpf(wi) * ((1 - ep) * mp.mpf(ti) + ep / len(xs)) if ep else mp.mpf(wi) * mp.mpf(ti)
        for wi, ti in zip(w, t, strict=True)
    ]
    total = mp.fsum(e)
    return [_add(pj * qo, -qj * eo / total) / d for pj, qj, qo, eo in zip(p, q, _others(q), _others(e), strict=True)]


def grad_cross_entropy(
    x: Any, target: Any, *, weight: Any = None, label_smoothing: float = 0.0, reduction: str = "mean"
) -> np.ndarray:
    """``d/dx`` of ``cross_entropy(x, target, weight=, label_smoothing=, reduction=)`` of rows ``x`` (N, C):
    object array of mpf (N, C).

    PyTorch's semantics: ``target`` class indices (N,) (the mean of ``(softmax(x_r) - onehot(t_r))`` without
    ``weight`` and smoothing) or probabilities (N, C) (a floating array of ``x``'s shape); the loss of row ``r``
    is ``-sum_i w_i q_ri log softmax(x_r)_i`` with ``q_r = (1 - eps) t_r + eps / C`` (``t_r`` one-hot for an
    index), gradient ``(sum_i w_i q_ri) p_rj - w_j q_rj``; ``"mean"`` divides by ``sum_r w[t_r]`` for indices
    (``N`` without ``weight``), by ``N`` for probabilities; ``"sum"`` by 1. ``ValueError`` (naming the argument)
    on a bad shape, class index, smoothing or reduction, or a target logit that is not finite.
    """
    x64, t, probs, w = _ce_args(x, target, weight, label_smoothing, reduction, "grad_cross_entropy")
    n, c = x64.shape
    xs = [_row(r) for r in x64]
    if probs:
        ts = [tuple(r.tolist()) for r in t]
    else:
        ks = [int(k) for k in t.tolist()]
        if any(not math.isfinite(row[k]) for row, k in zip(xs, ks, strict=True)):
            raise ValueError("floatguard.testing.grad_cross_entropy: the target logit must be finite")
        ts = [tuple(float(i == k) for i in range(c)) for k in ks]
    if reduction == "sum":
        den: tuple[float, ...] = (1.0,)
    elif probs or weight is None:
        den = (float(n),)
    else:
        den = tuple(w[t.astype(np.int64)].tolist())
    wt = tuple(w.tolist())
    grads = [_grad_ce_row(row, tr, wt, float(label_smoothing), den) for row, tr in zip(xs, ts, strict=True)]
    return _obj_array([v for g in grads for v in g], x64.shape)


# -- elementwise ops ----------------------------------------------------------------------------
def _ew(values: Iterable[Any], shape: tuple[int, ...]) -> np.ndarray:
    return _obj_array(list(values), shape)


def _bcast(*arrays: Any) -> tuple[tuple[int, ...], list[list[float]]]:
    bs = np.broadcast_arrays(*(to_float64(a) for a in arrays))
    return bs[0].shape, [b.ravel().tolist() for b in bs]


def grad_softplus(x: Any, w: Any) -> np.ndarray:
    """``w softplus'(x) = w sigmoid(x)``: object array of mpf."""
    shape, (xs, ws) = _bcast(x, w)
    return _ew((_mp().mpf(wi) * ref_sigmoid(xi) for xi, wi in zip(xs, ws, strict=True)), shape)


def grad_log_sigmoid(x: Any, w: Any) -> np.ndarray:
    """``w log_sigmoid'(x) = w sigmoid(-x)``: object array of mpf."""
    shape, (xs, ws) = _bcast(x, w)
    return _ew((_mp().mpf(wi) * ref_sigmoid(-xi) for xi, wi in zip(xs, ws, strict=True)), shape)


def grad_sigmoid(x: Any, w: Any) -> np.ndarray:
    """``w sigmoid'(x) = w s (1 - s)`` with ``1 - s = sigmoid(-x)``: object array of mpf."""
    shape, (xs, ws) = _bcast(x, w)
    mp = _mp()
    return _ew((mp.mpf(wi) * ref_sigmoid(xi) * ref_sigmoid(-xi) for xi, wi in zip(xs, ws, strict=True)), shape)


def _sig_diff(a: float, b: float) -> Any:
    """``sigmoid(a - b)`` with ``a - b`` exact; 0 for ``a = b = -inf`` (floatguard's contract)."""
    mp = _mp()
    if math.isnan(a) or math.isnan(b):
        return mp.nan
    if a == b == -math.inf:
        return mp.zero
    if math.isinf(a) or math.isinf(b):
        if a == b:
            return mp.nan
        return mp.one if a > b else mp.zero
    with mp.workprec(2200):  # a - b of two float64s is exact at this precision
        d = mp.mpf(a) - mp.mpf(b)
    return 1 / (1 + mp.exp(-d))


def grad_logaddexp(a: Any, b: Any, w: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(w sigmoid(a - b), w sigmoid(b - a))``, the VJP of ``logaddexp(a, b)``: two object arrays."""
    shape, (av, bv, wv) = _bcast(a, b, w)
    mp = _mp()
    with mp.workdps(60):
        ga = [mp.mpf(wi) * _sig_diff(x, y) for x, y, wi in zip(av, bv, wv, strict=True)]
        gb = [mp.mpf(wi) * _sig_diff(y, x) for x, y, wi in zip(av, bv, wv, strict=True)]
    return _ew(ga, shape), _ew(gb, shape)


def grad_bce_with_logits(x: Any, y: Any) -> np.ndarray:
    """``d/dx mean BCE(x, y) = (sigmoid(x) - y) / N`` (``N`` the number of entries): object array of mpf."""
    shape, (xs, ys) = _bcast(x, y)
    n = max(len(xs), 1)
    return _ew((_bce_one(xi, yi) / n for xi, yi in zip(xs, ys, strict=True)), shape)


@_precise
def _bce_one(x: float, y: float) -> Any:
    mp = _mp()
    if y == 1:
        return -ref_sigmoid(-x)
    if y == 0:
        return ref_sigmoid(x)
    return _add(ref_sigmoid(x), -mp.mpf(y))


def grad_log1mexp(x: Any, w: Any) -> np.ndarray:
    """``w log1mexp'(x) = -w / expm1(-x)`` for ``x <= 0``; 0 at ``-inf``, ``-inf`` at 0, NaN above 0."""
    shape, (xs, ws) = _bcast(x, w)
    mp = _mp()

    def one(xi: float, wi: float) -> Any:
        if math.isnan(xi) or xi > 0:
            return mp.nan
        if xi == -math.inf:
            return mp.zero
        if xi == 0:
            return mp.ninf if wi > 0 else (mp.inf if wi < 0 else mp.nan)
        with mp.workdps(60):
            return -mp.mpf(wi) / mp.expm1(-mp.mpf(xi))

    return _ew((one(xi, wi) for xi, wi in zip(xs, ws, strict=True)), shape)


# -- condition numbers (float64, NumPy) ---------------------------------------------------------
def _np_probs(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        m = np.max(x)
        m = m if np.isfinite(m) else 0.0
        e = np.exp(x - m)
        return e / np.sum(e) if np.sum(e) > 0 else np.zeros_like(x)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / |den|``, 0 where both are 0, inf where only ``den`` is."""
    num, den = np.abs(num), np.abs(den)
    with np.errstate(all="ignore"):
        out = np.where(den == 0, np.where(num == 0, 0.0, math.inf), num / np.where(den == 0, 1.0, den))
    return np.nan_to_num(out, nan=0.0, posinf=math.inf)


def _abs_x(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.where(p > 0, np.abs(np.where(np.isfinite(x), x, 0.0)), 0.0)


def cond_grad_logsumexp(x: Any, w: Any = 1.0) -> np.ndarray:
    """``cond_softmax_i + 1 + |lse(x)|``: ``w e^{x_i - lse}`` read from the rounded ``lse``."""
    del w
    x64 = to_float64(x).ravel()
    lse = float(_np_lse(x64))
    return _softmax_conds(x64, log=False) + 1.0 + (abs(lse) if math.isfinite(lse) else 0.0)


def cond_grad_softmax(x: Any, w: Any) -> np.ndarray:
    """``sum_k |x_k| |delta_ik - p_k - p_k v_k / v_i| + (|w_i| + sum_j |w_j p_j|) / |v_i|``, ``v = w - <w, p>``."""
    x64 = to_float64(x).ravel()
    w64 = np.broadcast_to(to_float64(w), x64.shape)
    p = _np_probs(x64)
    v = w64 - np.dot(w64, p)
    ax = _abs_x(x64, p)
    with np.errstate(all="ignore"):
        r = np.where(v != 0, (p * v)[None, :] / v[:, None], math.inf)  # r[i, k] = p_k v_k / v_i
        m = np.eye(x64.size) - p[None, :] - r
        k_in = np.nansum(np.where(ax[None, :] > 0, ax[None, :] * np.abs(m), 0.0), axis=1)
    k_out = _ratio(np.abs(w64) + np.dot(np.abs(w64), p), v)
    return np.where(p > 0, k_in + k_out, 0.0)


def cond_grad_log_softmax(x: Any, w: Any) -> np.ndarray:
    """``|sum w| p_i cond_softmax_i / |g_i| + (|w_i| + p_i |sum w| max(1, |log p_i|)) / |g_i|``."""
    x64 = to_float64(x).ravel()
    w64 = np.broadcast_to(to_float64(w), x64.shape)
    p = _np_probs(x64)
    total = float(np.sum(w64))
    g = w64 - p * total
    with np.errstate(divide="ignore"):
        logp = np.where(p > 0, np.abs(np.log(p)), 0.0)
    k_in = _ratio(abs(total) * p * _softmax_conds(x64, log=False), g)
    return k_in + _ratio(np.abs(w64) + p * abs(total) * np.maximum(1.0, logp), g)


def cond_grad_cross_entropy(
    x: Any, target: Any, *, weight: Any = None, label_smoothing: float = 0.0, reduction: str = "mean"
) -> np.ndarray:
    """Per entry of ``(Q p_j - q_j) / D`` (see :func:`grad_cross_entropy`; ``(p - onehot) / N`` without weight
    and smoothing): ``(|q|_1 p_j (cond_softmax_j + 1 + |lse|) + |q_j|) / |Q p_j - q_j|``, plus
    ``sum_r |w[t_r]| / |sum_r w[t_r]|`` for the divisor of the weighted mean of class indices."""
    x64, t, probs, w = _ce_args(x, target, weight, label_smoothing, reduction, "cond_grad_cross_entropy")
    eps = float(label_smoothing)
    n, c = x64.shape
    out = np.empty_like(x64)
    for r, row in enumerate(x64):
        if probs:
            tr = t[r]
        else:
            tr = np.zeros(c)
            tr[int(t[r])] = 1.0
        q = w * ((1 - eps) * tr + eps / c)
        p = _np_probs(row)
        g = np.sum(q) * p - q
        lse = float(_np_lse(row))
        lse = abs(lse) if math.isfinite(lse) else 0.0
        out[r] = _ratio(np.sum(np.abs(q)) * p * (_softmax_conds(row, log=False) + 1.0 + lse) + np.abs(q), g)
    if reduction == "mean" and not probs and weight is not None:
        wt = w[t.astype(np.int64)]
        out += _ratio(np.sum(np.abs(wt)), np.sum(wt)) if n else 0.0
    return out


def _sig(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


def _fin(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, 0.0)


def cond_grad_softplus(x: Any) -> np.ndarray:
    """``|x| (1 - sigmoid(x)) + 1`` (sigmoid's condition number; nothing cancels)."""
    x64 = _fin(to_float64(x))
    return np.abs(x64) * _sig(-x64) + 1.0


def cond_grad_log_sigmoid(x: Any) -> np.ndarray:
    """``|x| sigmoid(x) + 1``."""
    x64 = _fin(to_float64(x))
    return np.abs(x64) * _sig(x64) + 1.0


def cond_grad_sigmoid(x: Any) -> np.ndarray:
    """``|x tanh(x / 2)| + (1 + s) / (1 - s)``: ``s (1 - s)`` read from the rounded ``s = sigmoid(x)``."""
    x64 = _fin(to_float64(x))
    s = _sig(x64)
    return np.abs(x64 * np.tanh(x64 / 2)) + _ratio(1 + s, _sig(-x64))


def cond_grad_logaddexp(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(|a| + |b|) sigmoid(-+(a - b)) + 1 + |logaddexp(a, b)|`` (``e^{a - out}`` read from the rounded ``out``;
    1 where an argument is infinite)."""
    a64, b64 = np.broadcast_arrays(to_float64(a), to_float64(b))
    fin = np.isfinite(a64) & np.isfinite(b64)
    mag = np.abs(_fin(a64)) + np.abs(_fin(b64))
    with np.errstate(invalid="ignore"):
        d = _fin(a64 - b64)
    out = 1.0 + np.abs(np.logaddexp(_fin(a64), _fin(b64)))
    return np.where(fin, mag * _sig(-d) + out, 1.0), np.where(fin, mag * _sig(d) + out, 1.0)


def cond_grad_bce_with_logits(x: Any, y: Any) -> np.ndarray:
    """``(|x| s (1 - s) + s + |y|) / |s - y|`` with ``s = sigmoid(x)``."""
    x64, y64 = np.broadcast_arrays(_fin(to_float64(x)), to_float64(y))
    s = _sig(x64)
    g = np.where(y64 == 1, -_sig(-x64), s - y64)
    return _ratio(np.abs(x64) * s * _sig(-x64) + s + np.abs(y64), g)


def cond_grad_log1mexp(x: Any) -> np.ndarray:
    """``|x / expm1(x)| + 1`` for ``x < 0``."""
    x64 = to_float64(x)
    with np.errstate(all="ignore"):
        k = np.abs(_fin(x64) / np.expm1(np.where(x64 < 0, _fin(x64), -1.0)))
    return np.where(x64 < 0, k, 0.0) + 1.0


def grad_ulp_error(got: Any, exact: Any, kappa: Any, dtype: Any, ftz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The error of a computed gradient in ulps of ``dtype``, and the same over ``max(1, kappa)`` (the gradient
    bound is 2 of those); a NaN ratio counts as infinite.

    ``ftz``: the results of a platform that flushes subnormals (XLA on CPU): below the smallest normal its
    resolution is that number, so an exact subnormal that came out within it counts as exact.
    """
    got = np.asarray(got).reshape(np.shape(exact))
    err = np.asarray(ulp_error(got, exact, dtype), dtype=np.float64)
    if ftz:
        tiny = float(np.finfo(np.float32 if np.dtype(dtype) == np.float32 else np.float64).tiny)
        ex = np.asarray(exact, dtype=np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf where both are infinite
            err = np.where((np.abs(ex) < tiny) & (np.abs(got - ex) <= tiny), 0.0, err)
    with np.errstate(all="ignore"):
        per = np.where(err == 0, 0.0, err / np.fmax(1.0, np.asarray(kappa, dtype=np.float64)))
    return err, np.where(np.isnan(per), math.inf, per)
