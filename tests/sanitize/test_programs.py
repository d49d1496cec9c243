"""Small buggy programs, each with its expected first finding: kind, op, phase, module, line.

Every program runs under ``detect(action="record")``; the first error event must match.
The expected line is the one carrying the ``# L:<name>`` comment.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import floatguard as fg  # noqa: E402
from floatguard.sanitize import NumericalError, detect  # noqa: E402


# -- the programs ------------------------------------------------------------------------------------
class ExpActivation(nn.Module):
    def forward(self, x):
        return torch.exp(x)  # L:exp_act


class MLPWithExp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.act = ExpActivation()
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


def exp_overflow_in_custom_activation():
    torch.manual_seed(0)
    MLPWithExp()(torch.randn(3, 4) * 500).sum().backward()


def log_of_softmax_with_large_logits():
    logits = torch.tensor([[0.0, 200.0, 3.0], [1.0, 2.0, 3.0]])
    p = torch.softmax(logits, dim=-1)  # L:softmax
    return torch.log(p)


def sqrt_at_zero_nan_only_in_backward():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    norm = torch.sqrt((x * x).sum(-1))  # L:sqrt
    norm.sum().backward()


def zero_variance_normalisation():
    x = torch.ones(4, 8)  # a constant feature
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var)  # L:zero_var


class Attention(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)

    def forward(self, x, pad):
        scores = self.q(x) @ self.k(x).transpose(-1, -2)
        bias = pad.to(scores.dtype) * -1e9  # L:f16_mask
        return torch.softmax(scores + bias, -1)


def float16_attention_with_minus_1e9_mask():
    torch.manual_seed(0)
    att = Attention().half()
    pad = torch.zeros(2, 1, 5, dtype=torch.bool)
    pad[..., -1] = True
    att(torch.randn(2, 5, 8).half(), pad)


class MaskedAttention(nn.Module):
    def forward(self, scores, mask):
        return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)  # L:inf_mask


def attention_with_a_fully_masked_row():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[2] = True  # query 2 may attend to nothing
    MaskedAttention()(torch.randn(2, 4, 4), mask)


def product_of_probabilities():
    p = torch.full((700,), 0.3)
    return p.prod()  # L:prod


def log_zero_in_an_entropy():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    return -(p * torch.log(p)).sum()  # L:entropy


def numpy_overflow():
    x = np.array([100.0, 1.0], dtype=np.float32)
    return np.exp(x)  # L:np_exp


def numpy_divide_by_zero():
    a = np.array([1.0, 2.0])
    b = np.zeros(2)
    return a / b  # L:np_div


def zero_over_zero():
    a = torch.zeros(3)
    return a / a  # L:zero_div


def sqrt_of_negative():
    return torch.sqrt(torch.tensor([4.0, -1.0]))  # L:sqrt_neg


def float16_matmul_overflow():
    a = torch.full((2, 64), 40.0, dtype=torch.float16)
    b = torch.full((64, 2), 40.0, dtype=torch.float16)
    return a @ b  # L:f16_mm


def exp_underflow_of_a_whole_tensor():
    return torch.exp(torch.full((4,), -1000.0))  # L:exp_uf


def log_of_underflowed_sigmoid():
    return torch.log(torch.sigmoid(torch.tensor([2.0, -200.0])))  # L:sigmoid


def naive_logsumexp_of_very_negative_row():
    x = torch.tensor([[-1000.0, -1001.0], [0.0, 1.0]])
    return torch.log(torch.exp(x).sum(-1))  # L:naive_lse


def float16_gradient_underflow():
    x = torch.ones(8, dtype=torch.float16, requires_grad=True)
    y = x * 1e-4  # L:f16_grad
    (y.sum() * 1e-4).backward()


def log_backward_at_zero():
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    y = x.pow(0.5)  # L:pow_half
    y.sum().backward()


def mse_loss_inf_when_prediction_overflows():
    pred = torch.tensor([3e38, 1.0])
    return F.mse_loss(pred * 2.0, torch.zeros(2))  # L:mul_overflow


class TransformerModel(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(x)  # L:encoder


def attention_scores_overflow_in_the_second_layer():
    torch.manual_seed(0)
    model = TransformerModel()
    with torch.no_grad():
        model.encoder.layers[1].self_attn.in_proj_weight.mul_(1e20)
    model(torch.randn(2, 5, 16)).sum().backward()


def float8_cast_without_scaling():
    torch.manual_seed(0)
    acts = torch.randn(4, 8) * 1000  # activations past float8_e4m3fn's max, 448: a missing scale
    return acts.to(torch.float8_e4m3fn)  # L:fp8


def complex_overflow_in_a_spectral_layer():
    torch.manual_seed(0)
    spec = torch.fft.rfft(torch.randn(16) * 1e19)
    weight = torch.full((9,), 1e20, dtype=torch.complex64)
    return spec * weight  # L:spectral


class HandWrittenSoftmaxAttention(nn.Module):
    """``exp(scores) / sum``: no max subtracted, a causal ``-inf`` mask in the scores."""

    def forward(self, q, k):
        t = q.shape[-2]
        causal = torch.full((t, t), float("-inf"), dtype=q.dtype).triu(1)
        scores = q @ k.transpose(-1, -2) + causal
        w = torch.exp(scores)  # L:hand_exp
        return w / w.sum(-1, keepdim=True)


def _scores(scale):
    torch.manual_seed(0)
    return torch.randn(2, 6, 8) * scale, torch.randn(2, 6, 8) * scale


def hand_written_softmax_float16_causal_mask():
    q, k = _scores(3.0)  # scores up to ~50: exp overflows float16 past 11.09
    HandWrittenSoftmaxAttention()(q.half(), k.half())


def hand_written_softmax_bfloat16_autocast():
    q, k = _scores(6.0)  # scores past 88.7: exp overflows bfloat16 (and float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        HandWrittenSoftmaxAttention()(q, k)


def exp_of_minus_inf_and_twelve_float16():
    x = torch.tensor([float("-inf"), 12.0], dtype=torch.float16)
    return torch.exp(x) * 2  # L:exp_minf


def underflow_beside_an_inf():
    x = torch.tensor([float("inf"), -200.0, 1.0])
    return torch.log(torch.exp(x))  # L:uf_beside_inf


def float16_matmul_overflow_beside_a_masked_row():
    a = torch.full((2, 64), 40.0, dtype=torch.float16)
    a[0, 0] = float("-inf")  # row 0 is -inf by intent; row 1 overflows from finite values
    b = torch.full((64, 2), 40.0, dtype=torch.float16)
    return a @ b  # L:f16_mm_mask


HERE = __file__
PROGRAMS = [
    # (program, kind, op, phase, forward_op, module, marker)
    (exp_overflow_in_custom_activation, "overflow", "aten::exp", "forward", None, "act", "exp_act"),
    (log_of_softmax_with_large_logits, "underflow", "aten::_softmax", "forward", None, None, "softmax"),
    (sqrt_at_zero_nan_only_in_backward, "div_by_zero", "aten::div", "backward", "aten::sqrt", None, "sqrt"),
    (zero_variance_normalisation, "nan", "aten::div", "forward", None, None, "zero_var"),
    (float16_attention_with_minus_1e9_mask, "overflow", "aten::mul", "forward", None, "Attention", "f16_mask"),
    (attention_with_a_fully_masked_row, "nan", "aten::_softmax", "forward", None, "MaskedAttention", "inf_mask"),
    (product_of_probabilities, "underflow", "aten::prod", "forward", None, None, "prod"),
    (log_zero_in_an_entropy, "div_by_zero", "aten::log", "forward", None, None, "entropy"),
    (numpy_overflow, "overflow", "np.exp", "forward", None, None, "np_exp"),
    (numpy_divide_by_zero, "div_by_zero", "np.divide", "forward", None, None, "np_div"),
    (zero_over_zero, "nan", "aten::div", "forward", None, None, "zero_div"),
    (sqrt_of_negative, "nan", "aten::sqrt", "forward", None, None, "sqrt_neg"),
    (float16_matmul_overflow, "overflow", "aten::mm", "forward", None, None, "f16_mm"),
    (exp_underflow_of_a_whole_tensor, "underflow", "aten::exp", "forward", None, None, "exp_uf"),
    (log_of_underflowed_sigmoid, "underflow", "aten::sigmoid", "forward", None, None, "sigmoid"),
    (naive_logsumexp_of_very_negative_row, "underflow", "aten::exp", "forward", None, None, "naive_lse"),
    (float16_gradient_underflow, "underflow", "aten::mul", "backward", "aten::mul", None, "f16_grad"),
    (log_backward_at_zero, "div_by_zero", "aten::pow", "backward", "aten::pow", None, "pow_half"),
    (mse_loss_inf_when_prediction_overflows, "overflow", "aten::mul", "forward", None, None, "mul_overflow"),
    (attention_scores_overflow_in_the_second_layer, "nan", "aten::bmm", "forward", None,
     "encoder.layers.1.self_attn", "encoder"),
    (float8_cast_without_scaling, "overflow", "aten::_to_copy", "forward", None, None, "fp8"),
    (complex_overflow_in_a_spectral_layer, "overflow", "aten::mul", "forward", None, None, "spectral"),
    (hand_written_softmax_float16_causal_mask, "overflow", "aten::exp", "forward", None,
     "HandWrittenSoftmaxAttention", "hand_exp"),
    (hand_written_softmax_bfloat16_autocast, "overflow", "aten::exp", "forward", None,
     "HandWrittenSoftmaxAttention", "hand_exp"),
    (exp_of_minus_inf_and_twelve_float16, "overflow", "aten::exp", "forward", None, None, "exp_minf"),
    (underflow_beside_an_inf, "underflow", "aten::exp", "forward", None, None, "uf_beside_inf"),
    (float16_matmul_overflow_beside_a_masked_row, "overflow", "aten::mm", "forward", None, None, "f16_mm_mask"),
]


@pytest.mark.parametrize("defer", [False, True], ids=["op-by-op", "deferred"])
@pytest.mark.parametrize(("program", "kind", "op", "phase", "forward_op", "module", "marker"), PROGRAMS,
                         ids=[p[0].__name__ for p in PROGRAMS])
def test_first_finding(program, kind, op, phase, forward_op, module, marker, line, defer):
    """``deferred`` is the CUDA path run on the CPU: (min, max) flags kept as tensors, read once per flush."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with detect(action="record", defer=defer) as d:
            program()
    errors = [e for e in d.events if e.severity == "error"]
    assert errors, f"{program.__name__}: nothing found"
    first = errors[0]
    assert d.report.events[d.report.first] is first
    got = (first.kind, first.op, first.phase, first.forward_op, first.module, first.line)
    assert got == (kind, op, phase, forward_op, module, line(marker, HERE))
    assert first.file == HERE
    assert first.origin == "produced"
    assert first.source == "sanitize" and first.hint
    if not op.startswith("np."):
        assert first.dtype in ("float16", "bfloat16", "float32", "float8_e4m3fn", "complex64")
        assert first.shape is not None
        assert "output.numel" in first.stats


def test_log_of_softmax_reports_the_underflow_then_the_log(line):
    with detect(action="record") as d:
        log_of_softmax_with_large_logits()
    kinds = [(e.kind, e.op) for e in d.events if e.severity == "error"]
    assert kinds[:2] == [("underflow", "aten::_softmax"), ("div_by_zero", "aten::log")]
    uf = d.events[0]
    assert uf.stats["underflowed"] == 2 and "aten::log then takes these zeros" in uf.message
    assert "log_softmax" in uf.hint


def test_hints_name_the_stable_op():
    hints = {}
    for program in (exp_overflow_in_custom_activation, product_of_probabilities, log_zero_in_an_entropy,
                    sqrt_at_zero_nan_only_in_backward, zero_over_zero, float16_matmul_overflow):
        with detect(action="record") as d:
            program()
        hints[program.__name__] = d.events[0].hint
    assert "floatguard.logsumexp" in hints["exp_overflow_in_custom_activation"]
    assert "floatguard.log_prod" in hints["product_of_probabilities"]
    assert "floatguard.xlogy" in hints["log_zero_in_an_entropy"]
    assert "floatguard.safe_sqrt" in hints["sqrt_at_zero_nan_only_in_backward"]
    assert "floatguard.safe_div" in hints["zero_over_zero"]
    assert "bfloat16" in hints["float16_matmul_overflow"] and "GradScaler" in hints["float16_matmul_overflow"]


@pytest.mark.parametrize("defer", [False, True], ids=["op-by-op", "deferred"])
@pytest.mark.parametrize("program", [hand_written_softmax_float16_causal_mask,
                                     hand_written_softmax_bfloat16_autocast])
def test_exp_overflow_beside_a_mask_names_the_max_subtraction_not_safe_div(program, defer):
    """The mask's -inf in exp's input does not hide exp's own overflow; the cure is the stable softmax."""
    with detect(action="record", defer=defer) as d:
        program()
    first = next(e for e in d.events if e.severity == "error")
    assert (first.op, first.kind, first.origin) == ("aten::exp", "overflow", "produced")
    assert "subtract the max" in first.hint and "floatguard.softmax(x, where=mask)" in first.hint
    assert "torch.softmax" in first.hint and "safe_div" not in first.hint
    assert "11.09" in first.hint if first.dtype == "float16" else "88.72" in first.hint
    assert first.stats["input0.inf"] > 0  # the mask was there: judged element by element
    assert [e.severity for e in d.events if e.op == "aten::div"] in ([], ["info"])


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = ExpActivation()

    def forward(self, x):
        return self.act(self.fc(x))


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(4)])
        self.act = ExpActivation()


@pytest.mark.parametrize("defer", [False, True], ids=["op-by-op", "deferred"])
def test_a_submodule_called_directly_is_named_by_its_path(defer):
    """``model.blocks[3].act(x)``, not through the parent's forward: ``blocks.3.act``, not ``ExpActivation``."""
    model = Stack()
    with torch.no_grad():
        model.blocks[1].fc.weight.fill_(1.0)  # exp of 4000: an overflow
    big = torch.tensor([1000.0])
    names = []
    for call in (lambda: model.blocks[3].act(big), lambda: model.act(big), lambda: model.blocks[1](big.expand(4)),
                 lambda: ExpActivation()(big)):
        with detect(action="record", defer=defer) as d:
            call()
        names.append(d.events[0].module)
    assert names == ["blocks.3.act", "act", "blocks.1.act", "ExpActivation"]  # the last one has no parent


def test_intended_infinities_passed_along_stay_silent():
    """Element-wise judgment adds no finding where every inf comes from an inf input."""
    torch.manual_seed(0)
    x = torch.randn(3, 5)
    mask = torch.full((5,), float("-inf"))
    mask[:3] = 0.0
    with detect(action="record") as d:
        s = x + mask  # -inf where masked
        s.exp()  # exp(-inf) = 0: exact, no underflow
        (s * 2.0).sum(-1)  # -inf passed along by mul and by the reduction
        torch.softmax(s, -1) @ torch.ones(5, 2)
    assert d.events == []


def test_raise_stops_at_the_first_op_with_the_event(line):
    with pytest.raises(NumericalError) as info, detect(quiet=True):
        exp_overflow_in_custom_activation()
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.event.op == "aten::exp" and err.event.line == line("exp_act", HERE)
    assert err.report.events[-1] is err.event and len(err.events) == 1
    assert "aten::exp" in str(err) and "module act" in str(err)


def test_stats_of_inputs_and_output():
    with detect(action="record") as d:
        zero_over_zero()
    s = d.events[0].stats
    assert s["output.nan"] == 3 and s["output.numel"] == 3
    assert s["input0.zeros"] == 3 and s["input1.zeros"] == 3 and s["input0.nan"] == 0


def test_nan_in_the_input_data_is_reported_as_propagated():
    lin = nn.Linear(3, 2)
    with detect(action="record") as d:
        lin(torch.tensor([[1.0, float("nan"), 2.0]]))
    (e,) = d.events
    assert (e.kind, e.op, e.origin, e.module, e.severity) == ("nan", "aten::addmm", "propagated", "Linear", "error")


def test_propagation_after_a_finding_is_info_and_capped():
    with detect(action="record") as d:
        x = torch.tensor([1.0, 0.0]).log()  # -inf
        for _ in range(40):
            x = x * 0.0 + x  # nan, then passed on
    sev = [e.severity for e in d.events]
    assert sev[0] == "error" and sev.count("error") == 1
    assert all(s == "info" for s in sev[1:]) and len(sev) <= 1 + 20


def test_near_overflow_is_a_warning_once_per_place(line):
    with detect(action="record") as d:
        for _ in range(3):
            torch.full((4,), 100.0, dtype=torch.float16) * 300  # L:near
    (e,) = d.events
    assert (e.kind, e.severity, e.op, e.line) == ("near_overflow", "warning", "aten::mul", line("near", HERE))
    assert d.session is not None and d.session.counts["near_overflow"] == 3


def test_near_overflow_can_be_turned_off():
    with detect(action="record", near_overflow=None) as d:
        torch.full((4,), 100.0, dtype=torch.float16) * 300
    assert d.events == []


def test_deferred_checks_name_the_same_op(line):
    """The CUDA path (flags kept on the device, read once per flush) run on the CPU."""
    with detect(action="record", defer=True) as d:
        x = torch.tensor([1.0, 1000.0])
        y = torch.exp(x)  # L:deferred
        z = y * 2
    assert z.isinf().any()
    first = d.events[0]
    assert (first.kind, first.op, first.line, first.origin) == ("overflow", "aten::exp", line("deferred", HERE),
                                                                 "produced")


def test_deferred_checks_hold_a_bounded_amount_and_see_overwrites(line):
    from floatguard.sanitize._core import Session
    from floatguard.sanitize._module_tracker import ModuleTracker
    from floatguard.sanitize._op_sanitizer import OpSanitizer

    mode = OpSanitizer(Session("record", quiet=True), ModuleTracker(), defer=True, hold_bytes=64 << 10)
    flushes = []
    flush = mode.flush
    mode.flush = lambda: (flushes.append(len(mode._pending)), flush())[1]
    with mode:
        x = torch.ones(4096)  # 16 KiB: the 64 KiB budget is reached within a few ops
        for _ in range(6):
            x = x * 1.0
    assert flushes and max(flushes) <= 4 and mode._held_bytes < 64 << 10
    with detect(action="record", defer=True) as d:
        y = torch.exp(torch.tensor([1.0, 1000.0]))  # L:overwritten
        y.zero_()  # written before the flush: the evidence is gone, the finding is not
    (e,) = [e for e in d.events if e.severity == "error"]
    assert (e.kind, e.op, e.origin, e.line) == ("overflow", "aten::exp", None, line("overwritten", HERE))
    assert "overwritten" in e.message


def test_stable_ops_are_silent_where_the_naive_ones_fail():
    x = torch.tensor([[0.0, 200.0, 3.0], [-1000.0, -1001.0, -999.0]])
    with detect() as d:
        fg.log_softmax(x, axis=-1)
        fg.logsumexp(x, axis=-1)
        fg.log_prod(torch.full((700,), 0.3))
    assert d.events == []


@pytest.mark.parametrize("defer", [False, True], ids=["op-by-op", "deferred"])
def test_float8_casts_saturate_underflow_and_come_near_the_max(defer):
    x = torch.tensor([1.0, 500.0, -3.0])
    with detect(action="record", defer=defer) as d:
        x.to(torch.float8_e4m3fn)  # 500 > 448: clamped, silently
        x.to(torch.float8_e5m2)  # fine: e5m2's max is 57344
        (x * 1e-9).to(torch.float8_e4m3fn)  # all below the smallest subnormal: every value is 0
        torch.tensor([1.0, 300.0]).to(torch.float8_e4m3fn)  # within 16x of the max
        torch.tensor([1e5, 1.0]).to(torch.float8_e5m2)  # past e5m2's max: inf
    got = [(e.kind, e.severity, e.dtype) for e in d.events]
    assert got == [("overflow", "error", "float8_e4m3fn"), ("underflow", "error", "float8_e4m3fn"),
                   ("near_overflow", "warning", "float8_e4m3fn"), ("overflow", "error", "float8_e5m2")]
    assert "clamped to ±448" in d.events[0].message and "became inf" in d.events[3].message
    assert d.events[0].stats["output.max"] == 448.0 and d.events[0].stats["input0.max"] == 500.0


def test_complex_findings_carry_stats_of_both_parts():
    with detect(action="record") as d:
        z = torch.tensor([1e30 + 1e30j, 1 + 0j], dtype=torch.complex64)
        z * z
    (e,) = d.events
    assert (e.kind, e.op, e.dtype, e.shape) == ("overflow", "aten::mul", "complex64", (2,))
    assert e.stats["output.numel"] == 2 and e.stats["input0.absmax"] == pytest.approx(1e30, rel=1e-6)


def test_float8_findings_hint_at_scaling():
    with detect(action="record") as d:
        torch.tensor([1000.0]).to(torch.float8_e4m3fn)
    assert "scale" in d.events[0].hint and "_scaled_mm" in d.events[0].hint
