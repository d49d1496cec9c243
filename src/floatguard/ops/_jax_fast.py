"""JAX path of logsumexp, softmax and log_softmax: the same algorithm in passes XLA fuses, analytic JVPs.

Through the generic array-API code (``_core.shifted``) XLA sees an argmax, a
one-hot mask of the max, ``expm1`` of the max term and several ``where``. On
CPU (XLA 0.10) the reductions run as YNNPACK fusions, which take sums, min,
max, products, ``exp`` and ``log`` but no compare or select: each ``where``
over the data is written out to memory and read back, 3.5 to 13 times slower
than ``jax.nn`` under ``jax.jit`` (``benchmarks/ops_speed.py``).

Here each op is a ``jax.custom_jvp`` function of rows: the last axis of an array of
any rank (``(R, n)`` from the rows stage, the array as it is from a plain call, see
:mod:`._jax_kernels`) whose passes over the data use only those operations. In the
working dtype (float64 for float32 and float64 inputs where available, as the
generic path; float32 for float16 and bfloat16, see :func:`_work_dtype`), with ``m`` the
row max, ``MAX`` the largest finite value of the input dtype and ``BIG`` the
largest power of two of the working dtype::

    a   = clip(m, -MAX, MAX)
    d_i = min(x_i, MAX) - a                  # x_i - m on rows with a finite max
    g_i = -d_i * BIG                         # >= 1 where d_i < 0, 0 where d_i == 0
    s   = sum_i min(exp(d_i), g_i) + (n - 1 - sum_i min(g_i, 1))

``min(exp(d_i), g_i)`` is ``exp(d_i)`` except at the ties ``d_i == 0`` (0
there) and ``n - sum_i min(g_i, 1)`` counts the ties, so ``s`` is the
Blanchard-Higham-Higham sum without the max term, ``sum_{i != k} exp(d_i)``
(ties at the max contributing exactly 1 each), with no argmax and no select. (A
``d_i`` so small that ``g_i < 1``, a subnormal where it is not flushed, adds
``g_i + 1 - g_i = 1 = exp(d_i)``: still right.) Then ``logsumexp = m +
log1p(s)``, ``softmax = exp(d) / (1 + s)`` and ``log_softmax = d - log1p(s)``,
with the accurate ``log1p`` of the JAX namespace on the per-row ``s``. For rows
of at most 2048 entries the sums (and the softmax) are one pass after the max;
longer rows are cut into pieces whose ``(m_j, s_j)`` are then combined.

The same passes give the generic path's limits on rows whose max is not finite:
on a ``+inf`` row ``d`` is 0 at the ``+inf`` entries and ``-MAX`` or less
elsewhere, so ``1 + s`` is the number of ``+inf`` entries, which share the
mass; a row of ``-inf`` has ``d = -inf`` and ``1 + s = 0`` (an empty sum:
softmax 0 by dividing by ``max(1 + s, 1)``); NaN propagates, also where XLA's
CPU max reduction drops a NaN (it does on 128 rows and more: the NaN reaches
``s`` through ``exp``). The one difference: in a row holding ``+inf``, an entry
equal to ``MAX`` shares the mass with the ``+inf`` entries.

The three ops are one ``jax.custom_jvp`` function (:func:`_rows`) that also returns
``m`` and ``l = log1p(s)`` per row. Its JVP is analytic (``d lse = sum(p dx)``,
``d softmax = p (dx - sum(p dx))``, ``d log_softmax = dx - sum(p dx)``) and, as
jax.nn's, computed in the working dtype from the softmax ``p``, recomputed as
``exp(x - m) exp(-l)`` (which needs only ``m`` and ``l`` of the forward passes, and
keeps ``p`` float64-accurate under x64). Rows with an infinite max get the tangent
0: the tangent ``dx`` is set to 0 there (a select on ``dx``, which in ``jax.grad``
becomes one select on the gradient, after the fused pass), so reverse-mode
gradients are exactly 0 on ``-inf`` and ``+inf`` rows; on a NaN row tangents and
gradients are NaN, as its value (and jax.nn's). It calls the custom function, so higher
derivatives use the same rule. The tangents are worked in the working dtype
(:func:`_tangent_dtype`), so float32 gradients under x64 stay float64-accurate.
(``p`` used to be zeroed by a select, which XLA cannot fuse: ``p`` was written out
in float64, 3.5 to 4.7 times jax.nn's gradient time at 4096×2048; 2 to 2.2 times
now, ``benchmarks/training_speed.py``.) The forward stays above jax.nn's time under
``jax_enable_x64``: the sum ``s`` takes one float64 ``exp`` per entry (XLA's float32
``exp`` is off by up to 1 ulp, which ``log1p(s)`` of a tiny ``s`` would pass on
whole).

Where the working dtype is float32 (JAX's default, no x64, for every input; and
half precision inputs under x64) the ops are :func:`_rows32`: the same ``a``,
``d`` and ``s``, XLA's ``log1p``, rows not cut into pieces, each op written so that
XLA fuses it whole, forward and ``jax.grad`` alike, into the one YNNPACK fusion
jax.nn's ops get (see :func:`_forward32`): one read of ``x``, as jax.nn's. Its
tangent rule needs no select (NaN rows then give NaN gradients, as jax.nn's; ``-inf``
and ``+inf`` rows exactly 0). This module imports JAX: it is only reached with JAX
arrays.

Writing the passes so that XLA fuses them takes some care, noted where it
matters: no select, compare or clamp in them, no expression shared between two
passes, and no literal 0 of the working dtype (see :func:`_sum`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["log_softmax_rows", "logsumexp_rows", "softmax_rows"]


def _work_dtype(dtype: Any) -> Any:
    """float64 for float32 and float64 inputs where available, else float32 (see the module docstring).

    float16 and bfloat16 inputs are worked in float32, which has 13 (float16) or 16 (bfloat16) bits
    more than the input: the argument that a float32 result computed in float64 is within 1 ulp
    (the final rounding plus ``2^-29`` ulp times the condition number) holds for them with
    ``2^-13`` or ``2^-16``, and XLA on CPU converts them to float32, not float64, at full speed.
    """
    if jax.config.read("jax_enable_x64") and jnp.dtype(dtype).itemsize >= 4:
        return jnp.float64
    return jnp.float32


MAX_PIECE = 2048  # XLA fuses several sums over a row into one pass up to this length
MIN_PIECE = 256


def _piece(n: int) -> int:
    """Length of the pieces a row of ``n`` entries is cut into: a divisor of ``n``, at most ``MAX_PIECE``.

    ``n`` itself when it is short enough; 0 when no divisor in ``[MIN_PIECE, MAX_PIECE]``
    exists (a large prime, say): the row is then padded with ``-inf``.
    """
    if n <= MAX_PIECE:
        return n
    for size in range(MAX_PIECE, MIN_PIECE - 1, -1):
        if n % size == 0:
            return size
    return 0


def _sum(v: jax.Array, axis: int = -1) -> jax.Array:
    """Sum over the last axis (keepdims), for the one fusion that reads the data.

    Starts from ``-0.0`` through a generic reduce: ``jnp.sum`` starts from a literal 0, which
    XLA shares with every other 0 of the dtype in the program, and a YNNPACK sum whose
    initial value is not a literal runs several times slower (XLA 0.10 on CPU).
    """
    ax = axis % v.ndim
    return jnp.expand_dims(jax.lax.reduce(v, np.array(-0.0, v.dtype), lambda p, q: p + q, (ax,)), ax)


def _small_sum(v: jax.Array) -> jax.Array:
    """Sum over the last axis (keepdims) of a small array: a dot product, with no initial value."""
    return jnp.matmul(v, jnp.ones((v.shape[-1], 1), v.dtype), precision=jax.lax.Precision.HIGHEST)


def _small_max(v: jax.Array) -> jax.Array:
    """Max over the last axis (keepdims) of a small array, as ``-min(-v)``: a reduce starting from ``+inf``.

    Not ``jnp.max``, whose ``-inf`` XLA would share with the max over the data.
    """
    return -jnp.min(-v, axis=-1, keepdims=True)


def _log1p(s: jax.Array) -> jax.Array:
    """``log1p(s)`` for ``s >= 0`` within 1 ulp, with no compare or select (fusible; see the module docstring).

    The namespace's accurate ``log1p`` (``log(u) - ((u - 1) - s) / u``, ``u = 1 + s``) without its
    special cases, which ``s >= 0`` does not reach; ``max(., 1)`` also keeps XLA from
    simplifying ``(1 + s) - 1`` and maps the ``s = -1`` of ``-inf`` rows to ``log1p = -1``, finite.
    """
    u = jnp.maximum(1 + s, 1)
    return jnp.log(u) - ((u - 1) - s) / u


def _big(wd: Any) -> float:
    """The largest power of two of the working dtype."""
    return float(2.0 ** (jnp.finfo(wd).maxexp - 1))


def _top(x: jax.Array) -> float:
    """The largest finite value of the input dtype (where ``+inf`` entries are clipped to)."""
    return float(jnp.finfo(x.dtype).max)


def _row_stats(x: jax.Array, wd: Any) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``m``, ``a = clip(m)``, ``d`` and ``s`` of the rows of ``x`` (reduced over the last axis, keepdims)."""
    top = _top(x)
    m = jnp.max(x, axis=-1, keepdims=True).astype(wd)  # on the input dtype: exact, and a narrower pass
    a = -jnp.minimum(-jnp.minimum(m, top), top)  # m clipped to [-MAX, MAX]; not a clamp, which XLA cannot fuse
    d = jnp.minimum(x, top).astype(wd) - a
    g = d * -_big(wd)
    s = _sum(jnp.minimum(jnp.exp(d), g)) + ((x.shape[-1] - 1) - _sum(jnp.minimum(g, 1)))
    return m, a, d, s


def _stats(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array]:
    """``m``, ``a``, ``d`` and ``s`` of the rows of ``x`` (its last axis, any rank); ``d`` is None for long rows.

    A row longer than ``MAX_PIECE`` is cut into pieces (a reshape, no copy) that are
    reduced in one fused pass, and the per-piece ``(m_j, s_j)`` are combined like the
    entries of a row: with ``w_j = exp(a_j - a)``, ``s = sum_j s_j w_j + sum_j min(w_j, g_j) +
    (number of pieces at the max - 1)``, every term rounded once relative to itself.
    """
    wd = _work_dtype(x.dtype)
    lead, n = tuple(x.shape[:-1]), x.shape[-1]
    size = _piece(n)
    if size == n:
        return _row_stats(x, wd)
    if size == 0:
        size = MAX_PIECE
        x = jnp.pad(x, ((0, 0),) * len(lead) + ((0, -n % size),), constant_values=-np.inf)
    pieces = x.shape[-1] // size
    m_j, a_j, _, s_j = _row_stats(x.reshape(*lead, pieces, size), wd)
    m_j, a_j, s_j = (v.reshape(*lead, pieces) for v in (m_j, a_j, s_j))
    big = _big(wd)
    m = _small_max(m_j)
    a = _small_max(a_j)
    d_j = a_j - a
    w = jnp.exp(d_j)
    g = d_j * -big
    s = _small_sum(s_j * w + jnp.minimum(w, g)) + ((pieces - 1) - _small_sum(jnp.minimum(g, 1)))
    return m, a, None, s


def _shifted(x: jax.Array, a: jax.Array) -> jax.Array:
    """``d`` of the rows of ``x`` again, for a second pass over the data.

    Equal to the ``d`` of :func:`_row_stats` (``x - a`` rounds the same, and ``min`` only
    changes ``+inf`` entries, to ``MAX - a``) but written differently: XLA would share
    an identical expression between the two passes and write it out to memory.
    """
    top = _top(x)
    # nor share the broadcast of a, or the conversion of x to the working dtype (else written out in full)
    x, a = jax.lax.optimization_barrier((x, a))
    return jnp.minimum(x.astype(a.dtype) - a, top - a)


# -- the three ops, and their tangent rule ----------------------------------------------
def _tangent_dtype(dtype: Any) -> Any:
    """The dtype of the tangent arithmetic: the working dtype of the forward (float64 for float32 input
    under ``jax_enable_x64``, float32 for half precision and without x64).

    Tangents in the input dtype (jax.nn's choice) measured 1.6x jax.nn's gradient time against 3.2x
    (4096x2048 float32, x64), but lose the accuracy this module exists for: ``dx - sum(p dx)``
    cancels, and with a float32 ``p`` the worst entry of a log_softmax gradient was 769 ulp off
    (jax.nn: 1100) against <= 0.5 ulp worked in float64. Users who turn on x64 ask for accuracy.
    """
    return _work_dtype(dtype)


def _forward(x: jax.Array, op: str, fused: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(result, m, l)``: the result of ``op`` in the input dtype, the row max ``m`` and ``l = log1p(s)``.

    ``fused``: for short rows, the softmax from the ``exp(d)`` of the pass that sums (one pass in
    all); else from a second pass, as the tangent rule asks for: XLA would otherwise split the
    first pass around the tangent's passes and write its pieces out. (The softmax of a float32 or
    half precision input with short rows is :func:`_softmax_total`, forward and tangent alike.)
    """
    if op == "softmax" and x.dtype != jnp.float64 and x.shape[-1] <= MAX_PIECE:
        return _softmax_total(x)
    m, a, d, s = _stats(x)
    l = _log1p(s)  # noqa: E741
    if op == "logsumexp":
        # rows with a non-finite max: m = +-inf or NaN plus a finite log1p; a NaN row whose max
        # came out finite has s NaN, hence a NaN result.
        out = m + l
    elif op == "softmax":
        d = _shifted(x, a) if d is None or not fused else d
        # 1 + s >= 1 on finite rows; the count of +inf entries on +inf rows; 0 on -inf rows (e = 0 there)
        out = jnp.exp(d) / jnp.maximum(1 + s, 1)
    else:
        d = _shifted(x, a)  # a second pass: the accurate log1p(s) cannot join the pass that sums
        big, top = _big(a.dtype), _top(x)
        # t is 0 on rows with a max below +inf and +inf on +inf rows: scale 1, or 1 + BIG, which sends
        # the finite entries of a +inf row (d about -MAX) to -inf and keeps 0 at its +inf entries, where
        # the result is -log1p(count - 1) = -log(count); -inf rows: d = -inf; NaN rows: NaN. (Computed
        # from m alone: XLA would fuse the clamp that makes a into this pass, and then not fuse the pass.)
        t = jnp.maximum(m, top) - top
        out = d * (1 + jnp.minimum(t * t, big)) - l
    return out.astype(x.dtype), m, l


def _softmax_total(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The softmax of rows of a float32 or half precision ``x`` (in float64 under x64), ``m`` and ``l``.

    ``1 + s`` is summed with the max term(s) inside (exactly 1 each): no mask and no tie count. The
    terms below 1 lose bits only in the partial sum that holds a 1, an error of a few ``2^-53``
    relative in float64, far below an ulp of the result's dtype (float64 input keeps :func:`_stats`).
    ``l = log(1 + s)``, not the accurate ``log1p``: only the tangent rule reads it, through ``exp(-l)``.
    Float32 input under x64, side by side: forward 1.68 -> 1.45x jax.nn at 4096×2048 and 1.74 -> 1.33x
    on attention rows (4×8×256×256), ``jax.vjp`` 2.00 -> 1.81x and 1.95 -> 1.88x.
    """
    # min(x, MAX) before the conversion to the working dtype: written as _shift32 does (the same values), XLA shares
    # the conversion with the float64 tangent's pass, and the x64 float32 jax.vjp took 1.7x the time
    wd, top = _work_dtype(x.dtype), _top(x)
    m = jnp.max(x, axis=-1, keepdims=True).astype(wd)
    a = -jnp.minimum(-jnp.minimum(m, top), top)
    e = jnp.exp(jnp.minimum(x, top).astype(wd) - a)
    total = jnp.maximum(_sum(e), 1)  # the count of +inf entries on +inf rows, 0 -> 1 on -inf rows (e = 0)
    return (e * (1 / total)).astype(x.dtype), m, jnp.log(total)


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _rows(x: jax.Array, op: str, fused: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _forward(x, op, fused)


@_rows.defjvp
def _rows_jvp(op: str, fused: bool, primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[Any, Any]:
    """``d lse = sum(p dx)``, ``d softmax = p (dx - sum(p dx))``, ``d log_softmax = dx - sum(p dx)``.

    In the working dtype (:func:`_tangent_dtype`), from the softmax ``p = exp(min(x - a, MAX - a))
    exp(-l)`` (``x - a`` is exact near the max), recomputed in the pass that uses it. Rows with an
    infinite max (``-inf`` or ``+inf`` rows) have ``dx`` set to 0 in the input dtype (one flag per
    row), before anything else: in ``jax.grad`` that select is the last step, on the gradient in the
    input dtype, so ``p`` and the sums of the transpose stay in one fused pass (a select on ``p``
    made XLA write ``p`` out in float64). ``p`` is finite on ``-inf`` rows (0) and ``+inf`` rows, so
    their tangents are 0; on NaN rows ``p`` is NaN and ``dx`` kept: tangents and reverse-mode gradients
    are NaN, as the value (and jax.nn's, and the float32 path's). ``m`` gets tangent 0 and ``l`` the tangent
    of the logsumexp: ``m + l`` and ``p`` then have their true tangents, and higher derivatives
    (which call this rule again) are right.
    """
    (x,), (dx,) = primals, tangents
    out, m, l = _rows(x, op, False)  # noqa: E741
    td = _tangent_dtype(x.dtype)
    fin = ~jnp.isinf(m + l)  # one flag per row, True on NaN rows (l is NaN on a NaN row whose max came out finite)
    top = _top(x)
    a = jnp.clip(m, -top, top).astype(td)
    # min(x - a, top - a), not min(x, top) - a: XLA would share min(x, top) with the forward's pass that
    # sums and write it out. Recomputed for softmax too: its output is rounded to the input dtype, and
    # converting it back and selecting measured slower than this (4.7x jax.nn's fwd+vjp, x64, 4096x2048)
    p = jnp.exp(jnp.minimum(x.astype(td) - a, top - a)) * jnp.exp(-l).astype(td)
    dxt = jnp.where(fin, dx, 0).astype(td)
    inner = jnp.sum(p * dxt, axis=-1, keepdims=True)  # d logsumexp
    if op == "logsumexp":
        dout = inner
    elif op == "softmax":
        dout = p * dxt - p * inner
    else:
        dout = dxt - inner
    dl = inner.astype(l.dtype)
    return (out, m, l), (dout.astype(out.dtype), jnp.zeros_like(m), dl)


# -- the float32 working dtype: one pass, as jax.nn's --------------------------------------
def _forward32(x: jax.Array, op: str, axis: int = -1) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(result, m, l, q)`` of ``op`` worked in float32 (no x64, or half precision input), in one fused pass;
    ``q = 1 / (1 + s)`` per row, the softmax's scale (for its tangent rule, :func:`_rows32_jvp`).

    jax.nn's structure (max, ``exp(x - max)``, sum, log) plus what floatguard needs: the max term taken
    out of ``s`` (see the module docstring), ``log1p(s)`` by XLA's own ``log1p``, and the limits on rows
    with a non-finite max. XLA's CPU ``exp`` and ``log1p`` are within 1 ulp in float32, which is the
    accuracy jax.nn gets and what float32 work can give. XLA then fuses the whole op into the one YNNPACK
    fusion of jax.nn (the max, the two sums and the output, reading ``x`` once), which it does only
    while no per-row value but ``m`` has two users, and with no divide by, or select on, a row value
    (XLA 0.10 on CPU): hence ``max(s, 0)`` for ``log1p`` (``s = -1`` on ``-inf`` rows) and ``m`` for the
    flag of ``+inf`` rows. Rows are not cut into pieces: this fusion takes any length.

    Measured (``benchmarks/training_speed.py`` and side-by-side CPU-time medians, no x64, a shared machine) at
    4096×2048 and 4×8×256×256: forward 1.1 to 1.6x jax.nn's time in float32 and 1.4 to 2.5x in bfloat16, where
    jax.nn rounds ``x - max`` to bfloat16 before its ``exp`` (an error of ``|x - max| 2^-9`` relative, several
    bfloat16 ulps), which this path does not; with ``jax.vjp`` 0.95 to 1.3x in float32 (1.9x for logsumexp on
    attention rows), bfloat16 0.3 to 0.5x at 4096×2048 and 1.1 to 1.5x on attention rows; 1.0 to 1.05x at 32×10. The
    gap is work per entry, not passes: jax.nn's formula (max, ``exp(x - max)``, sum) in this one fusion runs at 0.95
    to 1.05x; the mask that takes the max term out (a multiply and a min) adds about 0.12x, the tie count (a min and
    a second sum) 0.15 to 0.3x, ``min(x, MAX)`` a few percent. Cheaper combinations are ruled out by YNNPACK, which
    runs a fusion 5 to 9 times slower once a per-row sum has two users, or passes through ``log``, a product or a
    ``max`` before meeting the other sum (e.g. the tie count as ``sum(exp(d)) - sum(mask)``, or ``max(s_mask,
    sum(exp(d)) - 1)``); a separate max pass (as jax.nn's) or selects (XLA's own loop emitter) measured no faster.

    softmax needs neither the mask nor the tie count: its result ``exp(d) / (1 + s)`` is relative to ``1 + s``,
    which summing the max term(s) inside (exactly 1 each, as jax.nn) leaves as accurate in float32 work as
    adding 1 to ``s``. Without them (side by side, no x64): forward 1.17 -> 1.04x jax.nn at 4096×2048 float32,
    1.29 -> 1.10x bfloat16, 1.24 -> 1.04x on bfloat16 attention rows; ``jax.vjp`` 1.19 -> 1.09x on float32
    attention rows. Against float64 softmax of 2.15 million float32 entries (rows of 10 to 5,000, with ties)
    the entries over 1 ulp went from 773,890 to 789,725 (jax.nn: 796,778), the worst 65.2 to 66.9 ulp (jax.nn
    66.9): in float32 work the rounding of ``x - max`` before the ``exp`` dominates both. bfloat16 results
    stay within 0.5 ulp (jax.nn: 73 ulp).
    """
    top, big = _top(x), _big(jnp.float32)
    if op == "softmax":  # 1 + s with the max term(s) inside: no mask, no tie count (see the docstring)
        m, d = _shift32(x, True, axis)
        e = jnp.exp(d)
        # >= 1 on finite rows, the count of +inf entries on +inf rows, 0 -> 1 on -inf rows (e = 0 there)
        total = jnp.maximum(_sum(e, axis), 1)
        q = 1 / total
        return (e * q).astype(x.dtype), m, jnp.log(total), q
    m, d, s = _stats32(x, True, axis)
    l = jnp.log1p(jnp.maximum(s, 0))  # noqa: E741  (0 on -inf rows: the result is then m or d, -inf)
    q = 1 / jnp.maximum(1 + s, 1)  # 1 / (1 + s) on finite rows, 1 / count on +inf rows, 1 on -inf rows
    if op == "logsumexp":
        return (m + l).astype(x.dtype), m, l, q
    t = jnp.maximum(m, top) - top  # +inf on +inf rows, else 0 (see _forward)
    return (d * (1 + jnp.minimum(t * t, big)) - l).astype(x.dtype), m, l, q


def _shift32(x: jax.Array, clamp: bool, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    """``m`` and ``d = min(x, MAX) - a`` (``x - a`` without ``clamp``), ``a = clip(m)``, in float32: the pass of
    :func:`_forward32`, whose tangent rule writes ``d`` the same way so that XLA computes it once."""
    top = _top(x)
    m = jnp.max(x, axis=axis, keepdims=True).astype(jnp.float32)
    a = -jnp.minimum(-jnp.minimum(m, top), top)  # m clipped to [-MAX, MAX]; not a clamp, which XLA cannot fuse
    xw = x.astype(jnp.float32)
    return m, (jnp.minimum(xw, top) if clamp else xw) - a


def _stats32(x: jax.Array, clamp: bool, axis: int = -1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``m``, ``d`` and ``s`` of the rows of ``x`` (along ``axis``) in float32, one fused pass (see
    :func:`_forward32`)."""
    m, d = _shift32(x, clamp, axis)
    g = d * -_big(jnp.float32)
    s = _sum(jnp.minimum(jnp.exp(d), g), axis) + ((x.shape[axis] - 1) - _sum(jnp.minimum(g, 1), axis))
    return m, d, s


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _rows32(x: jax.Array, op: str, axis: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    return _forward32(x, op, axis)


@_rows32.defjvp
def _rows32_jvp(op: str, axis: int, primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[Any, Any]:
    """The tangent rule of :func:`_rows_jvp` in float32, written so that XLA fuses it with the forward.

    ``p = exp(d) r`` with ``r = q f`` for softmax (``q = 1 / (1 + s)`` from the forward, two roundings:
    ``exp(-l)`` adds those of ``log1p`` and ``exp``; on 208 random rows of 100 the worst softmax gradient went
    from 3.06 to 2.85 ulp times its condition number) and ``r = exp(-l) f`` for the others (more accurate
    where ``s`` is tiny, and there the gradient does not cancel): ``exp(d)`` is the forward's own (``d``
    written exactly as in :func:`_forward32`, so XLA computes it once for the sum and for ``p``, the residual
    jax.nn keeps), and ``r`` is one factor per row, applied after the sum (``sum(p dx) = r sum(exp(d) dx)``, so that the
    gradient of logsumexp and log_softmax takes one multiply per entry). ``f`` is a flag, 1 on rows with a
    finite max and 0 on ``-inf`` and ``+inf`` rows, made without compare or select from the clipped max
    ``a`` (``f`` is also 0 on a row whose max is exactly ``MAX``, a limit case); ``exp(d)`` is in
    ``[0, 1]`` (``d <= 0``), so ``f = 0`` gives tangents 0, never NaN. (``p`` was ``exp(d - (l - log f))``,
    a second ``exp`` per entry: 1.05 to 1.25 times this rule's ``jax.vjp`` time at 4096×2048 and
    4×8×256×256, side by side.) NaN rows give NaN tangents here, as jax.nn's (zeroing them takes a select
    over the data, a pass of its own). ``q`` gets the tangent ``-q d(lse)``, ``l`` that of the logsumexp, so
    that higher derivatives (this rule again) are right (for softmax ``l`` is ``log(1 + s)``, with the same tangent).
    """
    (x,), (dx,) = primals, tangents
    out, m, l, q = _rows32(x, op, axis)  # noqa: E741
    top, big = _top(x), _big(jnp.float32)
    a = -jnp.minimum(-jnp.minimum(m, top), top)
    f = jnp.minimum((a + top) * big, 1) * jnp.minimum((top - a) * big, 1)
    e = jnp.exp(jnp.minimum(x.astype(jnp.float32), top) - a)
    r = (q if op == "softmax" else jnp.exp(-l)) * f
    dxt = dx.astype(jnp.float32)
    inner = r * jnp.sum(e * dxt, axis=axis, keepdims=True)  # r after the sum: one multiply per entry in jax.grad
    if op == "logsumexp":
        dout = inner
    elif op == "softmax":
        p = e * r
        dout = p * dxt - p * inner
    else:
        dout = f * dxt - inner
    return (out, m, l, q), (dout.astype(out.dtype), jnp.zeros_like(m), inner, -q * inner)


def _lse32_plain(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`_forward32` of logsumexp without ``min(x, MAX)``: a ``+inf`` entry makes ``s`` NaN, and the result
    of a ``+inf`` row is set to ``+inf`` by per-row selects (a logsumexp has no entries to share the mass among).

    For the forward alone: 0.88-0.99x :func:`_forward32`'s time (4096×2048 and 4×8×256×256, float32 and bfloat16,
    side by side); in ``jax.vjp`` the selects (and the clamp of ``exp(d)`` the tangent would need) made XLA split
    the fusion, 1.4-4x the time, so the rule (:func:`_rows32_jvp`) takes its primal from :func:`_rows32`.
    """
    m, _, s = _stats32(x, False, axis)
    inf = m == jnp.inf
    l = jnp.where(inf, 0.0, jnp.log1p(jnp.maximum(s, 0)))  # noqa: E741
    q = jnp.where(inf, 1.0, 1 / jnp.maximum(1 + s, 1))
    return jnp.where(inf, m, m + l).astype(x.dtype), m, l, q


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _lse32(x: jax.Array, op: str, axis: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    return _lse32_plain(x, axis)


_lse32.defjvp(_rows32_jvp)


@partial(jax.jit, static_argnums=(1, 2))
def _dispatch(x: jax.Array, op: str, axis: int = -1) -> jax.Array:
    """``op`` of the rows of ``x`` along ``axis`` (keepdims for logsumexp): one pass in float32 where that is the
    working dtype, reducing over ``axis`` where it lies (a middle axis moved last made XLA write two transposes:
    1.6-3.5x jax.nn's time over ``dim=1`` of 8×21×128×128); else :func:`_rows`, on the axis moved last.

    Jitted as jax.nn's ops are: an eager call is then one XLA executable, compiled once per shape, dtype and
    x64 setting (op by op, the custom reductions of :func:`_sum` were traced and compiled again at every
    call: 40 ms for one logsumexp of 256×1000 float32 under x64, the first call 1 s); under an outer
    ``jax.jit`` it is inlined.
    """
    if _work_dtype(x.dtype) == jnp.float32:
        return (_lse32 if op == "logsumexp" else _rows32)(x, op, axis % x.ndim)[0]
    if axis % x.ndim == x.ndim - 1:
        return _rows(x, op, True)[0]
    return jnp.moveaxis(_rows(jnp.moveaxis(x, axis, -1), op, True)[0], -1, axis)


def works_in_float32(dtype: Any) -> bool:
    """Whether arrays of ``dtype`` are worked in float32 here (no x64, or half precision): then any axis is reduced
    where it lies."""
    return bool(_work_dtype(dtype) == jnp.float32)


def logsumexp_rows(x: jax.Array, axis: int = -1) -> jax.Array:
    """``m + log1p(s)`` of each row along ``axis`` (keepdims), in the input dtype; ``m`` on rows with a non-finite
    max."""
    return _dispatch(x, "logsumexp", axis)


def softmax_rows(x: jax.Array, axis: int = -1) -> jax.Array:
    """``exp(d) / (1 + s)`` of each row along ``axis``, in the input dtype; the limit on rows with a non-finite max."""
    return _dispatch(x, "softmax", axis)


def log_softmax_rows(x: jax.Array, axis: int = -1) -> jax.Array:
    """``d - log1p(s)`` of each row along ``axis``, in the input dtype; the limit on rows with a non-finite max."""
    return _dispatch(x, "log_softmax", axis)
