"""Every op on every backend: the result has the input's kind, dtype and device, and the backends agree.

NumPy, PyTorch and JAX (with ``jax_enable_x64``) compute the same float64
algorithm, so for float32 and float64 inputs their results agree to 1 ulp;
float16 and bfloat16 results are the float64 result rounded once. Also:
``jax.jit``, JAX without x64, and Python lists and scalars as inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
import torch

import floatguard as fg

jax.config.update("jax_enable_x64", True)

INF = math.inf

_g = np.random.default_rng(0)
X = _g.normal(size=(3, 4)) * 3
Y = _g.normal(size=(3, 4)) * 3
POS = _g.uniform(0.1, 4.0, size=(3, 4))
PROB = _g.uniform(0.02, 0.98, size=(3, 4))
NEGX = -_g.uniform(0.01, 5.0, size=(3, 4))
BW = _g.uniform(0.5, 2.0, size=(3, 4))
MASK = np.array([[True, False, True, True], [False, False, False, False], [True, True, False, True]])
TARGET = np.array([2, 0, 3])
SOFT = sps.softmax(_g.normal(size=(3, 4)), axis=1)
X3 = _g.normal(size=(2, 4, 3)) * 3
T3 = np.array([[0, 3, 1], [2, 2, -1]])

# (name, fn(*float_inputs, const), float inputs as float64 NumPy arrays)
# ``const`` turns integer / boolean constants into arrays of the backend under test.
OPS: list[tuple[str, Callable[..., Any], list[np.ndarray]]] = [
    ("logsumexp", lambda x, c: fg.logsumexp(x, axis=1), [X]),
    ("logsumexp-all", lambda x, c: fg.logsumexp(x), [X]),
    ("logsumexp-keepdims", lambda x, c: fg.logsumexp(x, axis=(0,), keepdims=True), [X]),
    ("logsumexp-b", lambda x, b, c: fg.logsumexp(x, axis=1, b=b), [X, BW]),
    ("logsumexp-sign", lambda x, b, c: fg.logsumexp(x, axis=1, b=b, return_sign=True), [X, BW - 1.2]),
    ("logsumexp-where", lambda x, c: fg.logsumexp(x, axis=1, where=c(MASK)), [X]),
    ("softmax", lambda x, c: fg.softmax(x), [X]),
    ("softmax-axis0-where", lambda x, c: fg.softmax(x, axis=0, where=c(MASK)), [X]),
    ("log_softmax", lambda x, c: fg.log_softmax(x, axis=0), [X]),
    ("log_softmax-where", lambda x, c: fg.log_softmax(x, where=c(MASK)), [X]),
    ("logcumsumexp", lambda x, c: fg.logcumsumexp(x), [X]),
    ("logmeanexp", lambda x, c: fg.logmeanexp(x, axis=0), [X]),
    ("logaddexp", lambda a, b, c: fg.logaddexp(a, b), [X, Y]),
    ("logsubexp", lambda a, b, c: fg.logsubexp(a, b), [X + POS, X]),
    ("log1mexp", lambda x, c: fg.log1mexp(x), [NEGX]),
    ("softplus", lambda x, c: fg.softplus(x), [X]),
    ("softplus_inverse", lambda x, c: fg.softplus_inverse(x), [POS]),
    ("sigmoid", lambda x, c: fg.sigmoid(x), [X]),
    ("log_sigmoid", lambda x, c: fg.log_sigmoid(x), [X]),
    ("xlogy", lambda x, y, c: fg.xlogy(x, y), [X, POS]),
    ("xlog1py", lambda x, y, c: fg.xlog1py(x, y), [X, PROB - 0.5]),
    ("bce", lambda x, y, c: fg.binary_cross_entropy_with_logits(x, y), [X, PROB]),
    (
        "bce-weights",
        lambda x, y, w, p, c: fg.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=p, reduction="none"),
        [X, PROB, POS, POS[0]],
    ),
    ("ce", lambda x, c: fg.cross_entropy(x, c(TARGET)), [X]),
    ("ce-smooth-none", lambda x, c: fg.cross_entropy(x, c(TARGET), label_smoothing=0.1, reduction="none"), [X]),
    ("ce-probs", lambda x, t, c: fg.cross_entropy(x, t, reduction="sum"), [X, SOFT]),
    ("ce-axis1-ignore", lambda x, c: fg.cross_entropy(x, c(T3), axis=1, ignore_index=-1), [X3]),
    ("log_matmul_exp", lambda a, b, c: fg.log_matmul_exp(a, b), [X, Y.T]),
    ("log_prod", lambda p, c: fg.log_prod(p, axis=1), [PROB]),
    ("safe_log", lambda x, c: fg.safe_log(x), [np.where(MASK, POS, 0.0)]),
    ("safe_div", lambda a, b, c: fg.safe_div(a, b), [X, np.where(MASK, Y, 0.0)]),
    ("safe_sqrt", lambda x, c: fg.safe_sqrt(x), [np.where(MASK, POS, -POS)]),
]
IDS = [o[0] for o in OPS]
CASES = [o[1:] for o in OPS]

NP_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
TORCH_DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64
}
JAX_DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32, "float64": jnp.float64}
# (mantissa bits, minimum normal exponent) of each dtype, for ulp sizes
FORMAT = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126), "float64": (52, -1022)}


def outputs(out: Any) -> list[Any]:
    return list(out) if isinstance(out, tuple) else [out]


def to_f64(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().double().numpy()
    return np.asarray(a).astype(np.float64)


def ulp_distance(got: Any, want: Any, dtype: str) -> np.ndarray:
    """|got - want| in ulps of ``dtype`` at ``want``; equal non-finite values count 0, other mismatches inf."""
    g, w = to_f64(got), to_f64(want)
    nmant, minexp = FORMAT[dtype]
    _, e = np.frexp(np.abs(np.where(np.isfinite(w), w, 1.0)))
    ulp = np.ldexp(1.0, np.maximum(e - 1, minexp) - nmant)
    with np.errstate(invalid="ignore"):
        d = np.abs(g - w) / ulp
    same = (g == w) | (np.isnan(g) & np.isnan(w))
    return np.where(same, 0.0, np.where(np.isfinite(d), d, np.inf))


def log_matmul_exp_condition(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Relative condition number of ``log sum_k exp(a_ik + b_kj)``: sum_k p_k |a_ik + b_kj| / |c_ij|."""
    terms = a[..., :, :, None] + b[..., None, :, :]
    with np.errstate(all="ignore"):
        c = sps.logsumexp(terms, axis=-2)
        p = np.exp(terms - c[..., None, :])
        return np.sum(p * np.abs(terms), axis=-2) / np.abs(c)


def run_numpy(fn: Callable[..., Any], inputs: list[np.ndarray], dtype: str) -> list[Any]:
    return outputs(fn(*[a.astype(NP_DTYPES[dtype]) for a in inputs], np.asarray))


def run_torch(fn: Callable[..., Any], inputs: list[np.ndarray], dtype: str) -> list[Any]:
    return outputs(fn(*[torch.tensor(a).to(TORCH_DTYPES[dtype]) for a in inputs], torch.as_tensor))


def run_jax(fn: Callable[..., Any], inputs: list[np.ndarray], dtype: str, jit: bool = True) -> list[Any]:
    args = [jnp.asarray(a, dtype=JAX_DTYPES[dtype]) for a in inputs]
    f = (lambda *a: fn(*a, jnp.asarray)) if not jit else jax.jit(lambda *a: fn(*a, jnp.asarray))
    return outputs(f(*args))


def rounded_inputs(inputs: list[np.ndarray], dtype: str) -> list[np.ndarray]:
    """The inputs rounded to ``dtype`` and back to float64 (what a low-precision op actually receives)."""
    return [torch.tensor(a).to(TORCH_DTYPES[dtype]).double().numpy() for a in inputs]


# --------------------------------------------------------------------------------------
# kind, dtype, device
# --------------------------------------------------------------------------------------
def expected(fn: Callable[..., Any], inputs: list[np.ndarray], dtype: str) -> tuple[list[Any], Any]:
    """Reference results for ``dtype`` and the allowed ulp distance to them.

    float32 / float64: NumPy's results (all backends run the same algorithm; 1 ulp).
    float16 / bfloat16: the float64 result on the same rounded inputs, which the op
    must round once (1 ulp); the safe ops use the default eps of the low dtype.
    """
    if dtype in ("float32", "float64"):
        tol: Any = 1.0
        if dtype == "float64" and fn is CASES[IDS.index("log_matmul_exp")][0]:
            # one BLAS product, summed in a library-dependent order: each result is within
            # 2 ulp x condition of the truth (the float64 contract), so within 4 ulp x condition of each other
            tol = np.maximum(1.0, 4.0 * log_matmul_exp_condition(*inputs))
        return run_numpy(fn, inputs, dtype), tol
    args = rounded_inputs(inputs, dtype)
    if fn is CASES[IDS.index("safe_log")][0]:
        return [fg.safe_log(args[0], eps=fg.default_eps(JAX_DTYPES[dtype], "safe_log"))], 1.0
    if fn is CASES[IDS.index("safe_div")][0]:
        return [fg.safe_div(args[0], args[1], eps=fg.default_eps(JAX_DTYPES[dtype], "safe_div"))], 1.0
    return run_numpy(fn, args, "float64"), 1.0


def check(
    results: list[Any],
    kind: Any,
    dtype: Any,
    fn: Callable[..., Any],
    inputs: list[np.ndarray],
    name: str,
    backend_tol: float = 1.0,
) -> None:
    """Kind, dtype and shape of ``results``, and their ulp distance to :func:`expected`."""
    want, tol = expected(fn, inputs, name)
    tol = np.maximum(tol, backend_tol)
    assert len(results) == len(want)
    for got, ref in zip(results, want, strict=True):
        assert isinstance(got, kind), type(got)
        assert got.dtype == dtype
        assert np.shape(got) == np.shape(ref)
        d = ulp_distance(got, ref, name)
        assert np.all(d <= tol), (to_f64(got), to_f64(ref), d)


@pytest.mark.parametrize("dtype", list(NP_DTYPES))
@pytest.mark.parametrize(("fn", "inputs"), CASES, ids=IDS)
def test_numpy_in_numpy_out(fn: Callable[..., Any], inputs: list[np.ndarray], dtype: str) -> None:
    out = run_numpy(fn, inputs, dtype)
    if dtype == "float16":
        check(out, np.ndarray | np.generic, NP_DTYPES[dtype], fn, inputs, dtype)
    for o in out:
        assert isinstance(o, np.ndarray | np.generic) and o.dtype == NP_DTYPES[dtype]


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize(("fn", "inputs"), CASES, ids=IDS)
def test_torch_in_torch_out_and_agrees(fn: Callable[..., Any], inputs: list[np.ndarray], dtype: str) -> None:
    out = run_torch(fn, inputs, dtype)
    check(out, torch.Tensor, TORCH_DTYPES[dtype], fn, inputs, dtype)
    assert all(o.device == torch.device("cpu") for o in out)


@pytest.mark.parametrize("dtype", list(JAX_DTYPES))
@pytest.mark.parametrize(("fn", "inputs"), CASES, ids=IDS)
def test_jax_in_jax_out_and_agrees(fn: Callable[..., Any], inputs: list[np.ndarray], dtype: str) -> None:
    # XLA's float64 exp is accurate to 1.3 ulp (NumPy's to 0.5), so in float64 JAX and NumPy
    # may differ by 2 ulp; both stay within the float64 contract (tests/ops/test_accuracy.py)
    check(run_jax(fn, inputs, dtype), jax.Array, JAX_DTYPES[dtype], fn, inputs, dtype,
          backend_tol=2.0 if dtype == "float64" else 1.0)


@pytest.mark.parametrize(("fn", "inputs"), CASES, ids=IDS)
def test_jax_eager_agrees(fn: Callable[..., Any], inputs: list[np.ndarray]) -> None:
    """Eager JAX (what most calls are; some ops branch on the data there) agrees like jit does."""
    check(run_jax(fn, inputs, "float32", jit=False), jax.Array, jnp.float32, fn, inputs, "float32")


def test_pytorch_argument_names_are_aliases() -> None:
    """``dim``/``keepdim`` as in torch.logsumexp(x, dim, keepdim) and F.softmax(x, dim): same results."""
    x = torch.from_numpy(X3)
    t = torch.from_numpy(np.array([[0, 1, 2], [1, 0, 2]]))
    pairs = [
        (fg.logsumexp(x, dim=1, keepdim=True), fg.logsumexp(x, axis=1, keepdims=True)),
        (fg.logsumexp(x, dim=(0, 2)), fg.logsumexp(x, axis=(0, 2))),
        (fg.softmax(x, dim=1), fg.softmax(x, axis=1)),
        (fg.log_softmax(x, dim=0), fg.log_softmax(x, axis=0)),
        (fg.logmeanexp(x, dim=2, keepdim=True), fg.logmeanexp(x, axis=2, keepdims=True)),
        (fg.logcumsumexp(x, dim=1), fg.logcumsumexp(x, axis=1)),
        (fg.log_prod(x.abs(), dim=0, keepdim=True), fg.log_prod(x.abs(), axis=0, keepdims=True)),
        (fg.cross_entropy(x[:, :3], t, dim=1), fg.cross_entropy(x[:, :3], t, axis=1)),
    ]
    for got, want in pairs:
        assert got.shape == want.shape and torch.equal(got, want)
    assert fg.softmax(x, dim=1).shape == x.shape and not torch.equal(fg.softmax(x, dim=1), fg.softmax(x))
    ref = torch.nn.functional.cross_entropy(x[:, :3], t)  # class axis 1, as PyTorch's default
    assert torch.allclose(fg.cross_entropy(x[:, :3], t, dim=1), ref, rtol=1e-12)


@pytest.mark.parametrize("make", [np.asarray, torch.tensor, jnp.asarray], ids=["numpy", "torch", "jax"])
def test_softmax_of_a_0d_input_is_a_row_of_one(make: Callable[[Any], Any]) -> None:
    """As torch.softmax(tensor(3.), -1): 1 (log 0); a masked or -inf entry is an empty row."""
    for v in (3.0, -1e30, INF):
        assert float(fg.softmax(make(v))) == 1.0 and float(fg.log_softmax(make(v), axis=0)) == 0.0
        assert fg.softmax(make(v)).shape == ()
    assert float(fg.softmax(make(-INF))) == 0.0 and float(fg.log_softmax(make(-INF))) == -INF
    assert float(fg.softmax(make(3.0), where=make(False))) == 0.0
    assert math.isnan(float(fg.softmax(make(math.nan))))


def test_torch_softmax_of_a_0d_input_has_gradient_0() -> None:
    x = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fg.log_softmax(x), x)
    assert g.shape == () and float(g) == 0.0 == float(torch.autograd.grad(torch.log_softmax(x, -1), x)[0])


def test_torch_output_keeps_requires_grad() -> None:
    x = torch.tensor(X, requires_grad=True)
    for out in (fg.logsumexp(x, axis=1), fg.softmax(x), fg.softplus(x), fg.cross_entropy(x, torch.as_tensor(TARGET))):
        assert out.requires_grad


# --------------------------------------------------------------------------------------
# jax.jit
# --------------------------------------------------------------------------------------
def test_jit_logsumexp_softmax_log_softmax_non_finite_rows() -> None:
    x = np.array([[1.0, 2.0, -INF], [-INF, -INF, -INF], [INF, 0.0, INF], [3.0, np.nan, 1.0]])
    xj = jnp.asarray(x)
    lse = jax.jit(lambda v: fg.logsumexp(v, axis=1))(xj)
    assert np.max(ulp_distance(lse, fg.logsumexp(x, axis=1), "float64")) <= 1
    np.testing.assert_allclose(np.asarray(lse)[:3], [np.logaddexp(1.0, 2.0), -INF, INF], rtol=2.3e-16)
    assert np.isnan(np.asarray(lse)[3])
    p = np.asarray(jax.jit(fg.softmax)(xj))
    np.testing.assert_array_equal(p[1:3], [[0.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    assert np.max(ulp_distance(p, fg.softmax(x), "float64")) <= 1
    ls = np.asarray(jax.jit(fg.log_softmax)(xj))
    assert np.max(ulp_distance(ls, fg.log_softmax(x), "float64")) <= 1


def test_jit_masks_and_weights() -> None:
    xj, mj = jnp.asarray(X), jnp.asarray(MASK)
    p = np.asarray(jax.jit(lambda v, m: fg.softmax(v, where=m))(xj, mj))
    np.testing.assert_array_equal(p[1], np.zeros(4))
    np.testing.assert_allclose(p[0, MASK[0]], sps.softmax(X[0, MASK[0]]), rtol=1e-15)
    lse = np.asarray(jax.jit(lambda v, m: fg.logsumexp(v, axis=1, where=m))(xj, mj))
    assert lse[1] == -INF
    val, sign = jax.jit(lambda v, b: fg.logsumexp(v, axis=1, b=b, return_sign=True))(xj, jnp.asarray(-BW))
    want_v, want_s = sps.logsumexp(X, axis=1, b=-BW, return_sign=True)
    np.testing.assert_allclose(np.asarray(val), want_v, rtol=1e-14)
    np.testing.assert_array_equal(np.asarray(sign), want_s)


def test_jit_cross_entropy() -> None:
    xj = jnp.asarray(X3)
    t = jnp.asarray(T3)
    f = jax.jit(lambda v, tt: fg.cross_entropy(v, tt, axis=1, ignore_index=-1, label_smoothing=0.2))
    want = torch.nn.functional.cross_entropy(
        torch.tensor(X3), torch.tensor(T3), ignore_index=-1, label_smoothing=0.2
    ).item()
    np.testing.assert_allclose(float(f(xj, t)), want, rtol=1e-13)
    g = jax.jit(lambda v: fg.cross_entropy(v, jnp.asarray(TARGET), reduction="none"))(jnp.asarray(X))
    np.testing.assert_allclose(np.asarray(g), -sps.log_softmax(X, axis=1)[np.arange(3), TARGET], rtol=1e-13)


H = _g.normal(size=(3, 5))
W_HEAD = _g.normal(size=(4, 5))
CLOSURE_OPS = [*OPS, ("linear_cross_entropy", lambda h, w, c: fg.linear_cross_entropy(h, w, c(TARGET)), [H, W_HEAD])]


@pytest.mark.parametrize("x64", [True, False], ids=["x64", "no-x64"])
@pytest.mark.parametrize(("fn", "inputs"), [o[1:] for o in CLOSURE_OPS], ids=[o[0] for o in CLOSURE_OPS])
def test_jit_of_a_closure_over_every_argument(fn: Callable[..., Any], inputs: list[np.ndarray], x64: bool) -> None:
    """``jax.jit`` of a function of no argument whose arrays (inputs, integer targets, masks) are captured
    JAX arrays made outside: concrete constants, on which the ops' value checks still run (under jit their
    own ops would be traced) and give the eager result."""
    with jax.enable_x64(x64):
        args = [jnp.asarray(a) for a in inputs]
        consts: dict[int, Any] = {}

        def const(a: np.ndarray) -> Any:
            return consts.setdefault(id(a), jnp.asarray(a))  # made once, outside the jitted function

        want = outputs(fn(*args, const))
        got = outputs(jax.jit(lambda: fn(*args, const))())
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-13 if x64 else 1e-6, atol=0)


def test_jit_checks_a_captured_target_and_skips_a_traced_one() -> None:
    """A captured out-of-range class index is a constant: the range check runs and names the argument; a
    traced target (a jit argument) has no values to check, as under torch.compile."""
    xj = jnp.asarray(X)
    bad = jnp.asarray([0, 4, 1])
    with pytest.raises(ValueError, match=r"'target' has class indices outside \[0, 4\) \(e.g. 4\)"):
        jax.jit(lambda v: fg.cross_entropy(v, bad))(xj)
    ok = jnp.asarray([0, -1, 1])
    got = jax.jit(lambda v: fg.cross_entropy(v, ok, ignore_index=-1, reduction="sum"))(xj)
    want = -sps.log_softmax(X, axis=1)[[0, 2], [0, 1]].sum()
    np.testing.assert_allclose(float(got), want, rtol=1e-13)
    traced = jax.jit(lambda v, t: fg.cross_entropy(v, t, reduction="none"))(xj, jnp.asarray(TARGET))
    np.testing.assert_allclose(np.asarray(traced), -sps.log_softmax(X, axis=1)[np.arange(3), TARGET], rtol=1e-13)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (X, Y.T),
        (np.array([[0.0, -1000.0]]), np.array([[-1000.0], [0.0]])),  # the shift cannot see the pairing
        (_g.normal(size=(2, 3, 5)) * 400, _g.normal(size=(2, 5, 4)) * 400),
        (np.array([[-INF, -INF], [0.0, 1.0], [INF, 0.0]]), np.array([[0.0, -INF], [2.0, -INF]])),
    ],
    ids=["random", "adversarial", "batched-wide", "non-finite"],
)
def test_jit_log_matmul_exp_traced_path(a: np.ndarray, b: np.ndarray) -> None:
    eager = np.asarray(fg.log_matmul_exp(a, b))
    traced = np.asarray(jax.jit(fg.log_matmul_exp)(jnp.asarray(a), jnp.asarray(b)))
    with np.errstate(invalid="ignore"):  # inf + -inf terms: NaN, as the op gives
        brute = sps.logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)
    finite = np.isfinite(brute)
    cond = np.where(finite, log_matmul_exp_condition(a, b) if finite.all() else 1.0, 1.0)
    assert np.all(ulp_distance(traced, eager, "float64") <= np.maximum(1.0, 4.0 * cond))
    np.testing.assert_allclose(traced[finite], brute[finite], rtol=1e-13)
    np.testing.assert_array_equal(traced[~finite], brute[~finite])
    t32 = jax.jit(fg.log_matmul_exp)(jnp.asarray(a, dtype=jnp.float32), jnp.asarray(b, dtype=jnp.float32))
    assert t32.dtype == jnp.float32


# --------------------------------------------------------------------------------------
# JAX without x64: float32 work dtype
# --------------------------------------------------------------------------------------
def test_jax_without_x64_computes_in_float32() -> None:
    with jax.enable_x64(False):
        x = jnp.asarray(np.array([1000.0, 1000.5, 999.0]), dtype=jnp.float32)
        lse = fg.logsumexp(x)
        p = fg.softmax(x)
        sp = fg.softplus(jnp.asarray([-50.0, 0.0, 50.0], dtype=jnp.float32))
        ce = fg.cross_entropy(jnp.asarray(X, dtype=jnp.float32), jnp.asarray(TARGET, dtype=jnp.int32))
        lme = fg.log_matmul_exp(jnp.asarray(X, dtype=jnp.float32), jnp.asarray(Y.T, dtype=jnp.float32))
        outs = [lse, p, sp, ce, lme]
        assert all(o.dtype == jnp.float32 for o in outs)
    xf = np.array([1000.0, 1000.5, 999.0])
    assert ulp_distance(lse, sps.logsumexp(xf), "float32") <= 2
    assert np.max(ulp_distance(p, sps.softmax(xf), "float32")) <= 4
    assert np.max(ulp_distance(sp, np.logaddexp(0.0, [-50.0, 0.0, 50.0]), "float32")) <= 2
    want_ce = -np.mean(sps.log_softmax(X.astype(np.float32).astype(np.float64), axis=1)[np.arange(3), TARGET])
    assert ulp_distance(ce, want_ce, "float32") <= 8
    x32, y32 = X.astype(np.float32).astype(np.float64), Y.T.astype(np.float32).astype(np.float64)
    want_lme = sps.logsumexp(x32[:, :, None] + y32[None], axis=1)
    assert np.max(ulp_distance(lme, want_lme, "float32")) <= 8


# --------------------------------------------------------------------------------------
# Python lists and scalars
# --------------------------------------------------------------------------------------
def test_python_lists_and_scalars_are_numpy_float64() -> None:
    out = fg.logsumexp([1.0, 2.0, 3.0])
    assert isinstance(out, np.ndarray | np.generic) and out.dtype == np.float64
    np.testing.assert_allclose(np.asarray(out), sps.logsumexp([1.0, 2.0, 3.0]), rtol=1e-15)
    np.testing.assert_allclose(fg.logsumexp([1, 2, 3]), sps.logsumexp([1.0, 2.0, 3.0]), rtol=1e-15)
    np.testing.assert_allclose(fg.softmax([[0.0, 1.0], [2.0, 2.0]]), sps.softmax([[0.0, 1.0], [2.0, 2.0]], axis=1))
    s = fg.softplus(3.0)
    assert np.asarray(s).dtype == np.float64 and np.isclose(s, np.logaddexp(0.0, 3.0), rtol=1e-15)
    assert fg.sigmoid(0) == 0.5
    assert fg.logaddexp(1.0, 1.0) == 1.0 + math.log(2.0)
    assert fg.log1mexp(-math.inf) == 0.0
    np.testing.assert_allclose(fg.xlogy([0.0, 2.0], [0.0, math.e]), [0.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(fg.log_prod([0.5, 0.25]), math.log(0.125), rtol=1e-15)
    np.testing.assert_allclose(fg.log_matmul_exp([[0.0, 1.0]], [[1.0], [0.0]]), [[1.0 + math.log(2.0)]], rtol=1e-15)
    np.testing.assert_allclose(fg.cross_entropy([[0.0, 0.0]], [1]), math.log(2.0), rtol=1e-15)
    np.testing.assert_allclose(fg.binary_cross_entropy_with_logits([0.0], [1.0]), math.log(2.0), rtol=1e-15)
    assert fg.safe_log(0.0) == math.log(np.finfo(np.float64).smallest_normal)
    assert fg.safe_sqrt(4.0) == 2.0
    assert fg.safe_div(1.0, 4.0) == 0.25


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_scalars_and_lists_take_the_backend_of_the_array(backend: str) -> None:
    x: Any
    if backend == "torch":
        x = torch.tensor([0.5, -1.0], dtype=torch.float32)
        kind: Any = torch.Tensor
    else:
        x = jnp.asarray([0.5, -1.0], dtype=jnp.float32)
        kind = jax.Array
    outs: list[Any] = [
        fg.logaddexp(x, 1.0),
        fg.logaddexp(2.0, x),
        fg.logsubexp(x, -3.0),
        fg.xlogy(x, 2.0),
        fg.xlogy(0.5, x * x),
        fg.safe_div(x, 2.0),
        fg.safe_div(3.0, x),
        fg.binary_cross_entropy_with_logits(x, [1.0, 0.0], reduction="none"),
        fg.cross_entropy(x[None], [1]),
        fg.logsumexp(x, b=[1.0, 2.0]),
    ]
    for out in outs:
        assert isinstance(out, kind), type(out)
        assert out.dtype == x.dtype
    np.testing.assert_allclose(to_f64(outs[0]), np.logaddexp([0.5, -1.0], 1.0), rtol=1.2e-7)
    np.testing.assert_allclose(to_f64(outs[6]), [6.0, -3.0], rtol=1.2e-7)
    np.testing.assert_allclose(to_f64(outs[9]), sps.logsumexp([0.5, -1.0], b=[1.0, 2.0]), rtol=1.2e-7)


@pytest.mark.parametrize(
    "dtype",
    [np.float16, np.float32, np.float64, jnp.bfloat16, torch.float16, torch.bfloat16, torch.float32, torch.float64],
    ids=str,
)
def test_default_eps_accepts_every_backend_dtype(dtype: Any) -> None:
    """``default_eps`` takes the dtypes the ops take, and is what safe_log / safe_div use by default."""
    name = str(dtype).replace("torch.", "").split(".")[-1].strip("'>")
    fi = torch.finfo(TORCH_DTYPES[name])
    assert fg.default_eps(dtype, "safe_log") == fi.tiny
    assert fg.default_eps(dtype) == max(fi.eps, 2.0 / math.sqrt(fi.max))
    x = torch.zeros(2, dtype=TORCH_DTYPES[name])
    assert float(fg.safe_log(x)[0]) == float(torch.log(torch.tensor(fi.tiny, dtype=TORCH_DTYPES[name])))


class _Compiles:
    """Counts XLA compilations (JAX logs one "Finished XLA compilation" line each under ``jax.log_compiles``)."""

    def __init__(self) -> None:
        import logging

        self.n = 0
        outer = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                outer.n += "Finished XLA compilation" in record.getMessage()

        self.handler, self.logger = Handler(), logging.getLogger("jax")

    def __enter__(self) -> _Compiles:
        import logging

        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


_EAGER = {
    "logsumexp": lambda v: fg.logsumexp(v, axis=-1),
    "softmax, tuple axis": lambda v: fg.softmax(v, axis=(0, 1)),
    "logcumsumexp": lambda v: fg.logcumsumexp(v, axis=-1),
    "logmeanexp": lambda v: fg.logmeanexp(v, axis=-1),
    "logsumexp with b": lambda v: fg.logsumexp(v, axis=-1, b=v),
}


@pytest.mark.parametrize("name", list(_EAGER))
def test_an_eager_jax_call_is_one_jitted_function(name: str) -> None:
    """The reductions run their JAX arithmetic under ``jax.jit``, as jax.nn's ops: an eager call on a new shape
    compiles a few executables (the body, and the casts and reshapes around it), not one per primitive (24 to
    151 before: the log-depth scan of logcumsumexp took 8 s on 256×1000), and gives the jitted call's values."""
    f = _EAGER[name]
    k = list(_EAGER).index(name)  # a shape of its own: no executable compiled by another test to reuse
    x = jnp.asarray(np.random.default_rng(7).standard_normal((29 + k, 263 + k)), dtype=jnp.float32)
    with jax.log_compiles(True), _Compiles() as compiles:
        got = f(x)
        got.block_until_ready()
    assert compiles.n <= 8, (name, compiles.n)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.jit(f)(x)))
