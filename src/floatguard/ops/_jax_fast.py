"""JAX path of logsumexp, softmax and log_softmax: the same algorithm in passes XLA fuses, analytic JVPs.

Through the generic array-API code (``_core.shifted``) XLA sees an argmax, a
one-hot mask of the max, ``expm1`` of the max term and several ``where``. On
CPU (XLA 0.10) the reductions run as YNNPACK fusions, which take sums, min,
max, products, ``exp`` and ``log`` but no compare or select: each ``where``
over the data is written out to memory and read back, 3.5 to 13 times slower
than ``jax.nn`` under ``jax.jit`` (``benchmarks/ops_speed.py``).

Here each op is a ``jax.custom_jvp`` function of rows ``(R, n)`` (the last axis
is reduced) whose passes over the data use only those operations. In the
working dtype (float64 where available, as the generic path), with ``m`` the
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

The JVPs are analytic (``d lse = sum(p dx)``, ``d softmax = p (dx - sum(p dx))``,
``d log_softmax = dx - sum(p dx)``), exactly 0 on rows with no finite max, with
``p`` and the tangents masked by ``where`` where ``p == 0`` so that neither they
nor their transpose (``jax.grad``) form ``0 * inf``. They call the custom
functions, so higher derivatives use the same rules. This module imports JAX:
it is only reached with JAX arrays.

Writing the passes so that XLA fuses them takes some care, noted where it
matters: no select, compare or clamp in them, no expression shared between two
passes, and no literal 0 of the working dtype (see :func:`_sum`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["log_softmax_rows", "logsumexp_rows", "softmax_rows"]


def _work_dtype() -> Any:
    """float64 where available (as ``Backend.work_dtype``), float32 without ``jax_enable_x64``."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


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


def _sum(v: jax.Array) -> jax.Array:
    """Sum over the last axis (keepdims), for the one fusion that reads the data.

    Starts from ``-0.0`` through a generic reduce: ``jnp.sum`` starts from a literal 0, which
    XLA shares with every other 0 of the dtype in the program, and a YNNPACK sum whose
    initial value is not a literal runs several times slower (XLA 0.10 on CPU).
    """
    return jax.lax.reduce(v, np.array(-0.0, v.dtype), lambda p, q: p + q, (v.ndim - 1,))[..., None]


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
    """``m``, ``a``, ``d`` and ``s`` of the rows ``(R, n)`` of ``x``; ``d`` is None for long rows.

    A row longer than ``MAX_PIECE`` is cut into pieces (a reshape, no copy) that are
    reduced in one fused pass, and the per-piece ``(m_j, s_j)`` are combined like the
    entries of a row: with ``w_j = exp(a_j - a)``, ``s = sum_j s_j w_j + sum_j min(w_j, g_j) +
    (number of pieces at the max - 1)``, every term rounded once relative to itself.
    """
    wd = _work_dtype()
    r, n = x.shape
    size = _piece(n)
    if size == n:
        return _row_stats(x, wd)
    if size == 0:
        size = MAX_PIECE
        x = jnp.pad(x, ((0, 0), (0, -n % size)), constant_values=-np.inf)
    pieces = x.shape[1] // size
    m_j, a_j, _, s_j = _row_stats(x.reshape(r * pieces, size), wd)
    m_j, a_j, s_j = (v.reshape(r, pieces) for v in (m_j, a_j, s_j))
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
    a = jax.lax.optimization_barrier(a)  # nor share the broadcast of a (written out in full otherwise)
    return jnp.minimum(x.astype(a.dtype) - a, top - a)


def _finite_rows(x: jax.Array, wd: Any) -> jax.Array:
    return jnp.isfinite(jnp.max(x, axis=-1, keepdims=True).astype(wd))


def _masked(keep: jax.Array, v: jax.Array) -> jax.Array:
    """``v`` where ``keep``, else 0: a select, not a product with 0 (tangents may be infinite and ``p``
    is NaN on NaN rows), and so is its transpose (``jax.grad``)."""
    return jnp.where(keep, v, 0)


# -- logsumexp and softmax --------------------------------------------------------------
def _softmax(x: jax.Array, fused: bool) -> tuple[jax.Array, jax.Array]:
    """logsumexp and softmax of the rows of ``x``.

    ``fused``: for short rows, the softmax from the ``exp(d)`` of the pass that sums (one pass in
    all); else from a second pass, as the tangent rules want: they keep the softmax for the
    transpose, and XLA would otherwise split the first pass around it and write its pieces out.
    """
    m, a, d, s = _stats(x)
    d = _shifted(x, a) if d is None or not fused else d
    # rows with a non-finite max: m = +-inf or NaN plus a finite log1p; a NaN row whose max
    # came out finite has s NaN, hence a NaN result.
    # 1 + s >= 1 on finite rows; the count of +inf entries on +inf rows; 0 on -inf rows (e = 0 there)
    return m + _log1p(s), jnp.exp(d) / jnp.maximum(1 + s, 1)


@jax.custom_jvp
def _logsumexp_softmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both, from the same passes: what the tangent rules of both need."""
    return _softmax(x, fused=False)


@_logsumexp_softmax.defjvp
def _logsumexp_softmax_jvp(
    primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    (x,), (dx,) = primals, tangents
    lse, p = _logsumexp_softmax(x)  # p: the limit weights on +inf rows, masked out below
    keep = jnp.isfinite(lse) & (p > 0)  # logsumexp is finite exactly where the row max is
    pk = _masked(keep, p)
    dx = _masked(keep, dx.astype(p.dtype))
    inner = jnp.sum(pk * dx, axis=-1, keepdims=True)  # d logsumexp = sum(p dx)
    return (lse, p), (inner, _masked(keep, pk * dx - pk * inner))


@jax.custom_jvp
def logsumexp_rows(x: jax.Array) -> jax.Array:
    """``m + log1p(s)`` of each row (keepdims), in the working dtype; ``m`` on rows with a non-finite max."""
    m, _, _, s = _stats(x)
    return m + _log1p(s)


@logsumexp_rows.defjvp
def _logsumexp_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (lse, _), (dlse, _) = jax.jvp(_logsumexp_softmax, primals, tangents)
    return lse, dlse


@jax.custom_jvp
def softmax_rows(x: jax.Array) -> jax.Array:
    """``exp(d) / (1 + s)`` of each row, in the working dtype; the limit on rows with a non-finite max."""
    return _softmax(x, fused=True)[1]


@softmax_rows.defjvp
def _softmax_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (_, p), (_, dp) = jax.jvp(_logsumexp_softmax, primals, tangents)
    return p, dp


# -- log_softmax --------------------------------------------------------------------------
@jax.custom_jvp
def log_softmax_rows(x: jax.Array) -> jax.Array:
    """``d - log1p(s)`` of each row, in the working dtype; the limit on rows with a non-finite max."""
    m, a, _, s = _stats(x)
    d = _shifted(x, a)  # a second pass: the accurate log1p(s) cannot join the pass that sums
    big, top = _big(a.dtype), _top(x)
    # t is 0 on rows with a max below +inf and +inf on +inf rows: scale 1, or 1 + BIG, which sends
    # the finite entries of a +inf row (d about -MAX) to -inf and keeps 0 at its +inf entries, where
    # the result is -log1p(count - 1) = -log(count); -inf rows: d = -inf; NaN rows: NaN. (Computed
    # from m alone: XLA would fuse the clamp that makes a into this pass, and then not fuse the pass.)
    t = jnp.maximum(m, top) - top
    scale = 1 + jnp.minimum(t * t, big)
    return d * scale - _log1p(s)


@log_softmax_rows.defjvp
def _log_softmax_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (dx,) = primals, tangents
    out = log_softmax_rows(x)
    p = jnp.exp(out)
    finite = _finite_rows(x, out.dtype)
    keep = finite & (p > 0)
    dx = dx.astype(out.dtype)
    inner = jnp.sum(_masked(keep, p) * _masked(keep, dx), axis=-1, keepdims=True)
    # a NaN row whose max came out finite is NaN everywhere: zero tangent there too
    return out, _masked(finite & ~jnp.isnan(out), dx - inner)
