"""``sanitize/_module_checks.py``: torch's own modules checked at their outputs, a bad one replayed op by op.

The default op level and ``detect(exact=True)`` (every op checked as it runs) must name the
same first op, module and line; the replay must see the same random numbers (dropout) and
leave the RNG stream where the unobserved run left it.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from floatguard.sanitize import detect  # noqa: E402


def _first(events):
    e = next(e for e in events if e.severity == "error")
    return (e.kind, e.op, e.phase, e.forward_op, e.module, e.file, e.line)


def linear_overflow_in_float16():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).half()
    with torch.no_grad():
        model[0].weight.fill_(300.0)
    model(torch.full((4, 8), 30.0, dtype=torch.float16))  # L:f16_linear


def dropout_scales_past_the_max():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 1))
    model(torch.full((8, 16), 2e38))  # L:dropout


def weight_gradient_overflow_in_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4)).half()
    x = torch.full((64, 4), 10.0, dtype=torch.float16)
    out = model(x)  # L:backward
    out.backward(torch.full_like(out, 6e4))


def layer_norm_of_an_inf():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    with torch.no_grad():
        model[0].weight.fill_(3e38)
    model(torch.tensor([[2.0, 2.0]]))  # L:layer_norm


PROGRAMS = [
    (linear_overflow_in_float16, "f16_linear"),
    (dropout_scales_past_the_max, "dropout"),
    (weight_gradient_overflow_in_backward, "backward"),
    (layer_norm_of_an_inf, "layer_norm"),
]


@pytest.mark.parametrize(("program", "marker"), PROGRAMS, ids=[p.__name__ for p, _ in PROGRAMS])
def test_the_boundary_check_names_what_the_exact_check_names(program, marker, line):
    with detect(action="record", quiet=True, exact=True) as exact:
        program()
    with detect(action="record", quiet=True) as cheap:
        program()
    want = _first(exact.events)
    assert want[1].startswith("aten::") and want[5] == __file__ and want[6] == line(marker)
    assert _first(cheap.events) == want
    # the same evidence: the replay saw the same values (dropout: the same mask)
    e0 = next(e for e in exact.events if e.severity == "error")
    e1 = next(e for e in cheap.events if e.severity == "error")
    assert e1.stats == e0.stats


def test_the_replay_sees_the_same_dropout_mask_and_leaves_the_rng_where_it_was():
    torch.manual_seed(0)
    dropout_scales_past_the_max()
    after_plain = torch.rand(4)
    with detect(action="record", quiet=True) as d:
        dropout_scales_past_the_max()
        after_checked = torch.rand(4)
    assert torch.equal(after_plain, after_checked)
    (e,) = [e for e in d.events if e.severity == "error"]
    assert e.op == "aten::native_dropout" or e.op.startswith("aten::mul")
    # 8 x 16 inputs, each kept with probability 1/2 and doubled past float32's max: the mask decides the count
    assert 0 < e.stats["output.inf"] < 128


def test_a_module_that_overwrote_its_input_is_reported_at_its_boundary():
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(2, 1))
    with torch.no_grad():
        model[1].weight.fill_(3e38)
    with detect(action="record", quiet=True) as d:
        model(torch.tensor([[2.0, 2.0]]))  # L:inplace
    (e,) = [e for e in d.events if e.severity == "error"]
    assert (e.kind, e.op, e.module) == ("overflow", "Sequential", "Sequential")
    assert "exact=True" in e.hint
    with detect(action="record", quiet=True, exact=True) as d:
        model(torch.tensor([[2.0, 2.0]]))
    assert [e.op for e in d.events if e.severity == "error"] == ["aten::addmm"]


def test_a_healthy_module_is_checked_once_at_its_output_not_op_by_op():
    from floatguard.sanitize._core import Session
    from floatguard.sanitize._torch_ctx import TorchContext

    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 2))
    x = torch.randn(4, 8)
    counts = {}
    for exact in (False, True):
        ctx = TorchContext(Session("record", quiet=True), "op", exact=exact)
        with ctx, torch.no_grad():
            out = model(x)
        assert ctx.mode is not None
        counts[exact] = ctx.mode.checked
        assert torch.equal(out, model(x))
    assert counts[False] == 0 < counts[True]
