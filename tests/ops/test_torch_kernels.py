"""The PyTorch path's kernels (``_torch_fast`` over ``_numba_fast``): forward, fused backward, 16-bit storage.

* bfloat16 / float16 storage read and written by the kernels as 16-bit integers: every bit
  pattern widens exactly, and float64 values round to nearest even (overflow, NaN, subnormals);
* the short ``exp`` of the float32/bfloat16/float16 kernels against mpmath;
* forward values of every dtype within 1 ulp of mpmath, on random and adversarial rows;
* fused backward against the float64 gradient, ``gradcheck`` / ``gradgradcheck`` in float64;
* non-contiguous and expanded inputs, ``-inf`` / ``+inf`` / NaN rows (zero gradients), empty shapes;
* the torch-ops path of other devices (``device_softmax``, ``device_logsumexp``), run here on the CPU.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from typing import Any

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import floatguard as fg
from floatguard import testing as T
from floatguard.ops import _numba_fast, _torch_fast, _torch_softmax

pytestmark = pytest.mark.skipif(not _numba_fast.AVAILABLE, reason="numba (the `fast` extra) is not installed")

INF = math.inf
RNG = np.random.default_rng(20250707)
LOW = [torch.float32, torch.bfloat16, torch.float16]
ALL = [*LOW, torch.float64]
VIEW = {torch.bfloat16: (torch.int16, np.int16), torch.float16: (torch.uint16, np.uint16)}


def _harness() -> tuple[Any, Any]:
    import numba

    @numba.njit
    def widen(a: np.ndarray, out: np.ndarray) -> None:
        for i in range(a.size):
            out[i] = _numba_fast._load(a[i])

    @numba.njit
    def narrow(v: np.ndarray, out: np.ndarray) -> None:
        for i in range(v.size):
            out[i] = _numba_fast._encode(v[i], out)

    return widen, narrow


WIDEN, NARROW = _harness() if _numba_fast.AVAILABLE else (None, None)


def _narrow(v: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """float64 ``v`` rounded by the kernels' encoder into a tensor of ``dtype``."""
    _, npt = VIEW[dtype]
    bits = np.empty(v.size, dtype=npt)
    NARROW(np.ascontiguousarray(v, dtype=np.float64), bits)
    return torch.from_numpy(bits).view(dtype)


# -- 16-bit storage ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_every_16bit_pattern_widens_exactly_and_rounds_back_to_itself(dtype: torch.dtype) -> None:
    view, npt = VIEW[dtype]
    bits = np.arange(1 << 16, dtype=np.int64).astype(npt)
    got = np.empty(bits.size)
    WIDEN(bits, got)
    want = torch.from_numpy(bits.copy()).view(dtype).double().numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    back = _narrow(got, dtype).view(view).numpy()
    finite = ~np.isnan(want)
    np.testing.assert_array_equal(back[finite], bits[finite])
    assert torch.isnan(_narrow(got[~finite], dtype)).all()


def _hard_float64s() -> np.ndarray:
    """Values around every float16 and bfloat16 rounding boundary, tie, subnormal and overflow."""
    grids = []
    for dtype in (torch.float16, torch.bfloat16):
        view, _ = VIEW[dtype]
        v = torch.arange(0, 0x7C00 if dtype == torch.float16 else 0x7F80, 7, dtype=torch.int32).to(view).view(dtype)
        v = np.unique(v.double().numpy())
        mids = (v[:-1] + v[1:]) / 2
        grids += [mids, np.nextafter(mids, INF), np.nextafter(mids, -INF)]
    edges = [65504.0, 65519.99, 65520.0, 65536.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-133, 2.0**-134,
             3.3895313892515355e38, 3.3961e38, 3.402823e38, 1e39, 1e-300, 5e-324, 0.0, INF]
    mag = RNG.standard_normal(20_000) * 10.0 ** RNG.integers(-45, 40, 20_000)
    out = np.concatenate([*grids, edges, mag])
    return np.concatenate([out, -out])


def test_float64_rounds_to_float16_as_numpy_does() -> None:
    """NumPy's float64 -> float16 conversion is correctly rounded (one rounding, nearest even)."""
    v = _hard_float64s()
    got = _narrow(v, torch.float16).view(torch.uint16).numpy()
    with np.errstate(over="ignore"):
        want = v.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got, want)


def _bf16_nearest_even(v: np.ndarray) -> np.ndarray:
    """The correctly rounded bfloat16 value of each float64, from its two bfloat16 neighbours."""
    pos = torch.arange(0, 0x7F81, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).double().numpy()
    grid = np.concatenate([-pos[::-1], pos[1:]])  # -inf .. inf, ascending
    codes = np.concatenate([-np.arange(0x7F80, -1, -1), np.arange(1, 0x7F81)])  # parity of the mantissa
    big = 2.0**128  # where inf "is" for rounding: the next binade after the largest finite value
    g = np.where(np.isinf(grid), np.sign(grid) * big, grid)
    i = np.clip(np.searchsorted(g, v), 1, g.size - 1)
    lo, hi = g[i - 1], g[i]
    dl, dh = v - lo, hi - v
    up = (dh < dl) | ((dh == dl) & (codes[i] % 2 == 0))
    out = np.where(up, grid[i], grid[i - 1])
    return np.where(np.isin(v, g), v, out)


def test_float64_rounds_to_bfloat16_nearest_even() -> None:
    v = _hard_float64s()
    v = v[np.abs(v) < 2.0**128]
    got = _narrow(v, torch.bfloat16).double().numpy()
    want = _bf16_nearest_even(v)
    want = np.where(want == 2.0**128, INF, np.where(want == -(2.0**128), -INF, want))
    np.testing.assert_array_equal(got, want)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_any_float64_rounds_within_half_an_ulp(v: float) -> None:
    for dtype, name in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        got = _narrow(np.array([v]), dtype).double().item()
        if math.isnan(v):
            assert math.isnan(got)
        else:
            assert T.ulp_error(got, mpmath.mpf(v), name) <= 0.5


# -- the exp of float32 outputs ----------------------------------------------------------------------------
def test_float32_output_exp_is_within_2e_minus_34_relative() -> None:
    """The short exp of the float32 kernels (``2^(k/2)`` by a select, degree 6): 2^-35 by its fit, 2^-11
    of a float32 ulp; exactly 1 at 0, 0 below -746 and for ``-inf``."""
    import numba

    @numba.njit
    def mid(d: np.ndarray, out: np.ndarray) -> None:
        for i in range(d.size):
            out[i] = _numba_fast._exp_f32out(d[i])

    half_ln2 = math.log(2) / 2  # the reduction's boundaries, where r reaches +-ln2/4
    edges = np.concatenate([np.nextafter(-j * half_ln2 + half_ln2 / 2, 0.0) + np.array([-1e-12, 0.0, 1e-12])
                            for j in range(0, 40)])
    d = np.concatenate([np.linspace(-0.35, 0.0, 301), np.linspace(-0.7, -0.3, 301), -RNG.uniform(0, 708, 400),
                        edges[edges <= 0.0], -RNG.uniform(0, 20, 400)])
    out = np.empty_like(d)
    mid(d, out)
    assert out[300] == 1.0  # exp(0) exactly
    with mpmath.workdps(40):
        rel = [abs(mpmath.mpf(o) / mpmath.exp(mpmath.mpf(x)) - 1) for o, x in zip(out, d, strict=True)]
    assert max(rel) < 2.0**-34
    z = np.array([-INF, -746.0, -800.0, -1e300])
    mid(z, out[:4])
    assert np.all(out[:4] == 0.0)


def test_float32_lane_exp_of_the_log_softmax_backward_is_within_0_85_ulp() -> None:
    """The float32 exp of the float32 log_softmax backward (degree-6 minimax, the reduction's rounding put
    back after the polynomial): within 0.85 ulp of mpmath over [-104, 0], subnormal results included,
    exactly 1 at 0, 0 below -104, for -inf and NaN."""
    import numba

    from floatguard.ops._numba_exp import _exp32_acc

    @numba.njit
    def run(d: np.ndarray, out: np.ndarray) -> None:
        for i in range(d.size):
            out[i] = _exp32_acc(d[i])

    ln2 = math.log(2)
    edges = np.concatenate([(-(j + 0.5) * ln2) * (1 + np.array([-1e-7, 0.0, 1e-7])) for j in range(150)])
    d = np.concatenate([-RNG.uniform(0, 104, 3000), -RNG.uniform(0, 1, 1000), -RNG.uniform(85, 104, 1000),
                        edges[edges > -104]]).astype(np.float32)
    out = np.empty_like(d)
    run(d, out)
    with mpmath.workdps(40):
        err = [T.ulp_error(o, mpmath.exp(mpmath.mpf(float(x))), "float32") for o, x in zip(out, d, strict=True)]
    assert max(err) <= 0.85
    z = np.array([0.0, -104.0, -200.0, -INF, np.nan], np.float32)
    run(z, out[:5])
    assert out[0] == 1.0 and np.all(out[1:5] == 0.0)


def test_float32_log_softmax_gradient_within_its_bound_of_mpmath() -> None:
    """float32 log_softmax backward (float32 lanes): ``g_i - exp(o_i) sum(g)`` within ``0.5 + 1.35 kappa_i``
    ulp of the exact gradient at the (rounded) output, ``kappa_i = max(1, exp(o_i) |sum(g)| / |grad_i|)``."""
    x = torch.from_numpy(_rows()).float()
    x[4] = torch.from_numpy(RNG.standard_normal(33) * 3).float()  # -inf rows have no gradient to check
    g = torch.from_numpy(RNG.uniform(-1.5, 1.5, x.shape)).float()
    g[0, 3] = 0.0
    leaf = x.clone().requires_grad_()
    o = fg.log_softmax(leaf, dim=-1)
    o.backward(g)
    got, o = leaf.grad.numpy(), o.detach()
    with mpmath.workdps(40):
        for r in range(x.shape[0]):
            total = sum(mpmath.mpf(float(v)) for v in g[r])
            for i in range(x.shape[1]):
                p = mpmath.exp(mpmath.mpf(float(o[r, i])))
                exact = mpmath.mpf(float(g[r, i])) - p * total
                kappa = max(1.0, float(p * abs(total) / abs(exact))) if exact != 0 else 1.0
                assert T.ulp_error(np.float32(got[r, i]), exact, "float32") <= 0.5 + 1.35 * kappa, (r, i)


@functools.cache
def _row_max_kernel(name: str) -> Any:
    """A compiled call of the inlined row max ``_numba_torch.<name>`` (``_row_max32`` or ``_row_max16``)."""
    import numba

    from floatguard.ops import _numba_torch

    inner = getattr(_numba_torch, name)

    @numba.njit
    def call(row: np.ndarray) -> float:
        return inner(row)

    return call


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32), min_size=1, max_size=70))
def test_float32_row_max_in_32bit_lanes_is_the_max_of_the_row(vals: list[float]) -> None:
    """``_row_max32`` (the float32 forward's max, int32 keys): the row's max as float64, NaN when the row
    holds one, ``+0`` over ``-0``; lengths up to 70 run the vector body and its remainder."""
    row = np.array(vals, dtype=np.float32)
    got = _row_max_kernel("_row_max32")(row)
    if np.isnan(row).any():
        assert math.isnan(got)
    else:
        want = max(row.astype(np.float64).tolist(), key=lambda v: (v, math.copysign(1.0, v)))
        assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


def test_float32_row_max_finds_a_nan_or_the_max_anywhere() -> None:
    kern = _row_max_kernel("_row_max32")
    for n in (1, 15, 16, 17, 40, 300):
        for pos in range(n):
            row = -RNG.uniform(1, 2, n).astype(np.float32)
            row[pos] = np.nan
            assert math.isnan(kern(row))
            row[pos] = 3.0
            assert kern(row) == 3.0
            row[:] = -INF
            row[pos] = -np.float32(1e-45)  # the smallest subnormal
            assert kern(row) == np.float64(-np.float32(1e-45))
        assert kern(np.full(n, -INF, np.float32)) == -INF


def _max16_want(row: torch.Tensor) -> float:
    """The max of a 16-bit row as float64 (NaN if it holds one), ``+0`` over ``-0``."""
    vals = row.double().tolist()
    if any(math.isnan(v) for v in vals):
        return math.nan
    return max(vals, key=lambda v: (v, math.copysign(1.0, v)))


def _same(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(2**15), 2**15 - 1), min_size=1, max_size=140),
       st.sampled_from([torch.bfloat16, torch.float16]))
def test_16bit_row_max_in_16bit_lanes_is_the_max_of_the_row(bits: list[int], dtype: torch.dtype) -> None:
    """``_row_max16`` (the bfloat16/float16 softmax's max, int16 keys, 32 lanes): any bit patterns (NaNs,
    infinities, subnormals, signed zeros); lengths up to 140 run the vector body and its remainder."""
    _, npt = VIEW[dtype]
    raw = np.array(bits, dtype=np.int64).astype(np.int16)
    row = torch.from_numpy(raw.copy()).view(dtype)
    assert _same(_row_max_kernel("_row_max16")(raw.view(npt)), _max16_want(row))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16bit_row_max_finds_a_nan_or_the_max_anywhere(dtype: torch.dtype) -> None:
    ti, npt = VIEW[dtype]
    kern = _row_max_kernel("_row_max16")
    for n in (1, 31, 32, 33, 64, 97, 300):
        for pos in range(n):
            row = (-torch.from_numpy(RNG.uniform(1, 2, n))).to(dtype)
            for v in (math.nan, -math.nan, INF, 3.0):
                row[pos] = v
                assert _same(kern(row.view(ti).numpy().view(npt)), _max16_want(row)), (n, pos, v)
            row[:] = -INF
            row.view(ti)[pos] = -(2**15) + 1  # bits 0x8001: the smallest negative subnormal
            assert _same(kern(row.view(ti).numpy().view(npt)), _max16_want(row))
        assert kern(torch.full((n,), -INF, dtype=dtype).view(ti).numpy().view(npt)) == -INF


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_float32_conversions_of_the_16bit_kernels_match_torch(dtype: torch.dtype) -> None:
    """``_load32`` / ``_encode32`` (32-bit integer IR, F16C): every 16-bit pattern widens exactly, and
    float32 values (every 16-bit value, halfway points, subnormals, overflow, NaN) round as torch's ``to``."""
    import numba

    @numba.njit
    def widen(a: np.ndarray, out: np.ndarray) -> None:
        for i in range(a.size):
            out[i] = _numba_fast._load32(a[i])

    @numba.njit
    def narrow(v: np.ndarray, out: np.ndarray) -> None:
        for i in range(v.size):
            out[i] = _numba_fast._encode32(v[i], out)

    ti, npt = VIEW[dtype]
    bits = np.arange(-(2**15), 2**15).astype(np.int64).astype(npt)
    wide = np.empty(bits.size, dtype=np.float32)
    widen(bits, wide)
    want = torch.from_numpy(bits.copy()).view(dtype).float().numpy()
    assert np.array_equal(wide.view(np.int32), want.view(np.int32))
    pos = np.unique(np.abs(wide[np.isfinite(wide)]).astype(np.float64))
    mid = ((pos[:-1] + pos[1:]) / 2).astype(np.float32)  # ties between neighbours: exact in float32
    rnd = RNG.standard_normal(5000) * 10.0 ** RNG.uniform(-45, 38, 5000)
    probes = np.concatenate([wide, mid, -mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf)),
                             rnd.astype(np.float32),
                             np.array([3.4e38, -3.4e38, 1e-45, -1e-45, np.nan, -np.nan, np.inf, -np.inf], np.float32)])
    got = np.empty(probes.size, dtype=npt)
    narrow(probes, got)
    ref = torch.from_numpy(probes).to(dtype)
    g = torch.from_numpy(got).view(dtype)
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(g), nan)
    assert torch.equal(g[~nan].view(ti), ref[~nan].view(ti))  # bit for bit, signed zeros included


# -- forward accuracy -------------------------------------------------------------------------
def _rows() -> np.ndarray:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 33)) * 4
    x[1] = -30.0
    x[1, 5] = 0.0  # one dominant entry: log_softmax of it is -32 e^-30
    x[2, :7] = 50.0  # ties at the max
    x[3] = rng.uniform(-1e4, 1e4, 33)
    x[4, ::3] = -INF
    x[5] = np.linspace(-100, -60, 33)
    return x


OPS = {
    "softmax": (lambda t: fg.softmax(t, dim=-1), T.ref_softmax),
    "log_softmax": (lambda t: fg.log_softmax(t, dim=-1), T.ref_log_softmax),
    "logsumexp": (lambda t: fg.logsumexp(t, dim=-1, keepdim=True), lambda r: np.array([T.ref_logsumexp(r)])),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_forward_within_one_ulp_of_mpmath(op: str, dtype: torch.dtype) -> None:
    call, ref = OPS[op]
    x = torch.from_numpy(_rows()).to(dtype)
    got = call(x)
    assert got.dtype == dtype
    name = str(dtype).removeprefix("torch.")
    for r in range(x.shape[0]):
        exact = ref(x[r].double().numpy())
        bound = 1.0 if dtype != torch.float64 else 2.0 * max(1.0, float(np.max(
            {"softmax": T.cond_softmax, "log_softmax": T.cond_log_softmax, "logsumexp": T.cond_logsumexp}[op](
                x[r].numpy()))))
        assert T.max_ulp(got[r], exact, name) <= bound, (op, dtype, r)


@pytest.mark.parametrize("n", [2, 33, 256, 2048])
def test_float32_log_softmax_near_the_one_pass_threshold_is_within_half_an_ulp_and_a_sliver(n: int) -> None:
    """The float32 log_softmax takes ``s`` as ``(1 + s) - 1`` from one sum unless ``s < n 2^-24``, where it sums
    again without the max term. Rows whose ``s`` falls either side of that threshold (and far below it),
    with ties and entries below -700 (exp clamped there): every entry within 0.5 + 2^-6 ulp of mpmath,
    the largest, ``-log1p(s)``, included; softmax within the same, entries below -700 exactly 0."""
    rows = []
    for scale in (2.0**-40, 2.0**-8, 0.5, 0.99, 1.01, 2.0, 2.0**8):
        t = -math.log(scale * n * 2.0**-24 / max(n - 1, 1))  # (n - 1) e^-t = scale n 2^-24
        row = np.full(n, -t)
        row[0] = 0.0
        row[1:] += np.linspace(-0.01, 0.01, n - 1)  # distinct entries near -t
        rows.append(row)
    tie = np.full(n, -25.0)
    tie[:2] = 3.0  # two entries at the max: s >= 1, the one pass
    rows.append(tie)
    far = np.full(n, -30.0)
    far[0] = 1.0
    far[1::2] = -1e4  # below -700: their exp is clamped to exp(-700)
    rows.append(far)
    x = torch.tensor(np.array(rows), dtype=torch.float32)
    for op in ("log_softmax", "softmax"):
        call, ref = OPS[op]
        got = call(x)
        for r in range(x.shape[0]):
            exact = ref(x[r].double().numpy())
            assert T.max_ulp(got[r], exact, "float32") <= 0.5 + 2.0**-6, (op, n, r)
        if op == "softmax":
            assert torch.equal(got[-1, 1::2], torch.zeros_like(got[-1, 1::2]))


def test_float32_logsumexp_one_sum_and_its_gradient_are_within_half_an_ulp_and_a_sliver() -> None:
    """The float32 logsumexp takes ``s`` as ``(1 + s) - 1`` from one sum with no tie test (exp clamped at -700),
    and sums again with the table exp where the result is near 0 (``|lse| < s / (1 + s) + n 2^-24``); its
    backward ``g exp(x - lse)`` clamps at -700 with no underflow select. Rows of every kind: spread and offset
    rows, ties at the max, entries below -700 and ``-inf``, confident rows (``s`` tiny), results near 0 on
    either side of that threshold (``m < 0`` against ``log1p(s)``, and exactly 0). Values and gradients within
    0.5 + 2^-8 ulp of mpmath; gradient entries more than 700 below ``lse`` a zero of ``g``'s sign."""
    rng = np.random.default_rng(5)
    n = 300
    rows = [rng.standard_normal(n) * sc + sh for sc in (0.01, 1.0, 4.0, 30.0) for sh in (0.0, -4.0, 9.0)]
    tie = np.full(n, -20.0)
    tie[:5] = 2.5
    far = rng.standard_normal(n) - 3.0
    far[0] = 1.0
    far[1::3] = -1e4
    far[2::7] = -INF
    rows += [tie, far, np.full(n, -math.log(n))]  # the last: lse exactly 0
    for s in (2.0**-40, 2.0**-20, 1e-3):  # confident rows, m chosen so that lse is small or cancels
        for m in (0.0, -s * 0.99, -s * 1.01, -s * 0.5, 1.0):
            row = np.full(n, math.log(s / (n - 1)))
            row[1:] += np.linspace(-1e-3, 1e-3, n - 1)
            row[0] = 0.0
            rows.append(row + m)
    x = torch.tensor(np.array(rows), dtype=torch.float32, requires_grad=True)
    got = fg.logsumexp(x, dim=-1)
    g = torch.tensor(rng.uniform(0.5, 1.5, len(rows)) * np.where(np.arange(len(rows)) % 2 == 0, 1.0, -1.0),
                     dtype=torch.float32)
    got.backward(g)
    for r in range(len(rows)):
        xr = x[r].detach().double().numpy()
        assert T.max_ulp(got[r : r + 1].detach(), np.array([T.ref_logsumexp(xr)]), "float32") <= 0.5 + 2.0**-8, r
        exact = T.ref_softmax(xr) * mpmath.mpf(float(g[r]))
        assert T.max_ulp(x.grad[r], exact, "float32") <= 0.5 + 2.0**-8, r
    far_grad, far_g = x.grad[13], float(g[13])  # the row `far`, and its g (negative: odd row)
    assert far_g < 0 and torch.equal(far_grad[1::3], torch.zeros(len(far_grad[1::3])))
    assert all(math.copysign(1.0, float(v)) == -1.0 for v in far_grad[1::3])


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_long_and_many_rows_match_the_float64_values(op: str, dtype: torch.dtype) -> None:
    """Rows longer than a block and many of them: the kernel against torch's float64 op, rounded once."""
    x = (torch.randn(37, 3000, dtype=torch.float64) * 6).to(dtype)
    got = OPS[op][0](x)
    ref = (torch.softmax if op == "softmax" else torch.log_softmax)(x.double(), -1)
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny
    err = (got.double() - ref).abs() / ref.abs().clamp_min(tiny)
    assert float(err.max()) <= eps  # one ulp at most (the error of one rounding is half of it)


# -- backward ---------------------------------------------------------------------------------
def _grad(op: str, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    leaf = x.detach().requires_grad_()
    OPS[op][0](leaf).backward(g)
    return leaf.grad


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_fused_backward_matches_the_float64_gradient(op: str, dtype: torch.dtype) -> None:
    x = torch.from_numpy(_rows()[[0, 1, 2, 3, 5]]).to(dtype)
    shape = (x.shape[0], 1) if op == "logsumexp" else tuple(x.shape)
    g64 = torch.from_numpy(np.random.default_rng(7).uniform(-1.5, 1.5, shape))
    g = g64.to(dtype).double()
    got = _grad(op, x, g.to(dtype)).double()
    ref = _grad(op, x.double(), g)  # the exact gradient at the rounded input, in float64
    eps = torch.finfo(dtype).eps
    p = torch.softmax(x.double(), -1)
    # the kernels read the saved output, rounded to the dtype: componentwise bounds of that, plus one rounding
    if op == "softmax":
        tol = 2 * eps * p * (g.abs() + (g * p).abs().sum(-1, keepdim=True))
    elif op == "log_softmax":
        tol = 2 * eps * p * (1 + torch.log(p).abs()) * g.abs().sum(-1, keepdim=True)
    else:
        tol = eps * ref.abs()
    bad = (got - ref).abs() > tol + eps * ref.abs() + torch.finfo(dtype).tiny
    assert not bool(bad.any()), (op, dtype, x[bad], got[bad], ref[bad], tol[bad])


@pytest.mark.parametrize("op", list(OPS))
def test_gradcheck_and_gradgradcheck_float64(op: str) -> None:
    x = torch.from_numpy(RNG.standard_normal((3, 4, 5)) * 3).requires_grad_()
    call = OPS[op][0]
    assert gradcheck(call, (x,), eps=1e-6, atol=1e-8)
    assert gradgradcheck(call, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_backward_with_a_grad_of_another_dtype_or_layout(dtype: torch.dtype) -> None:
    x = torch.randn(4, 9, dtype=dtype)
    g = torch.randn(9, 4, dtype=torch.float64).T  # non-contiguous, float64
    for op in ("softmax", "log_softmax"):
        got = _grad(op, x, g.to(dtype))
        leaf = x.detach().requires_grad_()
        y = OPS[op][0](leaf)
        (y * g.to(y.dtype)).sum().backward()
        torch.testing.assert_close(leaf.grad, got, rtol=0, atol=0)


# -- layouts, non-finite rows, empty shapes ----------------------------------------------------
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_non_contiguous_and_expanded_inputs_give_the_contiguous_values(op: str, dtype: torch.dtype) -> None:
    base = torch.randn(6, 20, dtype=torch.float64).to(dtype)
    call = OPS[op][0]
    for view in (base[:, ::2], base.T.contiguous().T, base[2:3].expand(5, 20), base.reshape(2, 3, 20)[:, 1]):
        assert not view.is_contiguous() or view.stride() != view.contiguous().stride() or True
        torch.testing.assert_close(call(view), call(view.contiguous()), rtol=0, atol=0)
        g_view = _grad(op, view, torch.ones_like(call(view)))
        g_cont = _grad(op, view.contiguous(), torch.ones_like(call(view)))
        torch.testing.assert_close(g_view, g_cont, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_non_finite_rows_give_their_limits_and_zero_gradients(dtype: torch.dtype) -> None:
    """Rows of -inf, with +inf and with NaN: their limits, gradient 0 on the first two and NaN on the NaN row."""
    x = torch.tensor(
        [[-INF, -INF, -INF, -INF], [1.0, INF, 0.0, INF], [1.0, math.nan, 0.0, 2.0], [0.5, -INF, 1.5, -1.0]],
        dtype=dtype,
    )
    sm = fg.softmax(x, dim=-1).double()
    assert torch.equal(sm[0], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(sm[1], torch.tensor([0.0, 0.5, 0.0, 0.5], dtype=torch.float64))
    assert torch.isnan(sm[2]).all()
    lsm = fg.log_softmax(x, dim=-1).double()
    assert torch.equal(lsm[0], torch.full((4,), -INF, dtype=torch.float64))
    assert lsm[1, 1] == -math.log(2) or abs(float(lsm[1, 1]) + math.log(2)) <= float(torch.finfo(dtype).eps)
    lse = fg.logsumexp(x, dim=-1).double()
    assert lse[0] == -INF and lse[1] == INF and math.isnan(lse[2])
    for op in OPS:
        shape = (4, 1) if op == "logsumexp" else (4, 4)
        g = _grad(op, x, torch.ones(shape, dtype=dtype))
        assert torch.equal(g[:2], torch.zeros(2, 4, dtype=dtype)), op  # -inf and +inf rows: exactly 0, never NaN
        assert torch.isnan(g[2]).all(), op  # the NaN row: NaN, as its value (a NaN hidden from a gradient check)
        # a -inf entry: no mass, so no gradient, but log_softmax passes its own g through (d out_i / d x_i = 1)
        assert torch.isfinite(g[3]).all() and g[3, 1] == (1.0 if op == "log_softmax" else 0.0)


@pytest.mark.parametrize("rows", [7, _torch_softmax.FLAG_ROWS + 3])
def test_non_finite_rows_among_many_take_their_limits_in_threads(rows: int) -> None:
    """The forward kernel's per-row flags go to a shared scratch (up to ``FLAG_ROWS`` rows, never read: a call with
    a non-finite row takes the flags from torch's max): rows with ``-inf``, ``+inf`` and NaN maxima placed anywhere,
    below and above that size, in four threads at once, give the limits of the test above and, elsewhere, the
    values of a call in which every row is finite."""
    rng = np.random.default_rng(rows)

    def batch(seed: int) -> tuple[torch.Tensor, list[int]]:
        x = torch.tensor(np.random.default_rng(seed).standard_normal((rows, 9)), dtype=torch.float32)
        bad = sorted(rng.choice(rows, 3, replace=False).tolist())
        x[bad[0]] = -INF
        x[bad[1], 4] = INF
        x[bad[2], 2] = math.nan
        return x, bad

    def check(seed: int) -> None:
        x, bad = batch(seed)
        for log in (False, True):
            call = fg.log_softmax if log else fg.softmax
            got = call(x, dim=-1)
            keep = [r for r in range(rows) if r not in bad]
            torch.testing.assert_close(got[keep], call(x[keep], dim=-1), rtol=0, atol=0)
            assert torch.equal(got[bad[0]], torch.full((9,), -INF if log else 0.0))
            one = torch.zeros(9)
            one[4] = 1.0
            assert torch.equal(got[bad[1]], torch.log(one) if log else one)
            assert torch.isnan(got[bad[2]]).all()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(check, range(12)))


@pytest.mark.parametrize("pool", [False, True], ids=["team", "pool"])
@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_rows_split_over_threads_give_the_bits_of_one_thread(op: str, dtype: torch.dtype, pool: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``torch.set_num_threads(k)`` the kernels of large calls run on chunks of rows in ``k`` threads (a row is
    never split; on torch's OpenMP team, and on the thread pool where the team is not available): forward and backward
    give the bits of one thread, with ``-inf``, ``+inf`` and NaN rows among them, for row counts that do and do not
    divide evenly."""
    if pool:
        from floatguard.ops import _torch_rows

        monkeypatch.setattr(_torch_rows, "_team", False)
    assert _torch_softmax.PARALLEL_MIN <= 200 * 700  # large enough to be split
    rng = np.random.default_rng(7)
    x = torch.tensor(rng.standard_normal((201, 700)) * 6, dtype=dtype)
    x[5] = -INF
    x[17, 3] = INF
    x[200, 9] = math.nan
    g = torch.tensor(rng.uniform(0.5, 1.5, (201,) if op == "logsumexp" else (201, 700)), dtype=dtype)

    def run(threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            v = x.clone().requires_grad_(True)
            out = getattr(fg, op)(v, dim=-1)
            out.backward(g)
            assert v.grad is not None
            return out.detach(), v.grad
        finally:
            torch.set_num_threads(old)

    one = run(1)
    for threads in (2, 3):
        for a, b in zip(one, run(threads), strict=True):
            same = torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) and torch.equal(a.isnan(), b.isnan())
            assert same, (op, threads)


_FORK_CHILD = """
import os, torch, floatguard as fg
torch.set_num_threads(2)
x = torch.randn(512, 1000)
t = torch.randint(0, 1000, (512,))
fg.softmax(x, dim=-1)  # torch's OpenMP team
fg.cross_entropy(x, t)  # the parent's thread pool
pid = os.fork()
if pid == 0:  # no parallel torch op here: after the parent's, libgomp's own team hangs in a child (torch's too)
    torch.set_num_threads(2)
    a, b = fg.softmax(x, dim=-1).numpy(), fg.softmax(x, dim=-1).numpy()
    ok = (a == b).all() and abs(a.sum() - 512) < 0.01 and fg.cross_entropy(x, t).item() > 0
    os._exit(0 if ok else 3)
print(os.waitpid(pid, 0)[1])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_child_runs_the_threaded_kernels() -> None:
    """A process forked after a threaded call (a ``multiprocessing`` worker, a server's pre-fork) gets its own pool: the
    parent's pool threads do not survive the fork, and the child's first threaded call used to wait forever. The
    child does not use torch's OpenMP team (whose threads did not survive either)."""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _FORK_CHILD], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split()[-1] == "0", out.stdout + out.stderr


@pytest.mark.parametrize("shape", [(3, 0), (0, 5), (2, 0, 4)])
def test_empty_shapes_match_torch(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    assert fg.softmax(x, dim=-1).shape == torch.softmax(x, -1).shape
    assert fg.log_softmax(x, dim=-1).shape == torch.log_softmax(x, -1).shape
    assert fg.logsumexp(x, dim=-1).shape == torch.logsumexp(x, -1).shape
    if shape[-1] == 0:
        assert torch.equal(fg.logsumexp(x, dim=-1), torch.full(shape[:-1], -INF))


def test_short_path_agrees_with_the_full_path() -> None:
    """The short path (last axis) and the full path (another axis, moved) give the same values."""
    x = torch.randn(5, 7, 3)
    xt = x.transpose(1, 2).contiguous()
    torch.testing.assert_close(fg.softmax(x, dim=1), fg.softmax(xt, dim=-1).transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(fg.logsumexp(x, axis=1), fg.logsumexp(xt, dim=-1), rtol=0, atol=0)
    assert fg.logsumexp(x, dim=-1, keepdim=True).shape == (5, 7, 1)
    # another axis: the column kernels (tests/ops/test_columns.py); float64 keeps the full path
    torch.testing.assert_close(_torch_fast.softmax_fast(x, 0, False),
                               fg.softmax(x.movedim(0, -1).contiguous(), dim=-1).movedim(-1, 0))
    assert _torch_fast.softmax_fast(x.double(), 0, False) is None
    assert _torch_fast.logsumexp_fast(x, -1, "yes") is None


# -- other devices: the torch-ops path (float32 accumulation for 16-bit inputs) -----------------
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_device_path_is_within_a_few_float32_ulp_of_float64(dtype: torch.dtype) -> None:
    x = torch.from_numpy(_rows()).to(dtype)
    x64 = x.double()
    eps32 = torch.finfo(torch.float32).eps
    lse = _torch_fast.device_logsumexp(x)
    ref = fg.logsumexp(x64, dim=-1, keepdim=True)  # float64, log1p-accurate (torch's own float64 is not)
    assert lse.dtype == torch.float32
    assert float(((lse.double() - ref).abs() / ref.abs().clamp_min(1.0)).max()) <= 4 * eps32
    for log in (False, True):
        out, finite = _torch_fast.device_softmax(x, log)
        assert out.dtype == dtype and bool(finite.all())
        ref = (fg.log_softmax if log else fg.softmax)(x64, dim=-1)
        # within a few float32 ulp (entries that do not underflow float32), then one rounding to the dtype
        tol = 6 * eps32 * ref.abs() + (0 if dtype == torch.float32 else 0.5) * torch.finfo(dtype).eps * ref.abs()
        spacing = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # of the subnormals: an absolute floor
        bad = (out.double() - ref).abs() > tol + torch.finfo(torch.float32).tiny + spacing
        assert not bool(bad.any()), (dtype, log, x[bad], out[bad], ref[bad])


def test_device_path_limits_on_non_finite_rows() -> None:
    x = torch.tensor([[-INF, -INF], [INF, 0.0], [math.nan, 1.0]])
    out, finite = _torch_fast.device_softmax(x, False)
    assert finite.reshape(-1).tolist() == [False, False, False]
    assert out[0].tolist() == [0.0, 0.0] and out[1].tolist() == [1.0, 0.0] and torch.isnan(out[2]).all()
    lse = _torch_fast.device_logsumexp(x).reshape(-1)
    assert lse[0] == -INF and lse[1] == INF and math.isnan(lse[2])


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_without_the_kernels_the_torch_ops_give_the_same_results(dtype: torch.dtype, monkeypatch: Any) -> None:
    """``_kern = False`` (numba missing or failed): the torch-ops path, same values to an ulp, same gradients."""
    x = torch.from_numpy(_rows()[[0, 1, 2, 5]]).to(dtype)
    with_kernels = {op: (OPS[op][0](x), _grad(op, x, torch.ones_like(OPS[op][0](x)))) for op in OPS}
    monkeypatch.setattr(_torch_softmax, "_kern", False)
    eps = torch.finfo(dtype).eps
    for op, (val, grad) in with_kernels.items():
        val2 = OPS[op][0](x)
        grad2 = _grad(op, x, torch.ones_like(val2))
        torch.testing.assert_close(val2.double(), val.double(), rtol=eps, atol=torch.finfo(dtype).tiny)
        # the softmax gradient of a cotangent of ones is 0 up to the roundings of sum(g p): its scale is g's, 1
        scale = 1.0 if op == "softmax" else float(grad.abs().max())
        torch.testing.assert_close(grad2.double(), grad.double(), rtol=4 * eps, atol=4 * eps * scale)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_the_backward_custom_op_is_eager_s_fused_backward_and_passes_opcheck(dtype: torch.dtype) -> None:
    """``floatguard::softmax_rows_grad`` (the backward torch.compile calls): opcheck, and the eager gradient."""
    x = torch.from_numpy(_rows()).to(dtype)
    x[4] = -INF  # a row with no finite max: zero gradient
    g = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, tuple(x.shape))).to(dtype)
    for log in (False, True):
        out, finite = _torch_fast.softmax_op(x, log)
        assert finite.shape == (x.shape[0], 1) and not bool(finite[4])
        torch.library.opcheck(_torch_fast.softmax_grad_op, (out, finite, g, log))
        got = _torch_fast.softmax_grad_op(out, finite, g, log)
        leaf = x.clone().requires_grad_()
        (fg.log_softmax if log else fg.softmax)(leaf, dim=-1).backward(g)
        assert torch.equal(got, leaf.grad)
