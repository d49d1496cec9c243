"""``floatguard report``: the HTML page (checked in headless Chromium) and the terminal summary."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")

from monitor_programs import dead_relu_bias, exploding_lr, healthy_mlp_adam
from rich.console import Console

from floatguard.cli import main
from floatguard.monitor import read_log
from floatguard.monitor.report import print_summary, render_html, write_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
                  "--v=0"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is required to check the HTML report and is not installed: "
                    "apt-get install -y chromium (.ci/run installs it)")
    return exe


def _browse(page: Path, tmp: Path, *action: str) -> tuple[str, list[str]]:
    """Open ``page`` in headless Chromium; returns stdout and the console messages it logged."""
    proc = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *action,
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def _report(tmp_path: Path, program=exploding_lr) -> tuple[Path, Path]:
    log = tmp_path / "run.jsonl"
    program(log=log)
    out = tmp_path / "report.html"
    write_report(log, out)
    return log, out


def test_report_renders_in_chromium_without_console_errors(tmp_path: Path) -> None:
    _, page = _report(tmp_path)
    dom, console = _browse(page, tmp_path, "--dump-dom")
    assert console == [], console
    assert dom.count("<svg") >= 4  # loss, gradient norms, update ratios, activations
    assert len(re.findall(r'<path d="M', dom)) >= 5  # drawn lines
    for kind in ("diverging_loss", "exploding_gradient", "nonfinite_loss"):
        assert re.search(rf'class="mk" text-anchor="(start|end)">{kind}</text>', dom)  # marked on the timeline
    assert "remedy:" in dom and "Lower the learning rate" in dom


# A GPT-2-like model of 27 layers trained in float16: its logits overflow at every sampled step.
LAYERS = ["transformer.wte", *[f"transformer.h.{b}.{p}" for b in range(4) for p in
                               ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")],
          "transformer.ln_f", "lm_head"]


def _fp16_transformer_log(path: Path, steps: int = 200) -> None:
    from floatguard.events import Event

    n = len(LAYERS)
    recs: list[dict] = [{"type": "start", "layers": LAYERS, "layer_types": ["Linear"] * n, "numel": [4096] * n,
                         "mode": "default", "every": 10, "first_step": 0, "world_size": 1,
                         "thresholds": {"patience": 3, "explode_rms": 10.0, "update_low": 1e-6, "update_high": 0.1,
                                        "logit_absmax": 8192.0}}]
    found = [Event("nonfinite_logits", "monitor", "the logits are inf at step 0", step=0, module="lm_head",
                   severity="error", hint="Compute the loss in float32."),
             Event("fp16_overflow", "monitor", "float16 overflow in c_attn", step=0,
                   module="transformer.h.0.attn.c_attn", severity="error", hint="Use bfloat16."),
             Event("exploding_gradient", "monitor", "gradients grow", step=0, module="transformer.wte",
                   severity="warning", hint="Clip the gradients."),
             Event("update_ratio", "monitor", "weights barely move", step=120, module="transformer.h.3.ln_2",
                   severity="warning", hint="Raise the learning rate.")]
    for t in range(steps):
        rec: dict = {"type": "step", "step": t, "loss": 10.8 * 0.99 ** t, "grad_norm": 3.0 / (1 + t)}
        if t % 10 == 0:
            rec["grad"] = [10.0 ** (-(k % 9)) / (1 + t) for k in range(n)]
            rec["update"] = [10.0 ** (-2 - (k % 5)) for k in range(n)]
            rec["logits"] = {"site": "loss:cross_entropy", "absmax": math.inf, "gap": None, "classes": 50257,
                             "dtype": "float16"}
            rec["scale"] = 65536.0 / 2 ** (t // 50)
        recs.append(rec)
        recs += [{"type": "finding", **e.to_dict()} for e in found if e.step == t]
    recs.append({"type": "end", "step": steps - 1, "findings": [e.to_dict() for e in found]})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


# Injected into a copy of the report (the report itself has no script): measures the laid-out page.
MEASURE = """<script>
(() => {
  const cs = getComputedStyle(document.body);
  const content = document.body.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const overlaps = [], ticks = [];
  for (const svg of document.querySelectorAll("svg.chart")) {
    for (const sel of ["text.xt, text.yt", "text.mk"]) {
      const boxes = [...svg.querySelectorAll(sel)].map(t => [t.getBoundingClientRect(), t.textContent]);
      if (sel !== "text.mk") ticks.push(boxes.length);
      boxes.forEach(([a, s], i) => boxes.slice(i + 1).forEach(([b, u]) => { if (hit(a, b)) overlaps.push([s, u]); }));
    }
  }
  const charts = [...document.querySelectorAll("svg.chart")].map(s => s.getBoundingClientRect().width);
  const pre = document.createElement("pre");
  pre.id = "measure";
  pre.textContent = JSON.stringify({content, charts, overlaps, ticks});
  document.body.appendChild(pre);
})();
</script>"""


def _measure(page: Path, tmp: Path, width: int, css: str = "") -> dict:
    probe = tmp / f"probe-{width}.html"
    probe.write_text(page.read_text().replace("</body>", f"<style>{css}</style>{MEASURE}</body>"))
    dom, console = _browse(probe, tmp, f"--window-size={width},900", "--dump-dom")
    assert console == [], console
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.parametrize("width", [1280, 800])
def test_report_fills_the_width_with_no_overlapping_labels(tmp_path: Path, width: int) -> None:
    log = tmp_path / "fp16.jsonl"
    _fp16_transformer_log(log)
    page = tmp_path / "report.html"
    write_report(log, page)
    m = _measure(page, tmp_path, width)
    assert len(m["charts"]) >= 5 and m["content"] > 0.8 * (min(width, 1152) - 32)
    for w in m["charts"]:
        assert w >= 0.9 * m["content"], m  # every plot fills the column, at both widths
    assert all(n >= 4 for n in m["ticks"]), m  # the axes are labelled...
    assert m["overlaps"] == [], m["overlaps"]  # ...and no two labels (ticks, finding names) overlap
    shot = tmp_path / f"report-{width}.png"
    _, console = _browse(page, tmp_path, f"--window-size={width},2600", f"--screenshot={shot}")
    print(f"screenshot at {width} px: {shot}")
    data = shot.read_bytes()
    assert console == [] and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_the_width_check_can_fail(tmp_path: Path) -> None:
    """A plot pinned at 550 px (the old report) is caught by the measurement above."""
    log = tmp_path / "fp16.jsonl"
    _fp16_transformer_log(log)
    page = tmp_path / "report.html"
    write_report(log, page)
    m = _measure(page, tmp_path, 1280, css="svg.chart{width:550px}")
    assert min(m["charts"]) < 0.9 * m["content"]


def test_report_groups_layers_links_findings_and_explains_empty_plots(tmp_path: Path) -> None:
    log = tmp_path / "fp16.jsonl"
    _fp16_transformer_log(log)
    run = read_log(log)
    page = render_html(run)
    for name in LAYERS:  # every layer is reachable: in the table of all layers, with its own anchor
        assert f"<code>{name}</code>" in page, name
    grad = page[page.index('id="grad"'):page.index("</figure>", page.index('id="grad"'))]
    drawn = re.findall(r'<path d="M[^"]*" stroke="[^"]*" class="line"><title>([^<]*)</title>', grad)
    assert "total" in drawn and 6 <= len(drawn) - 1 < len(LAYERS)  # top-k by gradient, not all 27 lines
    assert {"lm_head", "transformer.h.0.attn.c_attn", "transformer.wte"} <= set(drawn)  # flagged layers drawn
    assert 'class="others"' in grad and f"others: {len(LAYERS) + 1 - len(drawn)} layers" in grad
    # findings <-> markers: each card links to its markers, each marker links back to its card
    for i, e in enumerate(run.findings):
        assert f'id="f{i}"' in page and f'<a href="#f{i}"><g class="marker" id="loss-m{i}"' in page
        assert f'href="#loss-m{i}"' in page
        if e.module:
            assert f'href="#layer-{LAYERS.index(e.module)}"' in page and f'id="layer-{LAYERS.index(e.module)}"' in page
    # the float16 logits plot is empty and says why
    logits = page[page.index('id="logits"'):page.index("</figure>", page.index('id="logits"'))]
    assert "<path" not in logits and 'class="empty"' in logits
    said = " ".join(re.sub(r"<[^>]+>", " ", logits).split())
    assert "No finite value to plot" in said and "float16 logits were NaN or ±inf at every sampled step" in said
    # thresholds are a table with their meaning, not a JSON dump
    assert "<td><code>explode_rms</code></td>" in page and '{"patience"' not in page
    assert "per-element RMS gradient of one layer" in page


def test_report_needs_no_network(tmp_path: Path) -> None:
    log = tmp_path / "fp16.jsonl"
    _fp16_transformer_log(log)
    page = tmp_path / "report.html"
    write_report(log, page)
    text = page.read_text()
    assert "<script" not in text and not re.search(r'(src|href)\s*=\s*"(?!#)', text)
    assert not re.search(r"https?://|url\(|@import", text.replace('xmlns="http://www.w3.org/2000/svg"', ""))
    assert _requests(page, tmp_path) == set()


def test_the_network_check_can_fail(tmp_path: Path) -> None:
    """A page that loads a remote image (a CDN script, say) is caught by Chromium's net log."""
    bad = tmp_path / "remote.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/plot.png"></body></html>')
    assert any(u.startswith("http://127.0.0.1:9/") for u in _requests(bad, tmp_path))


def _requests(page: Path, tmp: Path) -> set[str]:
    """The URLs the page asked Chromium for, from its net log.

    Chromium's own background requests (time, updates, accounts) carry the initiator
    "not an origin"; a request made by a page has the page's origin ("null" for a file).
    """
    netlog = tmp / "net.json"
    _browse(page, tmp, "--dump-dom", f"--log-net-log={netlog}")
    events = json.loads(netlog.read_text())["events"]
    return {str(p["url"]) for e in events if isinstance(p := e.get("params"), dict)
            and "url" in p and p.get("initiator", "not an origin") != "not an origin"}


def test_console_errors_would_be_caught(tmp_path: Path) -> None:
    """The check above can fail: a page with a script error is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    _, console = _browse(bad, tmp_path, "--dump-dom")
    assert any("undefinedFunction" in line for line in console)


def test_report_is_self_contained(tmp_path: Path) -> None:
    _, page = _report(tmp_path, dead_relu_bias)
    text = page.read_text()
    assert "<script" not in text and not re.search(r'(src|href)\s*=\s*"(?!#)', text)
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "dead_units" in text and "Update ratio" in text and "Activations" in text


def test_healthy_report_says_so(tmp_path: Path) -> None:
    log = tmp_path / "ok.jsonl"
    healthy_mlp_adam(log=log)
    page = render_html(read_log(log))
    assert "No findings" in page and 'class="mk"' not in page


def _report_cmd(*argv: str) -> int:
    return main(["report", *argv])


def test_cli_writes_the_report_and_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.jsonl"
    exploding_lr(log=log)
    assert _report_cmd(str(log)) == 0
    assert (tmp_path / "run.html").exists()  # default output: next to the log
    out = capsys.readouterr().out
    assert "3 findings" in out and "exploding_gradient" in out and "remedy" in out
    assert _report_cmd(str(log), "-o", str(tmp_path / "x.html"), "-q") == 0
    assert capsys.readouterr().out == "" and (tmp_path / "x.html").exists()


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _report_cmd(str(tmp_path / "missing.jsonl")) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"type":"start","layers":[]}\n')
    assert _report_cmd(str(empty)) == 1
    assert "no such log" in capsys.readouterr().err


def test_summary_plain_when_not_a_terminal(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    exploding_lr(log=log)
    path = tmp_path / "summary.txt"
    with open(path, "w") as fh:
        print_summary(read_log(log).findings, Console(file=fh, width=100), steps=60)
    text = path.read_text()
    assert "\x1b[" not in text and "60 steps, 3 findings" in text and "diverging_loss" in text


def test_long_runs_are_decimated(tmp_path: Path) -> None:
    log = tmp_path / "long.jsonl"
    with open(log, "w") as fh:
        fh.write('{"type":"start","layers":["a"],"first_step":0}\n')
        for t in range(20000):
            fh.write(f'{{"type":"step","step":{t},"loss":{1 + (t % 7) / 10},"grad_norm":1.0}}\n')
    page = render_html(read_log(log))
    assert len(page) < 400_000 and os.path.getsize(log) > 1_000_000


# -- findings files of the other tools: one reporter for every event -------------------------------------
def _sanitizer_findings(path: Path) -> None:
    import torch

    from floatguard.sanitize import detect

    with detect(action="record") as d:
        torch.log(torch.softmax(torch.tensor([[0.0, 200.0, 3.0]]), -1))  # L:report_softmax
    path.write_text(d.report.to_json())


def test_report_renders_sanitizer_and_lint_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from floatguard import cli

    san = tmp_path / "sanitize.json"
    _sanitizer_findings(san)
    assert _report_cmd(str(san)) == 0
    out = capsys.readouterr().out
    assert "aten::_softmax" in out and "underflow" in out and "div_by_zero" in out and "log_softmax" in out
    page = (tmp_path / "sanitize.html").read_text()
    line = next(i for i, t in enumerate(Path(__file__).read_text().splitlines(), 1) if "L:report_softmax" in t)
    assert f"test_report.py:{line}" in page and "aten::log" in page and "input0" in page  # where, op, stats table
    assert "<script" not in page and not re.search(r'(src|href)\s*=\s*"(?!#)', page)

    code = tmp_path / "code.py"
    code.write_text("import numpy as np\n\n\ndef lse(x):\n    return np.log(np.sum(np.exp(x)))\n")
    assert cli.main(["lint", "--format", "json", str(code)]) == 1
    lint = tmp_path / "lint.json"
    lint.write_text(capsys.readouterr().out)
    assert _report_cmd(str(lint), "-o", str(tmp_path / "lint.html")) == 0
    out = capsys.readouterr().out
    assert "FG101" in out and "lint" in out
    page = (tmp_path / "lint.html").read_text()
    assert "code.py:5:12" in page and "np.logaddexp.reduce(x, axis=None)" in page  # where, and the fix
    dom, console = _browse(tmp_path / "lint.html", tmp_path, "--dump-dom")
    assert console == [] and "FG101" in dom


def test_report_refuses_a_findings_file_with_a_foreign_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "bad.json"
    bad.write_text('{"events": [{"kind": "nan", "source": "sanitize", "message": "m", "colour": "red"}]}')
    assert _report_cmd(str(bad)) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "is not a floatguard event" in err and "unknown field(s) ['colour']" in err
