"""``guard(step_fn)``: a bad step is stopped before the update, restored, replayed at op level."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from floatguard.sanitize import NumericalError, detect, guard  # noqa: E402

HERE = __file__


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _diverging(lr=0.5):
    """SGD with a learning rate that makes the loss blow up after a few steps."""
    torch.manual_seed(0)
    net = Regressor()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    x = torch.randn(64, 8) * 3
    y = torch.randn(64, 1) * 10

    def step():
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()  # L:guard_loss
        loss.backward()
        opt.step()
        return loss

    return net, opt, step


def test_a_diverging_learning_rate_is_stopped_and_the_op_named(line):
    net, _opt, step = _diverging()
    g = guard(step, quiet=True)
    with pytest.raises(NumericalError) as info:
        for _ in range(50):
            g()
    e = info.value.event
    assert g.step == 5 and e.step == 4 and g.replays == 1
    assert (e.kind, e.op, e.phase, e.line, e.origin) == ("overflow", "aten::pow", "forward", line("guard_loss", HERE),
                                                          "produced")
    assert "found by replaying it at op level" in e.message
    # stopped before the update: the parameters are finite, as they were after step 3
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_record_lets_the_replayed_step_finish_like_the_plain_program():
    net_a, _, step_a = _diverging()
    plain = [step_a().detach() for _ in range(6)]
    net_b, _, step_b = _diverging()
    g = guard(step_b, action="record")
    guarded = [g().detach() for _ in range(6)]
    assert all(torch.equal(a, b) or (a.isnan() & b.isnan()).all() for a, b in zip(plain, guarded, strict=True))
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(pa.nan_to_num(), pb.nan_to_num())
    assert g.report.events[0].op == "aten::pow" and g.report.events[0].step == 4


def test_detect_step_decorator_is_guard():
    _, _, step = _diverging()
    g = detect(level="step", action="record")(step)
    for _ in range(6):
        g()
    assert g.report.events[0].op == "aten::pow"


def test_rng_is_restored_for_the_replay():
    """Dropout draws the same mask in the replay: the replayed values are the ones of the failing step."""
    torch.manual_seed(0)
    drop = nn.Dropout(0.5)
    seen = []

    def step():
        x = drop(torch.ones(16) * 1e37) * 100.0  # overflows
        seen.append(x.isinf().nonzero().flatten().tolist())
        return x.sum()

    g = guard(step, action="record")
    g()
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0]


def test_loss_checked_after_the_update_needs_snapshot_to_replay():
    p = nn.Parameter(torch.tensor([2.0]))
    opt = torch.optim.SGD([p], lr=0.1)

    def step():
        opt.zero_grad()
        loss = (p * 1.0).sum()
        loss.backward()
        opt.step()
        return loss * torch.tensor(float("inf"))  # a non-finite result with finite gradients

    g = guard(step, action="record")
    g()
    (e,) = g.report.events
    assert e.kind == "overflow" and "snapshot=True" in e.hint and p.item() == pytest.approx(1.9)
    g2 = guard(step, action="record", snapshot=True)
    g2()
    assert p.item() == pytest.approx(1.8)  # restored, replayed once: one update, not two
    assert g2.replays == 1


def test_grad_scaler_skipped_step_is_attributed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = nn.functional.cross_entropy(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    g = guard(step, scaler=scaler, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(8):
            g()
    skips = g.report.events
    assert skips, "the first steps at scale 2**20 overflow float16"
    first = skips[0]
    assert first.severity == "warning" and first.kind == "overflow" and first.dtype == "float16"
    assert first.phase == "backward" and first.op.startswith("aten::") and first.forward_op
    assert "GradScaler skipped step 0" in first.message
    assert scaler.get_scale() < 2.0**20
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_op_level_findings_in_a_scaled_backward_are_warnings():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    with warnings.catch_warnings(), detect(action="record") as d:
        warnings.simplefilter("ignore")
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            scaler.scale(nn.functional.cross_entropy(out.float(), y)).backward()
            scaler.step(opt)
            scaler.update()
    assert d.events and all(e.severity == "warning" for e in d.events)
    assert "GradScaler skips this step" in d.events[0].message and d.events[0].phase == "backward"
    assert not d.session.has_error


def test_an_update_that_overflows_the_parameters_is_caught_before_the_next_update():
    p = nn.Parameter(torch.tensor([3e38, 1.0]))
    opt = torch.optim.SGD([p], lr=1e38)

    @guard(state_every=4, quiet=True)
    def step():
        opt.zero_grad()
        (-p).sum().backward()  # finite gradients; the update overflows p[0]
        opt.step()

    for _ in range(3):  # the first update already makes p[0] = inf; checked before the 4th
        step()
    assert torch.isinf(p[0])
    before = p.detach().clone()
    with pytest.raises(NumericalError) as err:
        step()
    ev = err.value.event
    assert (ev.kind, ev.op, ev.phase, ev.module) == ("overflow", "SGD.step", "optimizer", "param 0")
    assert "an earlier SGD.step made it so" in ev.message
    assert torch.equal(p.detach(), before)  # stopped before a further update


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e5m2])
def test_the_step_check_finds_every_non_finite_tensor_and_nothing_else(dtype):
    from floatguard.sanitize._tensor_stats import first_bad

    big = torch.finfo(dtype).max
    finite = [torch.full((300,), big, dtype=dtype), torch.full((7, 3), -big, dtype=dtype),
              torch.randn(5).to(dtype), torch.tensor(1.0)]  # their sums overflow: re-checked, not reported
    assert first_bad(finite) == []
    bad = [t.clone() for t in finite]
    bad[0][17] = float("inf")
    bad[1][2, 1] = float("-inf")
    assert first_bad(bad) == [0, 1]  # +inf and -inf in one group: the total is NaN, not a finite number
    nan = [t.clone() for t in finite]
    nan[2][4] = float("nan")
    assert first_bad([None, *nan, torch.arange(3)]) == [3]  # non-float entries are skipped, indices kept
    assert first_bad([torch.tensor(float("nan"), dtype=dtype)]) == [0]


@pytest.mark.filterwarnings("ignore:.*(beta|prototype):UserWarning")  # torch's notes on CSR and nested tensors
def test_sparse_gradients_are_checked_by_their_stored_values():
    from floatguard.sanitize._tensor_stats import first_bad, tensor_stats

    i = torch.tensor([[0, 2, 2], [1, 0, 0]])  # index (2, 0) twice: uncoalesced
    coo = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0, 3.0]), (4, 3), check_invariants=True)
    bad = torch.sparse_coo_tensor(i, torch.tensor([1.0, float("nan"), 3.0]), (4, 3), check_invariants=True)
    csr = torch.tensor([[0.0, float("inf")], [1.0, 0.0]]).to_sparse_csr()
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    assert first_bad([coo, coo.to_sparse_csr(), nested]) == []  # nested: not judged
    assert first_bad([coo, bad, csr]) == [1, 2]
    st = tensor_stats(bad, "grad")
    assert (st["grad.numel"], st["grad.stored"], st["grad.nan"], st["grad.max"]) == (12, 3, 1, 3.0)


def test_a_non_finite_sparse_embedding_gradient_stops_the_step(line):
    """nn.Embedding(sparse=True): the step is stopped before the update and replayed to the op."""
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    idx = torch.tensor([1, 2, 3, 2])

    @guard(quiet=True)
    def step(bad):
        opt.zero_grad()
        h = emb(idx)
        loss = torch.sqrt(h - h.detach()).sum() if bad else h.pow(2).sum()  # L:sparse_sqrt
        loss.backward()  # sqrt at 0: a finite loss, an inf gradient (stored in the sparse gradient only)
        opt.step()
        return loss

    step(False)
    before = emb.weight.detach().clone()
    with pytest.raises(NumericalError) as err:
        step(True)
    e = err.value.event
    assert (e.kind, e.op, e.phase, e.forward_op, e.line) == ("div_by_zero", "aten::div", "backward", "aten::sqrt",
                                                             line("sparse_sqrt", HERE))
    assert torch.equal(emb.weight.detach(), before)  # not updated with the inf gradient
