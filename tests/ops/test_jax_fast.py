"""The fast JAX path of logsumexp, softmax and log_softmax (``floatguard.ops._jax_fast``).

It must be taken for JAX arrays, agree with the generic array-API path (the
reference implementation of the same algorithm) to 1 ulp on random and
adversarial rows, long rows cut into pieces included, keep the semantics of
non-finite rows, and differentiate like it: under ``jit``, ``vmap``, ``grad`` and
``hessian``, with gradients exactly 0 (never NaN) on rows with nothing left.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import floatguard as fg  # noqa: E402
from floatguard.ops import _jax_fast, reductions  # noqa: E402
from floatguard.ops._core import shifted, softmax_rows  # noqa: E402
from floatguard.ops._namespace import namespace  # noqa: E402

INF = math.inf
NAN = math.nan
OPS = ("logsumexp", "softmax", "log_softmax")


@pytest.fixture
def x64() -> Iterator[None]:
    """float64 for JAX inside the test only (float32 inputs are then computed in float64)."""
    with jax.enable_x64(True):
        yield


def call(op: str, x: Any, **kw: Any) -> Any:
    if op == "logsumexp":
        return fg.logsumexp(x, axis=-1, keepdims=True, **kw)
    return getattr(fg, op)(x, **kw)


def generic(op: str, x: Any) -> Any:
    """The generic array-API path on the rows of ``x``: the reference for the fast path."""
    be = namespace(("x", x), func=op)
    xp = be.xp
    rows = reductions._work(be, x)
    if op == "logsumexp":
        sh = shifted(be, rows)
        out = xp.where(sh.finite, sh.m + xp.log1p(sh.s), sh.m)
    else:
        out = softmax_rows(be, rows, op == "log_softmax")
    return xp.astype(out, x.dtype)


def ulps(got: Any, want: Any, dtype: str) -> np.ndarray:
    """Distance in ulps of ``dtype``; 0 where both are the same non-finite value, inf where only one is."""
    a = np.asarray(got).astype(np.float64)
    b = np.asarray(want).astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    info = jnp.finfo(getattr(jnp, dtype))
    exp = np.floor(np.log2(np.maximum(np.abs(np.where(np.isfinite(b), b, 1.0)), float(info.tiny))))
    ulp = 2.0 ** (exp - info.nmant)
    with np.errstate(invalid="ignore"):
        dist = np.abs(a - b) / ulp
    return np.where(same, 0.0, np.where(np.isfinite(dist), dist, np.inf))


def rows(n: int, seed: int = 0) -> np.ndarray:
    """Random and adversarial rows of length ``n``, repeated to 13 * 12 >= 128 rows
    (XLA's CPU max reduction drops NaN from 128 rows on)."""
    rng = np.random.default_rng(seed)
    out = [rng.normal(size=n) * s for s in (0.1, 1.0, 10.0, 100.0)]
    r = np.full(n, -40.0)
    r[n // 2] = 0.0
    out.append(r)  # one dominant entry: s tiny, log1p matters
    r = np.full(n, -40.0)
    r[0] = r[-1] = 0.0
    out.append(r)  # a tie at the max (in two pieces of a long row)
    out.append(np.full(n, -INF))  # nothing left
    r = rng.normal(size=n)
    r[n // 3] = INF
    out.append(r)
    r = rng.normal(size=n)
    r[-1] = INF
    r[min(1, n - 1)] = INF
    out.append(r)  # +inf entries share the mass
    r = rng.normal(size=n)
    r[n // 2] = NAN
    out.append(r)
    r = rng.normal(size=n)
    r[: n // 2] = -INF
    out.append(r)
    out.append(np.zeros(n))  # all tied
    out.append(rng.normal(size=n) + 1e4)
    return np.concatenate([np.stack(out)] * 12)


# --------------------------------------------------------------------------------------
# the fast path is taken
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
def test_fast_path_is_taken(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = {"logsumexp": "logsumexp_rows", "softmax": "softmax_rows", "log_softmax": "log_softmax_rows"}[op]
    calls = []
    real = getattr(_jax_fast, name)

    def spy(x: Any) -> Any:
        calls.append(x.shape)
        return real(x)

    monkeypatch.setattr(_jax_fast, name, spy)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 5)), dtype=jnp.bfloat16)
    call(op, x)  # the plain call: the array as it is (the call stage)
    jax.jit(lambda v: call(op, v))(x)
    mask = jnp.asarray(np.random.default_rng(2).random((2, 3, 5)) < 0.7)
    call(op, x, where=mask)  # anything else: rows (R, n)
    with jax.enable_x64(False):  # (other test modules turn x64 on for the whole process)
        call(op, x.astype(jnp.float32))  # float32 worked in float32: the call stage on rows
    with jax.enable_x64(True):
        call(op, x.astype(jnp.float32))  # worked in float64: as it is
    assert calls == [(2, 3, 5), (2, 3, 5), (6, 5), (6, 5), (2, 3, 5)]


def test_logsumexp_variants_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = _jax_fast.logsumexp_rows
    monkeypatch.setattr(_jax_fast, "logsumexp_rows", lambda x: calls.append(x.shape) or real(x))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 4)), dtype=jnp.float32)
    fg.logsumexp(x)
    fg.logsumexp(x, axis=(0, 2), keepdims=True)
    _, sign = fg.logsumexp(x, axis=1, return_sign=True)
    fg.logsumexp(x.astype(jnp.float16), axis=-1)
    assert calls == [(1, 24), (3, 8), (8, 3), (2, 3, 4)]
    np.testing.assert_array_equal(np.asarray(sign), np.ones((2, 4)))
    # weights b take the generic path
    fg.logsumexp(x, axis=1, b=jnp.ones_like(x))
    assert len(calls) == 4


def _nd(n: int, seed: int, dtype: str) -> Any:
    """Rows of length ``n`` (random, adversarial, non-finite) as a (2, R/2, n) array of ``dtype``."""
    r = rows(n, seed=seed)
    r = r[: len(r) // 2 * 2]
    return jnp.asarray(r.reshape(2, -1, n), dtype=getattr(jnp, dtype))


# 300: one pass; 4099 (prime): pieces, padded with -inf (the float64 work), one pass (float32); 1: one entry.
# float16 once (with x64): its path is bfloat16's (float32 work, see _work_dtype) but for the storage dtype
# bfloat16 without x64 is not repeated: half precision is worked in float32 with or without it (_work_dtype)
_SETTINGS = [(True, d) for d in ("float32", "float64", "bfloat16", "float16")] + [(False, "float32")]


@pytest.mark.parametrize(("enable_x64", "dtype", "n"), [(*s, 300) for s in _SETTINGS]
                         + [(True, "float32", 4099), (True, "float64", 4099), (False, "float32", 4099)]
                         + [(True, "float64", 1), (False, "float32", 1)])
@pytest.mark.parametrize("op", OPS)
def test_plain_call_matches_the_rows_path(op: str, dtype: str, n: int, enable_x64: bool) -> None:
    """The call stage (the array as it is, any rank) gives the rows path's values and gradients: the last axis
    as an integer against the same axis as a tuple (reshaped to rows), eager and jitted, with and without x64."""
    with jax.enable_x64(enable_x64):
        x = _nd(n, 11, dtype)
        last = (x.ndim - 1,)
        if op == "logsumexp":
            def f(v: Any, axis: Any) -> Any:
                return fg.logsumexp(v, axis=axis)
        else:
            def f(v: Any, axis: Any) -> Any:
                return getattr(fg, op)(v, axis=axis)
        c = jnp.asarray(np.random.default_rng(12).uniform(0.5, 1.5, x.shape[:-1] if op == "logsumexp" else x.shape),
                        dtype=x.dtype)
        bound = 4.0 if x.dtype == jnp.float64 else 1.0
        for mode in ("eager", "jit") if (dtype, n) == ("float32", 300) else ("jit",):  # eager: op by op
            wrap = jax.jit if mode == "jit" else (lambda fn: fn)
            got, want = wrap(lambda v: f(v, -1))(x), wrap(lambda v: f(v, last))(x)
            assert got.dtype == want.dtype == x.dtype and got.shape == want.shape
            err = ulps(got, want, dtype)
            assert float(err.max()) <= bound, (mode, np.argwhere(err > bound)[:5])
            gg = wrap(lambda v: jax.vjp(lambda u: f(u, -1), v)[1](c)[0])(x)
            gw = wrap(lambda v: jax.vjp(lambda u: f(u, last), v)[1](c)[0])(x)
            assert gg.dtype == x.dtype and gg.shape == x.shape
            err = ulps(gg, gw, dtype)
            assert float(err.max()) <= bound, (mode, "grad", np.argwhere(err > bound)[:5])


@pytest.mark.parametrize("op", OPS)
def test_plain_call_stage_declines_what_is_not_plain(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An axis as an integer of a non-empty real floating JAX array takes the call stage (the last one always, another
    one where the array is worked in float32: reduced where it lies); the rest (tuples, ``True``, empty and integer
    arrays, NumPy arrays, another axis worked in float64) the full path."""
    name = {"logsumexp": "logsumexp_rows", "softmax": "softmax_rows", "log_softmax": "log_softmax_rows"}[op]
    calls = []
    real = getattr(_jax_fast, name)
    monkeypatch.setattr(_jax_fast, name, lambda v, axis=-1: calls.append((tuple(v.shape), axis)) or real(v, axis))
    x = jnp.asarray(np.random.default_rng(13).normal(size=(2, 3, 4)), dtype=jnp.bfloat16)
    f = getattr(fg, op)
    f(x, axis=2)
    f(x, axis=np.int64(-1))
    assert calls == [((2, 3, 4), -1)] * 2
    f(x, axis=0)
    f(x, axis=(2,))
    assert calls[2:] == [((2, 3, 4), 0), ((6, 4), -1)]
    with jax.enable_x64(True):
        f(x.astype(jnp.float32), axis=0)  # float32 worked in float64: moved last, as rows
    assert calls[4] == ((12, 2), -1)
    del calls[4:]
    with pytest.raises(Exception, match="axis"):
        f(x, axis=True)
    assert len(calls) == 4
    f(jnp.zeros((2, 0), jnp.float32), axis=-1)
    f(jnp.arange(6).reshape(2, 3), axis=-1)  # integers: promoted on the full path
    f(np.ones((2, 3)), axis=-1)  # NumPy: its own kernels
    assert all(len(shape) == 2 for shape, _ in calls[4:])


def test_logsumexp_plain_call_keeps_its_dims() -> None:
    x = jnp.asarray(np.random.default_rng(14).normal(size=(2, 3, 4)), dtype=jnp.float32)
    assert fg.logsumexp(x, axis=-1).shape == (2, 3)
    assert fg.logsumexp(x, axis=-1, keepdims=True).shape == (2, 3, 1)
    assert fg.logsumexp(x, dim=-1, keepdim=True).shape == (2, 3, 1)
    assert fg.logsumexp(x[0, 0], axis=0).shape == ()
    np.testing.assert_array_equal(np.asarray(fg.logsumexp(x, axis=-1)), np.asarray(fg.logsumexp(x, axis=(2,))))


def test_return_sign_of_empty_and_nan_rows() -> None:
    x = jnp.asarray([[-INF, -INF], [NAN, 1.0], [0.0, 1.0]], dtype=jnp.float32)
    val, sign = fg.logsumexp(x, axis=1, return_sign=True)
    np.testing.assert_array_equal(np.asarray(sign), [0.0, NAN, 1.0])
    assert np.asarray(val)[0] == -INF and np.isnan(np.asarray(val)[1])


# --------------------------------------------------------------------------------------
# agreement with the generic path
# --------------------------------------------------------------------------------------
# 37: one piece; 2048: the longest single piece; 6000: pieces of 2000; 4099 (prime): padded with -inf. Half precision
# is worked in float32 in one pass whatever the length (_rows32): a short and a long row; float16 is bfloat16's path
# but for the storage dtype
@pytest.mark.parametrize(("dtype", "n"), [(d, n) for d in ("float32", "float64") for n in (1, 37, 2048, 6000, 4099)]
                         + [("bfloat16", 1), ("bfloat16", 37), ("bfloat16", 4099), ("float16", 37)])
@pytest.mark.parametrize("op", OPS)
def test_matches_the_generic_path(op: str, dtype: str, n: int, x64: None) -> None:
    x = jnp.asarray(rows(n), dtype=getattr(jnp, dtype))
    got = jax.jit(lambda v: call(op, v))(x)
    want = jax.jit(lambda v: generic(op, v))(x)
    assert got.dtype == x.dtype and got.shape == want.shape
    err = ulps(got, want, dtype)
    # float64: the two sum in a different order (and long rows by pieces): a few ulp, well inside
    # the accuracy bound of 2 ulp times the condition number; lower precisions round that away
    bound = 4.0 if dtype == "float64" else 1.0
    assert float(err.max()) <= bound, (op, dtype, n, np.argwhere(err > bound)[:5])


@pytest.mark.parametrize("op", OPS)
def test_matches_the_generic_path_without_x64(op: str) -> None:
    with jax.enable_x64(False):
        for dtype in ("float32", "float16", "bfloat16"):
            x = jnp.asarray(rows(300, seed=4), dtype=getattr(jnp, dtype))
            got = jax.jit(lambda v: call(op, v))(x)
            want = jax.jit(lambda v: generic(op, v))(x)
            assert got.dtype == x.dtype
            err = ulps(got, want, dtype)
            assert float(err.max()) <= 4.0, (op, dtype, np.argwhere(err > 4.0)[:5])


def test_non_finite_rows_keep_their_semantics(x64: None) -> None:
    x = jnp.asarray([[-INF, -INF, -INF], [1.0, INF, INF], [INF, 0.0, -INF], [NAN, 0.0, 1.0], [2.0, 2.0, 2.0]])
    lse = np.asarray(fg.logsumexp(x, axis=1))
    np.testing.assert_array_equal(lse[:3], [-INF, INF, INF])
    assert np.isnan(lse[3]) and lse[4] == 2.0 + math.log(3.0)
    p = np.asarray(fg.softmax(x))
    np.testing.assert_array_equal(p[:3], [[0, 0, 0], [0, 0.5, 0.5], [1, 0, 0]])
    assert np.all(np.isnan(p[3]))
    np.testing.assert_allclose(p[4], np.full(3, 1 / 3), rtol=0, atol=0)
    ls = np.asarray(fg.log_softmax(x))
    np.testing.assert_array_equal(ls[:3], [[-INF] * 3, [-INF, math.log(0.5), math.log(0.5)], [0.0, -INF, -INF]])
    assert np.all(np.isnan(ls[3]))


def test_long_rows_with_the_max_in_any_piece(x64: None) -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 6000)) - 30.0
    for i, k in enumerate([0, 1999, 2000, 4321, 5999]):
        x[i, k] = 0.0  # one dominant entry: log1p(s) of a tiny s, whichever piece holds it
    got = fg.log_softmax(jnp.asarray(x))
    want = generic("log_softmax", jnp.asarray(x))
    assert float(ulps(got, want, "float64").max()) <= 4.0
    lse = fg.logsumexp(jnp.asarray(x), axis=1)
    np.testing.assert_allclose(np.asarray(lse), -np.asarray(got)[np.arange(5), [0, 1999, 2000, 4321, 5999]],
                               rtol=1e-15)


# --------------------------------------------------------------------------------------
# jit, vmap, grad, hessian
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [40, 4099])
@pytest.mark.parametrize("op", OPS)
def test_vmap_matches_the_batch(op: str, n: int, x64: None) -> None:
    x = jnp.asarray(rows(n, seed=7)[:13])
    batched = jax.vmap(lambda v: call(op, v))(x)
    np.testing.assert_array_equal(np.asarray(batched), np.asarray(call(op, x)))
    g = jax.vmap(jax.grad(lambda v: jnp.sum(call(op, v) * jnp.arange(v.shape[-1]) if op != "logsumexp"
                                            else call(op, v)[0])))(jnp.asarray(rows(n, seed=8)[:5]))
    assert np.all(np.isfinite(np.asarray(g)))


def _scalar(op: str, w: np.ndarray) -> Callable[[Any], Any]:
    if op == "logsumexp":
        return lambda v: jnp.sum(fg.logsumexp(v, axis=-1) * jnp.asarray(w[:, 0]))
    return lambda v: jnp.sum(getattr(fg, op)(v) * jnp.asarray(w))


@pytest.mark.parametrize("op", OPS)
def test_gradient_matches_the_generic_path(op: str, x64: None) -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4, 7)) * 3
    x[1, 2] = -INF
    x[2] = -INF  # nothing left: gradient 0
    w = rng.uniform(0.5, 1.5, size=(4, 7))
    got = np.asarray(jax.jit(jax.grad(_scalar(op, w)))(jnp.asarray(x)))

    def generic_scalar(v: Any) -> Any:
        out = generic(op, v)
        out = jnp.where(jnp.isneginf(out), 0.0, out) if op == "log_softmax" else out
        return jnp.sum(out * jnp.asarray(w[:, :1] if op == "logsumexp" else w))

    want = np.asarray(jax.jit(jax.grad(generic_scalar))(jnp.asarray(x)))
    if op == "log_softmax":  # the -inf outputs take no part: give them weight 0 in both
        w0 = np.where(np.isneginf(x), 0.0, w)
        got = np.asarray(jax.jit(jax.grad(_scalar(op, w0)))(jnp.asarray(x)))
    assert not np.any(np.isnan(got))
    np.testing.assert_array_equal(got[2], np.zeros(7))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("op", OPS)
def test_rows_with_nothing_left_have_zero_gradient(op: str, x64: None) -> None:
    x = jnp.asarray([[-INF, -INF, -INF], [0.5, -1.0, 2.0], [1.0, 2.0, 3.0]])
    mask = jnp.asarray([[True, True, True], [True, False, True], [False, False, False]])
    w = np.random.default_rng(10).uniform(0.5, 1.5, size=(3, 3))
    for kw in ({}, {"where": mask}):

        def f(v: Any, kw: dict[str, Any] = kw) -> Any:
            out = call(op, v, **kw)
            out = jnp.where(jnp.isfinite(out), out, 0.0)  # the -inf outputs of log_softmax
            return jnp.sum(out * jnp.asarray(w[:, : out.shape[1]]))

        for g in (jax.grad(f)(x), jax.jit(jax.grad(f))(x)):
            g = np.asarray(g)
            assert not np.any(np.isnan(g)), g
            np.testing.assert_array_equal(g[0], np.zeros(3))
            if kw:
                np.testing.assert_array_equal(g[2], np.zeros(3))
                assert g[1, 1] == 0.0


def test_all_neg_inf_row_gradient_is_zero_where_jax_nn_gives_nan(x64: None) -> None:
    row = jnp.full((1, 4), -INF)
    assert np.all(np.isnan(np.asarray(jax.grad(lambda v: jnp.sum(jax.nn.logsumexp(v, axis=1)))(row))))
    for op in OPS:
        g = jax.grad(lambda v, op=op: jnp.sum(jnp.where(jnp.isfinite(c := call(op, v)), c, 0.0)))(row)
        np.testing.assert_array_equal(np.asarray(g), np.zeros((1, 4)))


def test_pos_inf_rows_have_zero_gradient_and_nan_rows_nan(x64: None) -> None:
    """A ``+inf`` row (its value a limit) and a ``-inf`` row have gradient 0; a NaN row NaN, masked or not, as its
    value and jax.nn's (it was 0 under x64: a NaN hidden from a gradient check), the x64-off path's already."""
    x = jnp.asarray([[INF, 1.0, 2.0], [NAN, 0.0, 1.0], [0.0, 1.0, 2.0], [-INF, -INF, -INF]])
    for op in OPS:
        g = np.asarray(jax.jit(jax.grad(lambda v, op=op: jnp.nansum(jnp.where(
            jnp.isfinite(c := call(op, v)), c, 0.0))))(x))
        np.testing.assert_array_equal(g[[0, 3]], np.zeros((2, 3)))
        assert np.isnan(g[1]).all() and np.isfinite(g[2]).all(), (op, g)


def test_hessian_of_logsumexp(x64: None) -> None:
    x = np.random.default_rng(11).normal(size=6)
    h = np.asarray(jax.jit(jax.hessian(lambda v: fg.logsumexp(v)))(jnp.asarray(x)))
    p = np.exp(x - np.log(np.sum(np.exp(x))))
    np.testing.assert_allclose(h, np.diag(p) - np.outer(p, p), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_hessian_matches_jax_nn(op: str, x64: None) -> None:
    x = jnp.asarray(np.random.default_rng(12).normal(size=5) * 2)
    w = jnp.asarray(np.random.default_rng(13).uniform(0.5, 1.5, size=5))
    h = jax.hessian(lambda v: jnp.sum(getattr(fg, op)(v) * w))(x)
    want = jax.hessian(lambda v: jnp.sum(getattr(jax.nn, op)(v) * w))(x)
    np.testing.assert_allclose(np.asarray(h), np.asarray(want), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("n", [6, 4099])
@pytest.mark.parametrize("op", OPS)
def test_check_grads_float64(op: str, n: int, x64: None) -> None:
    from jax.test_util import check_grads

    rng = np.random.default_rng(14)
    x = jnp.asarray(rng.normal(size=(3, n)) * 2)
    w = jnp.asarray(rng.uniform(0.5, 1.5, size=(3, n)))
    if op == "logsumexp":
        def f(v: Any) -> Any:
            return fg.logsumexp(v, axis=-1)
    else:
        def f(v: Any) -> Any:
            return getattr(fg, op)(v) * w
    check_grads(f, (x,), order=2, modes=("fwd", "rev"), eps=1e-4, atol=1e-6, rtol=1e-6)


def test_float32_gradients_keep_the_dtype_and_match_float64(x64: None) -> None:
    x = np.random.default_rng(15).normal(size=(4, 6)) * 2
    for op in OPS:
        w = np.random.default_rng(16).uniform(0.5, 1.5, size=(4, 6))
        g32 = jax.grad(_scalar(op, w))(jnp.asarray(x, dtype=jnp.float32))
        g64 = jax.grad(_scalar(op, w))(jnp.asarray(x.astype(np.float32).astype(np.float64)))
        assert g32.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g32), np.asarray(g64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_gradients_keep_the_dtype_and_match_float64(dtype: str, x64: None) -> None:
    """Half precision is worked in float32 (forward and tangents): the gradient is that of float64 on
    the same (rounded) inputs, to a few units of the dtype's rounding."""
    rng = np.random.default_rng(17)
    x = jnp.asarray(rng.normal(size=(4, 300)) * 3, dtype=getattr(jnp, dtype))
    x64_ = jnp.asarray(np.asarray(x).astype(np.float64))
    eps = float(jnp.finfo(getattr(jnp, dtype)).eps)
    for op in OPS:
        w = rng.uniform(0.5, 1.5, size=(4, 300))
        g = jax.jit(jax.grad(_scalar(op, w)))(x)
        want = np.asarray(jax.grad(_scalar(op, w))(x64_))
        assert g.dtype == x.dtype, (op, g.dtype)
        got = np.asarray(g).astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=4 * eps, atol=4 * eps * float(np.abs(want).max()), err_msg=op)


# --------------------------------------------------------------------------------------
# the float32 working dtype (no x64, or half precision): one fused pass, same semantics
# --------------------------------------------------------------------------------------
@pytest.fixture
def no_x64() -> Iterator[None]:
    """JAX's default: float32 inputs are worked in float32 (the one-pass path of the module)."""
    with jax.enable_x64(False):
        yield


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_non_finite_rows_keep_their_semantics_in_float32(dtype: str, no_x64: None) -> None:
    x = jnp.asarray([[-INF, -INF, -INF], [1.0, INF, INF], [INF, 0.0, -INF], [NAN, 0.0, 1.0], [2.0, 2.0, 2.0],
                     [-INF, 0.0, -INF]], dtype=getattr(jnp, dtype))
    for fn in (lambda v: v, jax.jit):
        lse = np.asarray(fn(lambda v: fg.logsumexp(v, axis=1))(x)).astype(np.float64)
        np.testing.assert_array_equal(lse[[0, 1, 2, 5]], [-INF, INF, INF, 0.0])
        assert np.isnan(lse[3]) and lse[4] == pytest.approx(2.0 + math.log(3.0), rel=1e-2)
        p = np.asarray(fn(fg.softmax)(x)).astype(np.float64)
        np.testing.assert_array_equal(p[[0, 1, 2, 5]], [[0, 0, 0], [0, 0.5, 0.5], [1, 0, 0], [0, 1, 0]])
        assert np.all(np.isnan(p[3]))
        ls = np.asarray(fn(fg.log_softmax)(x)).astype(np.float64)
        np.testing.assert_array_equal(ls[[0, 2, 5]], [[-INF] * 3, [0.0, -INF, -INF], [-INF, 0.0, -INF]])
        assert ls[1, 0] == -INF and ls[1, 1] == ls[1, 2] == pytest.approx(math.log(0.5), rel=1e-2)
        assert np.all(np.isnan(ls[3]))


@pytest.mark.parametrize("op", OPS)
def test_float32_work_matches_the_generic_path_on_long_rows(op: str, no_x64: None) -> None:
    """Rows are not cut into pieces in float32: long and prime lengths, a dominant entry in any place."""
    for n in (4099, 6000):
        x = jnp.asarray(rows(n, seed=18)[:13], dtype=jnp.float32)
        got = jax.jit(lambda v: call(op, v))(x)
        want = jax.jit(lambda v: generic(op, v))(x)
        err = ulps(got, want, "float32")
        assert float(err.max()) <= 4.0, (op, n, np.argwhere(err > 4.0)[:5])


@pytest.mark.parametrize("op", OPS)
def test_float32_gradient_matches_float64(op: str) -> None:
    """The float32 path's gradient (no x64) against the float64 one (x64) of the same inputs, and exactly 0
    on rows with no finite max (-inf and +inf rows), where jax.nn gives NaN."""
    rng = np.random.default_rng(19)
    x = rng.normal(size=(5, 300)) * 3
    x[1, 2] = x[1, 7] = -INF
    x[2] = -INF
    x[3, 5] = INF
    w = rng.uniform(0.5, 1.5, size=(5, 300))
    x32 = x.astype(np.float32)

    def scalar(v: Any, w: Any) -> Any:
        out = call(op, v)
        return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0) * w[:, : out.shape[1]])

    with jax.enable_x64(False):
        g32 = jax.jit(jax.grad(scalar))(jnp.asarray(x32), jnp.asarray(w, dtype=jnp.float32))
        assert g32.dtype == jnp.float32
        g32 = np.asarray(g32).astype(np.float64)
    with jax.enable_x64(True):
        want = np.asarray(jax.grad(scalar)(jnp.asarray(x32.astype(np.float64)), jnp.asarray(w)))
    assert not np.any(np.isnan(g32))
    np.testing.assert_array_equal(g32[[2, 3]], np.zeros((2, 300)))
    np.testing.assert_array_equal(want[[2, 3]], np.zeros((2, 300)))
    np.testing.assert_allclose(g32, want, rtol=2e-5, atol=2e-6 * float(np.abs(want).max()))


def test_float32_nan_rows_stay_in_their_row(no_x64: None) -> None:
    """A NaN row gives NaN (results and, as jax.nn's, gradient) in its row only."""
    x = jnp.asarray(np.concatenate([rows(50, seed=20)[:4], [[NAN] + [0.0] * 49]]), dtype=jnp.float32)
    for op in OPS:
        out = np.asarray(jax.jit(lambda v, op=op: call(op, v))(x))
        assert np.all(np.isnan(out[4])) and not np.any(np.isnan(out[[0, 1, 2, 3]])), op
        g = np.asarray(jax.jit(jax.grad(lambda v, op=op: jnp.sum(call(op, v)[:, :1])))(x))
        assert np.all(np.isfinite(g[:4])), op


def test_float32_hessian_of_logsumexp(no_x64: None) -> None:
    x = np.random.default_rng(21).normal(size=6).astype(np.float32)
    h = np.asarray(jax.jit(jax.hessian(lambda v: fg.logsumexp(v)))(jnp.asarray(x)))
    xd = x.astype(np.float64)
    p = np.exp(xd - np.log(np.sum(np.exp(xd))))
    np.testing.assert_allclose(h, np.diag(p) - np.outer(p, p), rtol=1e-5, atol=1e-7)


def test_float32_hessian_of_softmax(no_x64: None) -> None:
    """The second derivative goes through the tangent of the softmax's scale ``q = 1 / (1 + s)`` too."""
    x = np.random.default_rng(22).normal(size=5).astype(np.float32)
    w = np.random.default_rng(23).uniform(0.5, 1.5, 5)
    h = np.asarray(jax.jit(jax.hessian(lambda v: jnp.sum(jnp.asarray(w, jnp.float32) * fg.softmax(v))))(
        jnp.asarray(x)))
    xd = x.astype(np.float64)

    def grad(v: np.ndarray) -> np.ndarray:  # the float64 gradient of sum(w * softmax(v))
        q = np.exp(v - np.log(np.sum(np.exp(v))))
        return q * (w - w @ q)

    num = np.stack([(grad(xd + e) - grad(xd - e)) / 2e-6 for e in np.eye(5) * 1e-6], axis=1)  # central differences
    np.testing.assert_allclose(h, num, rtol=1e-4, atol=1e-6)


def _exps_per_entry(f: Callable[..., Any], x: Any, c: Any) -> int:
    """How many ``exp`` over the data (shape of ``x``, in float32) the compiled ``jax.vjp`` of ``f`` holds."""
    txt = jax.jit(lambda v, c: jax.vjp(f, v)[1](c)[0]).lower(x, c).compile().as_text()
    dims = ",".join(map(str, x.shape))
    return len(re.findall(rf"f32\[{dims}\]\{{[^}}]*\}} exponential\(", txt))


@pytest.mark.parametrize("shape", [(64, 300), (512, 1024)])  # loop fusions, and the YNNPACK fusion
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", OPS)
def test_float32_vjp_takes_one_exp_per_entry_as_jax_nn(op: str, dtype: str, shape: tuple[int, int],
                                                      no_x64: None) -> None:
    """The tangent's softmax reuses the forward's ``exp(x - max)`` (the residual jax.nn keeps): one ``exp``
    per entry in the compiled forward with its ``jax.vjp``, as jax.nn's, not a second one in the backward."""
    x = jnp.zeros(shape, getattr(jnp, dtype))
    c = jnp.zeros(shape[:-1] if op == "logsumexp" else shape, getattr(jnp, dtype))
    mine = _exps_per_entry(lambda v: fg.logsumexp(v, axis=-1) if op == "logsumexp" else getattr(fg, op)(v), x, c)
    peer = _exps_per_entry(lambda v: getattr(jax.nn, op)(v, axis=-1), x, c)
    assert mine == peer == 1, (mine, peer)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", OPS)
def test_a_middle_axis_is_reduced_where_it_lies(op: str, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worked in float32, a middle axis (``dim=1`` of ``(N, C, H, W)``) goes to the one-pass path as it lies, not
    moved last: the moved-last rows' values and gradients, and non-finite rows keep their limits."""
    with jax.enable_x64(False):
        x = np.random.default_rng(21).normal(size=(3, 7, 5, 6)) * 3
        x[0, :, 1, 2] = -INF
        x[1, 3, 2, 2] = INF
        x[2, 0, 0, 0] = -INF
        xj = jnp.asarray(x, dtype=dtype)
        moved = jnp.moveaxis(xj, 1, -1)
        f = (lambda v, a: fg.logsumexp(v, axis=a)) if op == "logsumexp" else (lambda v, a: getattr(fg, op)(v, axis=a))
        seen: list[int] = []
        orig = _jax_fast._dispatch
        monkeypatch.setattr(_jax_fast, "_dispatch", lambda v, o, axis=-1: seen.append(axis) or orig(v, o, axis))
        got = jax.jit(lambda v: f(v, 1))(xj)
        assert seen == [1]
        want = jax.jit(lambda v: f(v, -1))(moved)
        want = want if op == "logsumexp" else jnp.moveaxis(want, -1, 1)
        assert got.dtype == xj.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.isnan(np.asarray(got, np.float64)), np.isnan(np.asarray(want, np.float64)))
        err = ulps(got, want, dtype)
        assert float(err.max()) <= 1.0, np.argwhere(err > 1.0)[:5]
        c = jnp.asarray(np.random.default_rng(22).uniform(0.5, 1.5, got.shape), dtype=xj.dtype)
        gg = jax.jit(lambda v: jax.vjp(lambda u: f(u, 1), v)[1](c)[0])(xj)
        cm = c if op == "logsumexp" else jnp.moveaxis(c, 1, -1)
        gw = jnp.moveaxis(jax.jit(lambda v: jax.vjp(lambda u: f(u, -1), v)[1](cm)[0])(moved), -1, 1)
        # the sums run in another order: last bits, which a softmax gradient's cancellation magnifies on small entries
        g64, w64 = np.asarray(gg, np.float64), np.asarray(gw, np.float64)
        tol = 1e-6 if dtype == "float32" else 1e-2
        np.testing.assert_allclose(g64, w64, rtol=tol, atol=tol * float(np.abs(w64).max()))
