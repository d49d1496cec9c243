"""Reproduce Blanchard, Higham & Higham (2021) on their MNIST pre-softmax vectors, in float16.

P. Blanchard, D. J. Higham and N. J. Higham, "Accurately computing the log-sum-exp
and softmax functions", IMA J. Numer. Anal. 41(4), 2021. The paper simulates
fp16 arithmetic (every operation rounded to fp16); here NumPy float16 arrays do
that: each elementwise op is rounded to float16, and sums are accumulated one
term at a time in float16 (``np.sum`` would accumulate float16 in float32).

Errors are relative, in units of fp16's unit roundoff u = 2^-11, against an exact
reference (mpmath, 40 digits) on the fp16-rounded inputs: ``|f^ - f| / |f|`` for
log-sum-exp and the normwise ``||g^ - g||_inf / ||g||_inf`` for softmax, as in the
paper. Run ``python benchmarks/paper_bhh2021.py`` (``--quick`` uses 500 vectors).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mpmath
import numpy as np
from _table import fmt_float, make_table, print_tables
from rich.table import Table

import floatguard as fg

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "blanchard-higham-higham-2021" / "presoftmax.npz"
U16 = 2.0**-11  # unit roundoff of float16
PUBLISHED = {"unshifted_overflow": 475, "shifted_overflow": 0, "softmax_div_median": 0.5, "softmax_exp_lse_median": 2.5}

H = np.float16


@dataclass
class Result:
    """One algorithm: its fp16 output per vector and which vectors overflowed."""

    name: str
    kind: str  # "lse" or "softmax"
    value: np.ndarray  # (n,) for lse, (n, d) for softmax
    overflow: np.ndarray  # (n,) bool


def load(path: Path = DATA, n: int | None = None) -> np.ndarray:
    """The pre-softmax vectors, rounded to float16 (the paper's inputs)."""
    with np.load(path) as d:
        logits = d["logits"]
    return logits[:n].astype(np.float16)


def reference(x: np.ndarray, dps: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Exact log-sum-exp and softmax of each row of ``x`` (mpmath, rounded to float64)."""
    lse = np.empty(x.shape[0])
    sm = np.empty(x.shape)
    with mpmath.workdps(dps):
        for r, row in enumerate(x.astype(np.float64)):
            e = [mpmath.exp(mpmath.mpf(float(v))) for v in row]
            s = mpmath.fsum(e)
            lse[r] = float(mpmath.log(s))
            sm[r] = [float(v / s) for v in e]
    return lse, sm


def _sum16(w: np.ndarray) -> np.ndarray:
    """Recursive summation along the last axis with every partial sum rounded to fp16."""
    s = w[..., 0].copy()
    for i in range(1, w.shape[-1]):
        s = s + w[..., i]
    return s


def fp16_algorithms(x: np.ndarray) -> list[Result]:
    """The paper's algorithms evaluated in fp16 arithmetic on the float16 rows ``x``."""
    assert x.dtype == np.float16
    out: list[Result] = []
    with np.errstate(all="ignore"):
        # unshifted: w = exp(x), s = sum w, f = log s, g = w / s
        w = np.exp(x)
        s0 = _sum16(w)
        f0 = np.log(s0)
        g0 = w / s0[:, None]
        over0 = ~np.isfinite(s0)
        # shifted (Alg. 2): a = max x, s = sum exp(x - a), f = a + log s
        a = x.max(axis=1)
        e = np.exp(x - a[:, None])
        s = _sum16(e)
        f2 = a + np.log(s)
        # shifted with the max term taken out and log1p (Alg. 3, the paper's recommendation)
        k = x.argmax(axis=1)
        others = np.arange(x.shape[1])[None, :] != k[:, None]
        s3 = _sum16(np.where(others, e, H(0)))
        f3 = a + np.log1p(s3)
        g_div = e / s[:, None]
        g_free = np.exp(x - f3[:, None])
        g_bhh = e / (H(1) + s3)[:, None]
    fg_lse = fg.logsumexp(x, axis=1)
    fg_sm = fg.softmax(x, axis=1)

    def over(v: np.ndarray) -> np.ndarray:
        return ~np.isfinite(v) if v.ndim == 1 else ~np.isfinite(v).all(axis=1)

    out += [
        Result("LSE unshifted: log(Σ exp x)", "lse", f0, over0 | over(f0)),
        Result("LSE shifted (Alg. 2): a + log(Σ exp(x−a))", "lse", f2, over(f2)),
        Result("LSE shifted + log1p (Alg. 3): a + log1p(Σ_{i≠k} exp(x_i−a))", "lse", f3, over(f3)),
        Result("floatguard.logsumexp (float16 in/out)", "lse", fg_lse, over(fg_lse)),
        Result("softmax unshifted: exp(x) / Σ exp x", "softmax", g0, over0 | over(g0)),
        Result("softmax shifted, division: exp(x−a) / Σ exp(x−a)", "softmax", g_div, over(g_div)),
        Result("softmax shifted, division-free: exp(x − lse)", "softmax", g_free, over(g_free)),
        Result("softmax shifted, max term out: exp(x−a) / (1 + s)", "softmax", g_bhh, over(g_bhh)),
        Result("floatguard.softmax (float16 in/out)", "softmax", fg_sm, over(fg_sm)),
    ]
    return out


def errors(res: Result, lse_ref: np.ndarray, sm_ref: np.ndarray) -> np.ndarray:
    """Relative error per vector in units of u (NaN where the algorithm overflowed)."""
    v = res.value.astype(np.float64)
    if res.kind == "lse":
        err = np.abs(v - lse_ref) / np.abs(lse_ref)
    else:
        err = np.max(np.abs(v - sm_ref), axis=1) / np.max(np.abs(sm_ref), axis=1)
    err = err / U16
    err[res.overflow] = np.nan
    return err


def build(x: np.ndarray) -> tuple[Table, dict[str, float]]:
    """The result table, and the measured counterparts of the published numbers."""
    lse_ref, sm_ref = reference(x)
    results = fp16_algorithms(x)
    rows = []
    by_name: dict[str, tuple[int, float]] = {}
    for res in results:
        err = errors(res, lse_ref, sm_ref)
        ok = err[~np.isnan(err)]
        med = float(np.median(ok)) if ok.size else float("nan")
        mx = float(np.max(ok)) if ok.size else float("nan")
        n_over = int(res.overflow.sum())
        by_name[res.name] = (n_over, med)
        rows.append([res.name, f"{n_over} / {len(x)}", fmt_float(med, 3), fmt_float(mx, 3), str(ok.size)])
    names = [r.name for r in results]
    measured = {
        "unshifted_overflow": by_name[names[0]][0],
        "shifted_overflow": by_name[names[1]][0],
        "floatguard_overflow": by_name[names[3]][0],
        "softmax_div_median": by_name[names[5]][1],
        "softmax_exp_lse_median": by_name[names[6]][1],
        "softmax_max_out_median": by_name[names[7]][1],
    }
    table = make_table(
        f"Blanchard–Higham–Higham (2021) MNIST pre-softmax vectors, fp16 arithmetic ({len(x)} vectors of {x.shape[1]})",
        ["algorithm (every op rounded to fp16)", "overflow", "median err (u)", "max err (u)", "vectors measured"],
        rows,
        caption="u = 2^-11. Error: |f^−f|/|f| for LSE, ‖g^−g‖∞/‖g‖∞ for softmax, against mpmath on the fp16 inputs;"
        " over the vectors that did not overflow.",
    )
    return table, measured


def comparison_line(measured: dict[str, float], n: int) -> str:
    """One line setting the measured numbers beside the published ones."""
    p = PUBLISHED
    return (
        f"Published (BHH 2021, 2500 vectors): unshifted LSE overflows on {p['unshifted_overflow']}, shifted on "
        f"{p['shifted_overflow']}; softmax median error ≈{p['softmax_div_median']}u (shifted, division) vs "
        f"≈{p['softmax_exp_lse_median']}u (exp(x − lse)).\n"
        f"Measured here ({n} vectors): unshifted overflows on {measured['unshifted_overflow']}, shifted on "
        f"{measured['shifted_overflow']}, floatguard on {measured['floatguard_overflow']}; softmax median "
        f"{measured['softmax_div_median']:.2f}u (shifted, division; {measured['softmax_max_out_median']:.2f}u with the "
        f"max term out) vs {measured['softmax_exp_lse_median']:.2f}u (exp(x − lse))."
    )


def main(argv: Sequence[str] | None = None) -> list[Table]:
    """Run the reproduction, print the table and the comparison; return the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the first 500 vectors")
    parser.add_argument("--data", type=Path, default=DATA, help="path of presoftmax.npz")
    args = parser.parse_args(argv)
    x = load(args.data, 500 if args.quick else None)
    table, measured = build(x)
    print_tables([table])
    print(comparison_line(measured, len(x)))
    return [table]


if __name__ == "__main__":
    main()
