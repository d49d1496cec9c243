"""Actions, the report's JSON shape, the error object, arguments, NumPy and JAX coverage."""

from __future__ import annotations

import io
import json
import pickle
import warnings

import numpy as np
import pytest

import floatguard.sanitize as fgs
from floatguard.events import Event, Report
from floatguard.sanitize import NumericalError, NumericalWarning, detect

torch = pytest.importorskip("torch")

RECORD_KEYS = {"kind", "op", "phase", "module", "file", "line", "dtype", "shape", "stats", "hint", "rank"}


def _overflow(n: int = 1) -> None:
    for _ in range(n):
        torch.exp(torch.tensor([1000.0, 1.0]))  # L:api_exp


def test_action_raise_prints_a_panel_and_raises(line):
    buf = io.StringIO()
    with pytest.raises(NumericalError) as info, detect(stream=buf):
        _overflow()
        raise AssertionError("not reached")
    text = buf.getvalue()
    assert "floatguard: overflow in aten::exp" in text and f"test_api.py:{line('api_exp')}" in text
    assert "hint:" in text and "floatguard.logsumexp" in text and "input0" in text
    assert info.value.event.kind == "overflow"


def test_action_warn_goes_on_and_warns_once_per_place():
    buf = io.StringIO()
    with pytest.warns(NumericalWarning, match="aten::exp") as rec, detect(action="warn", stream=buf) as d:
        _overflow(3)
        after = torch.ones(1) + 1
    assert after.item() == 2.0
    assert len([r for r in rec if issubclass(r.category, NumericalWarning)]) == 1
    assert buf.getvalue().count("floatguard: overflow in aten::exp") == 1
    assert [e.kind for e in d.events] == ["overflow"]
    assert d.session is not None and d.session.counts["overflow"] == 3


def test_action_record_is_silent(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with detect(action="record") as d:
            _overflow()
    assert capsys.readouterr().err == ""
    assert [e.kind for e in d.events] == ["overflow"]


def test_report_json_shape(tmp_path, line):
    with detect(action="record") as d:
        torch.tensor([0.0]).log() * 0.0  # L:api_json  -inf, then nan (propagated, info)
        _overflow()
    path = tmp_path / "r.json"
    text = d.report.to_json(str(path))
    data = json.loads(path.read_text())
    assert data == json.loads(text)
    assert set(data) == {"events", "first"} and data["first"] == 0
    assert len(data["events"]) == 3
    for e in data["events"]:
        assert set(e) >= RECORD_KEYS
        assert e["source"] == "sanitize"
    first = data["events"][0]
    assert (first["kind"], first["op"], first["phase"], first["line"]) == ("div_by_zero", "aten::log", "forward",
                                                                           line("api_json"))
    assert first["origin"] == "produced" and first["dtype"] == "float32" and first["shape"] == [1]
    assert first["stats"]["input0.zeros"] == 1 and first["stats"]["output.inf"] == 1
    assert data["events"][1]["severity"] == "info" and data["events"][1]["origin"] == "propagated"
    back = Report.from_json(text)
    assert [e.to_dict() for e in back.events] == data["events"]


def test_numerical_error_is_a_floating_point_error_and_pickles():
    ev = Event(kind="nan", source="sanitize", message="m", op="aten::div", phase="backward", forward_op="aten::sqrt")
    err = NumericalError(ev)
    assert isinstance(err, FloatingPointError)
    assert "backward of aten::sqrt" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert back.event == ev and back.report.events == [ev]


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="level"):
        detect(level="ops")
    with pytest.raises(ValueError, match="action"):
        detect(action="stop")
    with pytest.raises(ValueError, match="near_overflow"):
        detect(near_overflow=0.5)
    with pytest.raises(ValueError, match="action"):
        fgs.guard(lambda: None, action="ignore")


def test_lazy_exports():
    import floatguard.sanitize as mod

    assert mod.detect.__name__ == "detect" and callable(mod.guard) and callable(mod.checkify_report)
    with pytest.raises(AttributeError):
        _ = mod.no_such_name


# -- NumPy ------------------------------------------------------------------------------------------------
def test_numpy_kinds_ops_and_lines(line):
    with detect(action="record", torch=False) as d:
        a = np.array([0.0, 1.0])
        np.log(a)  # L:np_log
        a / a  # L:np_nan
        np.float32(3e38) * np.float32(10)  # L:np_mul
        np.sqrt(np.array([-1.0]))  # L:np_sqrt
    got = [(e.kind, e.op, e.line) for e in d.events]
    assert got == [("div_by_zero", "np.log", line("np_log")), ("nan", "np.divide", line("np_nan")),
                   ("overflow", "np.multiply", line("np_mul")), ("nan", "np.sqrt", line("np_sqrt"))]


def test_numpy_raise_and_underflow_opt_in(line):
    with pytest.raises(NumericalError) as info, detect(quiet=True, torch=False):
        np.exp(np.array([1000.0]))  # L:np_raise
    assert info.value.event.line == line("np_raise") and info.value.event.op == "np.exp"
    with detect(action="record", torch=False) as d:
        np.exp(np.array([-1000.0]))
    assert d.events == []
    with detect(action="record", torch=False, numpy_underflow=True) as d:
        np.exp(np.array([-1000.0]))
    assert [e.kind for e in d.events] == ["underflow"]
    assert np.geterr()["over"] == "warn"  # restored on exit


# -- JAX --------------------------------------------------------------------------------------------------
def test_checkify_report_has_the_same_shape(line):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def f(x):
        return jnp.log(x)  # L:jax_log

    _out, report = fgs.checkify_report(f, jnp.array([-1.0, 2.0]))
    (e,) = report.events
    assert (e.kind, e.op, e.line) == ("nan", "jax.lax.log", line("jax_log"))
    assert set(e.to_dict()) >= RECORD_KEYS
    _, report = fgs.checkify_report(jax.jit(lambda x: 1.0 / x), jnp.array([0.0]))
    assert [e.kind for e in report.events] == ["div_by_zero"]
    _, report = fgs.checkify_report(jax.jit(lambda x: 1.0 / x), jnp.array([1.0]))
    assert report.events == [] and report.first is None
