"""Accuracy of every op against mpmath, in ulps, on adversarial inputs.

Targets (the headline of the project), on the exact floating inputs:

* float32, float16, bfloat16: at most 1 ulp for every case;
* float64: at most ``2 ulp * max(1, cond)`` with ``cond`` the relative
  (componentwise) condition number of the function at the input.

Each case is a set of float64 values. For a lower precision the values are
first rounded to the dtype (through the backend itself) and the reference is
computed on the rounded values; cases with a finite value that overflows the
dtype are not generated for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
import pytest
import torch

import floatguard as fg
from floatguard import testing as T

jax.config.update("jax_enable_x64", True)  # float32 inputs are then computed in float64
import jax.numpy as jnp  # noqa: E402

INF = math.inf
LN2 = math.log(2.0)
RNG = np.random.default_rng(20240611)

# -- backends and dtypes ------------------------------------------------------------
COMBOS = [
    ("numpy", "float16"),
    ("numpy", "float32"),
    ("numpy", "float64"),
    ("torch", "bfloat16"),
    ("torch", "float16"),
    ("torch", "float32"),
    ("torch", "float64"),
    ("jax", "bfloat16"),
    ("jax", "float16"),
    ("jax", "float32"),
    ("jax", "float64"),
]
_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38, "float64": math.inf}


def to_backend(a: Any, backend: str, dtype: str | None) -> Any:
    """A NumPy array as ``backend``'s array; floats become ``dtype``, other dtypes are kept."""
    a = np.asarray(a)
    if backend == "numpy":
        return a.astype(dtype) if dtype else a
    if backend == "torch":
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(getattr(torch, dtype)) if dtype else t
    return jnp.asarray(a, dtype=getattr(jnp, dtype)) if dtype else jnp.asarray(a)


def dtype_name(arr: Any) -> str:
    return str(arr.dtype).removeprefix("torch.")


# -- ops -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[np.ndarray, ...]  # float arguments (rounded to the dtype under test)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # masks, class indices: passed as they are


@dataclass(frozen=True)
class Op:
    name: str
    call: Callable[..., Any]  # backend arrays -> backend array
    ref: Callable[..., Any]  # float64 arrays -> mpf / object array of the result's shape
    cond: Callable[..., Any]  # float64 arrays -> condition numbers broadcastable to the result
    cases: list[Case]


def _rows(f: Callable[..., Any]) -> Callable[..., np.ndarray]:
    """Apply a per-row reference/condition function over the rows of 2-D arguments."""

    def apply(*args: np.ndarray, **extra: np.ndarray) -> np.ndarray:
        n = args[0].shape[0]
        out = [f(*(a[i] for a in args), **{k: v[i] for k, v in extra.items()}) for i in range(n)]
        if out and isinstance(out[0], np.ndarray):
            return np.stack(out)
        arr = np.empty(n, dtype=object)
        arr[:] = out
        return arr

    return apply


def _masked(f: Callable[..., Any], fill: float) -> Callable[..., Any]:
    """Per-row condition numbers of a softmax-like function restricted to the ``where`` entries."""

    def apply(x: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        if where is None:
            return f(x)
        out = np.full(x.shape, fill)
        out[where] = f(x[where])
        return out

    return apply


def _lse_cond(x: np.ndarray, b: np.ndarray | None = None, where: np.ndarray | None = None) -> float:
    if b is not None:
        return _lse_b_cond(x, b)
    return T.cond_logsumexp(x if where is None else x[where])


def _lse_ref(x: np.ndarray, b: np.ndarray | None = None, where: np.ndarray | None = None) -> Any:
    return T.ref_logsumexp(x, b, where=where)


def _lse_b_cond(x: np.ndarray, b: np.ndarray) -> float:
    # weights perturbed too: sum_i (|x_i| + 1) |b_i| e^{x_i} / |sum_i b_i e^{x_i}| / |lse|, for positive sums
    keep = b != 0
    val = T.ref_logsumexp(x[keep], b[keep])
    w = T.ref_softmax(x[keep])
    num = sum((abs(float(xi)) + 1) * abs(float(bi)) * wi for xi, bi, wi in zip(x[keep], b[keep], w, strict=True))
    den = sum(float(bi) * wi for bi, wi in zip(b[keep], w, strict=True))
    return float(abs(num / den) / abs(val)) if val != 0 else math.inf


def _r(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64)


def _crossing_rows() -> np.ndarray:
    """Rows whose log-sum-exp is within a few ulp of 0, and rows just either side of 0."""
    t = -LN2
    rows = [[t + k * 2.0**-40, t + k * 2.0**-40, -INF] for k in range(-3, 4)]
    rows += [[-1.0, math.log1p(-math.exp(-1.0)) + k * 1e-3, -INF] for k in (-2, -1, 0, 1, 2)]
    rows += [[-math.log(3.0) + k * 1e-6] * 2 + [-math.log(3.0)] for k in (-1, 0, 1)]
    return np.array(rows)


_N5 = RNG.standard_normal((1, 100_000)) * 10

REDUCTION_CASES = [
    Case("small", (_r([1.0, 2.0, 3.0], [-0.5, 0.25, 0.0]),)),
    Case("huge_pos", (_r([1e4, 1e4 - 1, 1e4 - 0.5], [1e4, 1e4, 1e4]),)),
    Case("huge_neg", (_r([-1e4, -1e4 + 1, -1e4 - 3], [-1e4, -1e4, -1e4]),)),
    Case("pm80", (_r([80.0, -80.0, 79.5], [-80.0, -80.0, -81.0]),)),
    Case("pm700", (_r([700.0, -700.0, 699.0], [-700.0, -700.0, -701.0]),)),
    Case("tiny", (_r([1e-30, -1e-30, 2e-30], [1e-30, 1e-30, 1e-30]),)),
    Case("dominant_30x50", (_r([0.0] + [-30.0] * 50),)),
    Case("dominant_20x1000", (_r([0.0] + [-20.0] * 1000),)),
    Case("near_minus_log2", (_r([-LN2, -LN2]),)),
    Case("crosses_zero", (_crossing_rows(),)),
    Case("normal_1e5", (_N5,)),
    Case("neg_inf_entries", (_r([-INF, 0.0, 1.0, -INF], [-INF, -INF, -INF, -INF]),)),
    Case("pos_inf_entries", (_r([1.0, INF, 0.0, INF], [-INF, 2.0, INF, 5.0]),)),
]
MASK_CASE = Case(
    "masked",
    (_r([5.0, 1e4, 0.0, -3.0], [0.0, -30.0, 1e4, -30.0], [1.0, 2.0, 3.0, 4.0]),),
    {"where": np.array([[True, False, True, True], [True, True, False, True], [False, False, False, False]])},
)
SOFTMAX_EXTRA = [
    Case("spread_100", (np.concatenate([np.linspace(-100, 100, 41)[None], RNG.uniform(-100, 100, (3, 41))]),)),
    MASK_CASE,
]

LOGSUMEXP = Op(
    "logsumexp",
    lambda x, b=None, where=None: fg.logsumexp(x, axis=-1, b=b, where=where),
    _rows(_lse_ref),
    _rows(_lse_cond),
    [
        *REDUCTION_CASES,
        MASK_CASE,
        Case("weights_b", (_r([0.0, 1.0, 2.0], [10.0, 9.0, -30.0]), _r([1.0, -0.5, 2.0], [0.25, 3.0, 0.0]))),
    ],
)
LOGMEANEXP = Op(
    "logmeanexp",
    lambda x: fg.logmeanexp(x, axis=-1),
    _rows(T.ref_logmeanexp),
    _rows(T.cond_logmeanexp),
    [*REDUCTION_CASES, Case("mean_near_zero", (_r([LN2, -INF], [0.5, math.log(2 - math.exp(0.5))]),))],
)
SOFTMAX = Op(
    "softmax",
    lambda x, where=None: fg.softmax(x, axis=-1, where=where),
    _rows(lambda x, where=None: T.ref_softmax(x, where=where)),
    _rows(_masked(T.cond_softmax, 0.0)),
    [*REDUCTION_CASES, *SOFTMAX_EXTRA],
)
LOG_SOFTMAX = Op(
    "log_softmax",
    lambda x, where=None: fg.log_softmax(x, axis=-1, where=where),
    _rows(lambda x, where=None: T.ref_log_softmax(x, where=where)),
    _rows(_masked(T.cond_log_softmax, 0.0)),
    [*REDUCTION_CASES, *SOFTMAX_EXTRA],
)
LOGCUMSUMEXP = Op(
    "logcumsumexp",
    lambda x: fg.logcumsumexp(x, axis=-1),
    _rows(T.ref_logcumsumexp),
    _rows(T.cond_logcumsumexp),
    [
        Case("small", (_r([1.0, 2.0, 3.0, -1.0], [-0.5, 0.25, 0.0, 0.0]),)),
        Case("huge", (_r([1e4, 1e4 - 1, -1e4, 1e4 + 2], [-1e4, -1e4, -1e4 - 1, -1e4]),)),
        Case("pm700", (_r([-700.0, 700.0, -700.0, 699.0]),)),
        Case("dominant", (_r([0.0] + [-30.0] * 50),)),
        Case("increasing_dominant", (_r([-30.0] * 50 + [0.0]),)),
        Case("near_minus_log2", (_r([-LN2, -LN2, -LN2 - 1e-6]),)),
        Case("crosses_zero", (_crossing_rows(),)),
        Case("leading_neg_inf", (_r([-INF, -INF, 0.0, 1.0, -INF]),)),
        Case("normal_1e4", (RNG.standard_normal((1, 10_000)) * 10,)),
    ],
)


def _ce_call(x: Any, target: Any) -> Any:
    return fg.cross_entropy(x, target, reduction="none")


def _ce_ref(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=object)
    out[:] = [T.ref_cross_entropy_row(x[i], int(target[i])) for i in range(x.shape[0])]
    return out


def _ce_cond(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.array([T.cond_cross_entropy_row(x[i], int(target[i])) for i in range(x.shape[0])])


def _ce_case(name: str, rows: np.ndarray, target: list[int]) -> Case:
    return Case(name, (rows,), {"target": np.array(target, dtype=np.int64)})


CROSS_ENTROPY = Op(
    "cross_entropy",
    _ce_call,
    _ce_ref,
    _ce_cond,
    [
        _ce_case("confident", _r([0.0] + [-30.0] * 50, [0.0] + [-30.0] * 50, [30.0] + [0.0] * 50), [0, 1, 0]),
        _ce_case("dominant_20x1000", _r([0.0] + [-20.0] * 1000), [0]),
        _ce_case("spread_100", RNG.uniform(-100, 100, (4, 41)), [0, 7, 20, 40]),
        _ce_case("huge", _r([1e4, 1e4 - 1, -1e4], [-1e4, -1e4 + 0.5, -1e4]), [1, 2]),
        _ce_case("tiny", _r([1e-30, -1e-30, 2e-30]), [2]),
        _ce_case("neg_inf_logit", _r([0.0, -INF, 1.0]), [2]),
    ],
)

LOG_PROD = Op(
    "log_prod",
    lambda p: fg.log_prod(p, axis=-1),
    _rows(T.ref_log_prod),
    _rows(T.cond_log_prod),
    [
        Case("underflowing_product", (np.full((1, 700), 0.3),)),
        Case("mixed", (RNG.uniform(0.0, 1.0, (3, 50)),)),
        Case("near_one", (_r([1 - 1e-10] * 100, [1 - 2.0**-20] * 100),)),
        Case("tiny", (_r([1e-30, 1e-20, 0.5], [1e-300, 1e-300, 1e-300]),)),
        Case("subnormal", (_r([5e-324, 0.5], [1e-310, 1e-310], [1e-45, 1e-40], [1e-40, 0.9]),)),
        Case("zero", (_r([0.0, 0.5, 0.25]),)),
        Case("huge", (_r([1e30, 1e-30, 3.0]),)),
    ],
)


LOG_MATMUL_EXP = Op(
    "log_matmul_exp",
    fg.log_matmul_exp,
    T.ref_log_matmul_exp,
    T.cond_log_matmul_exp,
    [
        Case("random", (RNG.standard_normal((4, 6)) * 10, RNG.standard_normal((6, 5)) * 10)),
        Case("hmm_like", (np.log(RNG.dirichlet(np.ones(5), 5)), np.log(RNG.dirichlet(np.ones(5), 5)))),
        Case(
            "underflow_pairs",  # the largest terms pair a small a with a small b
            (_r([0.0, -800.0, -1e4], [-800.0, 0.0, -1e4]), _r([-800.0, 0.0], [0.0, -800.0], [-1e4, 1e4])),
        ),
        Case("huge", (_r([1e4, -1e4], [700.0, -700.0]), _r([-1e4, 1e4], [1.0, -1.0]))),
        Case("neg_inf", (_r([-INF, 0.0], [-INF, -INF]), _r([1.0, -INF], [2.0, -INF]))),
    ],
)


# -- elementwise ops ---------------------------------------------------------------
def _v(*vals: float) -> np.ndarray:
    return np.array(vals, dtype=np.float64)


SUBNORMALS = _v(5e-324, 1e-310, 1e-45, 1e-40, -5e-324, -1e-310, -1e-45, -1e-40)
UNARY_X = {
    "moderate": _v(-5.0, -1.0, -0.5, -1e-5, 1e-5, 0.5, 1.0, 5.0, 0.0),
    "softplus_threshold_zone": _v(20.0, 20.5, 25.0, 30.0, 33.3, 36.9, 37.0, 40.0, -20.5, -33.3, -36.9),
    "pm80": _v(-80.0, 80.0, -100.0, 100.0),
    "pm700": _v(-745.0, -700.0, 700.0, 709.0),
    "huge": _v(-1e4, 1e4),
    "tiny": _v(1e-30, -1e-30, 1e-20, -1e-20),
    "subnormal": SUBNORMALS,
    "inf": _v(-INF, INF),
}


def _unary(name: str, ref: Callable[..., Any], cond: Callable[..., float], cases: dict[str, np.ndarray]) -> Op:
    func = getattr(fg, name)
    return Op(name, func, T.vectorize(ref), T.cond_elementwise(cond), [Case(k, (v,)) for k, v in cases.items()])


def _nonpos(cases: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: -np.abs(v) for k, v in cases.items()}


LOG1MEXP = _unary(
    "log1mexp",
    T.ref_log1mexp,
    T.cond_log1mexp,
    {
        **_nonpos(UNARY_X),
        "around_minus_log2": _v(-LN2, -0.69, -0.7, -LN2 * (1 + 1e-6), -LN2 * (1 - 1e-6)),
        "far": _v(-20.0, -37.0, -40.0, -50.0),
        "zero": _v(0.0, -0.0),
    },
)
SOFTPLUS = _unary("softplus", T.ref_softplus, T.cond_softplus, UNARY_X)
SOFTPLUS_INVERSE = _unary(
    "softplus_inverse",
    T.ref_softplus_inverse,
    T.cond_softplus_inverse,
    {
        **{k: np.abs(v) for k, v in UNARY_X.items()},
        "around_log2": _v(LN2, 0.69, 0.7, LN2 * (1 + 1e-6), LN2 * (1 - 1e-6)),
        "zero": _v(0.0),
    },
)
SIGMOID = _unary("sigmoid", T.ref_sigmoid, T.cond_sigmoid, UNARY_X)
LOG_SIGMOID = _unary("log_sigmoid", T.ref_log_sigmoid, T.cond_log_sigmoid, UNARY_X)


def _binary(
    name: str,
    ref: Callable[..., Any],
    cond: Callable[..., float],
    cases: dict[str, list[tuple[float, float]]],
    func: Callable[..., Any] | None = None,
) -> Op:
    func = func or getattr(fg, name)
    return Op(
        name,
        func,
        T.vectorize(ref),
        T.cond_elementwise(cond),
        [Case(k, (_v(*(p[0] for p in v)), _v(*(p[1] for p in v)))) for k, v in cases.items()],
    )


LOGADDEXP = _binary(
    "logaddexp",
    T.ref_logaddexp,
    T.cond_logaddexp,
    {
        "moderate": [(0.0, 0.0), (1.0, 2.0), (-3.0, 0.5), (-40.0, 0.0), (0.0, -745.0)],
        "near_zero": [(-LN2, -LN2), (-1.0, math.log1p(-math.exp(-1.0))), (-0.5, math.log1p(-math.exp(-0.5)))],
        "huge": [(1e4, 1e4 - 1), (-1e4, -1e4), (1e4, -1e4)],
        "pm700": [(700.0, -700.0), (-700.0, -700.0), (709.0, 709.0)],
        "pm80": [(80.0, -80.0), (80.0, 80.0)],
        "tiny": [(1e-30, 1e-30), (-1e-30, 1e-30)],
        "subnormal": [(5e-324, 5e-324), (1e-310, -1e-310), (1e-45, 1e-40)],
        "inf": [(-INF, -INF), (-INF, 3.0), (INF, 1.0), (INF, -INF)],
    },
)
LOGSUBEXP = _binary(
    "logsubexp",
    T.ref_logsubexp,
    T.cond_logsubexp,
    {
        "moderate": [(0.0, -1e-20), (0.0, -1.0), (0.5, -50.0), (3.0, 2.0), (1.0, 0.999)],
        "near_zero": [(1.0, math.log(math.e - 1)), (0.5, math.log(math.exp(0.5) - 1)), (LN2, 0.0)],
        "close": [(1.0, 1.0 - 2.0**-20), (-3.0, -3.0 - 2.0**-18), (2.0, 2.0)],
        "huge": [(1e4, 1e4 - 1), (1e4, -1e4), (-1e4, -1e4 - 8)],
        "pm700": [(700.0, 699.0), (-700.0, -701.0), (700.0, -700.0)],
        "pm80": [(80.0, 0.0), (-80.0, -81.0)],
        "tiny": [(1e-30, -1e-30), (2e-30, 1e-30)],
        "subnormal": [(1e-310, 5e-324), (1e-40, 1e-45)],
        "inf": [(3.0, -INF), (-INF, -INF), (INF, 1.0)],
    },
)
XLOGY = _binary(
    "xlogy",
    T.ref_xlogy,
    T.cond_xlogy,
    {
        "moderate": [(0.0, 0.0), (0.0, 1.0), (2.0, 3.0), (-1.5, 0.25), (2.0, 1.0 + 2.0**-20)],
        "tiny": [(1e-30, 0.5), (1.0, 1e-30), (3.0, 1e-20)],
        "huge": [(1e4, 1e4), (1e30, 2.0), (1.0, 1e30)],
        "subnormal": [(1.0, 5e-324), (1.0, 1e-310), (1e-45, 3.0), (2.0, 1e-40), (1e-40, 1e-40)],
        "inf": [(1.0, INF), (0.0, INF), (1.0, 0.0), (-1.0, 0.0)],
    },
)
XLOG1PY = _binary(
    "xlog1py",
    T.ref_xlog1py,
    T.cond_xlog1py,
    {
        "moderate": [(0.0, -1.0), (3.0, -0.5), (2.0, 1.0), (-1.5, 5.0)],
        "tiny": [(1.0, 1e-30), (2.0, 1e-10), (1e-30, 0.5), (1.0, -1e-20)],
        "near_minus_one": [(1.0, -1.0 + 2.0**-20), (2.0, -1.0), (1.0, -0.999)],
        "huge": [(1e4, 1e4), (1.0, 1e30)],
        "subnormal": [(1.0, 5e-324), (1.0, -1e-310), (2.0, 1e-45), (3.0, -1e-40)],
        "inf": [(1.0, INF), (0.0, INF)],
    },
)
BCE = _binary(
    "binary_cross_entropy_with_logits",
    T.ref_bce_with_logits,
    T.cond_bce_with_logits,
    {
        "confident": [(30.0, 1.0), (-30.0, 0.0), (30.0, 0.0), (-30.0, 1.0), (20.0, 1.0), (-17.0, 0.0)],
        "moderate": [(0.0, 0.5), (2.0, 0.3), (-1.0, 0.9), (0.5, 0.0), (0.5, 1.0)],
        "pm80": [(80.0, 1.0), (-80.0, 0.0), (80.0, 0.0), (100.0, 0.25)],
        "huge": [(1e4, 1.0), (-1e4, 0.0), (1e4, 0.0), (-1e4, 0.7)],
        "tiny": [(1e-30, 1.0), (-1e-20, 0.0), (1e-30, 0.5)],
        "subnormal": [(5e-324, 1.0), (1e-310, 0.0), (1e-45, 1.0), (-1e-40, 0.0)],
        "inf": [(INF, 1.0), (-INF, 0.0), (INF, 0.0)],
    },
    lambda x, y: fg.binary_cross_entropy_with_logits(x, y, reduction="none"),
)

OPS = [
    LOGSUMEXP,
    LOGMEANEXP,
    SOFTMAX,
    LOG_SOFTMAX,
    LOGCUMSUMEXP,
    CROSS_ENTROPY,
    LOG_PROD,
    LOG_MATMUL_EXP,
    LOG1MEXP,
    SOFTPLUS,
    SOFTPLUS_INVERSE,
    SIGMOID,
    LOG_SIGMOID,
    LOGADDEXP,
    LOGSUBEXP,
    XLOGY,
    XLOG1PY,
    BCE,
]


# -- parametrisation ----------------------------------------------------------------
def _fits(case: Case, dtype: str) -> bool:
    """No finite value of the case overflows ``dtype``."""
    biggest = max((float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in case.args), default=0.0)
    return biggest <= _MAX[dtype]


PARAMS = [
    pytest.param(op, case, backend, dtype, id=f"{op.name}-{case.name}-{backend}-{dtype}")
    for op in OPS
    for case in op.cases
    for backend, dtype in COMBOS
    if _fits(case, dtype)
]


def _describe(err: np.ndarray, bound: np.ndarray, args: tuple[np.ndarray, ...], got: np.ndarray, ref: Any) -> str:
    """The worst three entries: position, inputs (scalars) , result, exact value, error and bound."""
    lines = []
    for flat in np.argsort(-(err / bound).ravel(), kind="stable")[:3].tolist():
        idx = np.unravel_index(flat, err.shape) if err.ndim else ()
        ins = [repr(float(a[idx])) if a.shape == err.shape else f"shape {a.shape}" for a in args]
        exact = ref[idx] if isinstance(ref, np.ndarray) else ref
        lines.append(
            f"  at {tuple(int(i) for i in idx)}: inputs {', '.join(ins)}; got {float(got[idx])!r}, "
            f"exact {float(exact)!r}, {float(err[idx]):.4g} ulp (bound {float(bound[idx]):.4g})"
        )
    return "\n".join(lines)


def _tiny(dtype: str) -> float:
    """The smallest normal number of the precision XLA computes ``dtype`` in (bfloat16 and float16 in float32)."""
    return float(np.finfo(np.float64 if dtype == "float64" else np.float32).tiny)


def _flush(a: np.ndarray, dtype: str) -> np.ndarray:
    tiny = _tiny(dtype)
    return np.where(np.abs(a) < tiny, np.copysign(0.0, a), a)


def _jax_platform(err: np.ndarray, bound: np.ndarray, cond: Any, got: np.ndarray, ref: Any, dtype: str) -> tuple:
    """The two documented limits of XLA on CPU, and nothing else.

    1. Results below the smallest normal number are flushed to 0 (FTZ): a 0 there is
       accepted, any other value is held to the bound.
    2. XLA's float64 ``exp`` is accurate to 1.3 ulp and floatguard's JAX ``expm1`` to 1.9
       (NumPy's are 0.5 and 0.75): a float32 result computed in float64 carries, besides its
       final rounding, 2 ulp of float64 times the condition number, i.e. 2 * 2^-29 * cond
       float32 ulp, which only matters for a condition number above 2^27.
    """
    exact = np.asarray(ref, dtype=object).astype(np.float64)
    tiny = _tiny(dtype)
    flushed = (got == 0) & (np.abs(exact) < tiny)
    err = np.where(flushed, 0.0, err)
    if dtype == "float32" and cond is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            extra = np.nan_to_num(2.0 * 2.0**-29 * np.asarray(cond, dtype=np.float64), nan=0.0, posinf=0.0)
        bound = bound + np.broadcast_to(extra, np.shape(bound))
    return err, bound


@pytest.mark.parametrize(("op", "case", "backend", "dtype"), PARAMS)
def test_accuracy(op: Op, case: Case, backend: str, dtype: str) -> None:
    inputs = [to_backend(a, backend, dtype) for a in case.args]
    extra = {k: to_backend(v, backend, None) for k, v in case.extra.items()}
    exact_args = tuple(T.to_float64(a) for a in inputs)  # the values the op actually sees
    if backend == "jax":
        # XLA on CPU treats subnormal inputs as 0 (DAZ): the op sees the flushed values
        exact_args = tuple(_flush(a, dtype) for a in exact_args)
    out = op.call(*inputs, **extra)
    assert dtype_name(out) == dtype, f"{op.name} returned {out.dtype} for {dtype} input"
    ref = op.ref(*exact_args, **case.extra)
    got = T.to_float64(out)
    err = np.asarray(T.ulp_error(got, ref, dtype), dtype=np.float64)
    cond = None
    if dtype == "float64" or backend == "jax":
        cond = np.asarray(op.cond(*exact_args, **case.extra), dtype=np.float64)
    if dtype == "float64":
        with np.errstate(over="ignore"):  # a result that is exactly 0 has cond = inf
            bound = np.broadcast_to(2 * np.fmax(1.0, cond), err.shape)
    else:
        bound = np.ones(err.shape)
    if backend == "jax":
        err, bound = _jax_platform(err, bound, cond, got, ref, dtype)
    bad = ~(err <= bound)
    assert not bad.any(), f"{op.name} [{case.name}] {backend} {dtype}: max {float(np.max(err)):.4g} ulp\n" + _describe(
        err, bound, exact_args, got, ref
    )


# -- uniform softmax over 65,536 entries ------------------------------------------------------
@pytest.mark.parametrize(("backend", "dtype"), [("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16")])
@pytest.mark.parametrize("value", [0.0, -3.5, 1e4])
def test_uniform_softmax_65536(backend: str, dtype: str, value: float) -> None:
    n = 65_536
    x = to_backend(np.full(n, value), backend, dtype)
    p = fg.softmax(x)
    assert dtype_name(p) == dtype
    err = T.ulp_error(p, 1 / n, dtype)  # the softmax of n equal entries is exactly 1/n
    assert float(np.max(err)) <= 1.0, f"softmax of {n} equal entries: {float(np.max(err))} ulp from 1/{n}"
