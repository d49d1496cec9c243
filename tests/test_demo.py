"""``floatguard demo``: the numbers it reports, its detection half, and that it runs without torch/jax.

Exact references here are computed by the tests themselves with mpmath (60
digits) from the inputs the demo reports, not taken from the demo.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from typing import Any

import mpmath
import numpy as np
import pytest
from rich.console import Console

from floatguard.demo import run_demo
from floatguard.demo_detect import program_source

mp = mpmath.MPContext()
mp.dps = 60


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=120, highlight=False), buf


@pytest.fixture(scope="module")
def demo() -> tuple[dict[str, Any], str]:
    console, buf = _console()
    return run_demo(console), buf.getvalue()


def _row(result: dict[str, Any], section: str, case: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    rows = [r for r in result["sections"][section]["rows"]
            if (case is None or r["case"] == case) and (dtype is None or r["dtype"] == dtype)]
    assert len(rows) == 1, f"{section}/{case}/{dtype}: {len(rows)} rows"
    return rows[0]


def _lse(xs: list[float]) -> Any:
    return mp.log(mp.fsum(mp.exp(mp.mpf(x)) for x in xs))


def _close(value: float, exact: Any, rel: float) -> bool:
    return abs(mp.mpf(value) - exact) <= rel * abs(exact)


# -- exp ---------------------------------------------------------------------------------
def test_exp_overflows_and_underflows_in_every_format(demo):
    result, _ = demo
    names = [r["dtype"] for r in result["sections"]["exp"]["rows"] if r["case"] == "e^1000"]
    assert names == ["float16", "bfloat16", "float32", "float64"]
    for name in names:
        big = _row(result, "exp", "e^1000", name)
        small = _row(result, "exp", "e^-1000", name)
        assert big["naive"] == math.inf and big["naive_verdict"] == "✗ overflow"
        assert small["naive"] == 0.0 and small["naive_verdict"] == "✗ underflow"
        assert big["exact"] is None and small["exact"] is None  # beyond float64: not reported as inf / 0
    assert result["sections"]["exp"]["exact_1000"].startswith("1.97007111401704")
    assert result["sections"]["exp"]["exact_-1000"].startswith("5.07595889754945")


def test_exp_format_limits_are_those_of_numpy(demo):
    result, _ = demo
    formats = result["sections"]["exp"]["formats"]
    for name, t in (("float16", np.float16), ("float32", np.float32), ("float64", np.float64)):
        fi = np.finfo(t)
        info = formats[name]
        assert (info["max"], info["tiny"], info["smallest_subnormal"], info["eps"]) == (
            float(fi.max), float(fi.smallest_normal), float(fi.smallest_subnormal), float(fi.eps))
        lo, hi = info["exp_finite_nonzero"]
        with np.errstate(all="ignore"):
            assert np.isfinite(np.exp(t(hi * 0.999))) and not np.isfinite(np.exp(t(hi * 1.001)))
            assert np.exp(t(lo * 0.999)) > 0 and np.exp(t(lo * 1.001)) == 0
    assert formats["bfloat16"]["max"] == pytest.approx(3.3895313892515355e38)
    assert formats["bfloat16"]["eps"] == 2.0**-7


# -- logsumexp ---------------------------------------------------------------------------
def test_logsumexp_rows(demo):
    result, text = demo
    hi = _row(result, "logsumexp", "[1000, 1000.5, 999]")
    assert hi["inputs"] == [1000.0, 1000.5, 999.0]
    assert hi["naive"] == math.inf and hi["naive_verdict"] == "✗ overflow"
    assert _close(hi["stable"], _lse(hi["inputs"]), 1e-12) and hi["stable_verdict"] == "✓"
    assert _close(hi["exact"], _lse(hi["inputs"]), 1e-15)
    assert hi["alpha"] == 1000.5 and hi["shifted"] == [-0.5, 0.0, -1.5]
    assert hi["shifted_sum"] == pytest.approx(math.exp(-0.5) + 1 + math.exp(-1.5), rel=1e-15)

    lo = _row(result, "logsumexp", "[-1000, -1000.5, -1001]")
    assert lo["naive"] == -math.inf and lo["naive_verdict"] == "✗ underflow"
    assert _close(lo["stable"], _lse(lo["inputs"]), 1e-12) and lo["alpha"] == -1000.0
    assert "α = max z = 1000.5" in text


# -- log_prod ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, rel", [("float32", 1e-7), ("float64", 1e-14)])
def test_product_underflows_but_log_prod_matches(demo, dtype, rel):
    result, _ = demo
    row = _row(result, "log_prod", dtype=dtype)
    p = row["inputs"]
    assert len(p) == 600 and all(0 < v < 1 for v in p)
    assert row["product"] == 0.0 and row["naive"] == -math.inf and row["naive_verdict"] == "✗ underflow"
    exact = mp.fsum(mp.log(mp.mpf(v)) for v in p)
    assert exact < -745  # the true product is below float64's smallest subnormal
    assert math.isfinite(row["stable"]) and _close(row["stable"], exact, rel)


# -- safe_div ------------------------------------------------------------------------------
def test_safe_div_values_and_gradients(demo):
    result, _ = demo
    one = _row(result, "safe_div", "1 / 0")
    assert one["naive"] == math.inf and one["naive_verdict"] == "✗ overflow"
    eps = float(np.finfo(np.float32).eps)  # float32 default of safe_div
    assert one["stable"] == pytest.approx(1 / eps) and one["stable_verdict"] == "✓"
    zero = _row(result, "safe_div", "0 / 0 (a zero vector / its norm)")
    assert math.isnan(zero["naive"]) and zero["naive_verdict"] == "✗ NaN" and zero["stable"] == 0.0

    import torch  # noqa: F401  (in the test environment: the gradient rows must be there)

    da = _row(result, "safe_div", "∂(a/b)/∂a at a=1, b=0 (torch)")
    assert da["naive"] == math.inf and da["stable"] == pytest.approx(1 / eps)
    db = _row(result, "safe_div", "∂(a/b)/∂b at a=1, b=0 (torch)")
    assert db["naive"] == -math.inf and db["stable"] == 0.0 and db["stable_verdict"] == "✓"


# -- softmax / log_softmax / softplus / masked ------------------------------------------------
def test_float16_softmax(demo):
    result, _ = demo
    row = _row(result, "softmax", dtype="float16")
    assert row["inputs"] == [10.0, 11.0, 12.0]
    assert any(math.isnan(v) for v in row["naive"]) and row["naive_verdict"] == "✗ NaN"
    assert abs(sum(row["stable"]) - 1) <= 3 * 2.0**-11
    total = mp.fsum(mp.exp(mp.mpf(x)) for x in row["inputs"])
    for got, x in zip(row["stable"], row["inputs"], strict=True):
        assert _close(got, mp.exp(mp.mpf(x)) / total, 2.0**-10)  # within 1 ulp of float16
    f32 = _row(result, "softmax", dtype="float32")
    assert any(math.isnan(v) for v in f32["naive"]) and f32["stable_sum"] == pytest.approx(1, abs=1e-6)


def test_log_softmax(demo):
    result, _ = demo
    row = _row(result, "log_softmax", dtype="float16")
    assert row["inputs"] == [0.0] + [-30.0] * 50
    assert row["naive"][1:] == [-math.inf] * 50 and row["naive_verdict"] == "✗ underflow"
    assert row["stable"][1:] == [-30.0] * 50 and row["stable"][0] == 0.0
    f32 = _row(result, "log_softmax", dtype="float32")
    lse = _lse(f32["inputs"])
    assert f32["naive"][1:] == [-math.inf] * 50
    assert all(_close(s, mp.mpf(x) - lse, 1e-7) for s, x in zip(f32["stable"][1:], f32["inputs"][1:], strict=True))


def test_softplus(demo):
    result, _ = demo
    big = _row(result, "softplus", "x = 30, float16")
    assert big["naive"] == math.inf and big["naive_verdict"] == "✗ overflow" and big["stable"] == 30.0
    neg = _row(result, "softplus", "x = -30, float64")
    exact = mp.log1p(mp.exp(-30))
    assert _close(neg["stable"], exact, 2e-16) and neg["stable_verdict"] == "✓"
    assert not _close(neg["naive"], exact, 1e-4) and neg["naive_verdict"].startswith("✗ rel. err")
    lost = _row(result, "softplus", "x = -30, float32")
    assert lost["naive"] == 0.0 and _close(lost["stable"], exact, 2**-23)


def test_fully_masked_row(demo):
    result, _ = demo
    for row in result["sections"]["masked_softmax"]["rows"]:
        assert all(math.isnan(v) for v in row["naive"]) and row["naive_verdict"] == "✗ NaN"
        assert row["stable"] == [0.0, 0.0, 0.0] and row["stable_verdict"] == "✓"


# -- verdicts, summary, text -----------------------------------------------------------------
def test_every_floatguard_result_passes_and_naive_ones_fail(demo):
    result, text = demo
    rows = [r for s in result["sections"].values() for r in s["rows"] if r["stable_verdict"] is not None]
    assert rows and all(r["stable_verdict"] == "✓" for r in rows)
    assert all(r["naive_verdict"].startswith("✗") for r in rows)
    assert result["summary"] == {"compared": len(rows), "naive_failed": len(rows), "stable_failed": 0}
    assert result["skipped"] == [] and result["bfloat16"] == "ml_dtypes"
    assert result["exact_method"].startswith("mpmath")
    for section in result["sections"].values():
        assert section["title"] in text and section["why"].endswith(".")


def test_decimal_fallback_gives_the_same_exact_values(demo, monkeypatch):
    result, _ = demo
    monkeypatch.setitem(sys.modules, "mpmath", None)
    console, buf = _console()
    fallback = run_demo(console)
    assert "decimal" in fallback["exact_method"] and "exact (decimal)" in buf.getvalue()
    for key, section in result["sections"].items():
        for a, b in zip(section["rows"], fallback["sections"][key]["rows"], strict=True):
            ea, eb = np.array(a["exact"], dtype=float), np.array(b["exact"], dtype=float)
            np.testing.assert_allclose(ea, eb, rtol=1e-15)
            assert a["naive_verdict"] == b["naive_verdict"] and a["stable_verdict"] == b["stable_verdict"]


def test_bfloat16_from_torch_without_ml_dtypes(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    console, _ = _console()
    result = run_demo(console)
    assert result["bfloat16"] == "torch"
    info = result["sections"]["exp"]["formats"]["bfloat16"]
    fi = torch.finfo(torch.bfloat16)
    assert (info["max"], info["tiny"], info["eps"]) == (fi.max, fi.smallest_normal, fi.eps)
    assert info["smallest_subnormal"] == 2.0**-133
    assert _row(result, "exp", "e^1000", "bfloat16")["naive"] == math.inf


# -- detection: monitor, sanitizer, lint ------------------------------------------------------
def _line_of(source: str, needle: str) -> int:
    (line,) = [i for i, text in enumerate(source.splitlines(), 1) if needle in text]
    return line


def test_monitor_names_the_silent_failure_and_its_remedy(demo):
    result, text = demo
    monitor = result["detection"]["monitor"]
    (finding,) = monitor["findings"]
    assert finding["kind"] == "stalled_loss" and finding["source"] == "monitor"
    assert "receives probabilities" in finding["message"] and "Remove the softmax" in finding["hint"]
    silent, healthy = monitor["curves"].values()
    assert all(math.isfinite(loss) for _, loss, _ in silent)  # silent: nothing is NaN
    assert silent[-1][1] > 1.46 > healthy[-1][1]  # above the floor of 10 classes; the fixed model goes below it
    assert silent[-1][2] < healthy[-1][2]
    assert "monitor: stalled_loss" in text and "Remove the softmax at the end of the model" in text


def test_sanitizer_names_the_first_bad_op_module_and_line(demo):
    result, text = demo
    san = result["detection"]["sanitizer"]
    line = _line_of(program_source(torch=True), "torch.exp(z) / torch.exp(z).sum")
    assert san["backend"] == "torch" and san["step"] == 1
    assert math.isfinite(san["losses"][0]) and all(math.isnan(v) for v in san["losses"][1:])
    e = san["event"]
    assert (e["kind"], e["op"], e["module"]) == ("overflow", "aten::exp", "probs")
    assert (e["file"], e["line"]) == ("train.py", line)
    assert e["origin"] == "produced" and e["stats"]["input0.absmax"] > math.log(np.finfo(np.float32).max)
    assert "subtract the max" in e["hint"]
    assert "sanitizer: overflow in aten::exp" in text and f"train.py:{line}, module 'probs'" in text


def test_lint_flags_the_same_line_and_its_fix_trains(demo):
    result, text = demo
    san, lint = result["detection"]["sanitizer"], result["detection"]["lint"]
    (finding,) = lint["findings"]
    assert finding["code"] == "FG103" and finding["line"] == san["event"]["line"]
    # torch has its own stable softmax: a safe fix that adds no dependency
    assert finding["fix"]["edits"][0]["text"] == "torch.softmax(z, dim=-1)" and lint["fixes_applied"] == 1
    assert lint["unsafe"] is False and "floatguard lint --fix train.py" in text
    after = [a.strip() for ch in lint["changed"] for a in ch["after"]]
    assert after == ["return torch.softmax(z, dim=-1)"]
    assert all(math.isfinite(v) for v in lint["fixed_losses"]) and lint["fixed_events"] == []
    assert lint["fixed_losses"][-1] < lint["fixed_losses"][0]
    assert f"train.py:{finding['line']}:{finding['col']}" in text and "FG103 naive-softmax" in text
    assert f"+ {finding['line']:>3}         return torch.softmax(z, dim=-1)" in text


def test_demo_help(capsys):
    from floatguard.cli import main

    assert main(["demo", "--help"]) == 0
    assert "floatguard cure" in capsys.readouterr().out


# -- subprocesses ---------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def test_python_dash_m_floatguard_demo():
    proc = subprocess.run([sys.executable, "-m", "floatguard", "demo"], capture_output=True, text=True,
                          encoding="utf-8", env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for key in ("log-sum-exp", "fg.logsumexp(z)", "✗ overflow", "✗ underflow", "✗ NaN", "✓", "bfloat16",
                "exact (mpmath)", "18 of 18 ✓"):
        assert key in out, key
    assert "\x1b[" not in out  # not a terminal: plain text, no colour codes
    assert max(len(line) for line in out.splitlines()) <= 120


BLOCKED = """
import sys
for name in ("torch", "jax", "ml_dtypes"):
    sys.modules[name] = None
from floatguard.cli import main
rc = main(["demo"])
print("LOADED:", sorted(m for m in ("torch", "jax", "ml_dtypes") if sys.modules.get(m) is not None))
raise SystemExit(rc)
"""


def test_demo_without_torch_jax_or_ml_dtypes():
    proc = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, encoding="utf-8",
                          env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "LOADED: []" in out
    assert "skipped: bfloat16" in out and "skipped: gradients" in out and "torch is not importable" in out
    assert "∂(a/b)" not in out and "1 / 0" in out and "float16" in out
    # detection on the base install: NumPy's sanitizer path and the linter; the monitor is named as skipped
    line = _line_of(program_source(torch=False), "np.exp(z) / np.exp(z).sum")
    assert "sanitizer: overflow in np.exp" in out and f"train.py:{line}" in out and "module '" not in out
    assert f"train.py:{line}:12" in out and "FG103 naive-softmax" in out
    # NumPy has no softmax: the fix adds `import floatguard` (sorted into the imports as isort would), an unsafe
    # fix the demo applies as --unsafe-fixes does
    assert f"+ {line:>3}     return floatguard.softmax(z, axis=1)" in out and "+   1 import floatguard" in out
    assert "floatguard lint --fix --unsafe-fixes train.py" in out
    assert "sanitizer findings in the fixed run: 0" in out
    assert "monitor: " not in out and "skipped: the training monitor" in out and "floatguard[torch]" in out
