"""A NaN in a row of logits: NaN in every gradient entry of that row, on every route.

PyTorch and ``jax.nn`` give a row holding a NaN a NaN gradient; a gradient of 0 there hides the NaN from
what watches the gradients (a gradient scaler, ``clip_grad_norm_(error_if_nonfinite=True)``), which then sees
finite gradients beside a NaN loss. Checked for ``softmax``, ``log_softmax``, ``logsumexp`` and
``cross_entropy`` (rows on the last axis and on a middle axis, every loss feature and reduction) and for
``logaddexp``, on each route a call can take: the numba kernels (one thread, and split over two threads for
large calls), the torch ops without the kernels, the torch-op composition of tensors off the CPU (forced on the
CPU), ``torch.func`` (the generic array-API path), ``torch.compile``, double backward, and JAX with and without
``jax_enable_x64``. What does not change is checked beside it:

- a row whose max is ``+inf``, and a row of ``-inf``, keep gradient exactly 0 (their values are limits);
- a cross-entropy row whose target is ``ignore_index`` keeps gradient 0, NaN or not;
- every other row's gradient is finite and has the bits of the same call with the NaN entry replaced by 0
  (rows are independent; the mean divides by a count of rows or a sum of target weights, which a NaN leaves
  unchanged).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import floatguard as fg
from floatguard.ops import _namespace, _numba_losses, _torch_rows, _torch_softmax, losses

INF = math.inf
NAN = math.nan
IGNORE = -100
DTYPES = [torch.float32, torch.bfloat16, torch.float64]
SOFTMAX_OPS = ["softmax", "log_softmax", "logsumexp"]
SMALL, LARGE = (8, 10), (80, 1000)  # LARGE: 80,000 entries, at least PARALLEL_MIN: split over the threads
FACTORS = {8: (2, 2, 2), 80: (5, 4, 4)}  # rows as (N, H, W) for the class axis in the middle: (N, C, H, W)
# the rows of each size that hold a NaN, a +inf (the row [1, +inf, 2, ...]), only -inf, and a NaN with an
# ignored target (the last: rows like any other NaN row for the ops without targets and for probabilities)
SPECIAL = {
    8: ([1, 3], [2], [4], [6]),
    80: ([1, 40, 79], [2, 41], [4, 43], [7, 60]),
}
# cross_entropy's features: keyword arguments, "weight" standing for the class weights, "probs" for targets that
# are class probabilities (no ignore_index then)
CE_FEATURES: dict[str, dict[str, Any]] = {
    "plain": {},
    "weight": {"weight": True},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-3},
    "softcap": {"softcap": 5.0},
    "all": {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0},
    "probs": {"probs": True},
    "probs-weight-smoothing": {"probs": True, "weight": True, "label_smoothing": 0.2},
}
# how the upstream gradient reaches the op: reduction, and a factor on the loss before backward
UPSTREAMS = {"mean": ("mean", 1.0), "sum": ("sum", 1.0), "none": ("none", 1.0), "mean*1.5": ("mean", 1.5)}


@dataclass(frozen=True)
class Rows:
    """Logits ``(R, C)`` in float64 with special rows, their targets and upstream gradients."""

    x: np.ndarray
    target: np.ndarray  # (R,) int64 class indices, IGNORE in the ignored rows
    probs: np.ndarray  # (R, C) class probabilities
    weight: np.ndarray  # (C,) class weights
    g_rows: np.ndarray  # (R,) positive upstream gradient of one value per row
    g_full: np.ndarray  # (R, C) upstream gradient of one value per entry
    nan: list[int]
    inf: list[int]
    ninf: list[int]
    ignored: list[int]


@functools.cache
def _rows(r: int, c: int) -> Rows:
    rng = np.random.default_rng(1000 * r + c)
    x = rng.normal(size=(r, c)) * 3
    target = rng.integers(0, c, r)
    nan, inf, ninf, ignored = SPECIAL[r]
    for i, row in enumerate(nan):  # the NaN on the target class, and off it
        x[row, (target[row] + i % 2) % c] = NAN
    for i, row in enumerate(inf):  # target the +inf entry (a finite limit) or a finite one (+inf)
        x[row, :] = np.arange(1.0, c + 1.0)
        x[row, 1] = INF
        target[row] = 1 if i % 2 else 0
    for row in ninf:
        x[row, :] = -INF
    for row in ignored:
        x[row, c // 2] = NAN
        target[row] = IGNORE
    e = np.exp(rng.normal(size=(r, c)))
    return Rows(x=x, target=target, probs=e / e.sum(axis=1, keepdims=True), weight=rng.uniform(0.5, 2.0, c),
                g_rows=rng.uniform(0.5, 1.5, r), g_full=rng.uniform(-1.5, 1.5, (r, c)), nan=list(nan), inf=list(inf),
                ninf=list(ninf), ignored=list(ignored))


def _without_nan(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its NaN entries replaced by 0.0: the reference call for the other rows."""
    return torch.where(x.isnan(), torch.zeros_like(x), x)


def _arrange(a: torch.Tensor, middle: bool) -> torch.Tensor:
    """Rows ``(R, C)`` (or one value per row, ``(R,)``) as the op takes them: as they are, or with the class axis
    in the middle, ``(N, C, H, W)`` (``(N, H, W)``) with ``N H W = R``, contiguous."""
    if not middle:
        return a
    n, h, w = FACTORS[a.shape[0]]
    if a.ndim == 1:
        return a.reshape(n, h, w)
    return a.reshape(n, h, w, a.shape[1]).permute(0, 3, 1, 2).contiguous()


def _as_rows(a: torch.Tensor, middle: bool) -> torch.Tensor:
    """The inverse of :func:`_arrange`: rows ``(R, C)``, or ``(R,)`` for one value per row."""
    if not middle:
        return a
    if a.ndim == 3:
        return a.reshape(-1)
    return a.permute(0, 2, 3, 1).reshape(-1, a.shape[1])


@contextlib.contextmanager
def _threads(k: int) -> Iterator[None]:
    """torch's thread count set to ``k`` for the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _route(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send the calls down a route: ``kernels`` (the numba kernels, asserted present), ``torch-ops`` (the
    kernels switched off as ``test_torch_kernels`` and ``test_losses_fused`` switch them off: the softmax family's
    torch-op sweep, cross_entropy's array-API path) or ``device`` (the torch-op composition of tensors off the CPU,
    forced on the CPU as ``test_device_path`` forces it)."""
    if name == "kernels":
        assert _numba_losses.AVAILABLE, "numba (the `fast` extra) is needed for the kernels' route"
    elif name == "torch-ops":
        monkeypatch.setattr(_torch_softmax, "_kern", False)
        monkeypatch.setattr(losses, "_fast_torch", lambda *a: None)
        monkeypatch.setattr(losses, "_fast_plain", lambda *a: 0)
        monkeypatch.setattr(losses, "_fast_features", lambda *a: 0)
    else:
        assert name == "device"
        monkeypatch.setattr(_namespace, "FORCE_DEVICE_PATH", True)


def _value_and_grad(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor | None,
                    how: str, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(x)`` and the gradient of ``scale <g, f(x)>`` (of ``scale f(x)`` for a scalar ``f``, ``g`` None):
    ``backward`` (``.backward``), ``double`` (``torch.autograd.grad`` with ``create_graph=True``) or ``func``
    (``torch.func.grad``)."""
    if how == "func":
        def scalar(v: torch.Tensor) -> torch.Tensor:
            out = scale * f(v)
            return out if g is None else (out * g).sum()

        return f(x).detach(), torch.func.grad(scalar)(x)
    v = x.clone().requires_grad_(True)
    out = f(v)
    loss = scale * out if scale != 1.0 else out
    if how == "double":
        (grad,) = torch.autograd.grad(loss, v, g, create_graph=True)
        assert grad.requires_grad  # the differentiable backward
        return out.detach(), grad.detach()
    assert how == "backward"
    loss.backward(g)
    assert v.grad is not None
    return out.detach(), v.grad


def _check(grad: torch.Tensor, ref: torch.Tensor, nan: Sequence[int], zero: Sequence[int]) -> None:
    """Gradient rows ``(R, C)``: every entry of the ``nan`` rows NaN, the ``zero`` rows exactly 0, the other rows
    finite and the bits of ``ref`` (the call without the NaN). All failures are reported together."""
    assert not set(nan) & set(zero)
    rest = sorted(set(range(grad.shape[0])) - set(nan) - set(zero))
    problems = []
    bad = [i for i in nan if not bool(grad[i].isnan().all())]
    if bad:
        problems.append(f"NaN rows {bad} have gradient entries that are not NaN: {grad[bad].tolist()}")
    bad = [i for i in zero if not bool((grad[i] == 0).all())]
    if bad:
        problems.append(f"rows {bad} (+inf max, all -inf, or ignored) must keep gradient 0: {grad[bad].tolist()}")
    bad = [i for i in rest if not bool(torch.isfinite(grad[i]).all())]
    if bad:
        problems.append(f"rows {bad} hold no NaN but have a non-finite gradient")
    bad = [i for i in rest if not torch.equal(grad[i], ref[i])]
    if bad:
        problems.append(f"rows {bad} hold no NaN but their gradient differs from the call without the NaN")
    assert not problems, "\n".join(problems)


# -- softmax, log_softmax, logsumexp (torch) ----------------------------------------------------------------------
def _softmax_call(op: str, middle: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    dim = 1 if middle else -1
    return lambda v: getattr(fg, op)(v, dim=dim)


def _softmax_case(op: str, dtype: torch.dtype, shape: tuple[int, int], middle: bool, how: str,
                  scale: float = 1.0) -> None:
    """One call of ``op`` on rows with a NaN and its reference: values NaN in the NaN rows, gradients checked."""
    d = _rows(*shape)
    x = _arrange(torch.tensor(d.x).to(dtype), middle)
    g = _arrange(torch.tensor(d.g_rows if op == "logsumexp" else d.g_full).to(dtype), middle)
    f = _softmax_call(op, middle)
    out, grad = _value_and_grad(f, x, g, how, scale)
    _, ref = _value_and_grad(f, _without_nan(x), g, how, scale)
    assert bool(_as_rows(out, middle)[d.nan + d.ignored].isnan().all()), "a row holding a NaN has a non-NaN value"
    _check(_as_rows(grad, middle), _as_rows(ref, middle), d.nan + d.ignored, d.inf + d.ninf)


@pytest.mark.parametrize("how", ["backward", "double"])
@pytest.mark.parametrize("route", ["kernels", "torch-ops", "device"])
@pytest.mark.parametrize("middle", [False, True], ids=["last-axis", "middle-axis"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", SOFTMAX_OPS)
def test_softmax_family_nan_row_has_nan_gradient(op: str, dtype: torch.dtype, middle: bool, route: str, how: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """8 rows of 10 (``dim=-1``, or ``dim=1`` of ``(2, 10, 2, 2)``), a random upstream gradient, ``backward`` and
    the first gradient of double backward: NaN rows NaN, ``+inf``/``-inf`` rows 0, the others bit-identical."""
    _route(route, monkeypatch)
    _softmax_case(op, dtype, SMALL, middle, how)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("middle", [False, True], ids=["last-axis", "middle-axis"])
@pytest.mark.parametrize("op", SOFTMAX_OPS)
def test_softmax_family_large_calls_on_one_and_two_threads(op: str, middle: bool, threads: int) -> None:
    """80 rows of 1000 float32 (the kernels split such a call over the threads), NaN rows in the first and the
    last chunk; the same with the class axis in the middle, ``(5, 1000, 4, 4)`` (the column kernels)."""
    assert LARGE[0] * LARGE[1] >= _torch_rows.PARALLEL_MIN
    with _threads(threads):
        _softmax_case(op, torch.float32, LARGE, middle, "backward")


# -- cross_entropy (torch) ----------------------------------------------------------------------------------------
def _ce_call(feature: str, reduction: str, middle: bool, d: Rows, dtype: torch.dtype
             ) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[int], list[int]]:
    """``v -> fg.cross_entropy(v, ...)`` for a feature case, the rows whose gradient must be NaN and those whose
    gradient must be 0."""
    spec = dict(CE_FEATURES[feature])
    probs = spec.pop("probs", False)
    kw: dict[str, Any] = {"reduction": reduction, "axis": 1 if middle else -1}
    if spec.pop("weight", False):
        kw["weight"] = torch.tensor(d.weight, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    kw.update(spec)
    if probs:
        target = _arrange(torch.tensor(d.probs).to(dtype), middle)
        nan, zero = d.nan + d.ignored, d.inf + d.ninf
    else:
        target = _arrange(torch.tensor(d.target), middle)
        kw["ignore_index"] = IGNORE
        nan, zero = d.nan, d.inf + d.ninf + d.ignored
    if "softcap" in kw:  # tanh caps +-inf logits: those rows are finite rows, with their own gradients
        zero = [i for i in zero if i not in d.inf + d.ninf]
    return (lambda v: fg.cross_entropy(v, target, **kw)), nan, zero


def _ce_case(feature: str, upstream: str, dtype: torch.dtype, shape: tuple[int, int], middle: bool,
             how: str) -> None:
    d = _rows(*shape)
    reduction, scale = UPSTREAMS[upstream]
    f, nan, zero = _ce_call(feature, reduction, middle, d, dtype)
    x = _arrange(torch.tensor(d.x).to(dtype), middle)
    g = _arrange(torch.tensor(d.g_rows).to(dtype), middle) if reduction == "none" else None
    out, grad = _value_and_grad(f, x, g, how, scale)
    _, ref = _value_and_grad(f, _without_nan(x), g, how, scale)
    if reduction == "none":
        assert bool(_as_rows(out, middle)[nan].isnan().all()), "a row holding a NaN has a non-NaN loss"
    else:
        assert math.isnan(float(out)), "the loss over rows holding a NaN is not NaN"
    _check(_as_rows(grad, middle), _as_rows(ref, middle), nan, zero)


# the kernels: every upstream (the eager forward writes the gradient of g = 1 for a mean or a sum); the torch-op
# routes: the gradient computed in the backward, for a scaled mean and for reduction="none"
CE_ROUTES = [("kernels", u) for u in UPSTREAMS] \
    + [(r, u) for r in ("torch-ops", "device") for u in ("mean*1.5", "none")]


@pytest.mark.parametrize(("route", "upstream"), CE_ROUTES, ids=[f"{r}-{u}" for r, u in CE_ROUTES])
@pytest.mark.parametrize("middle", [False, True], ids=["last-axis", "middle-axis"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("feature", list(CE_FEATURES))
def test_cross_entropy_nan_row_has_nan_gradient(feature: str, dtype: torch.dtype, middle: bool, route: str,
                                                upstream: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 rows of 10 (class axis last, or ``axis=1`` of ``(2, 10, 2, 2)``), each feature and reduction: ``mean``
    and ``sum`` (the eager kernels write the gradient of ``g = 1`` in the forward), the mean times 1.5 (the gradient
    computed again in the backward), ``none`` with a random positive upstream vector. A row holding a NaN: NaN
    gradient; a ``+inf`` row, a row of ``-inf``, an ignored row (holding a NaN): 0; the others bit-identical."""
    _route(route, monkeypatch)
    _ce_case(feature, upstream, dtype, SMALL, middle, "backward")


# large calls: every feature in float32 (the kernels' threaded variants: plain, features, probabilities, capped),
# the plain and the full feature set in bfloat16 and float64
CE_LARGE = [(f, torch.float32) for f in CE_FEATURES] + [(f, d) for f in ("plain", "all") for d in DTYPES[1:]]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("upstream", ["mean", "none", "mean*1.5"])
@pytest.mark.parametrize(("feature", "dtype"), CE_LARGE, ids=[f"{f}-{d}" for f, d in CE_LARGE])
def test_cross_entropy_large_calls_on_one_and_two_threads(feature: str, dtype: torch.dtype, upstream: str,
                                                          threads: int) -> None:
    """80 rows of 1000 on the kernels, split over the threads: NaN rows and ignored NaN rows in both chunks."""
    with _threads(threads):
        _ce_case(feature, upstream, dtype, LARGE, False, "backward")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("feature", ["plain", "all", "probs-weight-smoothing"])
def test_cross_entropy_large_middle_axis_on_one_and_two_threads(feature: str, threads: int) -> None:
    """``axis=1`` of ``(5, 1000, 4, 4)`` float32 (the column kernels), the mean and ``none``."""
    with _threads(threads):
        for upstream in ("mean", "none"):
            _ce_case(feature, upstream, torch.float32, LARGE, True, "backward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("upstream", ["mean", "none"])
@pytest.mark.parametrize("feature", list(CE_FEATURES))
def test_cross_entropy_double_backward_path(feature: str, upstream: str, dtype: torch.dtype) -> None:
    """``torch.autograd.grad(loss, x, create_graph=True)``: the backward in differentiable torch ops."""
    _ce_case(feature, upstream, dtype, SMALL, False, "double")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", [*SOFTMAX_OPS, "cross_entropy", "cross_entropy-all", "cross_entropy-probs"])
def test_torch_func_grad_takes_the_generic_path(op: str, dtype: torch.dtype) -> None:
    """``torch.func.grad`` sends every op to its generic array-API path: the same NaN rows, zero rows and bits."""
    if op in SOFTMAX_OPS:
        _softmax_case(op, dtype, SMALL, False, "func")
    else:
        feature = {"cross_entropy": "plain", "cross_entropy-all": "all", "cross_entropy-probs": "probs"}[op]
        _ce_case(feature, "mean", dtype, SMALL, False, "func")


@pytest.mark.parametrize("middle", [False, True], ids=["last-axis", "middle-axis"])
@pytest.mark.parametrize("op", [*SOFTMAX_OPS, "cross_entropy"])
def test_torch_compile_forward_and_backward(op: str, middle: bool) -> None:
    """``torch.compile(dynamic=False)`` of a function calling the op (its custom ops: the row ops', and the column
    kernels' for the class axis in the middle, whose backward answers positions with no finite max in torch ops),
    forward and backward, float32: one compile serves the call with the NaN and its reference (same shapes)."""
    torch._dynamo.reset()
    d = _rows(*SMALL)
    x = _arrange(torch.tensor(d.x, dtype=torch.float32), middle)
    axis = 1 if middle else -1
    if op == "cross_entropy":
        target = _arrange(torch.tensor(d.target), middle)

        def f(v: torch.Tensor) -> torch.Tensor:
            return fg.cross_entropy(v, target, ignore_index=IGNORE, axis=axis)

        nan, zero = d.nan, d.inf + d.ninf + d.ignored
        g = None
    else:
        def f(v: torch.Tensor) -> torch.Tensor:
            return getattr(fg, op)(v, dim=axis)

        nan, zero = d.nan + d.ignored, d.inf + d.ninf
        g = _arrange(torch.tensor(d.g_rows if op == "logsumexp" else d.g_full, dtype=torch.float32), middle)
    compiled = torch.compile(f, dynamic=False)
    try:
        out, grad = _value_and_grad(compiled, x, g, "backward")
        _, ref = _value_and_grad(compiled, _without_nan(x), g, "backward")
    finally:
        torch._dynamo.reset()
    assert bool(out.isnan().any())
    _check(_as_rows(grad, middle), _as_rows(ref, middle), nan, zero)


# -- logaddexp (torch) --------------------------------------------------------------------------------------------
def _pair(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a``, ``b`` of ``n`` entries with NaN in ``a`` at some positions, in ``b`` at others and in both at one;
    the mask of those positions."""
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=n) * 5, rng.normal(size=n) * 5
    pos = np.linspace(0, n - 1, 7).astype(int)
    a[pos[:3]] = NAN
    b[pos[3:6]] = NAN
    a[pos[6]] = b[pos[6]] = NAN
    mask = np.zeros(n, dtype=bool)
    mask[pos] = True
    return a, b, mask


def _check_pair(ga: torch.Tensor, gb: torch.Tensor, ra: torch.Tensor, rb: torch.Tensor, mask: np.ndarray,
                rtol: float = 0.0) -> None:
    """At a NaN position the gradient of both arguments NaN; elsewhere finite and the bits of the call without NaN
    (within ``rtol`` where given). All failures are reported together."""
    m = torch.from_numpy(mask)
    problems = []
    bad = [int(i) for i in np.flatnonzero(mask) if not (bool(ga[i].isnan()) and bool(gb[i].isnan()))]
    if bad:
        problems.append(f"positions {bad} hold a NaN; the gradients there: {ga[bad].tolist()}, {gb[bad].tolist()}")
    for grad, ref, name in ((ga, ra, "a"), (gb, rb, "b")):
        if not bool(torch.isfinite(grad[~m]).all()):
            problems.append(f"d/d{name} is not finite away from the NaN entries")
        if not torch.allclose(grad[~m], ref[~m], rtol=rtol, atol=0.0):
            diff = np.flatnonzero((~torch.isclose(grad, ref, rtol=rtol, atol=0.0)).numpy() & ~mask)
            problems.append(f"d/d{name} differs from the call without NaN at {diff.tolist()[:8]}")
    assert not problems, "\n".join(problems)


def _logaddexp_grads(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, how: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    if how == "func":
        ga, gb = torch.func.grad(lambda u, w: (fg.logaddexp(u, w) * g).sum(), argnums=(0, 1))(a, b)
        return ga, gb
    u, w = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    out = fg.logaddexp(u, w)
    assert bool(out[torch.isnan(a) | torch.isnan(b)].isnan().all())
    if how == "double":
        ga, gb = torch.autograd.grad(out, (u, w), g, create_graph=True)
        return ga.detach(), gb.detach()
    (1.5 * out if how == "scaled" else out).backward(g)
    assert u.grad is not None and w.grad is not None
    return u.grad, w.grad


LOGADDEXP_SIZES = [(64, 1, d) for d in DTYPES] + [(LARGE[0] * LARGE[1], k, torch.float32) for k in (1, 2)]


@pytest.mark.parametrize("how", ["backward", "scaled", "double", "func"])
@pytest.mark.parametrize("route", ["kernels", "device"])
@pytest.mark.parametrize(("n", "threads", "dtype"), LOGADDEXP_SIZES,
                         ids=[f"{n}-{k}-thread-{d}" for n, k, d in LOGADDEXP_SIZES])
def test_logaddexp_nan_gives_nan_gradient_to_both_arguments(n: int, threads: int, dtype: torch.dtype, route: str,
                                                            how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``logaddexp(a, b)`` where ``a`` or ``b`` (or both) is NaN: NaN in the gradient of ``a`` and of ``b`` there (it
    was ``(1, 0)`` or ``(0, 1)``, the NaN taken for the larger argument); elsewhere finite and bit-identical, but for
    the float32 kernels within 1 ulp: a block of their float32 lanes that holds a NaN (or an inf, or ``|a - b| > 80``)
    is worked in float64 registers, correctly rounded where the lanes are within 1.5 ulp."""
    if route == "device":
        monkeypatch.setattr(_namespace, "FORCE_DEVICE_PATH", True)
    a_np, b_np, mask = _pair(n)
    a, b = torch.tensor(a_np).to(dtype), torch.tensor(b_np).to(dtype)
    g = torch.tensor(np.random.default_rng(1).uniform(0.5, 1.5, n)).to(dtype)
    with _threads(threads):
        ga, gb = _logaddexp_grads(a, b, g, how)
        ra, rb = _logaddexp_grads(_without_nan(a), _without_nan(b), g, how)
    _check_pair(ga, gb, ra, rb, mask, 2.0**-23 if dtype == torch.float32 and route == "kernels" else 0.0)


# -- JAX ----------------------------------------------------------------------------------------------------------
JAX_OPS = [*SOFTMAX_OPS, "cross_entropy", "cross_entropy-probs", "cross_entropy-all"]
# (x64, dtype, middle): every op with jax_enable_x64 (float64) and without (float32); the class axis in the middle
# for softmax and cross_entropy with x64
JAX_CASES = [(op, True, "float64", False) for op in JAX_OPS] + [(op, False, "float32", False) for op in JAX_OPS] \
    + [(op, True, "float64", True) for op in ("softmax", "cross_entropy")]


@pytest.mark.parametrize(("op", "x64", "dtype", "middle"), JAX_CASES,
                         ids=[f"{op}-{'x64' if x64 else 'x32'}-{dt}-{'middle' if m else 'last'}-axis"
                              for op, x64, dt, m in JAX_CASES])
def test_jax_grad_nan_row_has_nan_gradient(op: str, x64: bool, dtype: str, middle: bool) -> None:
    """``jax.jit(jax.value_and_grad(...))`` of the sum of the outputs (a weighted sum for softmax and log_softmax,
    whose plain sum has gradient 0), with ``jax_enable_x64`` and without (float32 work): NaN rows NaN, ``+inf`` and
    ``-inf`` rows 0 (and ignored rows), the others finite and bit-identical (one compiled function for both calls)."""
    d = _rows(*SMALL)
    axis = 1 if middle else -1

    def arrange(a: np.ndarray) -> np.ndarray:
        return _arrange(torch.from_numpy(np.ascontiguousarray(a)), middle).numpy()

    def as_rows(a: Any) -> torch.Tensor:
        return _as_rows(torch.from_numpy(np.array(a)), middle)

    with jax.enable_x64(x64):
        x = jnp.asarray(arrange(d.x), dtype=dtype)
        if op in SOFTMAX_OPS:
            wts = jnp.asarray(arrange(d.g_full), dtype=dtype)

            def f(v: Any) -> Any:
                out = getattr(fg, op)(v, axis=axis)
                return jnp.sum(out) if op == "logsumexp" else jnp.sum(out * wts)

            nan, zero = d.nan + d.ignored, d.inf + d.ninf
        else:
            spec = dict(CE_FEATURES[{"cross_entropy": "plain", "cross_entropy-all": "all",
                                     "cross_entropy-probs": "probs"}[op]])
            kw: dict[str, Any] = {"axis": axis, "reduction": "sum"}
            if spec.pop("probs", False):
                target = jnp.asarray(arrange(d.probs), dtype=dtype)
                nan, zero = d.nan + d.ignored, d.inf + d.ninf
            else:
                target = jnp.asarray(arrange(d.target))
                kw["ignore_index"] = IGNORE
                nan, zero = d.nan, d.inf + d.ninf + d.ignored
            if spec.pop("weight", False):
                kw["weight"] = jnp.asarray(d.weight, dtype=dtype)
            kw.update(spec)
            if "softcap" in kw:  # tanh caps +-inf logits: those rows are finite rows
                zero = [i for i in zero if i not in d.inf + d.ninf]

            def f(v: Any) -> Any:
                return fg.cross_entropy(v, target, **kw)

        value_and_grad = jax.jit(jax.value_and_grad(f))
        value, grad_x = value_and_grad(x)
        grad, ref = as_rows(grad_x), as_rows(value_and_grad(jnp.where(jnp.isnan(x), 0.0, x))[1])
    assert math.isnan(float(value)), "the sum over rows holding a NaN is not NaN"
    assert grad.dtype == getattr(torch, dtype)
    _check(grad, ref, nan, zero)


@pytest.mark.parametrize(("x64", "dtype"), [(True, "float64"), (False, "float32")], ids=["x64-float64", "x32-float32"])
def test_jax_logaddexp_nan_gives_nan_gradient_to_both_arguments(x64: bool, dtype: str) -> None:
    """``jax.grad`` of ``sum(logaddexp(a, b))`` with respect to both arguments."""
    a_np, b_np, mask = _pair(64)
    with jax.enable_x64(x64):
        a, b = jnp.asarray(a_np, dtype=dtype), jnp.asarray(b_np, dtype=dtype)
        grad = jax.jit(jax.grad(lambda u, w: jnp.sum(fg.logaddexp(u, w)), argnums=(0, 1)))
        ga, gb = grad(a, b)
        ra, rb = grad(jnp.where(jnp.isnan(a), 0.0, a), jnp.where(jnp.isnan(b), 0.0, b))
    ga_t, gb_t, ra_t, rb_t = (torch.from_numpy(np.array(v)) for v in (ga, gb, ra, rb))
    _check_pair(ga_t, gb_t, ra_t, rb_t, mask)


# -- the other reductions: b=, where=, logmeanexp, logcumsumexp -------------------------------------------------
OTHER_REDUCTIONS: dict[str, Callable[[Any, Callable[[np.ndarray], Any]], Any]] = {
    "logsumexp-b": lambda v, arr: fg.logsumexp(v, axis=-1, b=arr(np.full(v.shape, 0.5))),
    "logsumexp-where": lambda v, arr: fg.logsumexp(v, axis=-1, where=arr(np.arange(v.shape[-1]) % 5 != 2)),
    "softmax-where": lambda v, arr: fg.softmax(v, axis=-1, where=arr(np.arange(v.shape[-1]) % 5 != 2)),
    "logmeanexp": lambda v, arr: fg.logmeanexp(v, axis=-1),
    "logsumexp-two-axes": lambda v, arr: fg.logsumexp(v[:, None, :], axis=(1, 2)),
    "logcumsumexp": lambda v, arr: fg.logcumsumexp(v, axis=-1),
}


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("op", list(OTHER_REDUCTIONS))
def test_other_reductions_give_a_nan_row_a_nan_gradient(op: str, backend: str) -> None:
    """The reductions off the kernels' route (weights ``b``, ``where=``, ``logmeanexp``, tuple axes: the generic
    array-API path) and ``logcumsumexp``: NaN in the gradient of a row holding a NaN (every entry of it but those
    ``where=`` leaves out; for ``logcumsumexp`` the NaN entry, through every prefix that holds it), where it was 0;
    a ``-inf`` row keeps 0 and the finite rows the gradient of the call without the NaN."""
    x = np.random.default_rng(5).normal(size=(4, 7)) * 3
    x[1, 3] = NAN
    x[2] = -INF
    wts = np.random.default_rng(6).uniform(0.5, 1.5, (4, 7))
    f = OTHER_REDUCTIONS[op]
    if backend == "torch":

        def grad(a: np.ndarray) -> np.ndarray:
            t = torch.tensor(a, requires_grad=True)
            out = f(t, torch.tensor)
            w = torch.tensor(wts[:, : out.shape[-1]] if out.ndim == 2 and out.shape[-1] > 1 else wts[:, :1].reshape(
                out.shape))
            torch.where(torch.isinf(out), 0.0, out * w).sum().backward()
            assert t.grad is not None
            return t.grad.numpy()
    else:

        def grad(a: np.ndarray) -> np.ndarray:
            with jax.enable_x64(True):
                def s(v: Any) -> Any:
                    out = f(v, jnp.asarray)
                    w = jnp.asarray(wts[:, : out.shape[-1]] if out.ndim == 2 and out.shape[-1] > 1
                                    else wts[:, :1].reshape(out.shape))
                    return jnp.sum(jnp.where(jnp.isinf(out), 0.0, out * w))

                return np.asarray(jax.grad(s)(jnp.asarray(a)))

    got, ref = grad(x), grad(np.where(np.isnan(x), 0.0, x))
    if op == "logcumsumexp":  # the prefixes before the NaN are finite rows of their own
        assert np.isnan(got[1, 3]) and np.isfinite(got[1, :3]).all(), got[1]
    elif op.endswith("-where"):  # an entry left out by where= takes no part: gradient 0, NaN row or not
        assert np.isnan(np.delete(got[1], 2)).all() and got[1, 2] == 0.0, got[1]
    else:
        assert np.isnan(got[1]).all(), got[1]
    np.testing.assert_array_equal(got[2], np.zeros(7))
    np.testing.assert_array_equal(got[[0, 3]], ref[[0, 3]])


def test_clip_grad_norm_sees_the_nan_of_a_nan_logit() -> None:
    """What the change is for: a model whose logits hold a NaN, trained with ``fg.cross_entropy``: its gradients are
    NaN, so ``clip_grad_norm_(error_if_nonfinite=True)`` stops the step (it used to see finite gradients beside a NaN
    loss and let the optimizer step), as with ``F.cross_entropy``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    x = torch.randn(6, 5)
    bad = torch.zeros(6, 4)
    bad[2, 1] = NAN  # one NaN logit from outside the parameters (say a 0/0 in a feature of the head)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    for loss_fn in (fg.cross_entropy, torch.nn.functional.cross_entropy):
        model.zero_grad()
        loss = loss_fn(model(x) + bad, target)
        assert math.isnan(loss.item())
        loss.backward()
        with pytest.raises(RuntimeError, match="non-finite"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)


def test_logaddexp_double_backward_path_has_the_kernels_limits() -> None:
    """The ``create_graph`` backward of ``logaddexp`` (differentiable torch ops) gives the kernel's first derivatives
    at the limits too: both ``+inf`` 1 to ``a`` and 0 to ``b`` (it gave NaN and NaN), both ``-inf`` 0 and 0, one
    ``+inf`` 1 to its side, a NaN NaN to both."""
    a = torch.tensor([INF, -INF, INF, 2.0, NAN, 1.0], dtype=torch.float64)
    b = torch.tensor([INF, -INF, 3.0, INF, 1.0, -INF], dtype=torch.float64)
    g = torch.tensor([1.5, 0.5, 2.0, 0.25, 1.0, 3.0], dtype=torch.float64)
    grads = []
    for graph in (False, True):
        u, w = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        ga, gb = torch.autograd.grad(fg.logaddexp(u, w), (u, w), g, create_graph=graph)
        grads.append((ga.detach(), gb.detach()))
    (ka, kb), (da, db) = grads
    assert torch.allclose(ka, da, equal_nan=True, rtol=0, atol=0)
    assert torch.allclose(kb, db, equal_nan=True, rtol=0, atol=0)
    assert da[:4].tolist() == [1.5, 0.0, 2.0, 0.0] and db[:4].tolist() == [0.0, 0.0, 0.0, 0.25]
    assert torch.isnan(da[4]) and torch.isnan(db[4]) and da[5] == 3.0 and db[5] == 0.0
