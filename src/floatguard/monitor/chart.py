"""Line charts as inline SVG: the monitor report's plots, drawn without a plotting library.

A chart is a ``<figure>`` with an SVG that scales to the page's width (``viewBox``, no fixed
size) and its legend. :func:`svg_chart` composes it from parts, each drawn on one
:class:`Frame` (the plot area and the data range it shows): the axes with their ticks, the
healthy band, the grey envelope of the layers not drawn one by one, the series, and a
marker per finding. Long series are decimated keeping each bucket's extremes; tick and
marker labels are thinned or stacked so that they never overlap.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..events import Event

__all__ = ["Envelope", "Frame", "Series", "svg_chart"]

_SEV_COLOR = {"error": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#393b79", "#637939")
_MAX_POINTS = 1500  # per series; longer runs are decimated keeping each bucket's min and max

Points = tuple[str, list[float], list[float | None]]  # a series' name, x and transformed y (log10 on a log axis)
Band = tuple[list[float], list[float], list[float]]  # x, low and high of an envelope, transformed; 0 -> -inf


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


@dataclass(frozen=True)
class Frame:
    """The plot area of a chart in pixels and the data range it shows (y transformed: log10 on a log axis)."""

    width: int
    height: int
    x0: float
    x1: float
    y0: float
    y1: float
    pad_l: int = 58
    pad_r: int = 14
    pad_t: int = 14
    pad_b: int = 34

    @property
    def pw(self) -> int:
        return self.width - self.pad_l - self.pad_r

    @property
    def ph(self) -> int:
        return self.height - self.pad_t - self.pad_b

    def sx(self, v: float) -> float:
        return self.pad_l + (v - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, v: float) -> float:
        v = min(max(v, self.y0), self.y1)
        return self.pad_t + (1 - (v - self.y0) / (self.y1 - self.y0)) * self.ph


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
    pts, env = _transform(series, others, log)
    fr = _frame(pts, env, width, height, log=log, band=band, ylim=ylim)
    empty = not any(_finite(v) for _, _, yy in pts for v in yy) and not (
        env is not None and any(math.isfinite(v) for v in env[1] + env[2]))
    esc_title = html.escape(title)
    out = [f'<figure class="fig" id="{chart_id}"><figcaption class="ct">{esc_title}{note}</figcaption>'
           f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'preserveAspectRatio="xMidYMid meet" role="img" aria-label="{esc_title}">',
           f'<rect x="{fr.pad_l}" y="{fr.pad_t}" width="{fr.pw}" height="{fr.ph}" class="plot"/>']
    if band is not None and not empty:
        out.append(_band(fr, band, log))
    has_x = any(x for _, x, _ in pts) or (env is not None and bool(env[0]))
    out += _axes(fr, log=log, y_ticks=not empty, x_ticks=has_x, ylabel=ylabel)
    if empty:
        out.append(_empty_note(fr, _empty_reason(series, log) + (f" {why_empty}" if why_empty else "")))
    if env is not None:
        out.append(_envelope(fr, env, others.name if others else ""))
    for k, p in enumerate(pts):
        out += _series(fr, p, _PALETTE[k % len(_PALETTE)])
    out += _markers(markers, chart_id, fr)
    out.append("</svg>" + _legend(pts, others, env is not None) + "</figure>")
    return "".join(out)


def _transform(series: Sequence[Series], others: Envelope | None, log: bool) -> tuple[list[Points], Band | None]:
    """The decimated series and envelope with y on the axis' scale (log10; 0 -> -inf, drawn at the bottom)."""

    def tr(v: float | None) -> float | None:
        if v is None or not math.isfinite(v):
            return v if v is None else float(v)
        if log:
            return math.log10(v) if v > 0 else -math.inf  # 0 on a log axis: drawn at the bottom
        return v

    pts: list[Points] = []
    for s in series:
        x, y = _decimate(s.x, s.y)
        pts.append((s.name, x, [tr(v) for v in y]))
    env: Band | None = None
    if others is not None and others.x:
        o = _decimate_env(others)
        lo_t = [tr(v) for v in o.lo]
        hi_t = [tr(v) for v in o.hi]
        env = (o.x, [v if v is not None else -math.inf for v in lo_t], [v if v is not None else -math.inf
                                                                          for v in hi_t])
    return pts, env


def _frame(pts: list[Points], env: Band | None, width: int, height: int, *, log: bool,
           band: tuple[float, float] | None, ylim: tuple[float, float] | None) -> Frame:
    """The data range shown: every point (and the band), 5% margins; room at the bottom for exact zeros."""
    xs_all = [a for _, x, _ in pts for a in x] + (env[0] if env is not None else [])
    ys_all = [v for _, _, yy in pts for v in yy if v is not None and math.isfinite(v)]
    if env is not None:
        ys_all += [v for v in env[1] + env[2] if math.isfinite(v)]
    zeros = any(v == -math.inf for _, _, yy in pts for v in yy) or (env is not None and any(
        v == -math.inf for v in env[1]))
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
    return Frame(width, height, x0, x1, y0, y1)


def _band(fr: Frame, band: tuple[float, float], log: bool) -> str:
    """The healthy band: a shaded strip across the plot."""
    b0, b1 = (math.log10(band[0]), math.log10(band[1])) if log else band
    return (f'<rect x="{fr.pad_l}" y="{fr.sy(b1):.1f}" width="{fr.pw}" height="{max(0.0, fr.sy(b0) - fr.sy(b1)):.1f}" '
            f'class="band"><title>healthy band</title></rect>')


def _axes(fr: Frame, *, log: bool, y_ticks: bool, x_ticks: bool, ylabel: str) -> list[str]:
    """Grid lines and tick labels (thinned so they never overlap), and the axis labels."""
    out: list[str] = []
    pad_l, pad_t, pw, ph = fr.pad_l, fr.pad_t, fr.pw, fr.ph
    if y_ticks:
        yt = [(fr.sy(t), _label(t, log)) for t in _ticks(fr.y0, fr.y1, log, max(2, int(ph // 30)))
              if fr.y0 <= t <= fr.y1]
        for y, s in _thin(yt, 14.0):
            out.append(f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                       f'<text x="{pad_l - 6}" y="{y + 3.5:.1f}" class="yt">{s}</text>')
    if x_ticks:
        xl = [(fr.sx(t), str(round(t))) for t in _ticks(fr.x0, fr.x1, False, max(2, int(pw // 80)), integer=True)]
        widest = max(len(s) for _, s in xl) if xl else 1
        for x, s in _thin(xl, _CHAR_W * widest + 12):
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad_t + ph}" y2="{pad_t + ph + 4}" class="grid"/>'
                       f'<text x="{x:.1f}" y="{pad_t + ph + 15}" class="xt">{s}</text>')
    out.append(f'<text x="{pad_l + pw / 2:.1f}" y="{fr.height - 4}" class="xl">step</text>')
    if ylabel:
        out.append(f'<text x="12" y="{pad_t + ph / 2:.1f}" class="yl" '
                   f'transform="rotate(-90 12 {pad_t + ph / 2:.1f})">{html.escape(ylabel)}</text>')
    return out


def _empty_note(fr: Frame, reason: str) -> str:
    """Why a plot has no point, centred in it and wrapped to its width."""
    lines = _wrap(reason, int(fr.pw // 7.5))
    cx = fr.pad_l + fr.pw / 2
    return (f'<text x="{cx:.1f}" y="{fr.pad_t + fr.ph / 2 - 8 * (len(lines) - 1):.1f}" class="empty">'
            + "".join(f'<tspan x="{cx:.1f}" dy="{0 if k == 0 else 16}">{html.escape(t)}</tspan>'
                      for k, t in enumerate(lines)) + "</text>")


def _envelope(fr: Frame, env: Band, name: str) -> str:
    """The min–max range of the layers not drawn one by one, as one grey polygon."""
    ex, elo, ehi = env
    up = [f"{fr.sx(a):.1f},{fr.sy(b if math.isfinite(b) else fr.y0):.1f}" for a, b in zip(ex, ehi, strict=True)]
    dn = [f"{fr.sx(a):.1f},{fr.sy(b if math.isfinite(b) else fr.y0):.1f}" for a, b in zip(ex, elo, strict=True)]
    if len(up) <= 1:
        return ""
    return (f'<polygon points="{" ".join(up + dn[::-1])}" class="others">'
            f'<title>{html.escape(name)}</title></polygon>')


def _series(fr: Frame, pts: Points, col: str) -> list[str]:
    """One series: a path broken at missing and non-finite values, each non-finite value marked × on the axis."""
    name, x, y = pts
    out: list[str] = []
    d: list[str] = []
    pen = False
    bad: list[float] = []
    for a, v in zip(x, y, strict=True):
        b = fr.y0 if v == -math.inf else v
        if b is None or not math.isfinite(b):
            pen = False
            if b is not None:
                bad.append(a)
            continue
        d.append(f"{'L' if pen else 'M'}{fr.sx(a):.1f},{fr.sy(b):.1f}")
        pen = True
    if d:
        out.append(f'<path d="{" ".join(d)}" stroke="{col}" class="line"><title>{html.escape(name)}</title></path>')
    y_first = y[0] if y else None
    if len(x) == 1 and y_first is not None and math.isfinite(y_first):
        out.append(f'<circle cx="{fr.sx(x[0]):.1f}" cy="{fr.sy(y_first):.1f}" r="3" fill="{col}"/>')
    for a in bad[:200]:
        out.append(f'<text x="{fr.sx(a):.1f}" y="{fr.pad_t + fr.ph - 3}" class="nf" fill="{col}">×<title>'
                   f'{html.escape(name)}: non-finite at step {int(a)}</title></text>')
    return out


def _markers(markers: Sequence[Event], chart_id: str, fr: Frame) -> list[str]:
    """Dashed lines at the findings' steps, each a link to its card; labels in rows that never overlap."""
    out: list[str] = []
    pad_l, pad_t, pw, ph = fr.pad_l, fr.pad_t, fr.pw, fr.ph
    rows: list[list[tuple[float, float]]] = []  # occupied [left, right] spans per label row
    max_rows = max(1, int(ph // 24))
    order = sorted(enumerate(markers), key=lambda p: (p[1].step if p[1].step is not None else -1, p[0]))
    for i, e in order:
        if e.step is None or not (fr.x0 <= e.step <= fr.x1):
            continue
        x = fr.sx(e.step)
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


def _legend(pts: list[Points], others: Envelope | None, has_env: bool) -> str:
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
