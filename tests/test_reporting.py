"""The one reporter: terminal panels and summaries, findings files (the older shape too) and the HTML page
render the same record, a lint fix as the edits ``--fix`` writes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from floatguard.cli import main
from floatguard.events import Edit, Event, Fix, Report
from floatguard.reporting import detail_rows, event_panel, events_html, load_events, print_report, print_summary

FIX = Fix("Replace with `np.logaddexp.reduce(x)`", "safe",
          (Edit(5, 12, 5, 40, "np.logaddexp.reduce(x)"), Edit(1, 1, 1, 1, "import numpy\n")))
LINT = Event(kind="log-sum-exp", source="lint", message="log(sum(exp(x))) <overflows>", code="FG101", file="a.py",
             line=5, col=12, end_line=5, end_col=40, hint="use logsumexp", fix=FIX)
SAN = Event(kind="overflow", source="sanitize", message="exp overflowed", op="aten::exp", phase="backward",
            forward_op="aten::sqrt", module="enc.0", dtype="float32", shape=(2, 3), file="t.py", line=9, rank=1,
            stats={"output.max": 3.5e38, "output.inf": 2, "input0.absmax": 90.0, "repeats": 3}, origin="produced")
MON = Event(kind="nonfinite_loss", source="monitor", message="the loss is NaN", severity="warning", step=4,
            module="1", stats={"count": 2}, replay="replayed the forward under the sanitizer", cause=SAN,
            layers=("0", "2"), producer="0", ranks=(1,), note="the run recovered")


def _text(render: object, *args: object, **kwargs: object) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=200, color_system=None)
    if render is print_summary:
        print_summary(*args, console=con, **kwargs)  # type: ignore[arg-type]
    else:
        con.print(render(*args, **kwargs))  # type: ignore[operator]
    return buf.getvalue()


def test_the_panel_of_a_lint_finding_shows_its_fix_edits() -> None:
    out = _text(event_panel, LINT)
    assert "a.py:5:12" in out and "hint: use logsumexp" in out
    assert 'fix (safe): Replace with `np.logaddexp.reduce(x)`: 5:12-5:40 -> "np.logaddexp.reduce(x)"' in out
    assert '1:1 + "import numpy\\n"' in out  # the import the fix adds is one of its edits


def test_the_panel_of_a_sanitizer_finding_has_the_evidence() -> None:
    out = _text(event_panel, SAN)
    assert "overflow in aten::exp" in out and "backward (gradient of aten::sqrt)" in out
    assert "float32[2, 3]" in out and "enc.0" in out and "rank" in out
    assert "output" in out and "input0" in out and "inf" in out  # the stats table, grouped by tensor


def test_the_detail_fields_of_a_monitor_finding_are_shown() -> None:
    rows = dict(detail_rows(MON))
    assert rows == {"replay": "replayed the forward under the sanitizer",
                    "cause": "overflow in aten::exp (enc.0) at t.py:9", "layers": "0, 2", "fed by": "0",
                    "ranks": "1", "note": "the run recovered"}
    out = _text(event_panel, MON)
    assert all(v in out for v in rows.values())
    assert detail_rows(LINT) == []


def test_print_report_shows_the_first_error_and_counts() -> None:
    buf = io.StringIO()
    print_report(Report([MON, SAN, LINT]), buf, limit=1)
    out = buf.getvalue()
    assert "overflow in aten::exp" in out and "nonfinite_loss in" not in out  # from the first error on
    assert "1 nonfinite_loss (warning), 1 overflow (error), 1 log-sum-exp (error)" in out


def test_summary_table_has_a_row_per_finding() -> None:
    out = _text(print_summary, Report([LINT, SAN, MON]), title="run")
    assert "run: 3 findings" in out and "FG101" in out and "aten::exp" in out and "step 4" in out
    assert "run: no findings" in _text(print_summary, Report([]), title="run")


def test_the_html_page_renders_every_field_escaped() -> None:
    page = events_html(Report([LINT, SAN, MON]), title="t <x>", source="f.json")
    assert "<title>t &lt;x&gt;</title>" in page and "&lt;overflows&gt;" in page and "<overflows>" not in page
    assert ('<b>fix</b> (safe): Replace with `np.logaddexp.reduce(x)`: 5:12-5:40 -&gt; '
            "&quot;np.logaddexp.reduce(x)&quot;; 1:1 + &quot;import numpy\\n&quot;") in page
    assert "cause: overflow in aten::exp (enc.0) at t.py:9" in page and "fed by: 0" in page
    assert "<td>output</td>" in page and "repeats=3" in page  # grouped stats as a table, the rest inline
    assert "script" not in page.lower()
    assert 'class="ok">No findings.' in events_html(Report([]))


def test_a_findings_file_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "run.json"
    Report([LINT, SAN, MON]).to_json(str(f))
    got = load_events(f)
    assert got is not None and got.events == [LINT, SAN, MON]
    lint = tmp_path / "lint.json"
    lint.write_text(json.dumps([LINT.to_dict()]))  # `floatguard lint --format json`: a list
    assert load_events(lint) == Report([LINT])


OLD_LINT = [{"kind": "log-sum-exp", "source": "lint", "message": "m", "severity": "error", "hint": "h",
             "code": "FG101", "file": "a.py", "line": 5, "col": 12, "op": "np.log", "phase": None, "module": None,
             "dtype": None, "shape": None, "step": None, "rank": None, "fix": "np.logaddexp.reduce(x)",
             "origin": None, "forward_op": None,
             "stats": {"end_line": 5, "end_col": 40, "fix_safe": 1,
                       "fix_edits": [[5, 12, 5, 40, "np.logaddexp.reduce(x)"]]}}]


def test_floatguard_report_reads_an_old_findings_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Findings files written before the typed fields: ``floatguard report old.json`` still works."""
    old = tmp_path / "old.json"
    old.write_text(json.dumps(OLD_LINT))
    rep = load_events(old)
    assert rep is not None
    (e,) = rep.events
    assert (e.end_line, e.end_col) == (5, 40) and e.fix is not None
    assert e.fix.edits == (Edit(5, 12, 5, 40, "np.logaddexp.reduce(x)"),)
    html_out = tmp_path / "old.html"
    assert main(["report", str(old), "-o", str(html_out)]) == 0
    out = capsys.readouterr().out
    assert "a.py:5:12" in out and "np.logaddexp.reduce(x)" in out
    assert "5:12-5:40" in html_out.read_text()
