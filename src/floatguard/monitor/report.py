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


@dataclass
class Envelope:
    """The min–max range of the layers not drawn one by one ("others"), per step."""

    name: str
    x: list[float]
    lo: list[float]
    hi: list[float]


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


def _decimate_env(env: Envelope) -> Envelope:
    n = len(env.x)
    if n <= _MAX_POINTS:
        return env
    bucket = math.ceil(n / _MAX_POINTS)
    out = Envelope(env.name, [], [], [])
    for i in range(0, n, bucket):
        out.x.append(env.x[i])
        out.lo.append(min(env.lo[i:i + bucket]))
        out.hi.append(max(env.hi[i:i + bucket]))
    return out


_CHAR_W = 6.2  # px per character of a 10 px label (generous, so estimated boxes contain the drawn ones)


def _nice_step(span: float, count: int) -> float:
    raw = span / max(1, count)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _ticks(lo: float, hi: float, log: bool, count: int = 5, integer: bool = False) -> list[float]:
    """Nice tick positions in ``[lo, hi]``: at most about ``count`` of them (log: in log10 units)."""
    if log:
        a, b = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
        if b - a < 2:  # under two decades: 1, 2, 5 in each decade
            return [t for k in range(a - 1, b + 1) for m in (1, 2, 5)
                    if lo - 1e-9 <= (t := k + math.log10(m)) <= hi + 1e-9]
        stride = max(1, math.ceil((b - a + 1) / count))
        return [float(k) for k in range(a, b + 1) if k % stride == 0]
    span = hi - lo or 1.0
    step = _nice_step(span, count)
    if integer:
        step = max(1.0, math.ceil(step))
    out = []
    v = math.ceil(lo / step - 1e-9) * step
    while v <= hi + 1e-9 * span:
        out.append(0.0 if abs(v) < 1e-12 * span else v)
        v += step
    return out


def _label(v: float, log: bool) -> str:
    if log:
        k = math.floor(v + 1e-9)
        m = round(10 ** (v - k))
        if m == 10:
            k, m = k + 1, 1
        if m == 1:
            return f"1e{k}" if k not in (0, 1) else ("1" if k == 0 else "10")
        return f"{m}e{k}"
    if v == 0:
        return "0"
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.1e}"


def _thin(pos: list[tuple[float, str]], size: float) -> list[tuple[float, str]]:
    """Keep labels (position, text) whose boxes of extent ``size(text)`` do not overlap (greedy)."""
    kept: list[tuple[float, str]] = []
    for p, s in sorted(pos):
        if not kept or p - kept[-1][0] >= size:
            kept.append((p, s))
    return kept


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _empty_reason(series: Sequence[Series], log: bool) -> str:
    vals = [v for s in series for v in s.y]
    if not vals:
        return "Nothing was logged for this plot."
    bad = sum(1 for v in vals if v is not None and not math.isfinite(v))
    if bad:
        return f"No finite value to plot: {bad} of the {len(vals)} logged values are NaN or ±inf."
    if log:
        return "No positive value to plot on this log scale: every logged value is 0 or missing."
    return f"No value to plot: all {len(vals)} logged values are missing (null)."


def svg_chart(title: str, series: Sequence[Series], *, log: bool = False, markers: Sequence[Event] = (),
              band: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
              width: int = 840, height: int = 250, ylabel: str = "", others: Envelope | None = None,
              chart_id: str = "chart", why_empty: str = "", note: str = "") -> str:
    """A line chart: a ``<figure>`` holding an inline SVG that scales to the page's width and its legend.

    The SVG has a ``viewBox`` and no fixed size (CSS draws it at 100% of the column), so it
    reflows; tick labels are thinned so their boxes never overlap. Each finding in
    ``markers`` is a dashed vertical line at its step (id ``{chart_id}-m{i}``) linking to the
    finding's card ``#f{i}``; ``others`` is drawn as a grey min–max band. A plot with no
    finite point says why (``why_empty`` adds the cause the caller knows); ``note`` is HTML
    appended to the caption.
    """
    pad_l, pad_r, pad_t, pad_b = 58, 14, 14, 34
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b
    pts: list[tuple[str, list[float], list[float | None]]] = []
    xs_all: list[float] = []
    ys_all: list[float] = []

    def tr(v: float | None) -> float | None:
        if v is None or not math.isfinite(v):
            return v if v is None else float(v)
        if log:
            return math.log10(v) if v > 0 else -math.inf  # 0 on a log axis: drawn at the bottom
        return v

    for s in series:
        x, y = _decimate(s.x, s.y)
        yy = [tr(v) for v in y]
        pts.append((s.name, x, yy))
        xs_all += x
        ys_all += [v for v in yy if _finite(v)]  # type: ignore[misc]
    env: tuple[list[float], list[float], list[float]] | None = None
    if others is not None and others.x:
        o = _decimate_env(others)
        lo_t = [tr(v) for v in o.lo]
        hi_t = [tr(v) for v in o.hi]
        env = (o.x, [v if v is not None else -math.inf for v in lo_t], [v if v is not None else -math.inf
                                                                          for v in hi_t])
        xs_all += o.x
        ys_all += [v for v in env[1] + env[2] if math.isfinite(v)]
    zeros = any(v == -math.inf for _, _, yy in pts for v in yy) or (env is not None and any(
        v == -math.inf for v in env[1]))
    esc_title = html.escape(title)
    legend = _legend(pts, others, env is not None)
    empty = not ys_all
    x0, x1 = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
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
    if zeros:
        y0 -= 0.04 * (y1 - y0)  # room at the bottom for exact zeros

    def sx(v: float) -> float:
        return pad_l + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        v = min(max(v, y0), y1)
        return pad_t + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f'<figure class="fig" id="{chart_id}"><figcaption class="ct">{esc_title}{note}</figcaption>'
           f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'preserveAspectRatio="xMidYMid meet" role="img" aria-label="{esc_title}">',
           f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" class="plot"/>']
    if band is not None and not empty:
        b0, b1 = (math.log10(band[0]), math.log10(band[1])) if log else band
        out.append(f'<rect x="{pad_l}" y="{sy(b1):.1f}" width="{pw}" height="{max(0.0, sy(b0) - sy(b1)):.1f}" '
                   f'class="band"><title>healthy band</title></rect>')
    if not empty:
        yt = [(sy(t), _label(t, log)) for t in _ticks(y0, y1, log, max(2, int(ph // 30))) if y0 <= t <= y1]
        for y, s in _thin(yt, 14.0):
            out.append(f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                       f'<text x="{pad_l - 6}" y="{y + 3.5:.1f}" class="yt">{s}</text>')
    if xs_all:
        xl = [(sx(t), str(round(t))) for t in _ticks(x0, x1, False, max(2, int(pw // 80)), integer=True)]
        widest = max(len(s) for _, s in xl) if xl else 1
        for x, s in _thin(xl, _CHAR_W * widest + 12):
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad_t + ph}" y2="{pad_t + ph + 4}" class="grid"/>'
                       f'<text x="{x:.1f}" y="{pad_t + ph + 15}" class="xt">{s}</text>')
    out.append(f'<text x="{pad_l + pw / 2:.1f}" y="{height - 4}" class="xl">step</text>')
    if ylabel:
        out.append(f'<text x="12" y="{pad_t + ph / 2:.1f}" class="yl" '
                   f'transform="rotate(-90 12 {pad_t + ph / 2:.1f})">{html.escape(ylabel)}</text>')
    if empty:
        reason = _empty_reason(series, log) + (f" {why_empty}" if why_empty else "")
        lines = _wrap(reason, int(pw // 7.5))
        cx = pad_l + pw / 2
        out.append(f'<text x="{cx:.1f}" y="{pad_t + ph / 2 - 8 * (len(lines) - 1):.1f}" class="empty">'
                   + "".join(f'<tspan x="{cx:.1f}" dy="{0 if k == 0 else 16}">{html.escape(t)}</tspan>'
                             for k, t in enumerate(lines)) + "</text>")
    if env is not None:
        ex, elo, ehi = env
        up = [f"{sx(a):.1f},{sy(b if math.isfinite(b) else y0):.1f}" for a, b in zip(ex, ehi, strict=True)]
        dn = [f"{sx(a):.1f},{sy(b if math.isfinite(b) else y0):.1f}" for a, b in zip(ex, elo, strict=True)]
        if len(up) > 1:
            out.append(f'<polygon points="{" ".join(up + dn[::-1])}" class="others">'
                       f'<title>{html.escape(others.name if others else "")}</title></polygon>')
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
        if len(x) == 1 and y and _finite(y[0]):
            out.append(f'<circle cx="{sx(x[0]):.1f}" cy="{sy(y[0]):.1f}" r="3" fill="{col}"/>')  # type: ignore[arg-type]
        for a in bad[:200]:
            out.append(f'<text x="{sx(a):.1f}" y="{pad_t + ph - 3}" class="nf" fill="{col}">×<title>{html.escape(name)}'
                       f': non-finite at step {int(a)}</title></text>')
    out += _markers(markers, chart_id, sx, x0, x1, pad_l, pad_t, pw, ph)
    out.append("</svg>" + legend + "</figure>")
    return "".join(out)


def _markers(markers: Sequence[Event], chart_id: str, sx: Any, x0: float, x1: float, pad_l: float, pad_t: float,
             pw: float, ph: float) -> list[str]:
    """Dashed lines at the findings' steps, each a link to its card; labels in rows that never overlap."""
    out: list[str] = []
    rows: list[list[tuple[float, float]]] = []  # occupied [left, right] spans per label row
    max_rows = max(1, int(ph // 24))
    order = sorted(enumerate(markers), key=lambda p: (p[1].step if p[1].step is not None else -1, p[0]))
    for i, e in order:
        if e.step is None or not (x0 <= e.step <= x1):
            continue
        x = sx(e.step)
        col = _SEV_COLOR.get(e.severity, "#555")
        w = _CHAR_W * len(e.kind) + 4
        left, anchor = (x + 3, "start") if x + 3 + w <= pad_l + pw else (x - 3 - w, "end")
        span = (left - 2, left + w + 2)
        row = next((r for r, spans in enumerate(rows) if all(span[1] < a or span[0] > b for a, b in spans)), len(rows))
        label = ""
        if row < max_rows:
            if row == len(rows):
                rows.append([])
            rows[row].append(span)
            tx = x + 3 if anchor == "start" else x - 3
            label = (f'<text x="{tx:.1f}" y="{pad_t + 11 + 12 * row}" fill="{col}" class="mk" '
                     f'text-anchor="{anchor}">{html.escape(e.kind)}</text>')
        where = f" in {e.module}" if e.module else ""
        out.append(f'<a href="#f{i}"><g class="marker" id="{chart_id}-m{i}"><line x1="{x:.1f}" x2="{x:.1f}" '
                   f'y1="{pad_t}" y2="{pad_t + ph}" stroke="{col}"/><rect x="{x - 4:.1f}" y="{pad_t}" width="8" '
                   f'height="{ph}" class="hit"/>{label}'
                   f'<title>{html.escape(f"step {e.step}: {e.kind}{where}: {e.message}")}</title></g></a>')
    return out


def _legend(pts: list[tuple[str, list[float], list[float | None]]], others: Envelope | None, has_env: bool) -> str:
    items = [f'<span title="{html.escape(name)}"><i style="background:{_PALETTE[k % len(_PALETTE)]}"></i>'
             f"{html.escape(_short(name, 40))}</span>" for k, (name, _, _) in enumerate(pts)]
    if others is not None and has_env:
        items.append(f'<span><i class="oth"></i>{html.escape(others.name)}</span>')
    return f'<div class="legend">{"".join(items)}</div>' if items else ""


def _wrap(text: str, n: int) -> list[str]:
    lines = [""]
    for word in text.split():
        if lines[-1] and len(lines[-1]) + 1 + len(word) > n:
            lines.append("")
        lines[-1] += (" " if lines[-1] else "") + word
    return lines


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


# -- the page ------------------------------------------------------------------------------------------
_CSS = CSS  # one style for every floatguard page
_TOP_K = 6  # layers drawn one by one per plot; the rest are one grey "others" band


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


def _layer_values(run: RunLog, key: str) -> dict[str, Series]:
    """One series per layer from a per-layer list field (``grad``, ``update``), in layer order."""
    by: dict[str, Series] = {}
    for i, r in enumerate(run.steps):
        vals = r.get(key)
        if not isinstance(vals, list):
            continue
        for name, v in zip(run.layers_at(i), vals, strict=False):
            if v is None:
                continue
            by.setdefault(name, Series(name, [], [])).x.append(float(r["step"]))
            by[name].y.append(_num(v))
    return by


def _peak(s: Series) -> float:
    fin = [abs(v) for v in s.y if v is not None and math.isfinite(v)]
    return max(fin) if fin else math.inf  # a layer that went non-finite ranks first


def _group(series: list[Series], flagged: set[str], *, what: str, score: Any = _peak,
           k: int = _TOP_K) -> tuple[list[Series], Envelope | None]:
    """The top ``k`` series by ``score`` (and every flagged layer), and the rest as one min–max band."""
    if len(series) <= k + 1:
        return series, None
    ranked = sorted(series, key=score, reverse=True)
    keep = {id(s) for s in ranked[:k]} | {id(s) for s in series if s.name in flagged}
    shown = [s for s in series if id(s) in keep]
    rest = [s for s in series if id(s) not in keep]
    per: dict[float, list[float]] = {}
    for s in rest:
        for a, b in zip(s.x, s.y, strict=True):
            if b is not None and math.isfinite(b):
                per.setdefault(a, []).append(b)
    xs = sorted(per)
    env = Envelope(f"others: {len(rest)} {what} (min–max)", xs, [min(per[a]) for a in xs],
                   [max(per[a]) for a in xs])
    return shown, env


def _act_series(run: RunLog) -> list[Series]:
    by: dict[str, Series] = {}
    for r in run.steps:
        for site, a in (r.get("act") or {}).items():
            v = a.get("dead", a.get("saturated"))
            label = f"{site} {'dead' if 'dead' in a else 'saturated'}"
            by.setdefault(label, Series(label, [], [])).x.append(float(r["step"]))
            by[label].y.append(_num(v))
    return list(by.values())


def _layer_out_series(run: RunLog) -> list[Series]:
    by: dict[str, Series] = {}
    for r in run.steps:
        for name, v in (r.get("layer_out") or {}).items():
            by.setdefault(name, Series(name, [], [])).x.append(float(r["step"]))
            by[name].y.append(_num(v[1]) if isinstance(v, list) and len(v) > 1 else None)
    return list(by.values())


def _log_scale(series: Iterable[Series]) -> bool:
    vals = [v for s in series for v in s.y if v is not None and math.isfinite(v)]
    pos = [v for v in vals if v > 0]
    return bool(pos) and len(pos) == len(vals) and max(pos) / min(pos) > 30


def _slug(i: int) -> str:
    return f"layer-{i}"


def _threshold_notes() -> dict[str, str]:
    """The comment beside each field of :class:`Thresholds` (its meaning), read from the source."""
    try:
        import inspect

        from .rules import Thresholds

        src = inspect.getsource(Thresholds)
    except (ImportError, OSError, TypeError):
        return {}
    notes: dict[str, str] = {}
    for line in src.splitlines():
        head, _, note = line.partition("#")
        name = head.split(":", 1)[0].strip()
        if note and name.isidentifier() and ":" in head:
            notes[name] = note.strip()
    return notes


def _thresholds_html(th: dict[str, Any]) -> str:
    notes = _threshold_notes()
    rows = "".join(f"<tr><td><code>{html.escape(str(k))}</code></td><td class=\"num\">{html.escape(_fmt(v))}</td>"
                   f"<td>{html.escape(notes.get(str(k), ''))}</td></tr>" for k, v in th.items())
    return ('<h2 id="thresholds">Thresholds</h2><details><summary>The numbers each rule compares with '
            f"({len(th)})</summary><table class=\"th\"><tr><th>threshold</th><th>value</th><th>meaning</th></tr>"
            f"{rows}</table></details>")


def _stat(vals: Sequence[float | None], how: str) -> str:
    fin = sorted(v for v in vals if v is not None and math.isfinite(v))
    bad = sum(1 for v in vals if v is not None and not math.isfinite(v))
    if not fin:
        return "non-finite" if bad else "–"
    v = fin[-1] if how == "max" else fin[len(fin) // 2] if how == "median" else fin[-1]
    return f"{v:.3g}" + (" (+non-finite)" if bad else "")


def _layers_html(run: RunLog, grads: dict[str, Series], upds: dict[str, Series], shown: set[str],
                 findings: Sequence[Event]) -> str:
    start = run.starts[-1] if run.starts else {}
    types = start.get("layer_types") or []
    numel = start.get("numel") or []
    by_layer: dict[str, list[int]] = {}
    for i, e in enumerate(findings):
        if e.module:
            by_layer.setdefault(e.module, []).append(i)
    rows = []
    for j, name in enumerate(run.layers):
        g = grads.get(name, Series(name, [], []))
        u = upds.get(name, Series(name, [], []))
        links = ", ".join(f'<a href="#f{i}">{html.escape(findings[i].kind)}</a>' for i in by_layer.get(name, []))
        rows.append(f'<tr id="{_slug(j)}"{" class=shown" if name in shown else ""}><td><code>{html.escape(name)}'
                    f"</code></td><td>{html.escape(str(types[j]) if j < len(types) else '')}</td>"
                    f'<td class="num">{numel[j] if j < len(numel) else ""}</td>'
                    f'<td class="num">{_stat(g.y[-1:], "max")}</td><td class="num">{_stat(g.y, "max")}</td>'
                    f'<td class="num">{_stat(u.y, "median")}</td><td>{links}</td></tr>')
    return (f'<details class="layers" id="layers"><summary>All {len(run.layers)} layers (bold: drawn one by one '
            "above; the rest are in the grey band)</summary><table><tr><th>layer</th><th>type</th><th>params</th>"
            "<th>last ‖g‖</th><th>max ‖g‖</th><th>median update ratio</th><th>findings</th></tr>"
            + "".join(rows) + "</table></details>")


def _logits(run: RunLog) -> tuple[list[Series], str]:
    recs = [r for r in run.steps if r.get("logits")]
    xs = [float(r["step"]) for r in recs]
    series = [Series("max |logit|", xs, [_num(r["logits"].get("absmax")) for r in recs]),
              Series("median top-2 gap", xs, [_num(r["logits"].get("gap")) for r in recs])]
    dtypes = sorted({str(r["logits"].get("dtype")) for r in recs if r["logits"].get("dtype")})
    why = ""
    if recs and not any(_finite(v) for v in series[0].y):
        dt = " / ".join(dtypes) or "low-precision"
        why = (f"The {dt} logits were NaN or ±inf at every sampled step: they overflowed "
               f"(float16 ends at 65504) or a NaN reached them; see the findings.")
    return series, why


def render_html(run: RunLog, *, title: str | None = None, source: str | None = None) -> str:
    """The report page for a parsed log (self-contained: inline CSS and SVG, no script, nothing loaded)."""
    f = run.findings
    title = title or "floatguard training report"
    start = run.starts[0] if run.starts else {}
    nsteps = len(run.steps)
    first = run.steps[0]["step"] if run.steps else 0
    last = run.steps[-1]["step"] if run.steps else 0
    th = run.starts[-1].get("thresholds", {}) if run.starts else {}
    flagged = {e.module for e in f if e.module}
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             '<meta name="viewport" content="width=device-width,initial-scale=1">'
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class=\"meta\">{html.escape(source or '')} · steps {first}–{last} ({nsteps} logged) · "
             f'<a href="#layers">{len(run.layers)} layers</a> · mode {html.escape(str(start.get("mode", "?")))} · '
             f"world size {start.get('world_size', 1)} · sessions {len(run.starts)}"
             f"{'' if run.ended else ' · <b>the run did not close the log (crashed or still running)</b>'}</p>"]
    if f:
        parts.append(f'<p><b>{len(f)} finding{"s" if len(f) != 1 else ""}</b> (click one to see it on the plots; '
                     "click a marker on a plot to read its finding):</p><ul class=\"flist\">")
        for i, e in enumerate(f):
            where = (f' in <a href="#{_layer_anchor(run, e.module)}"><code>{html.escape(e.module)}</code></a>'
                     if e.module else "")
            parts.append(f'<li><a href="#f{i}" class="sev-{e.severity}">{html.escape(e.kind)}</a>{where} · '
                         f'<a href="#loss-m{i}">step {e.step}</a></li>')
        parts.append("</ul>")
    else:
        parts.append('<p class="ok">No findings: nothing in this run looks unhealthy.</p>')

    charts: list[str] = []
    missing: list[str] = []
    loss = _steps_series(run, "loss")
    charts.append(svg_chart("Loss", [loss], log=_log_scale([loss]), markers=f, ylabel="loss", chart_id="loss",
                            why_empty="" if loss.x else "No step recorded a loss."))
    grads = _layer_values(run, "grad")
    g_shown, g_env = _group(list(grads.values()), flagged, what="layers")
    gn = [Series("total", *_xy(_steps_series(run, "grad_norm"))), *g_shown]
    gnote = (f' <span class="meta">(the {len(g_shown)} largest and flagged layers one by one, the rest as a band; '
             f'<a href="#layers">all {len(grads)} layers</a>)</span>' if g_env else "")
    charts.append(svg_chart("Gradient norm: total and per layer", gn, log=True, markers=f, ylabel="‖g‖",
                            others=g_env, chart_id="grad", note=gnote))
    upds = _layer_values(run, "update")
    if upds:
        lo_, hi_ = float(th.get("update_low", 1e-6)), float(th.get("update_high", 0.1))

        def off_band(s: Series) -> float:
            fin = [abs(math.log10(v) + 3) for v in s.y if v is not None and math.isfinite(v) and v > 0]
            return max(fin) if fin else math.inf

        u_shown, u_env = _group(list(upds.values()), flagged, what="layers", score=off_band)
        charts.append(svg_chart(f"Update ratio ‖Δw‖/‖w‖ per step (green: within the thresholds {lo_:g}…{hi_:g}; "
                                "~1e-3 is typical)", u_shown, log=True, markers=f, band=(lo_, hi_), ylabel="ratio",
                                others=u_env, chart_id="update"))
    else:
        missing.append("update ratios (not measured in this run)")
    acts = _act_series(run)
    if acts:
        a_shown, a_env = _group(acts, {s.name for s in acts if s.name.rsplit(" ", 1)[0] in flagged},
                                what="call sites")
        charts.append(svg_chart("Activations: share of dead ReLU units / saturated tanh-sigmoid outputs", a_shown,
                                markers=f, ylim=(0.0, 1.0), ylabel="share", others=a_env, chart_id="act"))
    else:
        missing.append("activations (no ReLU, tanh or sigmoid call site was sampled)")
    lo = _layer_out_series(run)
    if lo:
        o_shown, o_env = _group(lo, flagged, what="layers")
        charts.append(svg_chart("Layer output standard deviation (detailed mode)", o_shown, log=_log_scale(lo),
                                markers=f, ylabel="std", others=o_env, chart_id="out"))
    else:
        missing.append("layer outputs (logged in detailed mode only)")
    lg, why = _logits(run)
    if lg[0].x:
        charts.append(svg_chart("Logits at the loss", lg, log=_log_scale(lg), markers=f, chart_id="logits",
                                why_empty=why))
    else:
        missing.append("logits (no classification loss was seen)")
    sc = _steps_series(run, "scale")
    if sc.x:
        charts.append(svg_chart("Loss scale (GradScaler)", [Series("scale", sc.x, sc.y)], log=True, markers=f,
                                chart_id="scale"))
    parts.append("<h2>Training curves</h2>")
    parts += [c for c in charts if c]
    if grads or run.layers:
        parts.append(_layers_html(run, grads, upds, {s.name for s in g_shown}, f))
    if missing:
        parts.append('<p class="meta">Not plotted: ' + html.escape("; ".join(missing)) + ".</p>")

    parts.append("<h2>Findings</h2>")
    if f:
        for i, e in enumerate(f):
            layer = (f' at <a href="#{_layer_anchor(run, e.module)}"><code>{html.escape(e.module)}</code></a>'
                     if e.module else "")
            on = " · ".join(f'<a href="#{c}-m{i}">{c}</a>' for c in ("loss", "grad", "update", "act", "logits")
                            if f'id="{c}-m{i}"' in "".join(charts))
            rank = f" · rank {e.rank}" if e.rank is not None else ""
            parts.append(f'<div class="card sev-{e.severity}" id="f{i}"><h3>{html.escape(e.kind)}{layer} · step '
                         f"{e.step}{rank}</h3><div>{html.escape(e.message)}</div>"
                         f'<div class="ev">evidence: {html.escape(_evidence(e) or "-")}</div>'
                         f'<div class="remedy"><b>remedy:</b> {html.escape(e.hint or "-")}</div>'
                         + (f'<div class="meta">on the plots: {on}</div>' if on else "") + "</div>")
    else:
        parts.append("<p>None.</p>")
    if th:
        parts.append(_thresholds_html(th))
    parts.append("</body></html>")
    return "\n".join(parts)


def _layer_anchor(run: RunLog, name: str | None) -> str:
    names = run.layers
    return _slug(names.index(name)) if name in names else "layers"


def _xy(s: Series) -> tuple[list[float], list[float | None]]:
    return s.x, s.y


def write_report(log: str | os.PathLike[str], output: str | os.PathLike[str], *, title: str | None = None) -> RunLog:
    """Read ``log`` and write the HTML report to ``output``; returns the parsed log."""
    run = read_log(log)
    page = render_html(run, title=title, source=os.fspath(log))
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(page)
    return run
