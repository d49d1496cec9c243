"""The float32 / bfloat16 elementwise kernels of :mod:`floatguard.ops._numba_elementwise` against mpmath.

Their float64 registers hold ``exp`` to a relative ``2^-35`` and ``log1p`` to ``2^-44`` (the short helpers of
``_numba_exp`` / ``_numba_log``), so a result rounded once to float32 is within ``0.5 + 2^-10`` ulp: a sloppier
helper (a ``log1p`` of ``2^-30``, say) shows up here as ``0.5 + 2^-6``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("mpmath")

from floatguard import testing as T
from floatguard.ops import _numba_elementwise as E

BOUND = 0.5 + 2.0**-10
X_SWITCH = -math.log(math.sqrt(2.0) - 1.0)  # |x| where 1 + exp(-|x|) crosses sqrt(2): log1p's k switch


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
    total = E.bce_forward(x, y, np.zeros((0, 0)), np.zeros((0, 0)), out, True)
    ref = T.vectorize(T.ref_bce_with_logits)(x[0].astype(np.float64), y[0].astype(np.float64))
    rel = np.array([float(abs(g - r) / r) if r != 0 else abs(g) for g, r in zip(out[0].tolist(), ref, strict=True)])
    worst = int(np.argmax(rel))
    assert rel[worst] < 2.0**-34, f"relative {rel[worst]:.3g} at x = {x[0, worst]!r}, y = {y[0, worst]!r}"
    assert total == pytest.approx(float(sum(ref)), rel=1e-12)


def _specials() -> np.ndarray:
    return np.array([np.inf, -np.inf, np.nan], dtype=np.float32)


@pytest.mark.parametrize("scalar_g", [True, False], ids=["g_scalar", "g_full"])
@pytest.mark.parametrize(("op", "sign"), [(0, 1.0), (1, -1.0)], ids=["softplus", "log_sigmoid"])
def test_float32_sigmoid_backward_within_half_ulp_and_a_sliver(op: int, sign: float, scalar_g: bool) -> None:
    """``unary_backward``'s ``g sigmoid(+-x)`` for float32 (``g = 1``: the sigmoid itself, rounded once): the
    short ``exp`` (``2^-35``) and the divide-free ``1 / (1 + e)`` (``2^-36.6``) keep it within the bound; the
    subnormal sigmoids of ``|x|`` near 100, the ends (``sigmoid(+-inf)`` is 1 and 0) and NaN included."""
    x = np.concatenate([_hard_inputs(), _specials()])
    g = np.ones(1 if scalar_g else x.size, dtype=np.float32)
    out = np.empty_like(x)
    E.unary_backward(x, g, out, op)
    ref = T.vectorize(T.ref_sigmoid)(sign * x[:-1].astype(np.float64))
    err = np.asarray(T.ulp_error(out[:-1], ref, "float32"), dtype=float)
    worst = int(np.argmax(err))
    assert err[worst] <= BOUND, f"{err[worst]:.6f} ulp at x = {x[worst]!r}"
    assert np.isnan(out[-1])
    assert out[-3] == (1.0 if op == 0 else 0.0) and out[-2] == (0.0 if op == 0 else 1.0)


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


def test_float32_bce_and_logaddexp_backward_within_half_ulp_and_a_sliver() -> None:
    """The other users of the float32 ``1 / (1 + e)``: BCE's ``sigmoid(x) (1 - y) - y sigmoid(-x)`` for
    ``y`` in {0, 1} (one sigmoid, rounded once) and logaddexp's ``sigmoid(a - b)``, ``sigmoid(b - a)``."""
    x = _hard_inputs().reshape(1, -1)
    y = np.random.default_rng(4).choice(np.array([0.0, 1.0], dtype=np.float32), x.shape)
    out = np.empty_like(x)
    E.bce_backward(x, y, np.zeros((0, 0)), np.zeros((0, 0)), np.ones((1, 1)), out)
    xd = x[0].astype(np.float64)
    ref = np.where(y[0] == 0.0, T.vectorize(T.ref_sigmoid)(xd), -T.vectorize(T.ref_sigmoid)(-xd))
    err = np.asarray(T.ulp_error(out[0], ref, "float32"), dtype=float)
    assert err.max() <= BOUND, f"bce: {err.max():.6f} ulp at x = {x[0, int(np.argmax(err))]!r}"

    rng = np.random.default_rng(9)
    a = rng.uniform(-100.0, 100.0, 4000).astype(np.float32)
    b = (a + rng.uniform(-30.0, 30.0, 4000)).astype(np.float32)
    ga, gb = np.empty_like(a), np.empty_like(a)
    E.logaddexp_backward(a, b, np.ones(1, dtype=np.float32), ga, gb)
    diff = a.astype(np.float64) - b.astype(np.float64)  # exact: both float32
    for got, ref in ((ga, T.vectorize(T.ref_sigmoid)(diff)), (gb, T.vectorize(T.ref_sigmoid)(-diff))):
        err = np.asarray(T.ulp_error(got, ref, "float32"), dtype=float)
        assert err.max() <= BOUND, f"logaddexp: {err.max():.6f} ulp at a = {a[int(np.argmax(err))]!r}"
