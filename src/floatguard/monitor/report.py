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
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..events import Event
from ..reporting import CSS, detail_rows, fmt_value
from .chart import Envelope, Series, _finite, svg_chart
from .log import RunLog, read_log

__all__ = ["print_summary", "render_html", "write_report"]

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
        parts.append(f"{k}={fmt_value(v)}")
    return ", ".join(parts + [f"{k}: {v}" for k, v in detail_rows(e)])


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
    rows = "".join(f"<tr><td><code>{html.escape(str(k))}</code></td><td class=\"num\">{html.escape(fmt_value(v))}</td>"
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
