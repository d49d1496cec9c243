"""``sanitize/_hints.py``: the remedy each finding carries names the cure for its pattern."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import floatguard
from floatguard.sanitize._hints import hint_for

KINDS = ("nan", "overflow", "underflow", "div_by_zero", "near_overflow")
DTYPES = (None, "float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2")
OPS = (None, "aten::exp", "aten::exp.default", "aten::log", "aten::div.Tensor", "aten::sqrt", "aten::mm",
       "aten::_softmax", "aten::prod", "aten::mul.Tensor", "aten::native_layer_norm", "aten::add.Tensor",
       "aten::_to_copy", "aten::sigmoid", "torch.compile(f)", "Adam.step")


@pytest.mark.parametrize(("kind", "op", "dtype", "kw", "expected"), [
    # overflow: the cure of the pattern, not a generic one
    ("overflow", "aten::exp", "float16", {}, "subtract the max first"),
    ("overflow", "aten::exp", "float16", {}, "x > 11.09"),
    ("overflow", "aten::exp.default", "float32", {}, "x > 88.72"),
    ("overflow", "aten::exp", "float64", {}, "x > 709.78"),
    ("overflow", "aten::mm", "float16", {}, "65504"),
    ("overflow", "aten::mm", "bfloat16", {}, "3.4e38"),
    ("overflow", "aten::mm", "float32", {}, "clip_grad_norm_"),
    ("overflow", "aten::mul", "float32", {"phase": "backward", "forward_op": "aten::exp"}, "floatguard.logsumexp"),
    ("overflow", "aten::add", "float32", {}, "rescale the inputs"),
    # NaN
    ("nan", "aten::sqrt", "float32", {}, "floatguard.safe_sqrt"),
    ("nan", "aten::mul", "float32", {"phase": "backward", "forward_op": "aten::sqrt"}, "0 * inf in the gradient"),
    ("nan", "aten::native_layer_norm", "float32", {}, "sqrt(var + eps)"),
    ("nan", "aten::log", "float32", {}, "floatguard.xlogy"),
    ("nan", "aten::_softmax", "float32", {}, "fully masked row"),
    ("nan", "aten::div.Tensor", "float32", {}, "floatguard.safe_div"),
    ("nan", "aten::mm", "float32", {}, "+inf and -inf terms"),
    ("nan", "aten::add.Tensor", "float32", {}, "inf - inf"),
    ("nan", "aten::atan2", "float32", {}, "check the op's domain"),
    # division by zero
    ("div_by_zero", "aten::div", "float32", {"phase": "backward", "forward_op": "aten::sqrt"}, "safe_sqrt"),
    ("div_by_zero", "aten::log", "float32", {}, "floatguard.log_softmax instead of log(softmax)"),
    ("div_by_zero", "aten::div", "float32", {}, "floatguard.safe_div"),
    # underflow: log space when a log consumes it, logs of a product, the dtype's range
    ("underflow", "aten::_softmax", "float32", {"feeds": "aten::log"}, "stay in log space"),
    ("underflow", "aten::exp", "float32", {"feeds": "aten::log"}, "floatguard.log_softmax(x)"),
    ("underflow", "aten::prod", "float64", {}, "floatguard.log_prod"),
    ("underflow", "aten::mul", "float16", {}, "GradScaler"),
    ("underflow", "aten::_to_copy", "float32", {}, "flushes tiny values"),
    ("underflow", "aten::exp", "float32", {}, "exp of a very negative number"),
    ("underflow", "aten::mm", "float32", {}, "smallest subnormal"),
    # near overflow and float8
    ("near_overflow", "aten::mm", "float16", {}, "float32"),
    ("overflow", "aten::_to_copy", "float8_e4m3fn", {}, "fp8_max / amax"),
    ("underflow", "aten::_to_copy", "float8_e5m2", {}, "scale before casting to float8_e5m2"),
])
def test_each_pattern_gets_its_cure(kind, op, dtype, kw, expected):
    assert expected in hint_for(kind, op, dtype, **kw)


def test_the_hint_follows_the_pattern_not_the_kind_alone():
    # the same kind, different causes: different cures
    exp_overflow = hint_for("overflow", "aten::exp", "float32")
    mm_overflow = hint_for("overflow", "aten::mm", "float32")
    assert exp_overflow != mm_overflow
    # exp's backward is not exp's forward: the limit of exp(x) is not the advice for its gradient
    assert "88.72" not in hint_for("overflow", "aten::exp", "float32", phase="backward")
    # a softmax whose zeros are consumed by a log is a log-space problem; alone, it is not reported as one
    assert hint_for("underflow", "aten::_softmax", "float32", feeds="aten::log") != \
        hint_for("underflow", "aten::_softmax", "float32")
    # an unknown kind has no hint
    assert hint_for("unknown", "aten::exp", "float32") == ""


@given(kind=st.sampled_from(KINDS), op=st.sampled_from(OPS), dtype=st.sampled_from(DTYPES),
       phase=st.sampled_from((None, "forward", "backward", "optimizer")),
       forward_op=st.sampled_from((None, "aten::exp", "aten::sqrt", "aten::log", "aten::_softmax")),
       feeds=st.sampled_from((None, "aten::log", "aten::div", "aten::sum")))
def test_every_finding_gets_a_sentence_naming_only_what_exists(kind, op, dtype, phase, forward_op, feeds):
    hint = hint_for(kind, op, dtype, phase=phase, forward_op=forward_op, feeds=feeds)
    assert hint and hint == hint.strip() and hint.rstrip(")").endswith(".")
    # every floatguard function a hint recommends is one the package exports
    for name in re.findall(r"floatguard\.(\w+)", hint):
        assert hasattr(floatguard, name), f"hint names floatguard.{name}, which does not exist: {hint}"
