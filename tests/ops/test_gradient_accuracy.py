"""Gradient accuracy in ulps against the mpmath VJPs of :mod:`floatguard.testing.gradients`.

floatguard's gradients (torch float32/bfloat16/float64, JAX float32 and float64 under x64) of
``sum(w * f(x))`` on a quick subset of ``benchmarks/gradient_accuracy.py``'s cases, within
``2 ulp * max(1, kappa)`` in every dtype, kappa the condition number of the gradient entry including
the cancellation of the backward formula on the forward's rounded output (the dominant entry of a
softmax row, the target of a confident cross-entropy): there no implementation reaches 2 ulp
componentwise (see the benchmark's docstring). In the JAX checks an exact float32 subnormal that came
out within the smallest normal counts as exact (XLA on CPU flushes subnormals).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import floatguard as fg
from floatguard import testing as fgt

jax.config.update("jax_enable_x64", True)

_g = np.random.default_rng(3)
SPREAD = _g.uniform(-100, 100, 40)
NORMAL = _g.standard_normal(30)
OFFSET = 1000 + _g.standard_normal(20)
WITH_INF = np.array([-np.inf, 0.5, -np.inf, 2.0])
DOMINANT = np.array([0.0] + [-30.0] * 20)
GRID = np.linspace(-50, 50, 41)
NEAR0 = -np.logspace(-12, np.log10(0.69), 25)  # log1mexp's expm1 branch
FAR = np.linspace(-50, -0.7, 25)

ROWS = [SPREAD, NORMAL, OFFSET, WITH_INF]

# cross-entropy with weight, label smoothing, probability targets: four rows of 21 (the dominant row with the
# most and the least likely class as target), class weights in [0.5, 2], probability targets random and peaked
_c = np.random.default_rng(17)
CE_X = np.stack([SPREAD[:21], NORMAL[:21], DOMINANT, DOMINANT])
CE_T = np.array([3, 7, 0, 5])
CE_W = _c.uniform(0.5, 2.0, 21)
CE_P = np.stack([_c.dirichlet(np.ones(21)), np.eye(21)[5] * 0.75 + np.eye(21)[0] * 0.25,
                 np.eye(21)[0] * 0.875 + 1 / 168, np.eye(21)[5] * 0.875 + 1 / 168])

CE_ARGS: list[tuple[str, dict[str, Any], list[np.ndarray]]] = [  # (name, keywords, inputs: x, target[, weight])
    ("weight", {}, [CE_X, CE_T, CE_W]),
    ("smoothing", {"label_smoothing": 0.1}, [CE_X, CE_T]),
    ("weight-smoothing-sum", {"label_smoothing": 0.1, "reduction": "sum"}, [CE_X, CE_T, CE_W]),
    ("probabilities", {}, [CE_X, CE_P]),
    ("probabilities-weight-smoothing", {"label_smoothing": 0.1}, [CE_X, CE_P, CE_W]),
]


def _ce(**kw: Any) -> Callable[..., Any]:
    """floatguard's cross-entropy with the keywords ``kw`` of ``(x, target[, weight])``."""
    return lambda x, t, w=None: fg.cross_entropy(x, t, weight=w, **kw)


def _ce_kw(a: list[np.ndarray], kw: dict[str, Any]) -> dict[str, Any]:
    return {"weight": a[2] if len(a) > 2 else None, **kw}


Case = tuple[str, Callable[..., Any], Callable[..., Any], Callable[..., Any], list[np.ndarray], bool]
# (name, floatguard op, reference(inputs, w) -> list, cond(inputs, w) -> list, inputs, loss)
CASES: list[Case] = [
    *[(f"logsumexp-{i}", lambda x: fg.logsumexp(x, axis=-1), lambda a, w: [fgt.grad_logsumexp(a[0], w)],
       lambda a, w: [fgt.cond_grad_logsumexp(a[0])], [r], False) for i, r in enumerate(ROWS)],
    *[(f"softmax-{i}", lambda x: fg.softmax(x, axis=-1), lambda a, w: [fgt.grad_softmax(a[0], w)],
       lambda a, w: [fgt.cond_grad_softmax(a[0], w)], [r], False) for i, r in enumerate(ROWS)],
    *[(f"log_softmax-{i}", lambda x: fg.log_softmax(x, axis=-1), lambda a, w: [fgt.grad_log_softmax(a[0], w)],
       lambda a, w: [fgt.cond_grad_log_softmax(a[0], w)], [r], False) for i, r in enumerate([*ROWS, DOMINANT])],
    ("cross_entropy", fg.cross_entropy, lambda a, w: [fgt.grad_cross_entropy(*a)],
     lambda a, w: [fgt.cond_grad_cross_entropy(*a)], [np.stack([SPREAD[:20], NORMAL[:20]]), np.array([3, 7])], True),
    *[(f"cross_entropy-{name}", _ce(**kw), lambda a, w, kw=kw: [fgt.grad_cross_entropy(a[0], a[1], **_ce_kw(a, kw))],
       lambda a, w, kw=kw: [fgt.cond_grad_cross_entropy(a[0], a[1], **_ce_kw(a, kw))], inputs, True)
      for name, kw, inputs in CE_ARGS],
    ("softplus", fg.softplus, lambda a, w: [fgt.grad_softplus(a[0], w)],
     lambda a, w: [fgt.cond_grad_softplus(a[0])], [GRID], False),
    ("log_sigmoid", fg.log_sigmoid, lambda a, w: [fgt.grad_log_sigmoid(a[0], w)],
     lambda a, w: [fgt.cond_grad_log_sigmoid(a[0])], [GRID], False),
    ("sigmoid", fg.sigmoid, lambda a, w: [fgt.grad_sigmoid(a[0], w)],
     lambda a, w: [fgt.cond_grad_sigmoid(a[0])], [GRID], False),
    ("logaddexp", fg.logaddexp, lambda a, w: list(fgt.grad_logaddexp(a[0], a[1], w)),
     lambda a, w: list(fgt.cond_grad_logaddexp(a[0], a[1])),
     [np.concatenate([GRID, [-np.inf, 1.0]]), np.concatenate([GRID[::-1] * 0.7 - 3, [-np.inf, -np.inf]])], False),
    ("bce", fg.binary_cross_entropy_with_logits, lambda a, w: [fgt.grad_bce_with_logits(*a)],
     lambda a, w: [fgt.cond_grad_bce_with_logits(*a)], [np.tile(GRID[::2], 3), np.repeat([0.0, 0.3, 1.0], 21)], True),
    ("log1mexp", fg.log1mexp, lambda a, w: [fgt.grad_log1mexp(a[0], w)],
     lambda a, w: [fgt.cond_grad_log1mexp(a[0])], [np.concatenate([FAR, [-np.inf]])], False),
]
# log1mexp near 0 (its expm1 branch), a separate case: once 30% off under jax.jit (XLA folded the
# log(exp(x)) of the Kahan expm1), checked for both frameworks below.
NEAR0_CASE = ("log1mexp-near0", fg.log1mexp, lambda a, w: [fgt.grad_log1mexp(a[0], w)],
              lambda a, w: [fgt.cond_grad_log1mexp(a[0])], [NEAR0], False)

CASE_IDS = [c[0] for c in CASES]


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    if a.dtype.kind != "f":
        return a
    return torch.from_numpy(np.ascontiguousarray(a)).to(getattr(torch, dtype)).double().numpy().reshape(a.shape)


def _setup(case: Case, dtype: str) -> tuple[list[np.ndarray], Any, list[np.ndarray], list[np.ndarray]]:
    name, _, ref, cond, raw, loss = case
    inputs = [_round(a, dtype) for a in raw]
    w = None
    if not loss:
        shape = () if name.startswith("logsumexp") else np.broadcast_shapes(*(a.shape for a in inputs))
        w = _round(np.asarray(np.random.default_rng(5).uniform(0.5, 1.5, shape)), dtype)
    exact = ref(inputs, w)
    kappa = [np.broadcast_to(np.asarray(k, dtype=np.float64), e.shape) for k, e in zip(cond(inputs, w), exact,
                                                                                         strict=True)]
    return inputs, w, exact, kappa


def _n_diff(case: Case) -> int:
    return 2 if case[0] == "logaddexp" else 1


def _torch_grads(case: Case, inputs: list[np.ndarray], w: Any, dtype: str) -> list[np.ndarray]:
    tdt = getattr(torch, dtype)
    n = _n_diff(case)
    args = [torch.tensor(a, dtype=tdt, requires_grad=i < n) if a.dtype.kind == "f" else torch.as_tensor(a)
            for i, a in enumerate(inputs)]
    out = case[1](*args)
    (out if w is None else (torch.tensor(w, dtype=tdt) * out).sum()).backward()
    return [fgt.to_float64(a.grad) for a in args[:n]]


def _jax_grads(case: Case, inputs: list[np.ndarray], w: Any, dtype: str) -> list[np.ndarray]:
    n = _n_diff(case)
    args = [jnp.asarray(a, dtype=dtype) if a.dtype.kind == "f" else jnp.asarray(a) for a in inputs]
    wj = None if w is None else jnp.asarray(w, dtype=dtype)

    def scalar(*diff: Any) -> Any:
        out = case[1](*diff, *args[n:])
        return out if wj is None else jnp.sum(wj * out)

    grads = jax.jit(jax.grad(scalar, argnums=tuple(range(n))))(*args[:n])
    assert all(g.dtype == jnp.dtype(dtype) for g in grads)
    return [np.asarray(g).astype(np.float64) for g in grads]


def worst(got: list[np.ndarray], exact: list[np.ndarray], kappa: list[np.ndarray], dtype: str,
          ftz: bool = False) -> float:
    """The largest ``err / max(1, kappa)`` in ulps (the bound of benchmarks/gradient_accuracy.py: 2 in every
    dtype). ``ftz``: XLA on CPU flushes float32 subnormals, so an exact subnormal that came out within the smallest
    normal counts as exact."""
    out = 0.0
    for g, e, k in zip(got, exact, kappa, strict=True):
        per = fgt.grad_ulp_error(g, e, k, dtype, ftz)[1]
        out = max(out, float(per.max(initial=0.0)))
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_gradient_within_bound(case: Case, dtype: str) -> None:
    inputs, w, exact, kappa = _setup(case, dtype)
    assert worst(_torch_grads(case, inputs, w, dtype), exact, kappa, dtype) <= 2.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jax_gradient_within_bound(case: Case, dtype: str) -> None:
    inputs, w, exact, kappa = _setup(case, dtype)
    assert worst(_jax_grads(case, inputs, w, dtype), exact, kappa, dtype, ftz=True) <= 2.0


# JAX's default float32 work (no x64) runs the one-pass path in float32 arithmetic throughout. Its
# softmax tangent scales exp(x - max) by 1 / (1 + s) from the forward (it was exp(-log1p(s)), two
# roundings more): on 208 random rows of 100 the worst err / kappa went from 3.06 to 2.85 (3 rows of 208
# above 2, was 6). The bound of 2 ulp x kappa is not met there in general: float32 p and the float32
# sum of the backward carry about 1.5 ulp each (see the note of issue 10); the test holds it to 3, and
# to 2 the ops whose gradients keep it. Rows 112 and 141 were at 3.04 and 3.06.
NORMAL100 = [np.random.default_rng(k).standard_normal(100) for k in (*range(20, 28), 112, 141)]
ROW_OPS = {c[0].split("-")[0]: c for c in CASES if c[0].endswith("-0")}


@pytest.mark.parametrize(("op", "bound"), [("logsumexp", 2.0), ("softmax", 3.0), ("log_softmax", 2.0)])
def test_jax_float32_row_gradients_without_x64(op: str, bound: float) -> None:
    name, f, ref, cond, _, loss = ROW_OPS[op]
    for i, row in enumerate([*NORMAL100, DOMINANT, SPREAD, WITH_INF]):
        case = (f"{name}-{i}", f, ref, cond, [row], loss)
        inputs, w, exact, kappa = _setup(case, "float32")
        with jax.enable_x64(False):
            got = _jax_grads(case, inputs, w, "float32")
        assert worst(got, exact, kappa, "float32", ftz=True) <= bound, (op, i)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_torch_log1mexp_gradient_near_zero(dtype: str) -> None:
    inputs, w, exact, kappa = _setup(NEAR0_CASE, dtype)
    assert worst(_torch_grads(NEAR0_CASE, inputs, w, dtype), exact, kappa, dtype) <= 2.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jax_log1mexp_near_zero_under_jit(dtype: str) -> None:
    """log1mexp near 0 under jax.jit, value and gradient: the Kahan expm1 keeps its correction (XLA once folded
    its log(exp(x)) to x there: the gradient 30% off at -1.5e-16)."""
    inputs, w, exact, kappa = _setup(NEAR0_CASE, dtype)
    assert worst(_jax_grads(NEAR0_CASE, inputs, w, dtype), exact, kappa, dtype, ftz=True) <= 2.0
    x = jnp.asarray(inputs[0], dtype=dtype)
    jitted, eager = np.asarray(jax.jit(fg.log1mexp)(x)), np.asarray(fg.log1mexp(x))
    assert np.array_equal(jitted, eager)


def test_dominant_softmax_entry_is_within_kappa_in_float64() -> None:
    """The softmax gradient at a dominant entry cancels: far from 2 ulp, within 2 ulp * kappa."""
    case = next(c for c in CASES if c[0] == "softmax-0")
    dom: Case = (case[0], case[1], case[2], case[3], [DOMINANT], False)
    inputs, w, exact, kappa = _setup(dom, "float64")
    got = _torch_grads(dom, inputs, w, "float64")
    raw = fgt.ulp_error(got[0], exact[0], "float64")
    assert np.max(raw) > 1e6  # the cancellation is real ...
    assert worst(got, exact, kappa, "float64") <= 2.0  # ... and kappa accounts for it


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["softmax-1", "sigmoid", "logaddexp", "log1mexp"])
def test_perturbed_gradient_fails_the_check(name: str, dtype: str) -> None:
    """The checker can fail: the exact gradient passes, the same times ``1 + 4 eps`` does not."""
    case = next(c for c in CASES if c[0] == name)
    _, _, exact, kappa = _setup(case, dtype)
    rounded = [np.array([float(v) for v in e.ravel()], dtype=dtype).astype(np.float64).reshape(e.shape)
               for e in exact]
    assert worst(rounded, exact, kappa, dtype) <= 0.5
    eps = float(np.finfo(dtype).eps)
    # scaled by kappa too, so even the loosest entry falls outside its bound
    bumped = [r * (1 + 4 * eps * np.fmax(1.0, k)) for r, k in zip(rounded, kappa, strict=True)]
    assert worst(bumped, exact, kappa, dtype) > 2.0


def test_reference_matches_closed_forms() -> None:
    """The references agree with float64 closed forms where those are accurate."""
    x = np.array([-3.0, 0.5, 2.0])
    w = np.array([0.7, 1.1, 1.4])
    p = np.exp(x - np.log(np.sum(np.exp(x))))
    np.testing.assert_allclose(np.array(fgt.grad_softmax(x, w), dtype=float), p * (w - w @ p), rtol=1e-14)
    np.testing.assert_allclose(np.array(fgt.grad_log_softmax(x, w), dtype=float), w - p * w.sum(), rtol=1e-14)
    np.testing.assert_allclose(np.array(fgt.grad_logsumexp(x, 0.5), dtype=float), 0.5 * p, rtol=1e-14)
    ce = np.array(fgt.grad_cross_entropy(np.stack([x, x]), np.array([0, 2])), dtype=float)
    np.testing.assert_allclose(ce, (np.stack([p, p]) - np.eye(3)[[0, 2]]) / 2, rtol=1e-14)
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(np.array(fgt.grad_sigmoid(x, w), dtype=float), w * s * (1 - s), rtol=1e-14)
    ga, gb = fgt.grad_logaddexp(x, x[::-1], w)
    np.testing.assert_allclose(np.array(ga, dtype=float) + np.array(gb, dtype=float), w, rtol=1e-15)
    assert [float(v) for v in fgt.grad_logaddexp(np.array([-np.inf]), np.array([-np.inf]), np.ones(1))[0]] == [0.0]
    np.testing.assert_allclose(np.array(fgt.grad_log1mexp(-x[1:] - 1, w[1:]), dtype=float),
                               -w[1:] / np.expm1(x[1:] + 1), rtol=1e-14)


CE_CASES = [c for c in CASES if c[0].startswith("cross_entropy-")]


@pytest.mark.parametrize(("name", "kw", "inputs"), CE_ARGS, ids=[a[0] for a in CE_ARGS])
def test_cross_entropy_reference_matches_torch_float64(name: str, kw: dict[str, Any], inputs: list[np.ndarray]) -> None:
    """The mpmath cross-entropy gradients (weight, smoothing, probabilities, reductions) agree with torch's float64
    autograd to 1e-10 on random well-conditioned rows (the reference is the truth; this checks the semantics)."""
    del name
    rng = np.random.default_rng(23)
    n, c = 4, 9
    for _ in range(3):
        x = rng.standard_normal((n, c)) * 3
        t = rng.dirichlet(np.ones(c), n) if inputs[1].ndim == 2 else rng.integers(0, c, n)
        w = rng.uniform(0.5, 2.0, c) if len(inputs) > 2 else None
        xt = torch.tensor(x, requires_grad=True)
        F.cross_entropy(xt, torch.as_tensor(t), weight=None if w is None else torch.tensor(w), **kw).backward()
        ref = np.array(fgt.grad_cross_entropy(x, t, weight=w, **kw), dtype=np.float64)
        np.testing.assert_allclose(fgt.to_float64(xt.grad), ref, rtol=1e-10, atol=0)


def test_cross_entropy_reference_arguments() -> None:
    """The extended references keep the plain one (class indices, mean) and name the bad argument."""
    x, t = CE_X, CE_T
    plain = np.array(fgt.grad_cross_entropy(x, t), dtype=np.float64)
    ones = np.array(fgt.grad_cross_entropy(x, t, weight=np.ones(21), label_smoothing=0.0), dtype=np.float64)
    np.testing.assert_array_equal(plain, ones)  # sum of unit weights = N
    onehot = np.array(fgt.grad_cross_entropy(x, np.eye(21)[t]), dtype=np.float64)  # probabilities, one-hot
    np.testing.assert_allclose(onehot, plain, rtol=1e-15)
    summed = np.array(fgt.grad_cross_entropy(x, t, reduction="sum"), dtype=np.float64)
    np.testing.assert_allclose(summed, 4 * plain, rtol=1e-15)
    np.testing.assert_array_equal(fgt.cond_grad_cross_entropy(x, t), fgt.cond_grad_cross_entropy(x, t, weight=None))
    for kwargs, word in [({"target": t[:2]}, "target"), ({"target": np.ones((4, 20))}, "target"),
                         ({"weight": np.ones(20)}, "weight"), ({"label_smoothing": 1.5}, "label_smoothing"),
                         ({"reduction": "none"}, "reduction"), ({"target": np.array([0, 1, 2, 21])}, "target")]:
        args = {"target": t, **kwargs}
        for f in (fgt.grad_cross_entropy, fgt.cond_grad_cross_entropy):
            with pytest.raises(ValueError, match=word):
                f(x, **args)


@pytest.mark.parametrize("case", CE_CASES, ids=[c[0] for c in CE_CASES])
def test_jax_float32_cross_entropy_gradients_without_x64(case: Case) -> None:
    inputs, w, exact, kappa = _setup(case, "float32")
    with jax.enable_x64(False):
        got = _jax_grads(case, inputs, w, "float32")
    assert worst(got, exact, kappa, "float32", ftz=True) <= 2.0
