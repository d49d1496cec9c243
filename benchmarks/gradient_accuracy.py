"""Accuracy of the gradients of floatguard's ops beside PyTorch's and JAX's, in ulps.

For each op the vector-Jacobian product ``d/dx sum(w * f(x))`` with a fixed cotangent ``w``
(uniform in [0.5, 1.5], seeded, rounded to the dtype; the scalar 1 for the losses) is computed
on the adversarial cases of ``benchmarks/accuracy.py`` and compared entry by entry with the
exact VJP (mpmath, :mod:`floatguard.testing.gradients`, at the exact rounded inputs):
``ulp_error`` at the input dtype.

Bound: ``2 ulp * max(1, kappa)`` in every dtype, where ``kappa_i = kappa_in + kappa_out`` is the
condition number of the gradient entry: its relative condition under relative perturbations of
the inputs, plus the cancellation of the backward formula evaluated on the forward's rounded
output (``(|w_i| + sum_j |w_j p_j|) / |w_i - <w, p>|`` for softmax; see
:mod:`floatguard.testing.gradients`). Issue 10 asked for a flat 2 ulp in float32; every
implementation, floatguard's included, computes the backward from the rounded forward output (as
torch and jax.nn do: recomputing it would cost the backward its speed), so where that formula
cancels (the dominant entry of a softmax row, ``sigmoid(x) - 1`` of a confident BCE) no
implementation is within 2 ulp componentwise: the float32 row ops are held to ``kappa`` as float64
is. Each cell gives the raw max (the flat bound holds where it is <= 2) and the max of
``err / max(1, kappa)``. XLA on CPU flushes float32 subnormals to zero (jax.nn's results as
floatguard's), so below the smallest normal float32 its resolution is that number: in the JAX
columns an entry whose exact value is subnormal and that comes out within it counts as exact.

JAX without x64 is measured under ``jax.enable_x64(False)`` (the same process; results equal a
fresh process without x64). Run ``python benchmarks/gradient_accuracy.py [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from _table import fmt_ulp, make_table, print_tables
from accuracy import (
    _bce_groups,
    _grid,
    _log_sigmoid_groups,
    _logaddexp_groups,
    _row_groups,
    _sigmoid_groups,
    _softplus_groups,
)
from rich.table import Table

import floatguard as fg
from floatguard import testing as fgt

Inputs = tuple[Any, ...]
Groups = dict[str, list[Inputs]]
Fn = Callable[..., Any]

LIBS = ("floatguard (torch)", "PyTorch", "floatguard (JAX)", "jax.nn", "floatguard (JAX, no x64)", "jax.nn (no x64)")
DTYPES = ("float32", "bfloat16", "float64")
FG_LIBS = {"floatguard (torch)", "floatguard (JAX)", "floatguard (JAX, no x64)"}


# -- cases --------------------------------------------------------------------------------------
def _ce_groups(quick: bool) -> Groups:
    """Each row twice, as a batch of 2 with the most and the least likely finite class as targets."""
    out: Groups = {}
    for name, rows in _row_groups(quick).items():
        cases = []
        for (row,) in rows:
            low = int(np.argmin(np.where(np.isfinite(row), row, np.inf)))
            cases.append((np.stack([row, row]), np.array([int(np.argmax(row)), low])))
        out[name] = cases
    return out


def _ce_weight(c: int) -> np.ndarray:
    """Class weights of the weighted cross-entropy rows: uniform in [0.5, 2], seeded."""
    return np.random.default_rng(11).uniform(0.5, 2.0, c)


def _ce_weight_groups(quick: bool) -> Groups:
    """The cases of :func:`_ce_groups` with class weights (a third input)."""
    return {name: [(x, t, _ce_weight(x.shape[1])) for x, t in cases] for name, cases in _ce_groups(quick).items()}


def _ce_prob_targets(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Probability targets of :func:`_ce_groups`' two rows: random (seeded) over the finite logits, and 1/4 on
    the most likely class, 3/4 on the least likely."""
    dense = np.where(np.isfinite(x[0]), np.random.default_rng(13).uniform(0.0, 1.0, x.shape[1]), 0.0)
    peaked = np.zeros(x.shape[1])
    peaked[t[0]], peaked[t[1]] = 0.25, 0.75
    return np.stack([dense / dense.sum(), peaked])


def _ce_prob_groups(quick: bool) -> Groups:
    return {name: [(x, _ce_prob_targets(x, t)) for x, t in cases] for name, cases in _ce_groups(quick).items()}


def _ce_prob_weight_groups(quick: bool) -> Groups:
    return {name: [(x, p, _ce_weight(x.shape[1])) for x, p in cases] for name, cases in _ce_prob_groups(quick).items()}


def _log1mexp_groups(quick: bool) -> Groups:
    n = 60 if quick else 300
    return {
        "near 0, x ∈ [−log 2, −1e−30]": [(-np.logspace(-30, math.log10(math.log(2)), n),)],
        "grid [−50, −log 2]": [(_grid(-50, -0.7, n),)],
        "far and −inf": [(np.array([-np.inf, -1000.0, -100.0, -1e-300]),)],
    }


# -- ops ----------------------------------------------------------------------------------------
def _ce_torch(x: Any, t: Any) -> Any:
    return F.cross_entropy(x, t)


def _ce_jax(x: Any, t: Any) -> Any:  # optax's softmax_cross_entropy_with_integer_labels, mean
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(x), t[:, None], axis=1))


def _ce_jax_q(x: Any, q: Any, den: Any) -> Any:
    """``-sum(q log_softmax(x)) / den``: optax's ``softmax_cross_entropy`` of the (weighted) target
    distribution ``q`` on jax.nn, PyTorch's divisor ``den``."""
    return -jnp.sum(q * jax.nn.log_softmax(x)) / den


def _ce_jax_args(x: Any, t: Any, w: Any = None, eps: float = 0.0, reduction: str = "mean") -> Any:
    """PyTorch's cross-entropy with ``weight`` ``w`` and ``label_smoothing`` ``eps`` composed on jax.nn: the
    target ``(1 - eps) t + eps / C`` (optax's ``smooth_labels``; ``t`` one-hot for class indices) times ``w``; the
    mean divides by ``sum w[t]`` for indices (the row count without ``w``), by the row count for probabilities."""
    n, c = x.shape
    probs = t.ndim == 2
    dist = t if probs else jax.nn.one_hot(t, c, dtype=x.dtype)
    if eps:
        dist = (1 - eps) * dist + eps / c
    q = dist if w is None else dist * w
    if reduction == "sum":
        return _ce_jax_q(x, q, 1)
    return _ce_jax_q(x, q, n if probs or w is None else jnp.sum(w[t]))


def _bce_jax(x: Any, y: Any) -> Any:  # optax's sigmoid_binary_cross_entropy, mean
    return -jnp.mean(y * jax.nn.log_sigmoid(x) + (1 - y) * jax.nn.log_sigmoid(-x))


@dataclass(frozen=True)
class GradOp:
    """An op's cases, its gradient reference and condition numbers, and its implementations.

    ``ref(inputs, w)`` and ``cond(inputs, w)`` return one array per differentiable argument (the
    first ``n_diff`` inputs); ``w`` is None for the losses (cotangent 1).
    """

    name: str
    groups: Callable[[bool], Groups]
    ref: Callable[[Inputs, Any], list[np.ndarray]]
    cond: Callable[[Inputs, Any], list[np.ndarray]]
    torch_impls: tuple[Fn | None, Fn | None]  # floatguard, PyTorch
    jax_impls: tuple[Fn | None, Fn | None]  # floatguard, jax.nn / jax.scipy
    n_diff: int = 1
    loss: bool = False


def _one(f: Callable[..., Any]) -> Callable[[Inputs, Any], list[np.ndarray]]:
    return lambda inp, w: [f(inp[0], w)]


def _loss(f: Callable[..., Any]) -> Callable[[Inputs, Any], list[np.ndarray]]:
    return lambda inp, w: [f(*inp)]


def _x(f: Callable[..., Any]) -> Callable[[Inputs, Any], list[np.ndarray]]:
    return lambda inp, w: [f(inp[0])]


def _ce_op(name: str, groups: Callable[[bool], Groups], eps: float = 0.0, reduction: str = "mean") -> GradOp:
    """A cross-entropy row with ``label_smoothing`` ``eps`` and ``reduction``; its cases are ``(x, target)`` or
    ``(x, target, weight)``."""

    def kw(inp: Inputs) -> dict[str, Any]:
        return {"weight": inp[2] if len(inp) > 2 else None, "label_smoothing": eps, "reduction": reduction}

    def fg_ce(x: Any, t: Any, w: Any = None) -> Any:
        return fg.cross_entropy(x, t, weight=w, label_smoothing=eps, reduction=reduction)

    def torch_ce(x: Any, t: Any, w: Any = None) -> Any:
        return F.cross_entropy(x, t, weight=w, label_smoothing=eps, reduction=reduction)

    def jax_ce(x: Any, t: Any, w: Any = None) -> Any:
        return _ce_jax_args(x, t, w, eps, reduction)

    return GradOp(name, groups, lambda inp, w: [fgt.grad_cross_entropy(inp[0], inp[1], **kw(inp))],
                  lambda inp, w: [fgt.cond_grad_cross_entropy(inp[0], inp[1], **kw(inp))],
                  (fg_ce, torch_ce), (fg_ce, jax_ce), loss=True)


OPS: list[GradOp] = [
    GradOp("logsumexp", _row_groups, _one(fgt.grad_logsumexp), _one(fgt.cond_grad_logsumexp),
           (lambda x: fg.logsumexp(x, axis=-1), lambda x: torch.logsumexp(x, dim=-1)),
           (lambda x: fg.logsumexp(x, axis=-1), jax.nn.logsumexp)),
    GradOp("softmax", _row_groups, _one(fgt.grad_softmax), _one(fgt.cond_grad_softmax),
           (lambda x: fg.softmax(x, axis=-1), lambda x: torch.softmax(x, dim=-1)),
           (lambda x: fg.softmax(x, axis=-1), jax.nn.softmax)),
    GradOp("log_softmax", _row_groups, _one(fgt.grad_log_softmax), _one(fgt.cond_grad_log_softmax),
           (lambda x: fg.log_softmax(x, axis=-1), lambda x: torch.log_softmax(x, dim=-1)),
           (lambda x: fg.log_softmax(x, axis=-1), jax.nn.log_softmax)),
    GradOp("cross_entropy (mean)", _ce_groups, _loss(fgt.grad_cross_entropy), _loss(fgt.cond_grad_cross_entropy),
           (fg.cross_entropy, _ce_torch), (fg.cross_entropy, _ce_jax), loss=True),
    _ce_op("cross_entropy (weight, mean)", _ce_weight_groups),
    _ce_op("cross_entropy (label_smoothing=0.1, mean)", _ce_groups, eps=0.1),
    _ce_op("cross_entropy (weight + label_smoothing=0.1, sum)", _ce_weight_groups, eps=0.1, reduction="sum"),
    _ce_op("cross_entropy (probabilities, mean)", _ce_prob_groups),
    _ce_op("cross_entropy (probabilities + weight + label_smoothing=0.1, mean)", _ce_prob_weight_groups, eps=0.1),
    GradOp("softplus", _softplus_groups, _one(fgt.grad_softplus), _x(fgt.cond_grad_softplus),
           (fg.softplus, F.softplus), (fg.softplus, jax.nn.softplus)),
    GradOp("log_sigmoid", _log_sigmoid_groups, _one(fgt.grad_log_sigmoid), _x(fgt.cond_grad_log_sigmoid),
           (fg.log_sigmoid, F.logsigmoid), (fg.log_sigmoid, jax.nn.log_sigmoid)),
    GradOp("sigmoid", _sigmoid_groups, _one(fgt.grad_sigmoid), _x(fgt.cond_grad_sigmoid),
           (fg.sigmoid, torch.sigmoid), (fg.sigmoid, jax.nn.sigmoid)),
    GradOp("logaddexp", _logaddexp_groups, lambda inp, w: list(fgt.grad_logaddexp(inp[0], inp[1], w)),
           lambda inp, w: list(fgt.cond_grad_logaddexp(inp[0], inp[1])),
           (fg.logaddexp, torch.logaddexp), (fg.logaddexp, jnp.logaddexp), n_diff=2),
    GradOp("binary_cross_entropy_with_logits (mean)", _bce_groups, _loss(fgt.grad_bce_with_logits),
           _loss(fgt.cond_grad_bce_with_logits),
           (fg.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
           (fg.binary_cross_entropy_with_logits, _bce_jax), loss=True),
    GradOp("log1mexp", _log1mexp_groups, _one(fgt.grad_log1mexp), _x(fgt.cond_grad_log1mexp),
           (fg.log1mexp, None), (fg.log1mexp, None)),
]


# -- gradients by library -------------------------------------------------------------------------
def _round(a: Any, dtype: str) -> Any:
    """Floating arrays rounded to ``dtype`` (kept as float64 arrays holding the exact rounded values)."""
    if not (isinstance(a, np.ndarray) and a.dtype.kind == "f"):
        return a
    return torch.from_numpy(np.ascontiguousarray(a)).to(getattr(torch, dtype)).double().numpy().reshape(a.shape)


def _grads_torch(f: Fn, inputs: Inputs, w: Any, op: GradOp, dtype: str) -> list[np.ndarray]:
    tdt = getattr(torch, dtype)
    args = [torch.tensor(a, dtype=tdt, requires_grad=i < op.n_diff) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
            else torch.as_tensor(a) for i, a in enumerate(inputs)]
    out = f(*args)
    loss = out if w is None else (torch.tensor(w, dtype=tdt) * out).sum()
    loss.backward()
    return [fgt.to_float64(a.grad) for a in args[: op.n_diff]]


def _grads_jax(f: Fn, inputs: Inputs, w: Any, op: GradOp, dtype: str) -> list[np.ndarray]:
    args = [jnp.asarray(a, dtype=dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else jnp.asarray(a)
            for a in inputs]
    wj = None if w is None else jnp.asarray(w, dtype=dtype)

    def scalar(*diff: Any) -> Any:
        out = f(*diff, *args[op.n_diff:])
        return out if wj is None else jnp.sum(wj * out)

    grads = jax.jit(jax.grad(scalar, argnums=tuple(range(op.n_diff))))(*args[: op.n_diff])
    if args[0].dtype != jnp.dtype(dtype):
        raise RuntimeError(f"JAX made the input {args[0].dtype}, not {dtype}")
    return [np.asarray(g).astype(np.float64) for g in grads]


def _impl(op: GradOp, lib: str) -> tuple[Fn | None, Callable[..., list[np.ndarray]]]:
    if "torch" in lib or lib == "PyTorch":
        return op.torch_impls[0 if lib.startswith("floatguard") else 1], _grads_torch
    return op.jax_impls[0 if lib.startswith("floatguard") else 1], _grads_jax


def _supports(lib: str, dtype: str) -> bool:
    if dtype == "bfloat16":
        return lib in ("floatguard (torch)", "PyTorch")
    if dtype == "float64":
        return "no x64" not in lib
    return True


# -- measurement --------------------------------------------------------------------------------
@dataclass
class Worst:
    """The largest error of one op × library × dtype, and where it was."""

    raw: float = 0.0
    per_kappa: float = 0.0
    where: str = ""  # the worst entry by err / max(1, kappa)


@dataclass
class GradMeasure:
    """Gradient errors in ulps, references and cotangents computed once per case."""

    quick: bool
    _refs: dict[tuple[str, str, int, str], tuple[Inputs, Any, list[np.ndarray], list[np.ndarray]]] = field(
        default_factory=dict)

    def groups(self, op: GradOp) -> Groups:
        g = op.groups(self.quick)
        return {k: g[k] for k in list(g)[:1]} if self.quick else g

    def case(self, op: GradOp, group: str, i: int, raw: Inputs, dtype: str) -> tuple[
            Inputs, Any, list[np.ndarray], list[np.ndarray]]:
        key = (op.name, group, i, dtype)
        if key not in self._refs:
            inputs = tuple(_round(a, dtype) for a in raw)
            w = None
            if not op.loss:
                rng = np.random.default_rng(i + 7)
                out_shape = () if op.name == "logsumexp" else np.broadcast_shapes(*(np.shape(a) for a in inputs))
                w = _round(np.asarray(rng.uniform(0.5, 1.5, out_shape)), dtype)
            exact = op.ref(inputs, w)
            kappa = [np.broadcast_to(np.asarray(k, dtype=np.float64), np.shape(e)) for k, e in
                     zip(op.cond(inputs, w), exact, strict=True)]
            self._refs[key] = (inputs, w, exact, kappa)
        return self._refs[key]

    def error(self, op: GradOp, lib: str, dtype: str) -> Worst | None:
        """The worst error of ``lib``'s gradient of ``op`` over all its cases (None: no such op or dtype)."""
        f, grads = _impl(op, lib)
        if f is None or not _supports(lib, dtype):
            return None
        worst = Worst()
        with jax.enable_x64("no x64" not in lib):
            for group, cases in self.groups(op).items():
                for i, raw in enumerate(cases):
                    inputs, w, exact, kappa = self.case(op, group, i, raw, dtype)
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            got = grads(f, inputs, w, op, dtype)
                        except Exception as e:  # a library that refuses a case counts as wrong on it
                            return Worst(math.inf, math.inf, f"{group}: raised {type(e).__name__}")
                    for arg, (g, ex, k) in enumerate(zip(got, exact, kappa, strict=True)):
                        _update(worst, g, ex, k, dtype, f"{group}, case {i}, arg {arg}", inputs,
                                ftz="JAX" in lib or "jax" in lib)
        return worst


def _update(worst: Worst, got: np.ndarray, exact: np.ndarray, kappa: np.ndarray, dtype: str, label: str,
            inputs: Inputs, ftz: bool = False) -> None:
    got = np.asarray(got).reshape(np.shape(exact))
    err, per = fgt.grad_ulp_error(got, exact, kappa, dtype, ftz)
    if not err.size:
        return
    j = int(np.argmax(per))
    worse = per.flat[j] > worst.per_kappa
    worst.raw = max(worst.raw, float(err.max()))
    worst.per_kappa = max(worst.per_kappa, float(per.max()))
    if worse:
        idx = np.unravel_index(j, err.shape)
        xs = ", ".join(f"{float(np.asarray(a)[idx] if np.shape(a) == err.shape else np.asarray(a).flat[0]):.6g}"
                       for a in inputs if isinstance(a, np.ndarray) and a.dtype.kind == "f")
        worst.where = (f"{label}, entry {tuple(int(v) for v in idx)} (x = {xs}): {fmt_ulp(float(err.flat[j]))} ulp, "
                       f"κ = {float(kappa.flat[j]):.3g}, exact {float(exact.flat[j]):.6g}, got "
                       f"{float(np.asarray(got).flat[j]):.6g}")


def _bound_ok(w: Worst, dtype: str) -> bool:
    return w.per_kappa <= 2.0


def _cell(w: Worst | None, dtype: str) -> str:
    if w is None:
        return "—"
    mark = "" if _bound_ok(w, dtype) else " ✗"
    return f"{fmt_ulp(w.raw)} / {fmt_ulp(w.per_kappa)}{mark}"


def gradient_tables(quick: bool = False) -> list[Table]:
    """Per dtype: the max gradient error of every op for every library; then floatguard's misses."""
    m = GradMeasure(quick)
    tables, misses = [], []
    for dtype in DTYPES:
        libs = [lib for lib in LIBS if _supports(lib, dtype)]
        rows = []
        for op in OPS:
            worsts = {lib: m.error(op, lib, dtype) for lib in libs}
            rows.append([op.name, *(_cell(worsts[lib], dtype) for lib in libs)])
            for lib in FG_LIBS & set(libs):
                w = worsts[lib]
                if w is not None and not _bound_ok(w, dtype):
                    misses.append([op.name, lib, dtype, w.where])
        bound = "2 ulp × max(1, κ): the second number ≤ 2 (the first ≤ 2 where a flat 2 ulp holds too)"
        tables.append(make_table(
            f"Gradient (VJP) error in ulps ({dtype}): max / max of err ÷ max(1, κ)",
            ["op", *libs],
            rows,
            caption=f"ulp of {dtype} at the exact VJP d/dx Σ w·f(x) (mpmath at the exact inputs; w ∈ [0.5, 1.5] "
            "seeded, 1 for the mean losses). κ = condition of the gradient entry under relative perturbations of "
            "the inputs + cancellation of the backward formula on the forward's rounded output, e.g. softmax "
            f"(|w_i| + Σ|w_j p_j|) / |w_i − ⟨w,p⟩|. Bound: {bound}; ✗: floatguard (or the peer) misses it. "
            "JAX CE/BCE: optax's formulas on jax.nn (CE with weight, smoothing or probabilities: PyTorch's "
            "semantics, optax's smooth_labels); JAX: an exact subnormal within the smallest normal counts as "
            "exact (XLA flushes subnormals); —: no such op or dtype.",
        ))
    miss_table = make_table(
        "floatguard gradients outside the bound: the worst entry",
        ["op", "library", "dtype", "worst entry: case, entry (inputs), error, κ, exact, got"],
        misses or [["—", "—", "—", "none: every floatguard gradient is within its bound"]],
        text_columns=3,
    )
    miss_table.columns[3].justify = "left"
    return [*tables, miss_table]


def main(argv: Sequence[str] | None = None) -> list[Table]:
    """Measure the gradients of every op for every library; print and return the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first group of cases of each op, smaller rows")
    args = parser.parse_args(argv)
    tables = gradient_tables(args.quick)
    print_tables(tables)
    return tables


if __name__ == "__main__":
    main()
