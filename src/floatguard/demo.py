"""``floatguard demo``: each classic floating-point failure next to its cure.

Every row shows a naive formula, the floatguard op that replaces it and the
exact value (50 significant digits with mpmath, or with Python's ``decimal``
module when mpmath is not installed), each judged by a verdict:

``✓``            within 2 ulp of the exact value (for division: finite)
``✗ overflow``   a result (or an intermediate) beyond the format's largest number
``✗ underflow``  a result flushed to 0, or its log to ``-inf``
``✗ NaN``        an undefined operation (``inf/inf``, ``0/0``, ``-inf - -inf``)
``✗ rel. err r`` finite but more than 2 ulp away: digits lost

:func:`run_demo` prints the tables and returns the same numbers as data. NumPy
is all it needs: PyTorch (gradients, bfloat16 fallback) and ml_dtypes
(bfloat16, installed with JAX) are imported only if present, and what could not
be shown is listed at the end. The second half, silent failures found by the
monitor, the sanitizer and the linter, is :mod:`floatguard.demo_detect`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from .demo_numbers import _bfloat16, _Exact, _numpy_format, _optional
from .demo_sections import _SECTIONS, _Env

__all__ = ["run_demo"]


# -- printing -----------------------------------------------------------------------
def _default_console() -> Any:
    from rich.console import Console

    stream = sys.stdout
    try:
        "✓✗αΣ∏−∂×≤".encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
    if not stream.isatty() and "COLUMNS" not in os.environ:
        return Console(highlight=False, width=120)  # piped or captured: wide enough for the tables
    return Console(highlight=False)


def _verdict_text(verdict: str, console: Any) -> Any:
    from rich.text import Text

    ok = verdict.startswith("✓")
    if not (console.encoding or "").lower().startswith("utf"):  # e.g. an ASCII-only pipe: keep ✓/✗ apart
        verdict = verdict.replace("✓", "ok").replace("✗", "FAIL:")
    return Text(verdict, style="bold green" if ok else "bold red")


def _print_header(console: Any, index: int, section: dict[str, Any]) -> None:
    from rich.text import Text

    console.print()
    console.rule(Text(f"{index}. {section['title']}", style="bold"))
    console.print(Text(section["why"], style="italic"))
    code = f"naive: {section['naive_code']}"
    if section["stable_code"]:
        code += f"    floatguard: {section['stable_code']}"
    console.print(Text(code, style="dim"))


def _print_exp(console: Any, section: dict[str, Any], ex: _Exact) -> None:
    from rich.table import Table
    from rich.text import Text

    formats = section["formats"]
    table = Table(header_style="bold")
    table.add_column("")
    for name in formats:
        table.add_column(name, justify="right", overflow="fold")
    for label, key in (("max", "max"), ("min normal (tiny)", "tiny"), ("min subnormal", "smallest_subnormal"),
                       ("eps", "eps")):
        table.add_row(Text(label), *(Text(f"{info[key]:.4g}") for info in formats.values()))
    table.add_row(Text("e^x finite and ≠ 0 for"),
                  *(Text("{:.4g} < x < {:.4g}".format(*info["exp_finite_nonzero"])) for info in formats.values()),
                  end_section=True)
    for case in ("e^1000", "e^-1000"):
        by_fmt = {row["dtype"]: row for row in section["rows"] if row["case"] == case}
        table.add_row(Text(f"naive {case}"),
                      *(Text.assemble(by_fmt[n]["naive_text"], " ", _verdict_text(by_fmt[n]["naive_verdict"], console))
                        for n in formats))
    console.print(table)
    console.print(Text(f"exact ({ex.short}): e^1000 = {section['exact_1000']}, e^-1000 = {section['exact_-1000']}"))


def _print_rows(console: Any, section: dict[str, Any], ex: _Exact) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold")
    for col in ("case", "naive", "", "floatguard", "", f"exact ({ex.short})"):
        table.add_column(col, justify="right" if col in ("naive", "floatguard") or col.startswith("exact") else "left",
                         overflow="fold")
    for row in section["rows"]:
        table.add_row(Text(row["case"]), Text(row["naive_text"]), _verdict_text(row["naive_verdict"], console),
                      Text(row["stable_text"]), _verdict_text(row["stable_verdict"], console), Text(row["exact_text"]))
    console.print(table)


def _print_lse_steps(console: Any, section: dict[str, Any]) -> None:
    from rich.text import Text

    for row in section["rows"]:
        alpha = row["alpha"]
        terms = " + ".join(f"e^{s:g}" for s in row["shifted"])
        console.print(Text(f"{row['case']}: α = max z = {alpha:g};  log Σ e^z = α + log Σ e^(z−α) = "
                           f"{alpha:g} + log({terms}) = {alpha:g} + log({row['shifted_sum']:.6g}) "
                           f"= {row['stable_text']}"))


# -- entry point --------------------------------------------------------------------
def run_demo(console: Any = None) -> dict[str, Any]:
    """Print each failure and its cure as tables on ``console``, then the tools that find them; return the numbers.

    After the eight cures come the detection sections of :mod:`floatguard.demo_detect`:
    the training monitor on a silently failing run (needs torch), the sanitizer naming the
    first bad op of a run that goes NaN, and the linter flagging that line before it runs.

    ``console`` is a :class:`rich.console.Console` (default: standard output; plain
    text when that is not a terminal). The result is::

        {"exact_method": str, "bfloat16": "ml_dtypes" | "torch" | None, "skipped": [str, ...],
         "sections": {key: {"title", "why", "naive_code", "stable_code", "rows": [row, ...], ...}},
         "detection": {"monitor", "sanitizer", "lint"},  # see floatguard.demo_detect.run_detection
         "summary": {"naive_failed", "stable_failed", "compared"}}

    where each row holds ``case``, ``dtype``, ``inputs`` and the ``naive``, ``stable``
    (floatguard) and ``exact`` values as Python floats (lists for arrays; ``exact``
    is None where float64 cannot hold it, or where no finite answer exists), their
    printed ``*_text`` and the ``naive_verdict`` / ``stable_verdict`` strings.
    """
    from rich.text import Text

    if console is None:
        console = _default_console()
    ex = _Exact()
    torch, torch_missing = _optional("torch")
    skipped: list[str] = []
    formats = {"float16": _numpy_format(np.float16, 6)}
    bf16, why = _bfloat16(torch)
    if bf16 is not None:
        formats["bfloat16"] = bf16
    else:
        skipped.append(why or "bfloat16")
    formats["float32"] = _numpy_format(np.float32, 10)
    formats["float64"] = _numpy_format(np.float64, 17)
    env = _Env(ex, formats, torch, torch_missing, skipped)

    console.print(Text("floatguard demo: floating-point failures and their cures", style="bold"))
    console.print(Text(f"exact values: {ex.name}", style="dim"))
    console.print(Text("✓ within 2 ulp of exact (division: finite)   "
                       "✗ overflow, underflow, NaN or rel. err (digits lost)", style="dim"))
    sections: dict[str, Any] = {}
    for index, (key, build) in enumerate(_SECTIONS, 1):
        section = build(env)
        sections[key] = section
        _print_header(console, index, section)
        if key == "exp":
            _print_exp(console, section, ex)
        else:
            _print_rows(console, section, ex)
        if key == "logsumexp":
            _print_lse_steps(console, section)

    from .demo_detect import run_detection

    detection = run_detection(console, torch, torch_missing, skipped, first=len(_SECTIONS) + 1)
    compared = [r for s in sections.values() for r in s["rows"] if r["stable_verdict"] is not None]
    summary = {
        "compared": len(compared),
        "naive_failed": sum(not r["naive_verdict"].startswith("✓") for r in compared),
        "stable_failed": sum(not r["stable_verdict"].startswith("✓") for r in compared),
    }
    console.print()
    console.rule(Text("summary", style="bold"))
    console.print(Text(f"naive formulas: {summary['naive_failed']} of {summary['compared']} results wrong; "
                       f"floatguard: {summary['compared'] - summary['stable_failed']} of {summary['compared']} ✓"))
    for item in skipped:
        console.print(Text(f"skipped: {item}", style="yellow"))
    if not skipped:
        console.print(Text("skipped: nothing (torch and bfloat16 available)", style="dim"))
    return {
        "exact_method": ex.name,
        "bfloat16": None if bf16 is None else bf16.source,
        "skipped": skipped,
        "sections": sections,
        "detection": detection,
        "summary": summary,
    }
