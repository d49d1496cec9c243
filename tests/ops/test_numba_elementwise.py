"""The float32 / bfloat16 elementwise kernels of :mod:`floatguard.ops._numba_elementwise` against mpmath.

Their float64 registers hold ``exp`` to a relative ``2^-35`` and ``log1p`` to ``2^-35.5`` (the short helpers of
``_numba_exp`` / ``_numba_log``), so a result rounded once to float32 is within ``0.5 + 2^-10`` ulp: a sloppier
helper (a ``log1p`` of ``2^-30``, say) shows up here as ``0.5 + 2^-6``. The float32 sigmoid backward runs in
float32 lanes instead, and so does logaddexp's (``a - b`` carried as a TwoSum pair): within 1.5 ulp of mpmath's
``g sigmoid(+-x)`` (their error budgets in the kernel module).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")
pytest.importorskip("mpmath")

import mpmath

from floatguard import testing as T
from floatguard.ops import _numba_elementwise as E

BOUND = 0.5 + 2.0**-10
X_SWITCH = -math.log(math.sqrt(2.0) - 1.0)  # |x| where 1 + exp(-|x|) crosses sqrt(2): an old log1p's k switch


def _hard_inputs() -> np.ndarray:
    rng = np.random.default_rng(17)
    sign = np.where(rng.random(1500) < 0.5, -1.0, 1.0)
    return np.concatenate([
        rng.uniform(-110.0, 110.0, 1500),
        rng.uniform(-3.0, 3.0, 1500),
        sign * 2.0 ** rng.uniform(-40.0, 7.0, 1500),  # tiny to large |x|
        X_SWITCH + rng.uniform(-1e-5, 1e-5, 400), -X_SWITCH + rng.uniform(-1e-5, 1e-5, 400),
        rng.uniform(-104.0, -85.0, 800),  # softplus's subnormal float32 results
        [0.0, -0.0, 1e-45, -1e-45, 16.0, 17.0, 88.0, -88.0, 3.4e38, -3.4e38],
    ]).astype(np.float32)


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values truncated to bfloat16, as the int16 bits the kernels read."""
    return (x.view(np.int32) >> 16).astype(np.int16)


def _from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.int32) << 16).view(np.float32)


@pytest.mark.parametrize(("op", "ref"), [(0, T.ref_softplus), (1, T.ref_log_sigmoid)], ids=["softplus", "log_sigmoid"])
def test_float32_unary_within_half_ulp_and_a_sliver(op: int, ref: object) -> None:
    x = _hard_inputs()
    out = np.empty_like(x)
    E.unary_forward(x, out, op)
    err = np.asarray(T.ulp_error(out, T.vectorize(ref)(x.astype(np.float64)), "float32"), dtype=float)
    worst = int(np.argmax(err))
    assert err[worst] <= BOUND, f"{err[worst]:.6f} ulp at x = {x[worst]!r}"


@pytest.mark.parametrize(("op", "ref"), [(0, T.ref_softplus), (1, T.ref_log_sigmoid)], ids=["softplus", "log_sigmoid"])
def test_bfloat16_unary_within_half_ulp_and_a_sliver(op: int, ref: object) -> None:
    bits = _bf16_bits(_hard_inputs())
    out = np.empty_like(bits)
    E.unary_forward(bits, out, op)
    got = _from_bf16_bits(out).astype(np.float64)
    err = np.asarray(T.ulp_error(got, T.vectorize(ref)(_from_bf16_bits(bits).astype(np.float64)), "bfloat16"),
                     dtype=float)
    worst = int(np.argmax(err))
    assert err[worst] <= BOUND, f"{err[worst]:.6f} ulp at bits {int(bits[worst])}"


def test_bce_elements_of_float32_logits_to_a_relative_2_to_minus_34() -> None:
    """``bce_forward``'s float64 elements for float32 logits: the short ``exp`` / ``log1p`` of softplus."""
    x = _hard_inputs().reshape(1, -1)
    y = np.random.default_rng(3).choice(np.array([0.0, 1.0, 0.25], dtype=np.float32), x.shape)
    out = np.empty(x.shape)
    total = sum(E.bce_forward(x, y, np.zeros((0, 0)), np.zeros((0, 0)), out, True))
    ref = T.vectorize(T.ref_bce_with_logits)(x[0].astype(np.float64), y[0].astype(np.float64))
    rel = np.array([float(abs(g - r) / r) if r != 0 else abs(g) for g, r in zip(out[0].tolist(), ref, strict=True)])
    worst = int(np.argmax(rel))
    assert rel[worst] < 2.0**-34, f"relative {rel[worst]:.3g} at x = {x[0, worst]!r}, y = {y[0, worst]!r}"
    assert total == pytest.approx(float(sum(ref)), rel=1e-12)


def _specials() -> np.ndarray:
    return np.array([np.inf, -np.inf, np.nan], dtype=np.float32)


GRAD32_BOUND = 1.5  # the float32 lanes' g sigmoid(+-x): the error budget in _numba_elementwise
SIGNS = pytest.mark.parametrize(("op", "sign"), [(0, 1.0), (1, -1.0)], ids=["softplus", "log_sigmoid"])


def _lane_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``|x| <= 80`` (the float32 lanes' range: no block falls back) and ``g`` over the float32 range."""
    rng = np.random.default_rng(seed)
    k = n // 4
    x = np.concatenate([
        rng.uniform(-80.0, 80.0, k), rng.uniform(-0.4, 0.4, k),  # k switches at +-ln2/2 steps; |r| near ln2/2
        np.where(rng.random(k) < 0.5, -1.0, 1.0) * 2.0 ** rng.uniform(-30.0, np.log2(80.0), k),
        rng.choice(np.arange(-230, 231), n - 3 * k) * (math.log(2.0) / 2.0) + rng.uniform(-1e-6, 1e-6, n - 3 * k),
    ]).astype(np.float32)
    g = (rng.uniform(1.0, 2.0, x.size) * 2.0 ** rng.integers(-149, 127, x.size)
         * np.where(rng.random(x.size) < 0.5, -1.0, 1.0)).astype(np.float32)  # subnormal results included
    g[: x.size // 3] = 1.0  # the sigmoid itself
    return x, g


def _scaled_ulps(out: np.ndarray, g: np.ndarray, d: object) -> np.ndarray:
    """``|out - g d|`` in float32 ulps, ``d`` mpmath values (``g`` of one entry: for all); an exact ``g d`` that
    rounds beyond float32's range must be an infinity of its sign (0 ulp), else inf."""
    gg = np.broadcast_to(g, out.shape).tolist()
    ref = np.array([mpmath.mpf(float(u)) * v for u, v in zip(gg, d, strict=True)], dtype=object)
    top = (2 - mpmath.mpf(2) ** -24) * mpmath.mpf(2) ** 127  # the float32 max plus half its ulp
    big = np.array([abs(v) >= top for v in ref], dtype=bool)
    sign = np.array([1.0 if v > 0 else -1.0 for v in ref[big]])
    err = np.zeros(out.size)
    err[big] = np.where(np.isinf(out[big]) & (np.sign(out[big]) == sign), 0.0, np.inf)
    err[~big] = np.asarray(T.ulp_error(out[~big], ref[~big], "float32"), dtype=float)
    return err


def _grad_ulps(out: np.ndarray, x: np.ndarray, g: np.ndarray, sign: float) -> np.ndarray:
    """``|out - g sigmoid(sign x)|`` in float32 ulps, against mpmath (``g`` of one entry: for all)."""
    return _scaled_ulps(out, g, T.vectorize(T.ref_sigmoid)(sign * x.astype(np.float64)))


@SIGNS
def test_float32_sigmoid_backward_lanes_within_one_and_a_half_ulp(op: int, sign: float) -> None:
    """The float32 lanes (``|x| <= 80``, finite ``g``: no block falls back, which the block kernel's flag
    confirms): ``g sigmoid(+-x)`` within 1.5 ulp of mpmath for ``g`` from 2^-149 to 2^127 (subnormal results
    included) and ``g = 1``, at the exp's reduction steps ``k ln2 / 2`` and over the whole range."""
    x, g = _lane_inputs(6000, 23)
    out, direct = np.empty_like(x), np.empty_like(x)
    assert E._g_sigmoid32_block(x, g, direct, op == 1) <= E.X32_MAX_BITS  # all in the lanes' range
    E.unary_backward(x, g, out, op)
    np.testing.assert_array_equal(out, direct)
    err = _grad_ulps(out, x, g, sign)
    worst = int(np.argmax(err))
    assert err[worst] <= GRAD32_BOUND, f"{err[worst]:.4f} ulp at x = {x[worst]!r}, g = {g[worst]!r}"
    # the check resolves a 3-ulp slip: every entry moved by 3 ulps fails it (nonzero results)
    moved = np.nextafter(np.nextafter(np.nextafter(out, np.inf), np.inf), np.inf)
    far = _grad_ulps(moved[:400], x[:400], g[:400], sign)
    assert (far[out[:400] != 0] > GRAD32_BOUND).all()


@pytest.mark.parametrize("scalar_g", [True, False], ids=["g_scalar", "g_full"])
@SIGNS
def test_float32_sigmoid_backward_over_the_range(op: int, sign: float, scalar_g: bool) -> None:
    """``unary_backward``'s float32 ``g sigmoid(+-x)`` over the whole float32 range: blocks with ``|x| > 80``
    (the subnormal sigmoids of ``|x|`` near 100), the ends (``sigmoid(+-inf)`` is 1 and 0) and NaN go through
    the float64 loop; the raw-pointer entry gives the same bits."""
    x = np.concatenate([_hard_inputs(), _lane_inputs(2000, 5)[0], _specials()])
    g = np.full(1, 0.75, np.float32) if scalar_g else _lane_inputs(x.size, 6)[1][: x.size]
    out = np.empty_like(x)
    E.unary_backward(x, g, out, op)
    err = _grad_ulps(out[:-1], x[:-1], g if scalar_g else g[:-1], sign)
    worst = int(np.argmax(err))
    assert err[worst] <= GRAD32_BOUND, f"{err[worst]:.4f} ulp at x = {x[worst]!r}"
    assert np.isnan(out[-1])
    g_end = g[0] if scalar_g else g[-3:-1]
    np.testing.assert_array_equal(out[-3:-1], g_end * (np.array([1.0, 0.0]) if op == 0 else np.array([0.0, 1.0])))
    gp = np.ascontiguousarray(np.broadcast_to(g, x.shape))
    via_ptr = np.empty_like(x)
    E.ptr_unary(False, x.ctypes.data, gp.ctypes.data, via_ptr.ctypes.data, x.size, op, True)
    np.testing.assert_array_equal(via_ptr, out)


@SIGNS
def test_float32_sigmoid_backward_special_gradients(op: int, sign: float) -> None:
    """``g`` of 0, -0, inf and NaN as IEEE's ``g * sigmoid(+-x)`` (the block with an inf or NaN ``g`` goes
    through the float64 loop); ``x = +-0`` gives ``g / 2``; a one-entry ``g`` of inf likewise."""
    x = np.array([0.0, -0.0, 1.5, -1.5, 30.0, -30.0, np.inf, -np.inf], dtype=np.float32)
    with np.errstate(invalid="ignore"):
        for gv in (0.0, -0.0, np.inf, -np.inf, np.nan):
            for g in (np.full(x.size, gv, np.float32), np.full(1, gv, np.float32)):
                out = np.empty_like(x)
                E.unary_backward(x, g, out, op)
                sig = np.array([float(T.ref_sigmoid(sign * float(v))) for v in x])
                want = (np.float64(gv) * sig).astype(np.float32)
                np.testing.assert_array_equal(out, want)
                num = ~np.isnan(want)
                assert (np.signbit(out[num]) == np.signbit(want[num])).all()
    out = np.empty_like(x)
    E.unary_backward(x, np.full(1, 3.0, np.float32), out, op)
    np.testing.assert_array_equal(out[:2], [1.5, 1.5])


@pytest.mark.parametrize("scalar_g", [False, True])
def test_float32_sigmoid_backward_blocks_switch_between_lanes_and_float64(scalar_g: bool) -> None:
    """A block with an entry out of the lanes' range goes through the float64 loop; every block in range, also the one
    after it (which used to go through float64 too, so that its bits depended on its neighbour and, with chunks
    split over threads, on the thread count), through the lanes. Each block's result is that of the path it takes."""
    rng = np.random.default_rng(8)
    b = E.BLOCK32
    x = (rng.standard_normal(5 * b + 77) * 3).astype(np.float32)
    x[b + 5] = 100.0  # block 1 out of range; 2 and 3 in range: the lanes
    x[4 * b + 9] = -np.inf  # block 4 out of range; the partial block 5 after it in the lanes
    g = rng.uniform(0.5, 1.5, 1 if scalar_g else x.size).astype(np.float32)
    out = np.empty_like(x)
    E.unary_backward(x, g, out, 0)
    wide, lanes = np.empty_like(x), np.empty_like(x)
    E._sigmoid_grad64(x, g, wide, False)
    if scalar_g:
        E._g_sigmoid32_block_scalar(x, g[0], lanes, False)
    else:
        E._g_sigmoid32_block(x, g, lanes, False)
    for k, want in enumerate((lanes, wide, lanes, lanes, wide, lanes)):
        sl = slice(k * b, (k + 1) * b)
        if k < 5:  # the two paths differ in each full block
            assert not np.array_equal(lanes[sl], wide[sl], equal_nan=True), k
        assert np.array_equal(out[sl], want[sl], equal_nan=True), k


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(width=32, allow_nan=False), st.floats(width=32, allow_nan=False,
                                                                           allow_infinity=False)),
                min_size=1, max_size=40),
       st.booleans())
def test_float32_sigmoid_backward_hypothesis(pairs: list[tuple[float, float]], neg: bool) -> None:
    """Any float32 ``x`` (infinities included) and finite ``g``: within 1.5 ulp of mpmath's ``g sigmoid(+-x)``."""
    x = np.array([p[0] for p in pairs], dtype=np.float32)
    g = np.array([p[1] for p in pairs], dtype=np.float32)
    out = np.empty_like(x)
    E.unary_backward(x, g, out, 1 if neg else 0)
    err = _grad_ulps(out, x, g, -1.0 if neg else 1.0)
    assert err.max() <= GRAD32_BOUND, f"{err.max():.4f} ulp at x = {x[int(np.argmax(err))]!r}"


@pytest.mark.parametrize(("op", "sign"), [(0, 1.0), (1, -1.0)], ids=["softplus", "log_sigmoid"])
def test_bfloat16_sigmoid_backward_within_half_ulp_and_a_sliver(op: int, sign: float) -> None:
    bits = _bf16_bits(np.concatenate([_hard_inputs(), _specials()[:2]]))
    out = np.empty_like(bits)
    E.unary_backward(bits, _bf16_bits(np.ones(bits.size, dtype=np.float32)), out, op)
    got = _from_bf16_bits(out).astype(np.float64)
    ref = T.vectorize(T.ref_sigmoid)(sign * _from_bf16_bits(bits).astype(np.float64))
    err = np.asarray(T.ulp_error(got, ref, "bfloat16"), dtype=float)
    worst = int(np.argmax(err))
    assert err[worst] <= BOUND, f"{err[worst]:.6f} ulp at bits {int(bits[worst])}"


def test_float32_bce_backward_within_half_ulp_and_a_sliver() -> None:
    """The other user of the float32 ``1 / (1 + e)`` in float64 registers: BCE's ``sigmoid(x) (1 - y) - y
    sigmoid(-x)`` for ``y`` in {0, 1} (one sigmoid, rounded once)."""
    x = _hard_inputs().reshape(1, -1)
    y = np.random.default_rng(4).choice(np.array([0.0, 1.0], dtype=np.float32), x.shape)
    out = np.empty_like(x)
    E.bce_backward(x, y, np.zeros((0, 0)), np.zeros((0, 0)), np.ones((1, 1)), out)
    xd = x[0].astype(np.float64)
    ref = np.where(y[0] == 0.0, T.vectorize(T.ref_sigmoid)(xd), -T.vectorize(T.ref_sigmoid)(-xd))
    err = np.asarray(T.ulp_error(out[0], ref, "float32"), dtype=float)
    assert err.max() <= BOUND, f"bce: {err.max():.6f} ulp at x = {x[0, int(np.argmax(err))]!r}"


# -- the float32 logaddexp backward: float32 lanes (a - b carried as a TwoSum pair), float64 blocks -----------
def _lae_grad_ulps(ga: np.ndarray, gb: np.ndarray, a: np.ndarray, b: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The larger of ``|ga - g sigmoid(a - b)|`` and ``|gb - g sigmoid(b - a)|`` per entry, in float32 ulps."""
    diff = a.astype(np.float64) - b.astype(np.float64)  # exact: both float32 (finite here)
    sig = T.vectorize(T.ref_sigmoid)
    return np.maximum(_scaled_ulps(ga, g, sig(diff)), _scaled_ulps(gb, g, sig(-diff)))


def _lae_lane_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a``, ``b`` with ``|a - b| <= 80`` whose difference is rarely a float32 (large ``a`` against small ``b``,
    nearly equal pairs, differences at the exp's steps ``k ln2 / 2``), and ``g`` over every float32 exponent."""
    rng = np.random.default_rng(seed)
    k = n // 4
    a = np.concatenate([rng.uniform(-1e4, 1e4, k), rng.standard_normal(k) * 4,
                        2.0 ** rng.uniform(-30.0, 6.0, k) * np.where(rng.random(k) < 0.5, -1.0, 1.0),
                        rng.uniform(-50.0, 50.0, n - 3 * k)]).astype(np.float32)
    d = np.concatenate([rng.uniform(-80.0, 80.0, k), rng.standard_normal(k) * 4,
                        a[2 * k : 3 * k].astype(np.float64) * rng.uniform(-1e-3, 1e-3, k),
                        rng.choice(np.arange(-230, 231), n - 3 * k) * (math.log(2.0) / 2.0)])
    b = (a.astype(np.float64) - d).astype(np.float32)
    b[: k // 2] = a[: k // 2] - np.float32(79.9)  # a large a: a - b far from a float32
    g = (rng.uniform(1.0, 2.0, n) * 2.0 ** rng.integers(-149, 127, n)
         * np.where(rng.random(n) < 0.5, -1.0, 1.0)).astype(np.float32)
    g[: n // 3] = 1.0
    return a, b, g


@pytest.mark.parametrize("scalar_g", [False, True], ids=["g_full", "g_scalar"])
def test_float32_logaddexp_backward_lanes_within_one_and_a_half_ulp(scalar_g: bool) -> None:
    """The float32 lanes (no block falls back, which the block kernel's flag confirms): ``g sigmoid(+-(a - b))``
    within 1.5 ulp of mpmath, ``a - b`` exact (not its float32 rounding, up to 40 ulp off at ``|a - b|`` near 80),
    ``g`` from 2^-149 to 2^127 (subnormal results included) or one ``g`` for all."""
    a, b, g = _lae_lane_inputs(8000, 31)
    if scalar_g:
        g = np.full(1, 0.75, np.float32)
    ga, gb, da, db = (np.empty_like(a) for _ in range(4))
    assert E._lae_grad32_block(a, b, g, da, db, scalar_g) <= E.X32_MAX_BITS  # all in the lanes' range
    E.logaddexp_backward(a, b, g, ga, gb)
    np.testing.assert_array_equal(ga, da)
    np.testing.assert_array_equal(gb, db)
    err = _lae_grad_ulps(ga, gb, a, b, g)
    worst = int(np.argmax(err))
    assert err[worst] <= GRAD32_BOUND, f"{err[worst]:.4f} ulp at a = {a[worst]!r}, b = {b[worst]!r}"
    # the check resolves a 3-ulp slip in either output: moved entries (nonzero) fail it
    moved = np.nextafter(np.nextafter(np.nextafter(gb[:400], np.inf), np.inf), np.inf)
    far = _lae_grad_ulps(ga[:400], moved, a[:400], b[:400], g if scalar_g else g[:400])
    assert (far[gb[:400] != 0] > GRAD32_BOUND).all()


def test_float32_logaddexp_backward_out_of_the_lanes_range() -> None:
    """Blocks holding ``|a - b| > 80``, infinities, NaN or an inf ``g`` go through the float64 loop whole (the same
    bits as :func:`_lae_grad_loop`); their neighbours stay in the lanes. The limits: ``+inf`` wins (its side gets
    ``g``), both ``-inf`` give 0 and 0, a NaN gives NaN to both sides (as its value, and PyTorch's)."""
    rng = np.random.default_rng(12)
    blk = E.BLOCK32
    a = (rng.standard_normal(4 * blk + 33) * 5).astype(np.float32)
    b = (rng.standard_normal(a.size) * 5).astype(np.float32)
    g = rng.uniform(0.5, 1.5, a.size).astype(np.float32)
    a[blk + 3], b[blk + 3] = 50.0, -60.0  # |a - b| = 110: block 1 in float64
    a[2 * blk + 7 : 2 * blk + 12] = [np.inf, -np.inf, np.nan, 1.0, -np.inf]  # block 2
    b[2 * blk + 7 : 2 * blk + 12] = [3.0, -np.inf, 2.0, np.inf, 4.0]
    g[4 * blk + 5] = np.inf  # the partial block 4
    ga, gb, wa, wb = (np.empty_like(a) for _ in range(4))
    with np.errstate(invalid="ignore"):
        E.logaddexp_backward(a, b, g, ga, gb)
    E._lae_grad_loop(a, b, g, wa, wb)
    lanes_a, lanes_b = np.empty_like(a), np.empty_like(a)
    E._lae_grad32_block(a, b, g, lanes_a, lanes_b, False)
    for k, wide in enumerate((False, True, True, False, True)):
        sl = slice(k * blk, (k + 1) * blk)
        want_a, want_b = (wa, wb) if wide else (lanes_a, lanes_b)
        assert np.array_equal(ga[sl], want_a[sl], equal_nan=True), k
        assert np.array_equal(gb[sl], want_b[sl], equal_nan=True), k
    j = 2 * blk + 7
    np.testing.assert_array_equal(ga[j : j + 5], [g[j], 0.0, np.nan, 0.0, 0.0])
    np.testing.assert_array_equal(gb[j : j + 5], [0.0, 0.0, np.nan, g[j + 3], g[j + 4]])
    sel = np.r_[0:blk, 3 * blk : 4 * blk]  # lanes blocks: within the bound
    assert _lae_grad_ulps(ga[sel], gb[sel], a[sel], b[sel], g[sel]).max() <= GRAD32_BOUND


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(width=32, allow_nan=False, allow_infinity=False),
                          st.floats(width=32, allow_nan=False, allow_infinity=False),
                          st.floats(width=32, allow_nan=False, allow_infinity=False)),
                min_size=1, max_size=40))
def test_float32_logaddexp_backward_hypothesis(triples: list[tuple[float, float, float]]) -> None:
    """Any finite float32 ``a``, ``b``, ``g``: within 1.5 ulp of mpmath's ``g sigmoid(+-(a - b))`` (``a - b``
    overflowing to inf: the float64 loop's limit, the side of the larger gets ``g``)."""
    a, b, g = (np.array([t[k] for t in triples], dtype=np.float32) for k in range(3))
    ga, gb = np.empty_like(a), np.empty_like(a)
    E.logaddexp_backward(a, b, g, ga, gb)
    err = _lae_grad_ulps(ga, gb, a, b, g)
    assert err.max() <= GRAD32_BOUND, f"{err.max():.4f} ulp at a = {a[int(np.argmax(err))]!r}"


# -- log1mexp: float32 / bfloat16 take the vectorized body (float64 keeps libm) ----------------------------
LOG1MEXP_BOUND = 0.5 + 2.0**-9  # expm1 to 2^-34, fdlibm's log / log1p below 1 ulp of float64: 2^-33 relative


def _log1mexp_inputs() -> np.ndarray:
    rng = np.random.default_rng(23)
    ln2 = math.log(2.0)
    return np.concatenate([
        -np.abs(_hard_inputs()),
        -ln2 + rng.uniform(-1e-5, 1e-5, 600),  # the switch between the branches
        -(ln2 / 2.0) * rng.integers(1, 3, 400) + rng.uniform(-1e-6, 1e-6, 400),  # the half steps of expm1
        -(2.0 ** rng.uniform(-149.0, -1.0, 800)),  # tiny |x|: log(-x) to the float32 subnormals
        rng.uniform(-104.0, -1.0, 800),
    ]).astype(np.float32)


def _log1mexp_grad_ref(x: float) -> object:
    return -1 / mpmath.expm1(-mpmath.mpf(x))


def test_float32_log1mexp_within_half_ulp_and_a_sliver_and_its_gradient_within_one_and_a_half() -> None:
    """The value in float64 registers (0.5 ulp and a sliver); the gradient in float32 lanes where ``x`` is in
    ``[-80, -2^-126]`` (1.5 ulp, the lanes' budget), through the float64 loop beyond (the far tail)."""
    x = _log1mexp_inputs()
    x = x[x < 0]
    out, grad = np.empty_like(x), np.empty_like(x)
    E.unary_forward(x, out, 2)
    E.unary_backward(x, np.ones(1, dtype=np.float32), grad, 2)
    xd = x.astype(np.float64)
    for name, got, ref, bound in (
        ("log1mexp", out, T.vectorize(T.ref_log1mexp)(xd), LOG1MEXP_BOUND),
        ("gradient", grad, T.vectorize(_log1mexp_grad_ref)(xd), GRAD32_BOUND),
    ):
        err = np.asarray(T.ulp_error(got, ref, "float32"), dtype=float)
        worst = int(np.argmax(err))
        assert err[worst] <= bound, f"{name}: {err[worst]:.6f} ulp at x = {x[worst]!r}"


def _log1mexp_grad_ulps(out: np.ndarray, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``|out - g d/dx log1mexp(x)|`` in float32 ulps against mpmath (overflowing results: see :func:`_scaled_ulps`)."""
    return _scaled_ulps(out, g, [_log1mexp_grad_ref(float(v)) for v in x.tolist()])


@pytest.mark.parametrize("scalar_g", [False, True], ids=["g_full", "g_scalar"])
def test_float32_log1mexp_backward_lanes_within_one_and_a_half_ulp(scalar_g: bool) -> None:
    """The float32 lanes (no block falls back, which the block kernel's flag confirms): ``g / (1 - e^-x) e^x``
    within 1.5 ulp of mpmath near 0 (``1 - e^x`` kept relative: ``-x`` down to 2^-126), at the exp's reduction
    steps and the branch point ``-ln2``, to -80, for ``g`` over every float32 exponent (subnormal and overflowing
    results included) or one ``g``."""
    rng = np.random.default_rng(41)
    k = 1500
    x = -np.concatenate([
        rng.uniform(0.0, 80.0, k), 2.0 ** rng.uniform(-126.0, 6.3, k), math.log(2.0) + rng.uniform(-1e-5, 1e-5, k),
        (math.log(2.0) / 2.0) * rng.integers(1, 230, k) + rng.uniform(-1e-6, 1e-6, k),
    ])
    x = np.clip(x, -80.0, -(2.0**-126)).astype(np.float32)
    g = (rng.uniform(1.0, 2.0, x.size) * 2.0 ** rng.integers(-149, 127, x.size)
         * np.where(rng.random(x.size) < 0.5, -1.0, 1.0)).astype(np.float32)
    g[: x.size // 3] = 1.0
    if scalar_g:
        g = np.full(1, 0.75, np.float32)
    out, direct = np.empty_like(x), np.empty_like(x)
    assert E._g_log1mexp32_block(x, g, direct, scalar_g)  # all in the lanes' range
    E.unary_backward(x, g, out, 2)
    np.testing.assert_array_equal(out, direct)
    err = _log1mexp_grad_ulps(out, x, g)
    worst = int(np.argmax(err))
    assert err[worst] <= GRAD32_BOUND, f"{err[worst]:.4f} ulp at x = {x[worst]!r}"
    fin = np.isfinite(out[:400]) & (out[:400] != 0)  # a 3-ulp slip fails the check
    moved = np.nextafter(np.nextafter(np.nextafter(out[:400], np.inf), np.inf), np.inf)
    far = _log1mexp_grad_ulps(moved, x[:400], g if scalar_g else g[:400])
    assert (far[fin] > GRAD32_BOUND).all()


def test_float32_log1mexp_backward_out_of_the_lanes_range() -> None:
    """A block holding ``x`` of 0, a subnormal, below -80, positive, inf or NaN, or an inf ``g``, goes through the
    float64 loop whole (its bits); the blocks around it stay in the lanes."""
    rng = np.random.default_rng(13)
    blk = E.BLOCK32
    x = -np.abs(rng.standard_normal(6 * blk + 21) * 5).astype(np.float32) - np.float32(1e-3)
    g = rng.uniform(0.5, 1.5, x.size).astype(np.float32)
    x[blk + 2], x[2 * blk + 9], x[3 * blk + 4] = 0.0, -1e-40, -90.0
    x[4 * blk + 1 : 4 * blk + 4] = [0.5, -np.inf, np.nan]
    g[6 * blk + 3] = np.nan
    out, wide, lanes = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        E.unary_backward(x, g, out, 2)
        E._log1mexp_grad_loop(x, g, wide)
        E._g_log1mexp32_block(x, g, lanes, False)
    for k, wide_block in enumerate((False, True, True, True, True, False, True)):
        sl = slice(k * blk, (k + 1) * blk)
        assert np.array_equal(out[sl], (wide if wide_block else lanes)[sl], equal_nan=True), k
    assert out[blk + 2] == -np.inf and out[4 * blk + 2] == 0.0 and np.isnan(out[4 * blk + 1])
    sel = np.r_[0:blk, 5 * blk : 6 * blk]
    assert _log1mexp_grad_ulps(out[sel], x[sel], g[sel]).max() <= GRAD32_BOUND


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(width=32, max_value=0.0, exclude_max=True, allow_nan=False),
                          st.floats(width=32, allow_nan=False, allow_infinity=False)), min_size=1, max_size=40))
def test_float32_log1mexp_backward_hypothesis(pairs: list[tuple[float, float]]) -> None:
    """Any float32 ``x < 0`` (``-inf`` included) and finite ``g``: within 1.5 ulp of mpmath's gradient."""
    x = np.array([p[0] for p in pairs], dtype=np.float32)
    g = np.array([p[1] for p in pairs], dtype=np.float32)
    out = np.empty_like(x)
    E.unary_backward(x, g, out, 2)
    fin = np.isfinite(x)
    assert (out[~fin] == 0.0).all()
    err = _log1mexp_grad_ulps(out[fin], x[fin], g[fin])
    assert err.max(initial=0.0) <= GRAD32_BOUND, f"{err.max():.4f} ulp at x = {x[fin][int(np.argmax(err))]!r}"


def test_bfloat16_log1mexp_and_its_gradient_within_half_ulp_and_a_sliver() -> None:
    bits = _bf16_bits(_log1mexp_inputs())
    bits = bits[_from_bf16_bits(bits) < 0]
    out, grad = np.empty_like(bits), np.empty_like(bits)
    E.unary_forward(bits, out, 2)
    E.unary_backward(bits, _bf16_bits(np.ones(bits.size, dtype=np.float32)), grad, 2)
    xd = _from_bf16_bits(bits).astype(np.float64)
    for name, got, ref in ((
        "log1mexp", out, T.vectorize(T.ref_log1mexp)(xd)), ("gradient", grad, T.vectorize(_log1mexp_grad_ref)(xd))):
        err = np.asarray(T.ulp_error(_from_bf16_bits(got).astype(np.float64), ref, "bfloat16"), dtype=float)
        worst = int(np.argmax(err))
        assert err[worst] <= LOG1MEXP_BOUND, f"{name}: {err[worst]:.6f} ulp at bits {int(bits[worst])}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1mexp_special_values(dtype: type) -> None:
    """0 gives -inf (gradient -inf), -inf gives 0 (gradient 0), NaN and x > 0 give NaN: float32 (vectorized
    body) and float64 (libm) alike."""
    x = np.array([0.0, -0.0, -np.inf, np.nan, 0.5, np.inf], dtype=dtype)
    out, grad = np.empty_like(x), np.empty_like(x)
    E.unary_forward(x, out, 2)
    E.unary_backward(x, np.ones(1, dtype=dtype), grad, 2)
    assert out[:3].tolist() == [-np.inf, -np.inf, 0.0] and np.isnan(out[3:]).all()
    assert grad[:3].tolist() == [-np.inf, -np.inf, 0.0] and np.isnan(grad[3:]).all()
