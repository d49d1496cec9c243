"""The instabilities of transformer training at small scale, each with and without its cure (issue 15).

Each proxy of ``tests/monitor/instability_programs.py`` is trained twice from the same seed
on the same batches, under a default ``Monitor``: without and with its cure. The table
gives the finding of the uncured run (its kind, the step it began, the step it was
raised), the step at which the loss shows the failure and the lead time between the two,
the final loss (mean of the last 20 steps) with and without the cure, and whether the
cured run was silent.

"The loss shows it" is measured two ways, each giving a lead (that step minus the step
the finding was raised; positive: raised before the loss showed it):

* **to a user** (the loss curve alone, no cured run to compare with): the first step at
  which one of the monitor's loss-curve findings -- ``stalled_loss``, ``diverging_loss``,
  ``stuck_at_chance``, ``oscillating_loss``, ``loss_spike``, ``nonfinite_loss`` -- is
  raised (its ``detected_at``) on the uncured run; "never" when none is within the run.
  This is when the monitor without the five new kinds would have said something.
* **against the cured run** (hindsight): the first step from which the uncured run's
  10-step mean loss stays 5% above the cured run's for the rest of the run (for
  ``loss_spike``: the first step whose loss is 1.5x the cured run's); "never" when it
  does not.

Run ``python benchmarks/instabilities.py`` (a few minutes on one CPU thread);
``--quick`` is a smoke test (few steps; findings may not have time to appear).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _one_thread  # noqa: F401  (one thread, set before torch loads)
import torch
from _table import make_table, print_tables
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "monitor"))
import instability_programs as ip

HEADERS = ["proxy", "kind", "cure", "began", "raised", "loss shows it (user)", "lead", "loss shows it (vs cured)",
           "lead", "final loss", "final loss, cured", "cured silent"]
LOSS_CURVE = ("stalled_loss", "diverging_loss", "stuck_at_chance", "oscillating_loss", "loss_spike", "nonfinite_loss")
STEPS = {"attention": 300, "attention_fused": 300, "output_logits": 400, "bf16_sgd": 400, "adam_eps": 300,
         "loss_spike": 200}


def _mean(x: Sequence[float]) -> float:
    return sum(x) / max(len(x), 1)


def loss_shows(plain: Sequence[float], cured: Sequence[float], spike: bool) -> int | None:
    """The first step where the loss shows the failure (see the module docstring), or None."""
    if spike:
        return next((t for t, (a, b) in enumerate(zip(plain, cured, strict=True)) if a > 1.5 * b), None)
    n = min(len(plain), len(cured))
    above = [_mean(plain[max(0, t - 9):t + 1]) > 1.05 * _mean(cured[max(0, t - 9):t + 1]) for t in range(n)]
    if not above or not above[-1]:
        return None
    t = n - 1
    while t > 0 and above[t - 1]:
        t -= 1
    return t


def row(proxy: ip.Proxy, steps: int) -> list[str]:
    plain = proxy.run(cured=False, steps=steps)
    cured = proxy.run(cured=True, steps=steps)
    ev = next((e for e in plain.monitor.findings if e.kind == proxy.kind), None)
    shows = loss_shows(plain.losses, cured.losses, proxy.kind == "loss_spike")
    raised = ev.stats.get("detected_at") if ev is not None else None
    lead = "-" if raised is None or shows is None else str(shows - int(raised))
    curve = [int(e.stats["detected_at"]) for e in plain.monitor.findings if e.kind in LOSS_CURVE]
    user = min(curve) if curve else None
    lead_user = "-" if raised is None or user is None else str(user - int(raised))
    others = sorted({e.kind for e in plain.monitor.findings} - {proxy.kind})
    kind = (proxy.kind if ev is not None else f"({proxy.kind} missed)") + (f" + {', '.join(others)}" if others else "")
    silent = "yes" if not cured.monitor.findings else "no: " + ", ".join(e.kind for e in cured.monitor.findings)
    return [proxy.name, kind, proxy.cure, "-" if ev is None else str(ev.step), "-" if raised is None else str(raised),
            "never" if user is None else str(user), lead_user if user is not None or raised is None
            else f">{steps - int(raised)}", "never" if shows is None else str(shows), lead,
            f"{_mean(plain.losses[-20:]):.3g}",
            f"{_mean(cured.losses[-20:]):.3g}", silent]


def main(argv: Sequence[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps per proxy (a smoke test)")
    ap.add_argument("--only", nargs="*", help="run only these proxies")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    t0 = time.perf_counter()
    for proxy in ip.PROXIES:
        if args.only and proxy.name not in args.only:
            continue
        rows.append(row(proxy, 40 if args.quick else STEPS.get(proxy.name, proxy.steps)))
    table = make_table("Transformer instabilities: found before the loss shows them, and cured", HEADERS, rows,
                       caption=f"CPU, one thread, {time.perf_counter() - t0:.0f} s. 'loss shows it (user)': the "
                               "first loss-curve finding of the monitor on the uncured run (>N: none in the run); "
                               "'(vs cured)': the uncured 10-step mean loss stays 5% above the cured run's from that "
                               "step on (spike: 1.5x).",
                       text_columns=3)
    print_tables([table])
    return [table]


if __name__ == "__main__":
    main()
