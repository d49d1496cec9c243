"""Small helpers shared by the benchmark scripts: rich tables and number formatting.

Rich renders plain text (no colour codes) when stdout is not a terminal, so the
printed tables can be pasted into issues as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

__all__ = ["column", "console", "fmt_float", "fmt_ulp", "make_table", "print_tables"]


def console() -> Console:
    """A console on stdout wide enough for the widest table."""
    return Console(width=160)


def make_table(
    title: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    caption: str | None = None,
    text_columns: int = 1,
) -> Table:
    """A rich table; the first ``text_columns`` columns are left-aligned, the numbers right-aligned."""
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < text_columns else "right", no_wrap=i < text_columns)
    for row in rows:
        table.add_row(*row)
    return table


def column(table: Table, index: int = 0) -> list[str]:
    """The cells of one column of ``table``, as strings."""
    return [str(c) for c in table.columns[index].cells]


def print_tables(tables: Iterable[Table], con: Console | None = None) -> None:
    """Print each table followed by a blank line."""
    con = con or console()
    for t in tables:
        con.print(t)
        con.print()


def fmt_float(v: float, digits: int = 3) -> str:
    """A float with ``digits`` significant digits; 'inf'/'nan' spelled out."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def fmt_ulp(v: float) -> str:
    """An ulp count: '0', a short decimal below 1000, else scientific notation."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf"
    if v == 0:
        return "0"
    if v < 1000:
        return f"{v:.3g}"
    return f"{v:.1e}"
