"""``sanitize/_backward_checks.py``: the default op level checks the backward at autograd nodes.

The mode is off the dispatch stack while ``backward()`` runs; a node whose gradients go bad
is replayed under the mode. It must name the same first op, forward op, module, line and
evidence as ``detect(exact=True)`` (every backward op checked as it runs).
"""

from __future__ import annotations

from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
nn = torch.nn

from floatguard.sanitize import detect  # noqa: E402
from floatguard.sanitize._backward_checks import _dense  # noqa: E402
from floatguard.sanitize._core import Session  # noqa: E402
from floatguard.sanitize._torch_ctx import TorchContext  # noqa: E402


def _first(events):
    e = next(e for e in events if e.severity == "error")
    return (e.kind, e.op, e.phase, e.forward_op, e.module, e.file, e.line)


# -- programs whose first bad value is made in the backward ------------------------------------------------
def sqrt_at_zero():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    torch.sqrt((x * x).sum(-1)).sum().backward()  # L:bw_sqrt


def float16_gradient_underflow():
    x = torch.ones(8, dtype=torch.float16, requires_grad=True)
    y = x * 1e-4  # L:bw_f16
    (y.sum() * 1e-4).backward()


def transposed_weight_gradient_overflow():
    """The first layer's weight gradient, a transposed (non-contiguous) 128 x 256 tensor, overflows first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256, bias=False), nn.ReLU(), nn.Linear(256, 4))
    with torch.no_grad():
        model[2].weight.fill_(10.0)
    out = model(torch.rand(64, 128) + 3.0)  # L:bw_region
    out.backward(torch.full_like(out, 1e35))


def gradient_of_a_region_via_autograd_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(3, 4, requires_grad=True)
    out = model(x)  # L:bw_grad
    torch.autograd.grad(out, x, torch.full_like(out, float("inf")))


PROGRAMS = [
    (sqrt_at_zero, "bw_sqrt"),
    (float16_gradient_underflow, "bw_f16"),
    (transposed_weight_gradient_overflow, "bw_region"),
]


@pytest.mark.parametrize(("program", "marker"), PROGRAMS, ids=[p.__name__ for p, _ in PROGRAMS])
def test_node_checks_name_what_the_exact_check_names(program, marker, line):
    with detect(action="record", quiet=True, exact=True) as exact:
        program()
    ctx = TorchContext(Session("record", quiet=True), "op")
    with ctx:
        program()
    want = _first(exact.events)
    assert want[2] == "backward" and want[1].startswith("aten::") and want[5] == __file__
    assert want[6] == line(marker)
    got = _first(ctx.session.report.events)
    assert got == want
    e0 = next(e for e in exact.events if e.severity == "error")
    e1 = next(e for e in ctx.session.report.events if e.severity == "error")
    assert e1.stats == e0.stats and e1.message == e0.message and e1.hint == e0.hint
    assert ctx.mode is not None and ctx.mode.backward_checks is not None
    assert ctx.mode.backward_checks.replays >= 1  # named by a node replay, not by the mode in backward


def test_a_non_finite_incoming_gradient_is_reported_as_received():
    with detect(action="record", quiet=True, exact=True) as exact:
        gradient_of_a_region_via_autograd_grad()
    with detect(action="record", quiet=True) as cheap:
        gradient_of_a_region_via_autograd_grad()
    assert _first(cheap.events) == _first(exact.events)


class _Spy(torch.autograd.Function):
    """Records the dispatch mode active while its backward runs."""

    seen: ClassVar[list[object]] = []

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        _Spy.seen.append(_get_current_dispatch_mode())
        return g * 2


@pytest.mark.parametrize("exact", [False, True])
def test_the_mode_is_off_the_stack_in_backward_unless_exact(exact):
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    from floatguard.sanitize._op_sanitizer import OpSanitizer

    _Spy.seen.clear()
    x = torch.ones(3, requires_grad=True)
    with detect(action="record", quiet=True, exact=exact):
        _Spy.apply(x).sum().backward()
        assert isinstance(_get_current_dispatch_mode(), OpSanitizer)  # back on the stack after backward
    (mode,) = _Spy.seen
    assert isinstance(mode, OpSanitizer) if exact else mode is None
    assert torch.equal(x.grad, torch.full((3,), 2.0))


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def test_a_custom_function_is_reported_at_its_node_without_a_replay():
    """Its backward may have side effects: it runs once; the finding names the node and the way to the op."""
    x = torch.ones(3, requires_grad=True)
    ctx = TorchContext(Session("record", quiet=True), "op")
    with ctx:
        y = _NanGrad.apply(x)  # L:custom_fn
        y.sum().backward()
    assert ctx.mode is not None and ctx.mode.backward_checks is not None
    assert ctx.mode.backward_checks.replays == 0
    (e,) = [e for e in ctx.session.report.events if e.severity == "error"]
    assert (e.kind, e.phase, e.op) == ("nan", "backward", "_NanGradBackward")
    assert "exact=True" in e.hint and e.stats["output.nan"] == 3
    with detect(action="record", quiet=True, exact=True) as exact:
        _NanGrad.apply(x).sum().backward()
    assert _first(exact.events)[1] == "aten::mul"


def test_hooks_are_removed_after_backward():
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    y = torch.sqrt(x).sum()
    with detect(action="record", quiet=True) as d:
        y.backward(retain_graph=True)
        n = len(d.events)
        y.backward(retain_graph=True)  # the second backward through the same graph is checked again, once
    assert n >= 1 and d.events[0].op == "aten::div"
    assert d.events[0].stats.get("repeats") == 1
    before = len(d.events)
    y.backward()  # outside detect(): no hook left on the graph
    assert len(d.events) == before


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data())
def test_dense_view_holds_every_value_once(shape, data):
    t = torch.arange(float(torch.Size(shape).numel())).reshape(shape)
    perm = data.draw(st.permutations(range(len(shape))))
    p = t.permute(*perm)
    flat = _dense(p, p.numel())
    assert flat is not None and torch.equal(flat.sort().values, t.reshape(-1))
    if any(s > 1 for s in shape):
        dim = data.draw(st.sampled_from([i for i, s in enumerate(shape) if s > 1]))
        sliced = t.narrow(dim, 0, shape[dim] - 1)  # a gap in memory: not dense
        if sliced.numel() and not sliced.is_contiguous():
            assert _dense(sliced, sliced.numel()) is None
        expanded = t.unsqueeze(0).expand(2, *shape)  # every value twice: not dense
        assert _dense(expanded, expanded.numel()) is None
