r"""Complex inputs of logsumexp, softmax, log_softmax and logaddexp.

For complex :math:`z_i = x_i + i y_i` the log-sum-exp is

.. math:: \log \sum_i b_i e^{z_i} = m + \log\Big(t_k \big(1 + \sum_{i \ne k} t_i / t_k\big)\Big),
          \qquad t_i = b_i e^{z_i - m},

with :math:`m = \max_i x_i` the largest *real* part (only the real part sets the
magnitude) and :math:`k` its first index. The max term is taken out as in the real
case: :math:`\log t_k = \log|b_k| + i(y_k + \arg b_k)` is exact, and
:math:`\log(1 + q)` is computed as :math:`\tfrac12 \mathrm{log1p}(2\Re q + |q|^2) + i
\,\mathrm{atan2}(\Im q, 1 + \Re q)`, which keeps the digits of a small :math:`q`
(NumPy's complex ``log1p`` forms ``1 + q`` first), with :math:`\log \mathrm{hypot}(1 + \Re q,
\Im q)` as the real part where :math:`1 + q` cancels (:func:`_log1p`). The imaginary part of the result is
the phase, wrapped to :math:`(-\pi, \pi]` as in SciPy (the principal branch of ``log``).
Rows whose max real part is not finite, and results that are not finite, take the
direct :math:`\log \sum b_i e^{z_i}`, so that infinities follow C99's complex
``exp`` and ``log`` exactly as SciPy's do.

Everything is computed in complex128 (complex64 for JAX without x64) and rounded
once. All functions work on rows: the reduced axis is the last one.
"""

from __future__ import annotations

import math
from typing import Any

from ._namespace import Backend, as_inexact, is_complex_dtype, namespace, promoted_dtype

__all__ = ["logaddexp", "logsumexp_rows", "softmax_rows", "wrap_phase"]


def work_dtype(be: Backend) -> Any:
    """complex128, or complex64 where the backend has no float64 (JAX without x64)."""
    xp = be.xp
    return xp.complex128 if be.work_dtype(None) == xp.float64 else xp.complex64


def wrap_phase(xp: Any, theta: Any) -> Any:
    """``theta`` in ``(-pi, pi]``; unchanged (all its digits kept) when already inside."""
    wrapped = -((-theta + math.pi) % (2 * math.pi) - math.pi)
    return xp.where(xp.abs(theta) < math.pi, theta, wrapped)


def _cplx(xp: Any, re: Any, im: Any, dtype: Any) -> Any:
    """``re + i im`` as an array of complex ``dtype`` (backends differ on ``complex(re, im)``)."""
    return xp.astype(re, dtype) + xp.astype(im, dtype) * xp.asarray(1j, dtype=dtype)


def _neg_inf_like(be: Backend, z: Any) -> Any:
    xp = be.xp
    return xp.full_like(z, complex(-math.inf, 0.0))


def _shift(be: Backend, z: Any, mask: Any) -> tuple[Any, Any, Any, Any]:
    """Masked rows ``z``, their max real part ``m`` (keepdims), whether it is finite, and the
    one-hot position ``is_k`` of the first entry with that real part."""
    xp = be.xp
    if mask is not None:
        z = xp.where(mask, z, _neg_inf_like(be, z))
    re = be.stop_gradient(xp.real(z))
    n = z.shape[-1]
    if n == 0:
        m = xp.sum(re, axis=-1, keepdims=True) - math.inf
        return z, m, xp.isfinite(m), None
    m = xp.max(re, axis=-1, keepdims=True)
    k = xp.argmax(re, axis=-1, keepdims=True)
    idx = xp.arange(n, dtype=k.dtype)
    if be.name == "torch":
        idx = idx.to(k.device)
    return z, m, xp.isfinite(m), idx == k


def _log1p(xp: Any, q: Any) -> tuple[Any, Any]:
    """Real and imaginary parts of ``log(1 + q)``: accurate for small ``|q|`` and where ``1 + q`` cancels.

    ``u = |1 + q|^2 - 1 = Re q (2 + Re q) + Im q^2`` and ``log1p(u) / 2`` keep the digits of a small ``q``; where
    ``|1 + q|^2 < 1/2`` (``q`` near -1: terms that cancel, ``e^{z_0} + e^{z_0 + i pi + d}``) ``u`` is about -1 with
    an absolute error of an ulp of 1, all of ``|1 + q|^2`` when that is tiny, so the real part is then
    ``log(hypot(1 + Re q, Im q))``, where ``1 + Re q`` is exact (Sterbenz). It was 0.18 off (a relative 1.3e-3,
    a million times its condition number) for ``logsumexp([159+235.26j, 159+238.40j])``, whose terms cancel to
    ``1.2e-8`` of each."""
    qr, qi = xp.real(q), xp.imag(q)
    u = qr * (2 + qr) + qi * qi
    one_qr = 1 + qr
    near = u < -0.5
    re = xp.where(near, xp.log(xp.hypot(xp.where(near, one_qr, xp.ones_like(qr)), qi)),
                  0.5 * xp.log1p(xp.where(near, xp.zeros_like(u), u)))
    return re, xp.atan2(qi, one_qr)


def logsumexp_rows(be: Backend, z: Any, b: Any, mask: Any, return_sign: bool) -> tuple[Any, Any]:
    """``log sum_i b_i e^{z_i}`` over the last axis (keepdims) of complex rows ``z``.

    ``b`` (real or complex, same shape, or None) and ``mask`` (bool or None) as in
    :func:`floatguard.logsumexp`. Returns ``(value, sign)``: with ``return_sign`` the
    value is the real ``log|sum|`` and the sign the complex phase ``sum / |sum|`` (SciPy's
    convention); without it the value is complex (phase as imaginary part) and the sign None.
    """
    xp = be.xp
    wd = work_dtype(be)
    z = xp.astype(z, wd)
    if b is not None:
        b = xp.astype(b, wd)
        nonzero = b != 0  # a zero weight leaves its entry out, even an infinite one (as SciPy)
        mask = nonzero if mask is None else (mask & nonzero)
    z, m, finite, is_k = _shift(be, z, mask)
    # the direct form: C99 semantics for rows with an infinite or NaN real part
    terms = xp.exp(z) if b is None else b * xp.exp(z)
    if mask is not None:
        terms = xp.where(mask, terms, xp.zeros_like(terms))
    direct = xp.sum(terms, axis=-1, keepdims=True)
    unit = None  # sum / |sum| as a product of unit factors (exact for a phase like b = 1j)
    if is_k is None:  # empty rows
        re, im = xp.real(xp.log(direct)), xp.zeros_like(m)
    else:
        m0 = xp.where(finite, m, xp.zeros_like(m))
        t = xp.exp(xp.where(finite, z - xp.astype(m0, wd), xp.zeros_like(z)))
        if b is not None:
            t = b * t
        if mask is not None:
            t = xp.where(mask, t, xp.zeros_like(t))
        zero = xp.zeros_like(t)
        t_k = xp.sum(xp.where(is_k, t, zero), axis=-1, keepdims=True)
        z_k = xp.sum(xp.where(is_k, z, xp.zeros_like(z)), axis=-1, keepdims=True)
        b_k = xp.ones_like(t_k) if b is None else xp.sum(xp.where(is_k, b, zero), axis=-1, keepdims=True)
        ok = finite & (t_k != 0)
        safe_tk = xp.where(ok, t_k, xp.ones_like(t_k))
        q = xp.sum(xp.where(is_k, zero, t), axis=-1, keepdims=True) / safe_tk
        l_re, l_im = _log1p(xp, q)
        safe_bk = xp.where(ok, b_k, xp.ones_like(b_k))
        re = m0 + (xp.real(z_k) - m0) + xp.log(xp.abs(safe_bk)) + l_re
        im = xp.imag(z_k) + xp.atan2(xp.imag(safe_bk), xp.real(safe_bk)) + l_im
        fine = ok & xp.isfinite(re) & xp.isfinite(im)
        log_direct = xp.log(direct)
        re = xp.where(fine, re, xp.real(log_direct))
        im = xp.where(fine, im, xp.imag(log_direct))
        if return_sign:
            one_q = 1 + q
            unit = (safe_bk / xp.astype(xp.abs(safe_bk), wd)) * xp.exp(_cplx(xp, xp.zeros_like(re), xp.imag(z_k), wd))
            unit = unit * one_q / xp.astype(xp.where(one_q != 0, xp.abs(one_q), xp.ones_like(re)), wd)
            unit = xp.where(fine, unit, xp.zeros_like(unit))
            fine_rows = fine
    im = wrap_phase(xp, im)
    if not return_sign:
        return _cplx(xp, re, im, wd), None
    abs_direct = xp.abs(direct)
    direct_sign = direct / xp.astype(xp.where(abs_direct > 0, abs_direct, xp.ones_like(abs_direct)), wd)
    direct_sign = xp.astype(direct_sign, wd)
    sign = direct_sign if unit is None else xp.where(fine_rows, unit, direct_sign)
    return re, sign


def softmax_rows(be: Backend, z: Any, mask: Any, log: bool) -> Any:
    """softmax ``e^{z_i} / sum_j e^{z_j}`` or log_softmax ``z_i - log sum_j e^{z_j}`` of complex rows.

    Shifted by the max real part; log_softmax takes the max term out as logsumexp does
    (``(z_i - z_k) - log(1 + q)``). Its imaginary part is not wrapped: ``exp`` of it is
    the softmax. Masked entries give 0 (softmax) and ``-inf`` (log_softmax).
    """
    xp = be.xp
    wd = work_dtype(be)
    z = xp.astype(z, wd)
    z, m, finite, is_k = _shift(be, z, mask)
    if is_k is None:  # empty rows: nothing to normalize
        return z
    m0 = xp.where(finite, m, xp.zeros_like(m))
    d = xp.where(finite, z - xp.astype(m0, wd), xp.zeros_like(z))
    zero = xp.zeros_like(d)
    d_k = xp.sum(xp.where(is_k, d, zero), axis=-1, keepdims=True)
    # e^{z_i} / e^{z_k}: exactly 1 at k; q the sum of the others. The softmax is r / (1 + q), whose max entry
    # 1 / (1 + q) keeps q's imaginary part (dividing by the sum with the max term inside, e^{i Im z_k} + ..., lost it
    # where |q| is below an ulp of 1: softmax of [295.4+0.40j, 238.0-0.58j]'s first entry came out 1+0j, not
    # 1+9.5e-26j)
    r = xp.exp(d - d_k)
    if mask is not None:
        r = xp.where(mask, r, zero)
    q = xp.sum(xp.where(is_k, zero, r), axis=-1, keepdims=True)
    # rows with no finite max real part: the direct form (NaN or the limits of C99's exp)
    naive_e = xp.exp(z)
    if mask is not None:
        naive_e = xp.where(mask, naive_e, zero)
    naive_total = xp.sum(naive_e, axis=-1, keepdims=True)
    if not log:
        return xp.where(finite, r / (1 + q), naive_e / naive_total)
    l_re, l_im = _log1p(xp, q)
    out = (d - d_k) - _cplx(xp, l_re, l_im, wd)
    if mask is not None:
        out = xp.where(mask, out, _neg_inf_like(be, out))
    return xp.where(finite, out, xp.log(naive_e / naive_total))


def logaddexp(a: Any, b: Any) -> Any:
    """``log(e^a + e^b)`` for complex ``a`` or ``b``: :func:`logsumexp_rows` of the pair."""
    be = namespace(("a", a), ("b", b), func="logaddexp")
    xp = be.xp
    dtype = promoted_dtype(be, a, b)
    a = xp.astype(as_inexact(be, a, "a", "logaddexp"), dtype)
    b = xp.astype(as_inexact(be, b, "b", "logaddexp"), dtype)
    try:
        a, b = xp.broadcast_arrays(a, b)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"floatguard.logaddexp: arguments 'a' (shape {tuple(a.shape)}) and "
            f"'b' (shape {tuple(b.shape)}) do not broadcast together"
        ) from exc
    val, _ = logsumexp_rows(be, xp.stack([a, b], axis=-1), None, None, False)
    out = xp.astype(xp.reshape(val, tuple(a.shape)), dtype)
    return out[()] if be.name == "numpy" and out.ndim == 0 else out


def is_complex_input(*values: Any) -> bool:
    """True when some value is a complex array or a Python complex (the complex branch's hook)."""
    for v in values:
        if isinstance(v, complex):
            return True
        dtype = getattr(v, "dtype", None)
        if dtype is not None and hasattr(v, "shape"):
            be = namespace(("x", v), func="logaddexp")
            if is_complex_dtype(be, dtype):
                return True
    return False
