"""The finding record: frozen, typed, validated, and its JSON form round-trips (the older shape reads too)."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from floatguard.events import Edit, Event, Fix, Report, apply_edits

FIX = Fix("Replace with `torch.logsumexp(x, dim=-1)`", "safe",
          (Edit(5, 12, 5, 40, "torch.logsumexp(x, dim=-1)"), Edit(1, 1, 1, 1, "import torch\n")))
FULL = Event(kind="log-sum-exp", source="lint", message="m", severity="warning", hint="h", code="FG101",
             file="a.py", line=5, col=12, end_line=5, end_col=40, cell=2, op="torch.log", phase="forward",
             module="enc.0", dtype="float32", shape=(2, 3), stats={"a.max": 1.5, "n": 3, "ok": True, "gone": None},
             step=7, rank=1, origin="produced", forward_op="aten::sqrt", fix=FIX, replay="replayed the forward",
             cause=Event(kind="overflow", source="sanitize", message="exp overflowed", op="aten::exp", line=3),
             layers=("0", "2"), producer="1", ranks=(0, 3), note="recovered")


def test_an_event_is_frozen_and_changes_by_replace() -> None:
    e = Event(kind="nan", source="sanitize", message="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.line = 3  # type: ignore[misc]
    f = dataclasses.replace(e, line=3, stats={"repeats": 2})
    assert (e.line, dict(e.stats), f.line, dict(f.stats)) == (None, {}, 3, {"repeats": 2})
    assert not hasattr(e, "__dict__")  # slots


def test_round_trip_of_every_field_through_json_and_pickle() -> None:
    d = FULL.to_dict()
    assert Event.from_dict(json.loads(json.dumps(d))) == FULL
    assert pickle.loads(pickle.dumps(FULL)) == FULL  # lint workers and all_gather_object pickle events
    assert d["shape"] == [2, 3] and d["fix"]["edits"][1] == {"line": 1, "col": 1, "end_line": 1, "end_col": 1,
                                                             "text": "import torch\n", "cell": None}
    assert {f.name for f in dataclasses.fields(Event)} == set(d)
    r = Report([FULL, Event(kind="k", source="monitor", message="x", severity="info")])
    assert Report.from_json(r.to_json()).events == r.events and r.first == 0  # no error: the first event


@given(st.dictionaries(st.text(min_size=1, max_size=8),
                       st.one_of(st.none(), st.booleans(), st.integers(-2**62, 2**62),
                                 st.floats(allow_nan=False)), max_size=6))
def test_stats_of_numbers_round_trip(stats: dict[str, float | int | bool | None]) -> None:
    e = Event(kind="k", source="monitor", message="m", stats=stats)
    assert Event.from_dict(json.loads(json.dumps(e.to_dict()))).stats == stats


def test_numpy_scalars_become_python_numbers() -> None:
    e = Event(kind="k", source="sanitize", message="m", line=np.int64(4), shape=[np.int64(2)],  # type: ignore[arg-type]
              stats={"x": np.float32(1.5), "n": np.int64(3)})
    assert e.line == 4 and type(e.line) is int and e.shape == (2,)
    assert e.stats == {"x": 1.5, "n": 3} and type(e.stats["x"]) is float and type(e.stats["n"]) is int


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"source": "nowhere"}, "'source' must be one of"),
    ({"severity": "fatal"}, "'severity' must be one of"),
    ({"line": "3"}, "'line' must be an integer"),
    ({"line": True}, "'line' must be an integer"),
    ({"kind": 3}, "'kind' must be a string"),
    ({"hint": 3}, "'hint' must be a string"),
    ({"shape": "2x3"}, "'shape' must be a list of integers"),
    ({"stats": [1, 2]}, "'stats' must be an object"),
    ({"stats": {"replay": "text"}}, "'stats' holds numbers only"),
    ({"stats": {"layers": ["a"]}}, "'stats' holds numbers only"),
    ({"layers": "ab"}, "'layers' must be a list of strings"),
    ({"fix": "x + 1"}, "'fix' must be a Fix"),
])
def test_bad_fields_are_refused_by_name(kwargs: dict[str, object], says: str) -> None:
    base: dict[str, object] = {"kind": "k", "source": "lint", "message": "m"}
    with pytest.raises(ValueError, match=says):
        Event(**{**base, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(("make", "says"), [
    (lambda: Edit(0, 1, 1, 1, "x"), "'line' must be a positive integer"),
    (lambda: Edit(2, 1, 1, 1, "x"), "before the start"),
    (lambda: Edit(1, 1, 1, 1, None), "'text' must be a string"),  # type: ignore[arg-type]
    (lambda: Fix("t", "maybe", (Edit(1, 1, 1, 1, "x"),)), "'applicability' must be one of"),  # type: ignore[arg-type]
    (lambda: Fix("t", "safe", ()), "non-empty sequence of Edit"),
    (lambda: Event.from_dict({"kind": "k", "source": "lint", "message": "m", "colour": 1}), "unknown field"),
    (lambda: Event.from_dict({"kind": "k", "source": "lint"}), "message"),
    (lambda: Event.from_dict({"kind": "k", "source": "lint", "message": "m", "fix": {"edits": 3}}),
     "'edits' must be a list"),
])
def test_bad_edits_fixes_and_dicts_are_refused(make: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        make()  # type: ignore[operator]


def test_the_older_json_shape_still_reads() -> None:
    """Lint JSON and reports written before the typed fields: positions, cell and edits in ``stats``,
    ``fix`` as the replacement text; monitor logs with the replay's findings and text in ``stats``."""
    lint = {"kind": "log-sum-exp", "source": "lint", "message": "m", "severity": "error", "hint": "h",
            "code": "FG101", "file": "a.py", "line": 5, "col": 12, "op": "np.log", "phase": None, "module": None,
            "dtype": None, "shape": None, "step": None, "rank": None, "fix": "np.logaddexp.reduce(x)",
            "origin": None, "forward_op": None,
            "stats": {"end_line": 5, "end_col": 40, "fix_safe": 0, "cell": 3,
                      "fix_edits": [[5, 12, 5, 40, "np.logaddexp.reduce(x)"], [1, 1, 1, 1, "import numpy\n"]]}}
    e = Event.from_dict(lint)
    assert (e.end_line, e.end_col, e.cell, dict(e.stats)) == (5, 40, 3, {})
    assert e.fix is not None and e.fix.applicability == "unsafe" and e.fix.replacement == "np.logaddexp.reduce(x)"
    assert e.fix.edits[1] == Edit(1, 1, 1, 1, "import numpy\n")
    text_only = {k: v for k, v in lint.items() if k != "stats"} | {"stats": {"end_line": 5, "end_col": 40}}
    fix = Event.from_dict(text_only).fix
    assert fix is not None and fix.edits == (Edit(5, 12, 5, 40, "np.logaddexp.reduce(x)"),) and fix.safe
    monitor = {"kind": "nonfinite_loss", "source": "monitor", "message": "m", "step": 4,
               "stats": {"count": 2, "replay": "replayed the forward", "first_op": "aten::exp",
                         "first_kind": "overflow", "first_module": "1", "first_file": "t.py", "first_line": 9,
                         "first_phase": "forward", "layers": ["0"], "producer": "0", "ranks_nonfinite": [1],
                         "recovered": "the loss left chance", "units": None, "direction": "low",
                         "pattern": "alternating"}}
    m = Event.from_dict(monitor)
    assert dict(m.stats) == {"count": 2, "units": None, "too_high": False}
    assert (m.replay, m.layers, m.producer, m.ranks, m.note) == ("replayed the forward", ("0",), "0", (1,),
                                                                 "the loss left chance")
    assert m.cause is not None and (m.cause.op, m.cause.kind, m.cause.module, m.cause.file, m.cause.line) == \
        ("aten::exp", "overflow", "1", "t.py", 9)


def test_location_names_the_cell() -> None:
    assert Event(kind="k", source="lint", message="m", file="n.ipynb", cell=3, line=2, col=5).location == \
        "n.ipynb:cell 3:2:5"
    assert Event(kind="k", source="lint", message="m").location == "<unknown>"


@given(st.text(alphabet="ab\n\r\x0c", max_size=30), st.data())
def test_apply_edits_changes_only_the_edited_spans(text: str, data: st.DataObject) -> None:
    """An edit of a line/column range replaces exactly the characters it names (lines as Python counts them)."""
    lines = re.findall(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+", text)  # a form feed does not end a line
    if not lines:
        return
    k = data.draw(st.integers(0, len(lines) - 1))
    start = sum(map(len, lines[:k]))
    width = len(lines[k].rstrip("\r\n"))
    c0 = data.draw(st.integers(0, width))
    c1 = data.draw(st.integers(c0, width))
    new = data.draw(st.text(alphabet="xy", max_size=3))
    got = apply_edits(text, [Edit(k + 1, c0 + 1, k + 1, c1 + 1, new)])
    assert got == text[: start + c0] + new + text[start + c1:]


def test_overlapping_edits_are_refused() -> None:
    with pytest.raises(ValueError, match="overlapping"):
        apply_edits("abcdef", [Edit(1, 1, 1, 4, "x"), Edit(1, 3, 1, 5, "y")])
