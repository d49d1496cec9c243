"""Gradients of the ops: finite differences, special points, known closed forms, PyTorch vs JAX.

Every differentiable op is checked with ``torch.autograd.gradcheck`` in float64.
At the special points of the contract (masked entries, ``-inf`` entries, rows with
nothing left, the ``eps`` points of the safe ops) gradients must be finite, equal
to the documented value, and identical between ``torch.autograd`` and ``jax.grad``.
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
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import floatguard as fg

jax.config.update("jax_enable_x64", True)

INF = math.inf
NAN = math.nan


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def leaf(a: Any) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------------------
# gradcheck on random inputs, float64
# --------------------------------------------------------------------------------------
_g = rng(0)
X34 = _g.normal(size=(3, 4)) * 2
X234 = _g.normal(size=(2, 3, 4)) * 2
B34 = _g.uniform(0.5, 2.0, size=(3, 4)) * np.where(_g.random((3, 4)) < 0.3, -0.2, 1.0)  # well-conditioned sums
Y34 = _g.normal(size=(3, 4)) * 2
POS34 = _g.uniform(0.1, 3.0, size=(3, 4))
PROB34 = _g.uniform(0.05, 0.95, size=(3, 4))
NEAR0 = -_g.uniform(0.05, 0.6, size=(3, 4))  # log1mexp: the expm1 branch (x > -log 2)
FAR = -_g.uniform(0.8, 6.0, size=(3, 4))  # the log1p branch
TARGET3 = np.array([1, 3, 0])
TARGET_ND = _g.integers(0, 4, size=(2, 3, 5))
X2435 = _g.normal(size=(2, 4, 3, 5))
SOFT34 = sps.softmax(_g.normal(size=(3, 4)), axis=-1)
A35, B52 = _g.normal(size=(3, 5)) * 3, _g.normal(size=(5, 2)) * 3
A235, B252 = _g.normal(size=(2, 3, 5)) * 3, _g.normal(size=(2, 5, 2)) * 3
AWIDE, BWIDE = _g.normal(size=(2, 3)) * 400, _g.normal(size=(3, 2)) * 400  # entries where the product underflows


def _t(a: Any) -> torch.Tensor:
    return torch.as_tensor(a)


GRADCHECK: list[tuple[str, Callable[..., Any], list[np.ndarray]]] = [
    ("logsumexp-all", lambda x: fg.logsumexp(x), [X34]),
    ("logsumexp-axis1", lambda x: fg.logsumexp(x, axis=1), [X34]),
    ("logsumexp-axis0-keep", lambda x: fg.logsumexp(x, axis=0, keepdims=True), [X34]),
    ("logsumexp-axes", lambda x: fg.logsumexp(x, axis=(0, 2)), [X234]),
    ("logsumexp-b", lambda x: fg.logsumexp(x, axis=1, b=_t(B34)), [X34]),
    ("logsumexp-neg-b-sign", lambda x: fg.logsumexp(x, axis=1, b=_t(-B34), return_sign=True)[0], [X34]),
    ("logsumexp-b-broadcast", lambda x: fg.logsumexp(x, axis=(0, 1), b=_t(B34[0])), [X34]),
    ("softmax", lambda x: fg.softmax(x), [X34]),
    ("softmax-axis0", lambda x: fg.softmax(x, axis=0), [X234]),
    ("log_softmax", lambda x: fg.log_softmax(x), [X34]),
    ("log_softmax-axis1", lambda x: fg.log_softmax(x, axis=1), [X234]),
    ("logmeanexp", lambda x: fg.logmeanexp(x, axis=1), [X34]),
    ("logmeanexp-all", lambda x: fg.logmeanexp(x), [X234]),
    ("logcumsumexp", lambda x: fg.logcumsumexp(x), [X34]),
    ("logcumsumexp-axis0", lambda x: fg.logcumsumexp(x, axis=0), [X234]),
    ("logaddexp", fg.logaddexp, [X34, Y34]),
    ("logaddexp-broadcast", fg.logaddexp, [X34, Y34[:1]]),
    ("logsubexp", lambda a, b: fg.logsubexp(a, b), [Y34 + POS34, Y34]),
    ("log1mexp-near0", fg.log1mexp, [NEAR0]),
    ("log1mexp-far", fg.log1mexp, [FAR]),
    ("softplus", fg.softplus, [X34 * 5]),
    ("softplus_inverse", fg.softplus_inverse, [POS34]),
    ("sigmoid", fg.sigmoid, [X34 * 5]),
    ("log_sigmoid", fg.log_sigmoid, [X34 * 5]),
    ("xlogy", fg.xlogy, [X34, POS34]),
    ("xlog1py", fg.xlog1py, [X34, PROB34 - 0.5]),
    ("bce", lambda x, y: fg.binary_cross_entropy_with_logits(x, y), [X34, PROB34]),
    (
        "bce-weights",
        lambda x, y, w, p: fg.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=p, reduction="sum"),
        [X34, PROB34, POS34, POS34[0]],
    ),
    ("bce-none", lambda x, y: fg.binary_cross_entropy_with_logits(x, y, reduction="none"), [X34, PROB34]),
    ("ce-index", lambda x: fg.cross_entropy(x, _t(TARGET3)), [X34]),
    ("ce-smooth-sum", lambda x: fg.cross_entropy(x, _t(TARGET3), label_smoothing=0.2, reduction="sum"), [X34]),
    ("ce-ignore", lambda x: fg.cross_entropy(x, _t(np.array([1, -100, 2])), ignore_index=-100), [X34]),
    ("ce-probs", lambda x, t: fg.cross_entropy(x, t, reduction="none"), [X34, SOFT34]),
    ("ce-axis1", lambda x: fg.cross_entropy(x, _t(TARGET_ND), axis=1, label_smoothing=0.1), [X2435]),
    ("log_matmul_exp", fg.log_matmul_exp, [A35, B52]),
    ("log_matmul_exp-batched", fg.log_matmul_exp, [A235, B252]),
    ("log_matmul_exp-wide", fg.log_matmul_exp, [AWIDE, BWIDE]),
    ("log_prod", lambda p: fg.log_prod(p, axis=1), [PROB34]),
    ("safe_log", fg.safe_log, [POS34]),
    ("safe_div", fg.safe_div, [X34, POS34 * np.sign(Y34)]),
    ("safe_sqrt", fg.safe_sqrt, [POS34]),
]


@pytest.mark.parametrize(("fn", "inputs"), [c[1:] for c in GRADCHECK], ids=[c[0] for c in GRADCHECK])
def test_gradcheck_random_inputs(fn: Callable[..., Any], inputs: list[np.ndarray]) -> None:
    assert gradcheck(fn, tuple(leaf(a) for a in inputs))


SECOND_ORDER = ["logsumexp-axis1", "softmax", "log_softmax", "logaddexp", "softplus", "sigmoid", "log_sigmoid",
                "bce", "ce-index", "log_matmul_exp", "logsumexp-b"]


@pytest.mark.parametrize(
    ("fn", "inputs"),
    [c[1:] for c in GRADCHECK if c[0] in SECOND_ORDER],
    ids=[c[0] for c in GRADCHECK if c[0] in SECOND_ORDER],
)
def test_gradgradcheck(fn: Callable[..., Any], inputs: list[np.ndarray]) -> None:
    assert gradgradcheck(fn, tuple(leaf(a) for a in inputs))


@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
def test_second_derivatives_in_float32(op: str) -> None:
    """Hessians of the float32 path equal the float64 ones (the max term and shift are in the graph)."""
    x = rng(1).normal(size=5)
    w = rng(2).uniform(0.5, 1.5, size=5)

    def scalar(v: torch.Tensor) -> torch.Tensor:
        if op == "logsumexp":
            return fg.logsumexp(v)
        out = getattr(fg, op)(v)
        return (out * torch.as_tensor(w, dtype=v.dtype)).sum()

    h32 = torch.autograd.functional.hessian(scalar, torch.tensor(x, dtype=torch.float32))
    h64 = torch.autograd.functional.hessian(scalar, torch.tensor(x, dtype=torch.float64))
    assert h32.dtype == torch.float32
    torch.testing.assert_close(h32.double(), h64, rtol=1e-5, atol=1e-6)
    if op == "logsumexp":
        p = sps.softmax(x)
        np.testing.assert_allclose(h64.numpy(), np.diag(p) - np.outer(p, p), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax", "softplus", "logcumsumexp", "sigmoid"])
def test_low_precision_gradients_match_float64(op: str, dtype: torch.dtype) -> None:
    """Gradients of low-precision inputs keep the dtype and equal the float64 gradient, rounded."""
    fn = {"logsumexp": lambda v: fg.logsumexp(v, axis=1), "softmax": fg.softmax, "log_softmax": fg.log_softmax,
          "softplus": fg.softplus, "logcumsumexp": fg.logcumsumexp, "sigmoid": fg.sigmoid}[op]
    lo = torch.tensor(rng(3).normal(size=(4, 6)) * 2, dtype=dtype).requires_grad_()
    hi = lo.detach().double().requires_grad_()  # the same (rounded) input in float64
    out_lo = fn(lo)
    w = torch.tensor(rng(4).uniform(0.5, 1.5, size=tuple(out_lo.shape)), dtype=dtype)
    out_lo.backward(w)
    fn(hi).backward(w.double())
    assert lo.grad is not None and hi.grad is not None and lo.grad.dtype == dtype
    # normwise: the backward works from the rounded output, and softmax-type gradients cancel
    # (g - sum(g p)), so small entries carry an error of a few ulp of the largest terms
    eps = float(torch.finfo(dtype).eps)
    scale = float(hi.grad.abs().max()) + float(w.double().abs().sum(dim=-1).max()) * float(out_lo.abs().max() <= 1)
    torch.testing.assert_close(lo.grad.double(), hi.grad, rtol=2 * eps, atol=8 * eps * scale)


# --------------------------------------------------------------------------------------
# masks and -inf entries
# --------------------------------------------------------------------------------------
MASK34 = np.array([[True, False, True, True], [False, True, False, False], [True, True, True, True]])
NEG34 = np.where(MASK34, X34, -INF)


def _keep(out: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """Zero the (documented) -inf outputs so finite differences see only finite values."""
    return torch.where(torch.as_tensor(mask), out, 0.0)


MASKED_GRADCHECK: list[tuple[str, Callable[..., Any], np.ndarray]] = [
    ("logsumexp-where", lambda x: fg.logsumexp(x, axis=1, where=_t(MASK34)), X34),
    ("logsumexp-where-all", lambda x: fg.logsumexp(x, where=_t(MASK34)), X34),
    ("softmax-where", lambda x: fg.softmax(x, where=_t(MASK34)), X34),
    ("log_softmax-where", lambda x: _keep(fg.log_softmax(x, where=_t(MASK34)), MASK34), X34),
    ("logsumexp-neginf", lambda x: fg.logsumexp(x, axis=1), NEG34),
    ("softmax-neginf", lambda x: fg.softmax(x), NEG34),
    ("log_softmax-neginf", lambda x: _keep(fg.log_softmax(x), MASK34), NEG34),
    ("logmeanexp-neginf", lambda x: fg.logmeanexp(x, axis=1), NEG34),
    ("logsumexp-b-neginf", lambda x: fg.logsumexp(x, axis=1, b=_t(np.abs(B34))), NEG34),
    ("log_matmul_exp-neginf", lambda a: fg.log_matmul_exp(a, _t(B52[:4])), NEG34),
    ("ce-neginf", lambda x: fg.cross_entropy(x, _t(np.array([0, 1, 2]))), NEG34),
]


@pytest.mark.parametrize(("fn", "x"), [c[1:] for c in MASKED_GRADCHECK], ids=[c[0] for c in MASKED_GRADCHECK])
def test_gradcheck_masked_and_neg_inf(fn: Callable[..., Any], x: np.ndarray) -> None:
    xt = leaf(x)
    assert gradcheck(fn, (xt,))
    out = first(fn(xt))
    out.backward(torch.ones_like(out) * torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape).double())
    assert xt.grad is not None
    g = xt.grad.numpy()
    assert not np.any(np.isnan(g))
    assert np.all(g[~MASK34] == 0.0), g  # masked and -inf entries take no part


def test_log_softmax_masked_entries_get_zero_gradient() -> None:
    x = leaf(X34)
    out = fg.log_softmax(x, where=torch.as_tensor(MASK34))
    out.backward(torch.where(torch.as_tensor(MASK34), 1.0, 0.7).double())
    assert x.grad is not None
    assert torch.all(x.grad[~torch.as_tensor(MASK34)] == 0.0)


DEAD_ROW = np.array([[-INF, -INF, -INF, -INF], [0.5, -1.0, 2.0, -INF]])
NONE_KEPT = np.array([[False, False, False, False], [True, True, False, True]])

DEAD_ROWS: list[tuple[str, Callable[..., Any], np.ndarray]] = [
    ("logsumexp", lambda x, c: fg.logsumexp(x, axis=1), DEAD_ROW),
    ("logsumexp-keepdims", lambda x, c: fg.logsumexp(x, axis=-1, keepdims=True), DEAD_ROW),
    ("logsumexp-b", lambda x, c: fg.logsumexp(x, axis=1, b=c(B34[:2])), DEAD_ROW),
    ("logsumexp-sign", lambda x, c: fg.logsumexp(x, axis=1, b=c(-B34[:2]), return_sign=True)[0], DEAD_ROW),
    ("softmax", lambda x, c: fg.softmax(x), DEAD_ROW),
    ("log_softmax", lambda x, c: fg.log_softmax(x), DEAD_ROW),
    ("logmeanexp", lambda x, c: fg.logmeanexp(x, axis=1), DEAD_ROW),
    ("logcumsumexp", lambda x, c: fg.logcumsumexp(x), DEAD_ROW),
    ("log_matmul_exp", lambda x, c: fg.log_matmul_exp(x, c(B52[:4])), DEAD_ROW),
    ("logsumexp-where", lambda x, c: fg.logsumexp(x, axis=1, where=c(NONE_KEPT)), X34[:2]),
    ("softmax-where", lambda x, c: fg.softmax(x, where=c(NONE_KEPT)), X34[:2]),
    ("log_softmax-where", lambda x, c: fg.log_softmax(x, where=c(NONE_KEPT)), X34[:2]),
]


def _torch_grad(fn: Callable[..., Any], arrays: list[np.ndarray], w_seed: int = 5) -> list[np.ndarray]:
    ts = [leaf(a) for a in arrays]
    out = first(fn(*ts, torch.as_tensor))
    w = torch.tensor(rng(w_seed).uniform(0.5, 1.5, size=tuple(out.shape)))
    out.backward(w)
    return [t.grad.numpy() if t.grad is not None else np.zeros_like(a) for t, a in zip(ts, arrays, strict=True)]


def _jax_grad(fn: Callable[..., Any], arrays: list[np.ndarray], w_seed: int = 5, jit: bool = True) -> list[np.ndarray]:
    """``jax.grad`` of ``sum(w * fn(...))``; under ``jax.jit`` unless ``jit=False`` (eager is slow to dispatch)."""
    args = [jnp.asarray(a, dtype=jnp.float64) for a in arrays]
    shape = jax.eval_shape(lambda *a: first(fn(*a, jnp.asarray)), *args).shape
    w = jnp.asarray(rng(w_seed).uniform(0.5, 1.5, size=shape))
    grad = jax.grad(lambda *a: jnp.sum(first(fn(*a, jnp.asarray)) * w), argnums=tuple(range(len(args))))
    return [np.asarray(g) for g in (jax.jit(grad) if jit else grad)(*args)]


EAGER = ["log_matmul_exp-adversarial"]  # eager JAX dispatch is slow: only where the op branches on the data


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize(("fn", "x"), [c[1:] for c in DEAD_ROWS], ids=[c[0] for c in DEAD_ROWS])
def test_rows_with_nothing_left_have_zero_gradient(fn: Callable[..., Any], x: np.ndarray, backend: str) -> None:
    g = (_torch_grad if backend == "torch" else _jax_grad)(fn, [x])[0]
    assert not np.any(np.isnan(g)), g
    assert np.all(g[0] == 0.0), g
    assert np.all(np.isfinite(g)), g


def test_logsumexp_neg_inf_entries_gradient_is_softmax_of_the_rest() -> None:
    g = _torch_grad(lambda x, c: fg.logsumexp(x, axis=1), [DEAD_ROW], w_seed=6)[0]
    w = rng(6).uniform(0.5, 1.5, size=2)
    np.testing.assert_array_equal(g[0], np.zeros(4))
    np.testing.assert_allclose(g[1, :3], w[1] * sps.softmax(DEAD_ROW[1, :3]), rtol=1e-14)
    assert g[1, 3] == 0.0


# --------------------------------------------------------------------------------------
# special points: finite gradients with the documented values, torch == jax
# --------------------------------------------------------------------------------------
TINY = np.finfo(np.float64).smallest_normal
EPS = np.finfo(np.float64).eps

# (name, fn(*arrays, const), inputs, expected gradients (None: only finite and torch == jax))
SPECIAL: list[tuple[str, Callable[..., Any], list[Any], list[Any] | None]] = [
    ("safe_log-0", lambda x, c: fg.safe_log(x), [np.array([0.0, 2.0])], [np.array([0.0, 0.5])]),
    ("safe_log-below-eps", lambda x, c: fg.safe_log(x), [np.array([TINY / 4, 1e-310])], [np.zeros(2)]),
    ("safe_log-custom-eps", lambda x, c: fg.safe_log(x, eps=1e-3), [np.array([0.0, 1e-4, 0.5])],
     [np.array([0.0, 0.0, 2.0])]),
    ("safe_div-0", lambda a, b, c: fg.safe_div(a, b), [np.array([1.0, -2.0]), np.array([0.0, 0.0])],
     [np.array([1 / EPS, 1 / EPS]), np.zeros(2)]),
    ("safe_div-tiny-neg", lambda a, b, c: fg.safe_div(a, b), [np.array([3.0]), np.array([-1e-300])],
     [np.array([-1 / EPS]), np.zeros(1)]),
    ("safe_div-regular", lambda a, b, c: fg.safe_div(a, b), [np.array([3.0]), np.array([-2.0])],
     [np.array([-0.5]), np.array([-0.75])]),
    ("safe_sqrt-0", lambda x, c: fg.safe_sqrt(x), [np.array([0.0, -1e-12, 4.0])], [np.array([0.0, 0.0, 0.25])]),
    ("safe_sqrt-tiny", lambda x, c: fg.safe_sqrt(x), [np.array([TINY])], [np.array([0.5 / math.sqrt(TINY)])]),
    ("xlogy-0-0", lambda x, y, c: fg.xlogy(x, y), [np.array([0.0]), np.array([0.0])], [np.zeros(1), np.zeros(1)]),
    ("xlogy-0-inf", lambda x, y, c: fg.xlogy(x, y), [np.array([0.0]), np.array([INF])], [np.zeros(1), np.zeros(1)]),
    ("xlog1py-0--1", lambda x, y, c: fg.xlog1py(x, y), [np.array([0.0]), np.array([-1.0])], [np.zeros(1), np.zeros(1)]),
    ("logaddexp--inf--inf", lambda a, b, c: fg.logaddexp(a, b), [np.array([-INF]), np.array([-INF])],
     [np.zeros(1), np.zeros(1)]),
    ("logaddexp-tie", lambda a, b, c: fg.logaddexp(a, b), [np.array([0.0, 3.0]), np.array([0.0, 3.0])],
     [np.full(2, 0.5), np.full(2, 0.5)]),
    ("logaddexp--inf-x", lambda a, b, c: fg.logaddexp(a, b), [np.array([-INF]), np.array([2.0])],
     [np.zeros(1), np.ones(1)]),
    ("logaddexp-inf-x", lambda a, b, c: fg.logaddexp(a, b), [np.array([INF]), np.array([2.0])],
     [np.ones(1), np.zeros(1)]),
    ("logsubexp-x--inf", lambda a, b, c: fg.logsubexp(a, b), [np.array([1.5]), np.array([-INF])],
     [np.ones(1), np.zeros(1)]),
    ("log1mexp--inf", lambda x, c: fg.log1mexp(x), [np.array([-INF, -800.0])], [np.zeros(2)]),
    ("log1mexp-branch", lambda x, c: fg.log1mexp(x), [np.array([-math.log(2.0)])], [np.array([-1.0])]),
    ("softplus-inf", lambda x, c: fg.softplus(x), [np.array([INF, -INF, 0.0])], [np.array([1.0, 0.0, 0.5])]),
    ("sigmoid-inf", lambda x, c: fg.sigmoid(x), [np.array([INF, -INF, 0.0])], [np.array([0.0, 0.0, 0.25])]),
    ("log_sigmoid-inf", lambda x, c: fg.log_sigmoid(x), [np.array([INF, -INF, 0.0])], [np.array([0.0, 1.0, 0.5])]),
    ("bce-inf-logits", lambda x, c: fg.binary_cross_entropy_with_logits(x, c(np.array([1.0, 0.0])), reduction="sum"),
     [np.array([INF, -INF])], [np.zeros(2)]),
    ("bce-targets-0-1", lambda x, y, c: fg.binary_cross_entropy_with_logits(x, y, reduction="sum"),
     [np.array([3.0, -2.0]), np.array([0.0, 1.0])], [sps.expit([3.0, -2.0]) - [0.0, 1.0], -np.array([3.0, -2.0])]),
    ("ce-probs-zero-target", lambda x, t, c: fg.cross_entropy(x, t, reduction="sum"),
     [np.array([[0.5, -1.0, 2.0]]), np.array([[0.0, 1.0, 0.0]])],
     [sps.softmax([0.5, -1.0, 2.0])[None] - [[0.0, 1.0, 0.0]], -sps.log_softmax([0.5, -1.0, 2.0])[None]]),
    ("ce-neginf-class", lambda x, c: fg.cross_entropy(x, c(np.array([0]))), [np.array([[0.0, -INF, 1.0]])],
     [sps.softmax([0.0, -INF, 1.0])[None] - [[1.0, 0.0, 0.0]]]),
    ("log_matmul_exp-adversarial", lambda a, b, c: fg.log_matmul_exp(a, b),
     [np.array([[0.0, -1000.0]]), np.array([[-1000.0], [0.0]])], [np.array([[0.5, 0.5]]), np.array([[0.5], [0.5]])]),
    ("logcumsumexp-leading-neginf", lambda x, c: fg.logcumsumexp(x), [np.array([-INF, -INF, 0.0, 1.0])], None),
    ("logsumexp-pos-inf", lambda x, c: fg.logsumexp(x), [np.array([INF, 1.0, 2.0])], None),
    ("softmax-pos-inf", lambda x, c: fg.softmax(x), [np.array([INF, 1.0, INF])], None),
]


@pytest.mark.parametrize(("fn", "inputs", "expected"), [c[1:] for c in SPECIAL], ids=[c[0] for c in SPECIAL])
def test_special_points_torch_and_jax(fn: Callable[..., Any], inputs: list[np.ndarray], expected: Any) -> None:
    tg = _torch_grad(fn, inputs)
    jg = _jax_grad(fn, inputs)
    for t, j in zip(tg, jg, strict=True):
        assert np.all(np.isfinite(t)), t
        assert np.all(np.isfinite(j)), j
        np.testing.assert_allclose(j, t, rtol=1e-12, atol=1e-300)
    if expected is None:
        return
    out_shape = tuple(first(fn(*[leaf(a) for a in inputs], torch.as_tensor)).shape)
    w = rng(5).uniform(0.5, 1.5, size=out_shape)
    for got, want in zip(tg, expected, strict=True):
        # unit-weight gradient times w; 1e-13 is |c| eps for the adversarial log_matmul_exp c = -1000 + log 2
        np.testing.assert_allclose(got, np.asarray(want) * w, rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    ("fn", "inputs"), [c[1:3] for c in SPECIAL if c[0] in EAGER], ids=[c[0] for c in SPECIAL if c[0] in EAGER]
)
def test_special_points_jax_eager(fn: Callable[..., Any], inputs: list[np.ndarray]) -> None:
    """Outside ``jit`` some ops branch on the data (log_matmul_exp's exact path): same gradients."""
    tg = _torch_grad(fn, inputs)
    jg = _jax_grad(fn, inputs, jit=False)
    for t, j in zip(tg, jg, strict=True):
        assert np.all(np.isfinite(t)), t
        assert np.all(np.isfinite(j)), j
        np.testing.assert_allclose(j, t, rtol=1e-12, atol=1e-300)


def test_logcumsumexp_gradient_is_finite_and_matches_brute_force() -> None:
    x = np.array([-INF, -INF, 0.0, 1.0, -INF, 2.0])
    g = _torch_grad(lambda v, c: fg.logcumsumexp(v), [x], w_seed=7)[0]
    assert not np.any(np.isnan(g)), g
    w = rng(7).uniform(0.5, 1.5, size=6)
    # d/dx_j sum_i w_i log sum_{k<=i} e^{x_k} = sum_{i>=j} w_i softmax(x[:i+1])_j (empty prefixes contribute 0)
    want = np.zeros(6)
    for i in range(2, 6):
        p = np.where(np.isneginf(x[: i + 1]), 0.0, np.exp(x[: i + 1] - sps.logsumexp(x[: i + 1])))
        want[: i + 1] += w[i] * p
    np.testing.assert_allclose(g[2:], want[2:], rtol=1e-14)
    assert g[4] == 0.0


# --------------------------------------------------------------------------------------
# known facts and closed forms
# --------------------------------------------------------------------------------------
def test_all_neg_inf_row_gradient_nan_in_torch_and_jax_zero_in_floatguard() -> None:
    row = np.full((1, 3), -INF)
    xt = leaf(row)
    torch.logsumexp(xt, dim=1).sum().backward()
    assert xt.grad is not None and torch.all(torch.isnan(xt.grad))  # the problem floatguard fixes
    jg = jax.grad(lambda v: jnp.sum(jax.nn.logsumexp(v, axis=1)))(jnp.asarray(row))
    assert np.all(np.isnan(np.asarray(jg)))
    xt = leaf(row)
    fg.logsumexp(xt, axis=1).sum().backward()
    assert xt.grad is not None and torch.equal(xt.grad, torch.zeros_like(xt))
    fj = jax.grad(lambda v: jnp.sum(fg.logsumexp(v, axis=1)))(jnp.asarray(row))
    np.testing.assert_array_equal(np.asarray(fj), np.zeros((1, 3)))


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_gradient_of_logsumexp_is_softmax(backend: str) -> None:
    x = rng(8).normal(size=(4, 7)) * 10
    g = (_torch_grad if backend == "torch" else _jax_grad)(lambda v, c: fg.logsumexp(v, axis=1), [x], w_seed=9)[0]
    w = rng(9).uniform(0.5, 1.5, size=4)
    np.testing.assert_allclose(g, w[:, None] * np.asarray(fg.softmax(x)), rtol=1e-14)
    np.testing.assert_allclose(g, w[:, None] * sps.softmax(x, axis=1), rtol=1e-13)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_gradient_of_softplus_is_sigmoid(backend: str) -> None:
    x = np.concatenate([rng(10).normal(size=50) * 20, [-800.0, -40.0, 0.0, 25.0, 40.0, 800.0]])
    g = (_torch_grad if backend == "torch" else _jax_grad)(lambda v, c: fg.softplus(v), [x], w_seed=11)[0]
    w = rng(11).uniform(0.5, 1.5, size=x.shape)
    np.testing.assert_allclose(g, w * sps.expit(x), rtol=1e-14)
    np.testing.assert_allclose(g / w, np.asarray(fg.sigmoid(x)), rtol=1e-15)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_bce_gradient_is_sigmoid_minus_target_over_n(backend: str) -> None:
    x = rng(12).normal(size=(5, 3)) * 6
    y = rng(13).uniform(size=(5, 3))
    y[0] = 0.0
    y[1] = 1.0
    if backend == "torch":
        xt = leaf(x)
        fg.binary_cross_entropy_with_logits(xt, torch.as_tensor(y)).backward()
        g = xt.grad.numpy()  # type: ignore[union-attr]
    else:
        grad = jax.jit(jax.grad(lambda v: fg.binary_cross_entropy_with_logits(v, jnp.asarray(y))))
        g = np.asarray(grad(jnp.asarray(x)))
    np.testing.assert_allclose(g, (sps.expit(x) - y) / x.size, rtol=1e-13, atol=1e-16 / x.size)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n(backend: str) -> None:
    x = rng(14).normal(size=(6, 5)) * 4
    t = rng(15).integers(0, 5, size=6)
    onehot = np.eye(5)[t]
    if backend == "torch":
        xt = leaf(x)
        fg.cross_entropy(xt, torch.as_tensor(t)).backward()
        g = xt.grad.numpy()  # type: ignore[union-attr]
    else:
        g = np.asarray(jax.jit(jax.grad(lambda v: fg.cross_entropy(v, jnp.asarray(t))))(jnp.asarray(x)))
    np.testing.assert_allclose(g, (sps.softmax(x, axis=1) - onehot) / 6, rtol=1e-13, atol=1e-17)
    # and equals PyTorch's own gradient on these moderate inputs
    xt = leaf(x)
    F.cross_entropy(xt, torch.as_tensor(t)).backward()
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-12, atol=1e-17)  # type: ignore[union-attr]


@pytest.mark.parametrize("scale", [1.0, 50.0, 400.0])
def test_log_matmul_exp_gradient_vs_brute_force(scale: float) -> None:
    g = rng(16)
    a, b = g.normal(size=(3, 4)) * scale, g.normal(size=(4, 2)) * scale
    w = torch.tensor(g.uniform(0.5, 1.5, size=(3, 2)))
    at, bt = leaf(a), leaf(b)
    (fg.log_matmul_exp(at, bt) * w).sum().backward()
    ar, br = leaf(a), leaf(b)
    (torch.logsumexp(ar[:, :, None] + br[None, :, :], dim=1) * w).sum().backward()
    # entries below 1e-15 of the largest may underflow differently (e^{a-alpha} e^{b-beta} vs e^{a+b-c})
    tiny = 1e-15 * float(w.abs().max())
    torch.testing.assert_close(at.grad, ar.grad, rtol=1e-12, atol=tiny)
    torch.testing.assert_close(bt.grad, br.grad, rtol=1e-12, atol=tiny)
    ja, jb = jax.jit(jax.grad(lambda p, q: jnp.sum(fg.log_matmul_exp(p, q) * jnp.asarray(w.numpy())), argnums=(0, 1)))(
        jnp.asarray(a), jnp.asarray(b)
    )
    np.testing.assert_allclose(np.asarray(ja), ar.grad.numpy(), rtol=1e-12, atol=tiny)  # type: ignore[union-attr]
    np.testing.assert_allclose(np.asarray(jb), br.grad.numpy(), rtol=1e-12, atol=tiny)  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------
# torch vs jax on random inputs for every op
# --------------------------------------------------------------------------------------
BACKEND_FREE: list[tuple[str, Callable[..., Any], list[np.ndarray]]] = [
    ("logsumexp", lambda x, c: fg.logsumexp(x, axis=1), [X34]),
    ("logsumexp-b", lambda x, c: fg.logsumexp(x, axis=1, b=c(B34)), [X34]),
    ("logsumexp-where", lambda x, c: fg.logsumexp(x, axis=1, where=c(MASK34)), [X34]),
    ("softmax", lambda x, c: fg.softmax(x, axis=0), [X34]),
    ("softmax-where", lambda x, c: fg.softmax(x, where=c(MASK34)), [X34]),
    ("log_softmax", lambda x, c: fg.log_softmax(x), [X34]),
    ("logmeanexp", lambda x, c: fg.logmeanexp(x, axis=(0, 1)), [X34]),
    ("logcumsumexp", lambda x, c: fg.logcumsumexp(x, axis=1), [X34]),
    ("logaddexp", lambda a, b, c: fg.logaddexp(a, b), [X34, Y34]),
    ("logsubexp", lambda a, b, c: fg.logsubexp(a, b), [Y34 + POS34, Y34]),
    ("log1mexp", lambda x, c: fg.log1mexp(x), [np.concatenate([NEAR0, FAR])]),
    ("softplus", lambda x, c: fg.softplus(x), [X34 * 10]),
    ("softplus_inverse", lambda x, c: fg.softplus_inverse(x), [POS34]),
    ("sigmoid", lambda x, c: fg.sigmoid(x), [X34 * 10]),
    ("log_sigmoid", lambda x, c: fg.log_sigmoid(x), [X34 * 10]),
    ("xlogy", lambda x, y, c: fg.xlogy(x, y), [X34, POS34]),
    ("xlog1py", lambda x, y, c: fg.xlog1py(x, y), [X34, PROB34 - 0.5]),
    ("bce", lambda x, y, w, p, c: fg.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=p),
     [X34, PROB34, POS34, POS34[0]]),
    ("ce", lambda x, c: fg.cross_entropy(x, c(TARGET3), label_smoothing=0.1), [X34]),
    ("ce-probs", lambda x, t, c: fg.cross_entropy(x, t, reduction="sum"), [X34, SOFT34]),
    ("ce-ignore", lambda x, c: fg.cross_entropy(x, c(np.array([2, -1, 0])), ignore_index=-1), [X34]),
    ("log_matmul_exp", lambda a, b, c: fg.log_matmul_exp(a, b), [A235, B252]),
    ("log_matmul_exp-wide", lambda a, b, c: fg.log_matmul_exp(a, b), [AWIDE, BWIDE]),
    ("log_prod", lambda p, c: fg.log_prod(p, axis=0), [PROB34]),
    ("safe_log", lambda x, c: fg.safe_log(x), [np.concatenate([POS34, np.zeros((1, 4))])]),
    ("safe_div", lambda a, b, c: fg.safe_div(a, b), [X34, np.where(MASK34, Y34, 0.0)]),
    ("safe_sqrt", lambda x, c: fg.safe_sqrt(x), [np.where(MASK34, POS34, 0.0)]),
]


@pytest.mark.parametrize(("fn", "inputs"), [c[1:] for c in BACKEND_FREE], ids=[c[0] for c in BACKEND_FREE])
def test_jax_gradients_match_torch(fn: Callable[..., Any], inputs: list[np.ndarray]) -> None:
    tg = _torch_grad(fn, inputs)
    jg = _jax_grad(fn, inputs)
    for t, j in zip(tg, jg, strict=True):
        assert np.all(np.isfinite(t)) and np.all(np.isfinite(j))
        np.testing.assert_allclose(j, t, rtol=1e-12, atol=1e-15 * float(np.max(np.abs(t), initial=1.0)))


@pytest.mark.parametrize(
    ("fn", "inputs"),
    [c[1:] for c in BACKEND_FREE if c[0] == "log_matmul_exp-wide"]
    + [(c[1], [DEAD_ROW]) for c in DEAD_ROWS if c[0] == "log_matmul_exp"],
    ids=["log_matmul_exp-wide", "log_matmul_exp-dead-row"],
)
def test_log_matmul_exp_jax_eager_gradients_match_torch(fn: Callable[..., Any], inputs: list[np.ndarray]) -> None:
    """Eager JAX takes log_matmul_exp's data-dependent exact path (jit blends it in): same gradients."""
    tg = _torch_grad(fn, inputs)
    for t, j in zip(tg, _jax_grad(fn, inputs, jit=False), strict=True):
        assert np.all(np.isfinite(j))
        np.testing.assert_allclose(j, t, rtol=1e-12, atol=1e-15 * float(np.max(np.abs(t), initial=1.0)))


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_zero_logits_have_the_textbook_gradient(backend: str) -> None:
    """Logits exactly 0 (a zero-initialised head): softplus' = sigmoid(0) = 1/2, BCE' = (1/2 - y)/N, and so on."""
    y = np.array([1.0, 0.0, 0.3, 0.5])
    cases: list[tuple[Callable[..., Any], np.ndarray]] = [
        (lambda x, c: fg.binary_cross_entropy_with_logits(x, c(y)), (0.5 - y) / 4),
        (lambda x, c: fg.softplus(x), np.full(4, 0.5)),
        (lambda x, c: fg.log_sigmoid(x), np.full(4, 0.5)),
        (lambda x, c: fg.logaddexp(x, c(np.zeros(4))), np.full(4, 0.5)),
        (lambda x, c: fg.cross_entropy(x[None], c(np.array([1]))), np.array([0.25, -0.75, 0.25, 0.25])),
    ]
    for fn, want in cases:
        grad = (_torch_grad if backend == "torch" else _jax_grad)(fn, [np.zeros(4)], w_seed=0)[0]
        out_shape = tuple(first(fn(leaf(np.zeros(4)), torch.as_tensor)).shape)
        w = rng(0).uniform(0.5, 1.5, size=out_shape)
        np.testing.assert_allclose(grad, want * w, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------------------
# fully masked attention
# --------------------------------------------------------------------------------------
def test_fully_masked_attention_row() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 8, dtype=torch.float64, generator=g)
    k = torch.randn(1, 5, 8, dtype=torch.float64, generator=g)
    v = torch.randn(1, 5, 8, dtype=torch.float64, generator=g)
    mask = torch.rand(4, 5, generator=g) < 0.7
    mask[:, 0] = True
    mask[2] = False  # query 2 may attend to nothing (a padding query)

    qf, kf, vf = (t.clone().requires_grad_() for t in (q, k, v))
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(8)
    p = fg.softmax(scores, where=mask)
    out = p @ vf
    assert torch.equal(p[0, 2], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(out[0, 2], torch.zeros(8, dtype=torch.float64))
    assert not torch.any(torch.isnan(out))
    out.backward(torch.randn(out.shape, dtype=torch.float64, generator=g))
    for t in (qf, kf, vf):
        assert t.grad is not None and not torch.any(torch.isnan(t.grad))
    assert torch.equal(qf.grad[0, 2], torch.zeros(8, dtype=torch.float64))  # type: ignore[index]
    # the other rows are ordinary masked attention
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    keep = torch.tensor([0, 1, 3])
    torch.testing.assert_close(out[0, keep].detach(), ref[0, keep], rtol=1e-12, atol=1e-14)

    # naive masking with -inf gives NaN for the row (and NaN gradients)
    naive = torch.softmax(scores.detach().masked_fill(~mask, -INF), dim=-1)
    assert torch.all(torch.isnan(naive[0, 2])) and not torch.any(torch.isnan(naive[0, keep]))
    # PyTorch 2.13's scaled_dot_product_attention (math kernel on CPU) returns zeros for that row
    assert torch.equal(ref[0, 2], torch.zeros(8, dtype=torch.float64))

    # JAX: the same zeros and finite gradients
    def attn(qj: Any) -> Any:
        s = qj @ jnp.asarray(k.numpy()).swapaxes(-1, -2) / math.sqrt(8)
        return jnp.sum(fg.softmax(s, where=jnp.asarray(mask.numpy())) @ jnp.asarray(v.numpy()))

    gq = np.asarray(jax.grad(attn)(jnp.asarray(q.numpy())))
    assert np.all(np.isfinite(gq)) and np.all(gq[0, 2] == 0.0)
