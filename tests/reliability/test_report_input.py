"""``floatguard report`` on a damaged findings file says what is wrong with it, by name (issue 14, section 1).

A truncated, empty or non-JSON file, a JSON value that is not a list of events, or an
event with a field of the wrong type is an error naming the file and the fault, never
"records no training step" nor a raw traceback; a monitor's JSONL log still reads as one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from floatguard.cli import main
from floatguard.events import Event, Report
from floatguard.reporting import load_events

GOOD = Report([Event(kind="log-sum-exp", source="lint", message="m", code="FG101", file="a.py", line=1, col=1)])


@pytest.mark.parametrize(("text", "says"), [
    (GOOD.to_json()[:-40], "not valid JSON"),  # truncated
    ("", "empty"),
    ("  \n", "empty"),
    ("hello, world\n", "not valid JSON"),
    ("[1, 2, 3]", "event 0 is a int"),
    ("42", "JSON int"),
    ('{"events": 7}', "'events' must be a list"),
    ('[{"kind": 123, "source": "lint", "message": "m"}]', "'kind' must be a string, got int"),
    ('[{"kind": "k", "source": "lint", "message": "m", "stats": [1, 2]}]', "'stats' must be an object"),
    ('[{"kind": "k", "source": "lint", "message": "m", "line": "3"}]', "'line' must be an integer"),
    ('[{"kind": "k", "source": "lint", "message": "m", "shape": "2x3"}]', "'shape' must be a list"),
    ('[{"kind": "k", "source": "nowhere", "message": "m"}]', "'source' must be one of"),
    ('[{"kind": "k", "source": "lint"}]', "event 0 is not a floatguard event"),
])
def test_a_damaged_findings_file_is_named_and_its_fault_said(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             text: str, says: str) -> None:
    f = tmp_path / "findings.json"
    f.write_text(text)
    with pytest.raises(ValueError, match=says.replace("[", r"\[")):
        load_events(f)
    code = main(["report", str(f), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    flat = "".join(err.split())  # rich wraps long paths over lines
    assert str(f).replace(" ", "") in flat and says.split(" ")[-1] in flat
    assert "records no training step" not in err and "Traceback" not in err


def test_good_files_still_read(tmp_path: Path) -> None:
    f = tmp_path / "ok.json"
    f.write_text(GOOD.to_json())
    assert load_events(f) is not None and load_events(f).events[0].code == "FG101"  # type: ignore[union-attr]
    log = tmp_path / "run.jsonl"
    log.write_text(json.dumps({"kind": "start", "t": 0}) + "\n" + json.dumps({"kind": "step", "step": 1}) + "\n")
    assert load_events(log) is None  # a monitor log goes to the monitor's reader
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"kind": "start", "t": 0}) + "\n")
    assert load_events(one) is None
