"""Accuracy of floatguard beside SciPy/NumPy, PyTorch, JAX and the naive formulas, in ulps.

Every library gets the same adversarial inputs (rows where one term dominates,
logits spread over ±100, large offsets, confident predictions, ``-inf``
entries, ...), in float32 and float64. Errors are measured with
:mod:`floatguard.testing`: ``ulp_error`` of each result (rounded to the input
dtype) against mpmath references evaluated on the exact floating inputs. The
first tables give the largest error of each op over all its cases; the next
singles out the cases quoted in the issue, and the last shows the gradient of
log-sum-exp over an all ``-inf`` row (a fully masked attention row).

Run ``python benchmarks/accuracy.py`` (``--quick``: only the issue's cases, or
the first group of cases, of each op, on smaller rows).
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special as sps
import torch
import torch.nn.functional as F
from _table import fmt_ulp, make_table, print_tables
from rich.table import Table

import floatguard as fg
from floatguard import testing as fgt

jax.config.update("jax_enable_x64", True)

LIBS = ("floatguard", "naive", "SciPy / NumPy", "PyTorch", "JAX")
DTYPES = (np.float32, np.float64)

Inputs = tuple[Any, ...]  # arguments of one case (float arrays in float64, ints as they are)
Impl = Callable[..., Any]


# -- conversions -------------------------------------------------------------------------------
def _t(a: Any) -> Any:
    return torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a


def _j(a: Any) -> Any:
    return jnp.asarray(a) if isinstance(a, np.ndarray) else a


def _torch(f: Impl) -> Impl:
    return lambda *a: f(*(_t(v) for v in a))


def _jax(f: Impl) -> Impl:
    jf = jax.jit(f)  # one compilation per shape instead of one per primitive
    return lambda *a: jf(*(_j(v) for v in a))


# -- naive formulas (evaluated in the input dtype) ------------------------------------------------
def _naive_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x)
    return e / np.sum(e)


def _naive_sigmoid(x: np.ndarray) -> np.ndarray:
    one = x.dtype.type(1)
    return one / (one + np.exp(-x))


def _naive_bce(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    s = _naive_sigmoid(x)
    one = x.dtype.type(1)
    return -(y * np.log(s) + (one - y) * np.log(one - s))


# -- cases --------------------------------------------------------------------------------------------
def _row_groups(quick: bool) -> dict[str, list[Inputs]]:
    rng = np.random.default_rng(0)
    n = 100 if quick else 1000
    return {
        "dominant [0, −30×50]": [(np.array([0.0] + [-30.0] * 50),)],
        "spread ±100": [(rng.uniform(-100, 100, n),)],
        "dominant [0, −17×10]": [(np.array([0.0] + [-17.0] * 10),)],
        "offset +1000": [(1000 + rng.standard_normal(50),)],
        "offset −1000": [(-1000 + rng.standard_normal(50),)],
        "normal": [(rng.standard_normal(100),) for _ in range(1 if quick else 3)],
        "with −inf": [(np.array([-np.inf, 0.5, -np.inf, 2.0]),)],
    }


def _ce_groups(quick: bool) -> dict[str, list[Inputs]]:
    """Rows of the reductions with the most and the least likely class as target."""
    out: dict[str, list[Inputs]] = {}
    for name, rows in _row_groups(quick).items():
        cases = []
        for (row,) in rows:
            cases.append((row, int(np.argmax(row))))
            cases.append((row, int(np.argmin(row))))
        out[name] = cases
    return out


def _grid(lo: float, hi: float, n: int) -> np.ndarray:
    return np.linspace(lo, hi, n)


def _softplus_groups(quick: bool) -> dict[str, list[Inputs]]:
    return {
        "x ∈ (20, 37)": [(_grid(20.25, 36.75, 34),)],
        "grid [−50, 50]": [(_grid(-50, 50, 101 if quick else 401),)],
        "large |x|": [(np.array([-1000.0, -200.0, -100.0, 100.0, 200.0, 1000.0]),)],
        "tiny |x|": [(np.array([1e-30, 1e-10, -1e-10, -1e-30]),)],
    }


def _sigmoid_groups(quick: bool) -> dict[str, list[Inputs]]:
    return {
        "grid [−50, 50]": [(_grid(-50, 50, 101 if quick else 401),)],
        "large |x|": [(np.array([-800.0, -100.0, -90.0, -30.0, 30.0, 90.0, 100.0, 800.0]),)],
    }


def _log_sigmoid_groups(quick: bool) -> dict[str, list[Inputs]]:
    return {
        "grid [−50, 50]": [(_grid(-50, 50, 101 if quick else 401),)],
        "confident x ∈ [15, 40]": [(_grid(15, 40, 26),)],
        "very negative": [(np.array([-1000.0, -200.0, -100.0]),)],
    }


def _logaddexp_groups(quick: bool) -> dict[str, list[Inputs]]:
    rng = np.random.default_rng(1)
    n = 50 if quick else 200
    a = rng.uniform(-50, 50, n)
    return {
        "random ±100": [(rng.uniform(-100, 100, n), rng.uniform(-100, 100, n))],
        "far apart (a, a − 30)": [(a, a - 30 - rng.uniform(0, 5, n))],
        "large": [(np.array([1000.0, -1000.0, 800.0]), np.array([1000.5, -1000.0, 799.0]))],
        "−inf": [(np.array([-np.inf, -np.inf, 1.0]), np.array([-np.inf, 0.0, -np.inf]))],
    }


def _xlogy_groups(quick: bool) -> dict[str, list[Inputs]]:
    xs, ys = np.meshgrid([0.5, 2.0, -3.0, 7.25], [1e-30, 0.1, 0.5, 0.999, 2.0, 10.0, 1e30])
    return {
        "grid": [(xs.ravel(), ys.ravel())],
        "x = 0": [(np.zeros(3), np.array([0.0, 1.0, np.inf]))],
    }


def _xlog1py_groups(quick: bool) -> dict[str, list[Inputs]]:
    ys = 10.0 ** -np.arange(1, 20)
    return {
        "small y": [(np.full(ys.shape, 1.5), ys)],
        "grid": [(np.array([0.5, 2.0, -3.0, 1.0]), np.array([-0.5, 0.5, 10.0, 1e30]))],
        "x = 0": [(np.zeros(2), np.array([-1.0, 0.0]))],
    }


def _bce_groups(quick: bool) -> dict[str, list[Inputs]]:
    x = _grid(10, 40, 31)
    g = _grid(-20, 20, 41)
    return {
        "confident": [(np.concatenate([x, -x]), np.concatenate([np.ones_like(x), np.zeros_like(x)]))],
        "grid, y ∈ {0, 0.3, 1}": [(np.tile(g, 3), np.repeat([0.0, 0.3, 1.0], g.size))],
        "confidently wrong": [(np.array([30.0, -30.0]), np.array([0.0, 1.0]))],
    }


# -- ops ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """An op: its cases, its mpmath reference and one implementation per library (None: none)."""

    name: str
    groups: Callable[[bool], dict[str, list[Inputs]]]
    ref: Callable[..., Any]
    cond: Callable[..., Any]  # relative condition number of each output entry
    impls: dict[str, Impl | None]


def _ce_torch(x: Any, c: int) -> Any:
    return F.cross_entropy(x[None], torch.tensor([c]), reduction="none")


def _ce_naive(x: np.ndarray, c: int) -> Any:
    return -np.log(np.exp(x[c]) / np.sum(np.exp(x)))


def _vec(ref: Callable[..., Any]) -> Callable[..., Any]:
    return fgt.vectorize(ref)


def _econd(cond: Callable[..., float]) -> Callable[..., Any]:
    return fgt.cond_elementwise(cond)


OPS: list[Op] = [
    Op("logsumexp", _row_groups, fgt.ref_logsumexp, fgt.cond_logsumexp, {
        "floatguard": fg.logsumexp,
        "naive": lambda x: np.log(np.sum(np.exp(x))),
        "SciPy / NumPy": sps.logsumexp,
        "PyTorch": _torch(lambda x: torch.logsumexp(x, dim=-1)),
        "JAX": _jax(jax.nn.logsumexp),
    }),
    Op("softmax", _row_groups, fgt.ref_softmax, fgt.cond_softmax, {
        "floatguard": fg.softmax,
        "naive": _naive_softmax,
        "SciPy / NumPy": sps.softmax,
        "PyTorch": _torch(lambda x: torch.softmax(x, dim=-1)),
        "JAX": _jax(jax.nn.softmax),
    }),
    Op("log_softmax", _row_groups, fgt.ref_log_softmax, fgt.cond_log_softmax, {
        "floatguard": fg.log_softmax,
        "naive": lambda x: np.log(_naive_softmax(x)),
        "SciPy / NumPy": sps.log_softmax,
        "PyTorch": _torch(lambda x: torch.log_softmax(x, dim=-1)),
        "JAX": _jax(jax.nn.log_softmax),
    }),
    Op("cross_entropy", _ce_groups, fgt.ref_cross_entropy_row, fgt.cond_cross_entropy_row, {
        "floatguard": lambda x, c: fg.cross_entropy(x[None], np.array([c]), reduction="none"),
        "naive": _ce_naive,
        "SciPy / NumPy": None,
        "PyTorch": _torch(_ce_torch),
        "JAX": None,  # optax is not installed
    }),
    Op("logcumsumexp", _row_groups, fgt.ref_logcumsumexp, fgt.cond_logcumsumexp, {
        "floatguard": fg.logcumsumexp,
        "naive": lambda x: np.log(np.cumsum(np.exp(x))),
        "SciPy / NumPy": np.logaddexp.accumulate,
        "PyTorch": _torch(lambda x: torch.logcumsumexp(x, dim=-1)),
        "JAX": _jax(jax.lax.cumlogsumexp),
    }),
    Op("logaddexp", _logaddexp_groups, _vec(fgt.ref_logaddexp), _econd(fgt.cond_logaddexp), {
        "floatguard": fg.logaddexp,
        "naive": lambda a, b: np.log(np.exp(a) + np.exp(b)),
        "SciPy / NumPy": np.logaddexp,
        "PyTorch": _torch(torch.logaddexp),
        "JAX": _jax(jnp.logaddexp),
    }),
    Op("softplus", _softplus_groups, _vec(fgt.ref_softplus), _econd(fgt.cond_softplus), {
        "floatguard": fg.softplus,
        "naive": lambda x: np.log(x.dtype.type(1) + np.exp(x)),
        "SciPy / NumPy": sps.softplus,
        "PyTorch": _torch(F.softplus),
        "JAX": _jax(jax.nn.softplus),
    }),
    Op("sigmoid", _sigmoid_groups, _vec(fgt.ref_sigmoid), _econd(fgt.cond_sigmoid), {
        "floatguard": fg.sigmoid,
        "naive": _naive_sigmoid,
        "SciPy / NumPy": sps.expit,
        "PyTorch": _torch(torch.sigmoid),
        "JAX": _jax(jax.nn.sigmoid),
    }),
    Op("log_sigmoid", _log_sigmoid_groups, _vec(fgt.ref_log_sigmoid), _econd(fgt.cond_log_sigmoid), {
        "floatguard": fg.log_sigmoid,
        "naive": lambda x: np.log(_naive_sigmoid(x)),
        "SciPy / NumPy": sps.log_expit,
        "PyTorch": _torch(F.logsigmoid),
        "JAX": _jax(jax.nn.log_sigmoid),
    }),
    Op("xlogy", _xlogy_groups, _vec(fgt.ref_xlogy), _econd(fgt.cond_xlogy), {
        "floatguard": fg.xlogy,
        "naive": lambda x, y: x * np.log(y),
        "SciPy / NumPy": sps.xlogy,
        "PyTorch": _torch(torch.special.xlogy),
        "JAX": _jax(jax.scipy.special.xlogy),
    }),
    Op("xlog1py", _xlog1py_groups, _vec(fgt.ref_xlog1py), _econd(fgt.cond_xlog1py), {
        "floatguard": fg.xlog1py,
        "naive": lambda x, y: x * np.log(y.dtype.type(1) + y),
        "SciPy / NumPy": sps.xlog1py,
        "PyTorch": _torch(torch.special.xlog1py),
        "JAX": _jax(jax.scipy.special.xlog1py),
    }),
    Op("binary_cross_entropy_with_logits", _bce_groups, _vec(fgt.ref_bce_with_logits),
       _econd(fgt.cond_bce_with_logits), {
        "floatguard": lambda x, y: fg.binary_cross_entropy_with_logits(x, y, reduction="none"),
        "naive": _naive_bce,
        "SciPy / NumPy": None,
        "PyTorch": _torch(lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none")),
        "JAX": None,  # optax is not installed
    }),
]
OPS_BY_NAME = {op.name: op for op in OPS}


# -- measurement ----------------------------------------------------------------------------------
def _cast(inputs: Inputs, dtype: Any) -> Inputs:
    return tuple(a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in inputs)


class Measure:
    """Errors in ulps, with the references of each case computed once."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self._groups: dict[str, dict[str, list[Inputs]]] = {}
        self._refs: dict[tuple[str, str, str, int], tuple[Any, np.ndarray]] = {}

    def groups(self, op: Op) -> dict[str, list[Inputs]]:
        """The case groups of ``op``; ``quick`` keeps those of the issue's cases (else the first)."""
        if op.name not in self._groups:
            groups = op.groups(self.quick)
            if self.quick:
                keep = [g for _, name, g, _ in MUST_SHOW if name == op.name] or [next(iter(groups))]
                groups = {g: groups[g] for g in keep}
            self._groups[op.name] = groups
        return self._groups[op.name]

    def _ref(self, op: Op, group: str, dtype: Any, i: int, inputs: Inputs) -> tuple[Any, np.ndarray]:
        key = (op.name, group, np.dtype(dtype).name, i)
        if key not in self._refs:
            exact = op.ref(*inputs)
            cond = np.broadcast_to(np.asarray(op.cond(*inputs), dtype=np.float64), np.shape(exact))
            self._refs[key] = (exact, cond)
        return self._refs[key]

    def error(
        self, op: Op, lib: str, dtype: Any, groups: Sequence[str] | None = None, *, per_cond: bool = False
    ) -> float | None:
        """Largest ulp error of ``lib``'s ``op`` over the cases of ``groups`` (all by default).

        With ``per_cond`` each error is divided by ``max(1, cond)`` first. None: the library has no such op.
        """
        impl = op.impls[lib]
        if impl is None:
            return None
        worst = 0.0
        for group, cases in self.groups(op).items():
            if groups is not None and group not in groups:
                continue
            for i, raw in enumerate(cases):
                inputs = _cast(raw, dtype)
                exact, cond = self._ref(op, group, dtype, i, inputs)
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        out = impl(*inputs)
                    except Exception:  # a library that refuses a case counts as wrong on it
                        return math.inf
                    got = np.asarray(fgt.to_float64(out)).astype(dtype).reshape(np.shape(exact))
                    err = np.asarray(fgt.ulp_error(got, exact, dtype), dtype=np.float64)
                    if per_cond:  # an undefined (NaN) condition number counts as 1
                        err = np.where(err == 0, 0.0, err / np.fmax(1.0, cond))
                        err = np.where(np.isnan(err), math.inf, err)
                worst = max(worst, float(err.max(initial=0.0)))
        return worst


def _cell(v: float | None) -> str:
    return "—" if v is None else fmt_ulp(v)


def op_tables(m: Measure) -> list[Table]:
    """Per dtype: the largest ulp error of every op for every library."""
    tables = []
    for dtype in DTYPES:
        rows = []
        for op in OPS:
            n_cases = sum(len(c) for c in m.groups(op).values())
            row = [op.name, *(_cell(m.error(op, lib, dtype)) for lib in LIBS)]
            if dtype == np.float64:
                row.append(_cell(m.error(op, "floatguard", dtype, per_cond=True)))
            rows.append([*row, str(n_cases)])
        name = np.dtype(dtype).name
        cond_col = ["floatguard ÷ max(1, cond)"] if dtype == np.float64 else []
        bound = (
            " Target: ≤ 1 ulp." if dtype == np.float32
            else " Target: ≤ 2 ulp × max(1, cond), cond the relative condition number at the input."
        )
        tables.append(make_table(
            f"Max error in ulps ({name}), over the same adversarial cases for every library",
            ["op", *LIBS, *cond_col, "cases"],
            rows,
            caption=f"ulp of {name} at the exact value (mpmath on the exact inputs); results rounded to {name}."
            f"{bound} inf: NaN/inf where the exact value is finite (or the library raised). —: the library has"
            " no such op (JAX: optax not installed).",
        ))
    return tables


MUST_SHOW: list[tuple[str, str, str, Any]] = [
    ("log_softmax of [0, −30×50]", "log_softmax", "dominant [0, −30×50]", np.float32),
    ("log_softmax of [0, −30×50]", "log_softmax", "dominant [0, −30×50]", np.float64),
    ("softplus, x ∈ (20, 37)", "softplus", "x ∈ (20, 37)", np.float64),
    ("BCE with logits, confident predictions (|x| ∈ [10, 40])", "binary_cross_entropy_with_logits", "confident",
     np.float32),
    ("softmax of logits spread over ±100", "softmax", "spread ±100", np.float32),
]


def must_show_table(m: Measure) -> Table:
    """The cases quoted in the issue, one row each."""
    rows = []
    for label, op_name, group, dtype in MUST_SHOW:
        op = OPS_BY_NAME[op_name]
        errs = [_cell(m.error(op, lib, dtype, [group])) for lib in LIBS]
        rows.append([label, np.dtype(dtype).name, *errs])
    return make_table(
        "Cases from the issue: max error in ulps",
        ["case", "dtype", *LIBS],
        rows,
        text_columns=2,
    )


def _grad_torch(f: Impl) -> tuple[str, str]:
    x = torch.full((4,), -math.inf, dtype=torch.float64, requires_grad=True)
    y = f(x)
    y.sum().backward()
    return _show(y.detach().numpy()), _show(x.grad.numpy())


def _grad_jax(f: Impl) -> tuple[str, str]:
    x = jnp.full((4,), -jnp.inf, dtype=jnp.float64)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(f(v))))
    return _show(np.asarray(jax.jit(f)(x))), _show(np.asarray(grad(x)))


def _show(a: np.ndarray) -> str:
    a = np.atleast_1d(a)
    vals = sorted({str(float(v)) for v in a.ravel()})
    return ", ".join(vals) + ("" if a.size == 1 else f" (all {a.size})" if len(vals) == 1 else "")


def gradient_table() -> Table:
    """Value and gradient over a row of four -inf (a fully masked attention row), float64."""
    rows = [
        ["torch.logsumexp", *_grad_torch(lambda x: torch.logsumexp(x, dim=-1))],
        ["floatguard.logsumexp (torch)", *_grad_torch(lambda x: fg.logsumexp(x, axis=-1))],
        ["jax.nn.logsumexp", *_grad_jax(jax.nn.logsumexp)],
        ["floatguard.logsumexp (JAX)", *_grad_jax(lambda x: fg.logsumexp(x, axis=-1))],
        ["torch.softmax", *_grad_torch(lambda x: torch.softmax(x, dim=-1))],
        ["floatguard.softmax (torch)", *_grad_torch(lambda x: fg.softmax(x, axis=-1))],
        ["jax.nn.softmax", *_grad_jax(jax.nn.softmax)],
        ["floatguard.softmax (JAX)", *_grad_jax(lambda x: fg.softmax(x, axis=-1))],
    ]
    return make_table(
        "All −inf row [−inf, −inf, −inf, −inf] (fully masked), float64: value and gradient",
        ["function", "value", "gradient of the sum of the outputs"],
        rows,
        text_columns=3,
    )


def main(argv: Sequence[str] | None = None) -> list[Table]:
    """Measure every op for every library; print and return the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the issue's cases (or one group) per op")
    args = parser.parse_args(argv)
    m = Measure(args.quick)
    tables = [*op_tables(m), must_show_table(m), gradient_table()]
    print_tables(tables)
    return tables


if __name__ == "__main__":
    main()
