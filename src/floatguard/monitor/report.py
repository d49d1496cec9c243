"""Render a monitor log: one self-contained HTML file, and a terminal summary (rich).

The HTML has no script and loads nothing: its plots are inline SVG drawn here (no
plotting library), so it opens offline and renders the same everywhere. Plots: the
loss, the gradient norm (total and per layer), the update ratios with their healthy
band, the activation statistics (dead and saturated shares per call site) and, when
logged, logit magnitudes and the loss scale. Every finding is a vertical marker on
each plot at the step it began, and a card with its evidence and remedy.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..events import Event
from ..reporting import CSS
from .log import RunLog, read_log

__all__ = ["print_summary", "render_html", "write_report"]

_SEV_COLOR = {"error": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#393b79", "#637939")
_MAX_POINTS = 1500  # per series; longer runs are decimated keeping each bucket's min and max
_MAX_SERIES = 10  # layers drawn per plot (the largest ones)


# -- terminal summary ----------------------------------------------------------------------------
def print_summary(findings: Sequence[Event], console: Console | None = None, *, steps: int | None = None,
                  title: str = "floatguard monitor") -> None:
    """A table of the findings and, for each, a panel with its evidence and remedy."""
    con = console or Console()
    n = len(findings)
    head = f"{title}: {steps} steps, " if steps is not None else f"{title}: "
    if not n:
        con.print(Text(head + "no findings", style="bold green"))
        return
    table = Table(title=head + f"{n} finding{'s' if n != 1 else ''}", title_justify="left")
    for col in ("step", "kind", "layer", "what"):
        table.add_column(col, justify="right" if col == "step" else "left", overflow="fold")
    for e in findings:
        table.add_row(str(e.step), Text(e.kind, style=_rich_style(e.severity)), e.module or "-", e.message)
    con.print(table)
    for e in findings:
        body = Text()
        body.append(e.message + "\n")
        ev = _evidence(e)
        if ev:
            body.append("evidence: ", style="bold")
            body.append(ev + "\n")
        body.append("remedy: ", style="bold")
        body.append(e.hint or "-")
        where = f" at {e.module}" if e.module else ""
        rank = f" (rank {e.rank})" if e.rank is not None else ""
        con.print(Panel(body, title=f"{e.kind}{where}, step {e.step}{rank}", title_align="left",
                        border_style=_rich_style(e.severity)))


def _rich_style(sev: str) -> str:
    return {"error": "bold red", "warning": "yellow"}.get(sev, "cyan")


def _evidence(e: Event) -> str:
    parts = []
    for k, v in e.stats.items():
        if k in ("count",) or v is None:
            continue
        parts.append(f"{k}={_fmt(v)}")
    return ", ".join(parts)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v[:6]) + (", ..." if len(v) > 6 else "") + "]"
    return str(v)


# -- SVG plots -------------------------------------------------------------------------------------
@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float | None]  # None / NaN / inf break the line; non-finite values are marked


def _decimate(x: list[float], y: list[float | None]) -> tuple[list[float], list[float | None]]:
    n = len(x)
    if n <= _MAX_POINTS:
        return x, y
    bucket = math.ceil(n / (_MAX_POINTS // 2))
    ox: list[float] = []
    oy: list[float | None] = []
    for i in range(0, n, bucket):
        xs, ys = x[i:i + bucket], y[i:i + bucket]
        fin = [(a, b) for a, b in zip(xs, ys, strict=True) if b is not None and math.isfinite(b)]
        bad = [(a, b) for a, b in zip(xs, ys, strict=True) if b is None or not math.isfinite(b)]
        if fin:
            lo, hi = min(fin, key=lambda p: p[1]), max(fin, key=lambda p: p[1])
            for a, b in sorted({lo, hi}):
                ox.append(a)
                oy.append(b)
        if bad:
            ox.append(bad[0][0])
            oy.append(bad[0][1])
    return ox, oy


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        a, b = math.floor(lo), math.ceil(hi)
        if b - a <= 2:  # a narrow range: 1, 2, 5 in each decade
            return [k + math.log10(m) for k in range(a, b + 1) for m in (1, 2, 5)]
        step = max(1, math.ceil((b - a) / 6))
        return [float(k) for k in range(a, b + 1, step)]
    span = hi - lo or 1.0
    raw = span / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out = []
    v = start
    while v <= hi + 1e-9 * span:
        out.append(v)
        v += step
    return out


def _label(v: float, log: bool) -> str:
    if log:
        k = math.floor(v + 1e-9)
        m = round(10 ** (v - k))
        if m == 1:
            return f"1e{k}" if k not in (0, 1) else ("1" if k == 0 else "10")
        return f"{m}e{k}"
    if v == 0:
        return "0"
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.1e}"


def svg_chart(title: str, series: Sequence[Series], *, log: bool = False, markers: Sequence[Event] = (),
              band: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
              width: int = 900, height: int = 260, ylabel: str = "") -> str:
    """A line chart as inline SVG: series, finding markers, an optional shaded band."""
    pad_l, pad_r, pad_t, pad_b = 62, 170, 28, 34
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b
    pts: list[tuple[str, list[float], list[float | None]]] = []
    xs_all: list[float] = []
    ys_all: list[float] = []
    for s in series:
        x, y = _decimate(s.x, s.y)
        yy: list[float | None] = []
        for v in y:
            if v is not None and log and v == 0:
                yy.append(-math.inf)
            elif v is None or not math.isfinite(v):
                yy.append(v if v is None else float(v))
            elif log:
                yy.append(math.log10(v) if v > 0 else -math.inf)  # 0 on a log axis: drawn at the bottom
            else:
                yy.append(v)
        pts.append((s.name, x, yy))
        xs_all += x
        ys_all += [v for v in yy if v is not None and math.isfinite(v)]
    zeros = any(v == -math.inf for _, _, yy in pts for v in yy)
    if not xs_all:
        return ""
    x0, x1 = min(xs_all), max(xs_all)
    if x1 == x0:
        x1 = x0 + 1
    if ylim is not None:
        y0, y1 = (math.log10(ylim[0]), math.log10(ylim[1])) if log else ylim
    elif ys_all:
        y0, y1 = min(ys_all), max(ys_all)
        if band is not None:
            b0, b1 = (math.log10(band[0]), math.log10(band[1])) if log else band
            y0, y1 = min(y0, b0), max(y1, b1)
        margin = (y1 - y0) * 0.05 or (abs(y0) * 0.1 or 1.0)
        y0, y1 = y0 - margin, y1 + margin
    else:
        y0, y1 = 0.0, 1.0

    def sx(v: float) -> float:
        return pad_l + (v - x0) / (x1 - x0) * pw

    if zeros:
        y0 -= 0.04 * (y1 - y0)  # room at the bottom for exact zeros

    def sy(v: float) -> float:
        v = min(max(v, y0), y1)
        return pad_t + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{pad_l}" y="16" class="ct">{html.escape(title)}</text>',
           f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" class="plot"/>']
    if band is not None:
        b0, b1 = (math.log10(band[0]), math.log10(band[1])) if log else band
        out.append(f'<rect x="{pad_l}" y="{sy(b1):.1f}" width="{pw}" height="{max(0.0, sy(b0) - sy(b1)):.1f}" '
                   f'class="band"><title>healthy band</title></rect>')
    for t in _ticks(y0, y1, log):
        if y0 <= t <= y1:
            y = sy(t)
            out.append(f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                       f'<text x="{pad_l - 6}" y="{y + 4:.1f}" class="yt">{_label(t, log)}</text>')
    for t in _ticks(x0, x1, False):
        x = sx(t)
        out.append(f'<text x="{x:.1f}" y="{pad_t + ph + 16}" class="xt">{round(t)}</text>')
    out.append(f'<text x="{pad_l + pw / 2:.1f}" y="{height - 4}" class="xt">step</text>')
    if ylabel:
        out.append(f'<text x="14" y="{pad_t + ph / 2:.1f}" class="yl" '
                   f'transform="rotate(-90 14 {pad_t + ph / 2:.1f})">{html.escape(ylabel)}</text>')
    rows: list[float] = []  # right end of the last label in each row, so labels do not overlap
    for e in sorted(markers, key=lambda m: m.step if m.step is not None else -1):
        if e.step is None or not (x0 <= e.step <= x1):
            continue
        x = sx(e.step)
        col = _SEV_COLOR.get(e.severity, "#555")
        row = next((i for i, end in enumerate(rows) if x > end), len(rows))
        if row == len(rows):
            rows.append(0.0)
        rows[row] = x + 6 * len(e.kind) + 8
        out.append(f'<g class="marker"><line x1="{x:.1f}" x2="{x:.1f}" y1="{pad_t}" y2="{pad_t + ph}" '
                   f'stroke="{col}"/><text x="{x + 3:.1f}" y="{pad_t + 10 + 11 * (row % 8)}" fill="{col}" '
                   f'class="mk">{html.escape(e.kind)}</text>'
                   f'<title>{html.escape(f"step {e.step}: {e.message}")}</title></g>')
    for k, (name, x, y) in enumerate(pts):
        col = _PALETTE[k % len(_PALETTE)]
        d: list[str] = []
        pen = False
        bad: list[float] = []
        for a, b in zip(x, y, strict=True):
            if b == -math.inf:
                b = y0
            if b is None or not math.isfinite(b):
                pen = False
                if b is not None:
                    bad.append(a)
                continue
            d.append(f"{'L' if pen else 'M'}{sx(a):.1f},{sy(b):.1f}")
            pen = True
        if d:
            out.append(f'<path d="{" ".join(d)}" stroke="{col}" class="line"><title>{html.escape(name)}</title></path>')
        if len(x) == 1 and y and y[0] is not None and math.isfinite(y[0]):
            out.append(f'<circle cx="{sx(x[0]):.1f}" cy="{sy(y[0]):.1f}" r="3" fill="{col}"/>')
        for a in bad[:200]:
            out.append(f'<text x="{sx(a):.1f}" y="{pad_t + 8}" class="nf" fill="{col}">×<title>non-finite at step '
                       f'{int(a)}</title></text>')
        ly = pad_t + 12 + 15 * k
        if ly < pad_t + ph:
            out.append(f'<line x1="{pad_l + pw + 10}" x2="{pad_l + pw + 26}" y1="{ly - 4}" y2="{ly - 4}" '
                       f'stroke="{col}" stroke-width="2"/><text x="{pad_l + pw + 30}" y="{ly}" class="lg">'
                       f'{html.escape(_short(name))}</text>')
    out.append("</svg>")
    return "".join(out)


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


# -- the page ------------------------------------------------------------------------------------------
_CSS = CSS  # one style for every floatguard page


def _steps_series(run: RunLog, key: str) -> Series:
    xs = [float(r["step"]) for r in run.steps if key in r]
    ys = [_num(r[key]) for r in run.steps if key in r]
    return Series(key, xs, ys)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _per_layer(run: RunLog, key: str) -> list[Series]:
    """One series per layer from a per-layer list field (``grad``, ``update``)."""
    by: dict[str, Series] = {}
    for i, r in enumerate(run.steps):
        vals = r.get(key)
        if not isinstance(vals, list):
            continue
        names = run.layers_at(i)
        for name, v in zip(names, vals, strict=False):
            if v is None:
                continue
            by.setdefault(name, Series(name, [], [])).x.append(float(r["step"]))
            by[name].y.append(_num(v))
    return _largest(list(by.values()))


def _largest(series: list[Series]) -> list[Series]:
    if len(series) <= _MAX_SERIES:
        return series

    def size(s: Series) -> float:
        fin = [abs(v) for v in s.y if v is not None and math.isfinite(v)]
        return max(fin) if fin else math.inf

    keep = set(map(id, sorted(series, key=size, reverse=True)[:_MAX_SERIES - 2]))
    keep |= {id(series[0]), id(series[-1])}  # first and last layers always
    return [s for s in series if id(s) in keep]


def _act_series(run: RunLog) -> list[Series]:
    by: dict[str, Series] = {}
    for r in run.steps:
        for site, a in (r.get("act") or {}).items():
            v = a.get("dead", a.get("saturated"))
            label = f"{site} {'dead' if 'dead' in a else 'saturated'}"
            by.setdefault(label, Series(label, [], [])).x.append(float(r["step"]))
            by[label].y.append(_num(v))
    return list(by.values())[:_MAX_SERIES]


def _layer_out_series(run: RunLog) -> list[Series]:
    by: dict[str, Series] = {}
    for r in run.steps:
        for name, v in (r.get("layer_out") or {}).items():
            by.setdefault(name, Series(name, [], [])).x.append(float(r["step"]))
            by[name].y.append(_num(v[1]) if isinstance(v, list) and len(v) > 1 else None)
    return _largest(list(by.values()))


def _log_scale(series: Iterable[Series]) -> bool:
    vals = [v for s in series for v in s.y if v is not None and math.isfinite(v)]
    pos = [v for v in vals if v > 0]
    return bool(pos) and len(pos) == len(vals) and max(pos) / min(pos) > 30


def render_html(run: RunLog, *, title: str | None = None, source: str | None = None) -> str:
    """The report page for a parsed log."""
    f = run.findings
    title = title or "floatguard training report"
    start = run.starts[0] if run.starts else {}
    nsteps = len(run.steps)
    first = run.steps[0]["step"] if run.steps else 0
    last = run.steps[-1]["step"] if run.steps else 0
    th = run.starts[-1].get("thresholds", {}) if run.starts else {}
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             '<meta name="viewport" content="width=device-width,initial-scale=1">'
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class=\"meta\">{html.escape(source or '')} · steps {first}–{last} ({nsteps} logged) · "
             f"{len(run.layers)} layers · mode {html.escape(str(start.get('mode', '?')))} · "
             f"world size {start.get('world_size', 1)} · sessions {len(run.starts)}"
             f"{'' if run.ended else ' · <b>the run did not close the log (crashed or still running)</b>'}</p>"]
    if f:
        counts: dict[str, int] = {}
        for e in f:
            counts[e.kind] = counts.get(e.kind, 0) + 1
        parts.append("<p><b>" + f"{len(f)} finding{'s' if len(f) != 1 else ''}</b>: "
                     + ", ".join(f"{html.escape(k)} ×{v}" for k, v in counts.items()) + "</p>")
    else:
        parts.append('<p class="ok">No findings: nothing in this run looks unhealthy.</p>')

    charts: list[str] = []
    loss = _steps_series(run, "loss")
    charts.append(svg_chart("Loss", [loss], log=_log_scale([loss]), markers=f, ylabel="loss"))
    gn = [Series("total", *_xy(_steps_series(run, "grad_norm"))), *_per_layer(run, "grad")]
    charts.append(svg_chart("Gradient norm (total and per layer)", gn, log=True, markers=f, ylabel="‖g‖"))
    upd = _per_layer(run, "update")
    if upd:
        lo_, hi_ = float(th.get("update_low", 1e-6)), float(th.get("update_high", 0.1))
        charts.append(svg_chart(f"Update ratio ‖Δw‖/‖w‖ per step (green: within the thresholds {lo_:g}…{hi_:g}; "
                                "~1e-3 is typical)", upd, log=True, markers=f, band=(lo_, hi_), ylabel="ratio"))
    acts = _act_series(run)
    if acts:
        charts.append(svg_chart("Activations: share of dead ReLU units / saturated tanh-sigmoid outputs", acts,
                                markers=f, ylim=(0.0, 1.0), ylabel="share"))
    lo = _layer_out_series(run)
    if lo:
        charts.append(svg_chart("Layer output standard deviation (detailed mode)", lo, log=_log_scale(lo),
                                markers=f, ylabel="std"))
    lg = [Series("max |logit|", [float(r["step"]) for r in run.steps if r.get("logits")],
                 [_num(r["logits"].get("absmax")) for r in run.steps if r.get("logits")]),
          Series("median top-2 gap", [float(r["step"]) for r in run.steps if r.get("logits")],
                 [_num(r["logits"].get("gap")) for r in run.steps if r.get("logits")])]
    if lg[0].x:
        charts.append(svg_chart("Logits at the loss", lg, log=_log_scale(lg), markers=f))
    sc = _steps_series(run, "scale")
    if sc.x:
        charts.append(svg_chart("Loss scale (GradScaler)", [Series("scale", sc.x, sc.y)], log=True, markers=f))
    parts.append("<h2>Training curves</h2>")
    parts += [c for c in charts if c]

    parts.append("<h2>Findings</h2>")
    if f:
        parts.append("<table><tr><th>step</th><th>kind</th><th>layer</th><th>what</th><th>rank</th></tr>")
        for e in f:
            parts.append(f"<tr><td>{e.step}</td><td style=\"color:{_SEV_COLOR.get(e.severity)}\">"
                         f"{html.escape(e.kind)}</td><td>{html.escape(e.module or '-')}</td>"
                         f"<td>{html.escape(e.message)}</td><td>{'' if e.rank is None else e.rank}</td></tr>")
        parts.append("</table>")
        for e in f:
            parts.append(f'<div class="card sev-{e.severity}"><h3>{html.escape(e.kind)}'
                         f'{" at " + html.escape(e.module) if e.module else ""} · step {e.step}</h3>'
                         f"<div>{html.escape(e.message)}</div>"
                         f'<div class="ev">evidence: {html.escape(_evidence(e) or "-")}</div>'
                         f'<div class="remedy"><b>remedy:</b> {html.escape(e.hint or "-")}</div></div>')
    else:
        parts.append("<p>None.</p>")
    if th:
        parts.append("<h2>Thresholds</h2><p class=\"ev\">" + html.escape(json.dumps(th)) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _xy(s: Series) -> tuple[list[float], list[float | None]]:
    return s.x, s.y


def write_report(log: str | os.PathLike[str], output: str | os.PathLike[str], *, title: str | None = None) -> RunLog:
    """Read ``log`` and write the HTML report to ``output``; returns the parsed log."""
    run = read_log(log)
    page = render_html(run, title=title, source=os.fspath(log))
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(page)
    return run
