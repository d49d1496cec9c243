"""Healthy programs stay silent, numerics are bit-identical, user exceptions pass through."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from floatguard.sanitize import detect, guard  # noqa: E402


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens, pad):
        causal = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])  # -inf above the diagonal
        h = self.encoder(self.emb(tokens), mask=causal, src_key_padding_mask=pad)
        return self.head(h[:, 0])


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 4 * 4, 3))
    tr = TinyTransformer()
    pad = torch.zeros(4, 6)
    pad[:, -2:] = float("-inf")  # padding: a float mask like the causal one
    return [
        (mlp, lambda: (torch.randn(8, 6),), torch.randint(0, 3, (8,))),
        (cnn, lambda: (torch.randn(8, 1, 8, 8),), torch.randint(0, 3, (8,))),
        (tr, lambda: (torch.randint(0, 50, (4, 6)), pad), torch.randint(0, 3, (4,))),
    ]


def _train(model, make_inputs, y, steps=4, *, amp=False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(*make_inputs())
        loss = nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


@pytest.mark.parametrize("defer", [False, True], ids=["op-by-op", "deferred"])
@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16-autocast"])
def test_healthy_training_loops_are_silent(amp, defer):
    for model, make_inputs, y in _models():
        with detect(action="record", defer=defer) as d:
            _train(model, make_inputs, y, amp=amp)
        assert d.events == [], (type(model).__name__, [e.message for e in d.events])


def test_healthy_loops_are_silent_at_step_level_and_under_guard():
    for model, make_inputs, y in _models():
        with detect("step", action="record") as d:
            _train(model, make_inputs, y)
        assert d.events == []
    model, make_inputs, y = _models()[2]
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)

    @guard
    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(*make_inputs()), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step()
    assert step.report.events == [] and step.replays == 0


def _run(mode: str):
    """Losses, gradients and parameters of a few steps of the Transformer (dropout on) under ``mode``."""
    model, make_inputs, y = _models()[2]
    torch.manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(*make_inputs()), y)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        return loss.detach(), grads

    runner = guard(step) if mode == "guard" else step
    out = []
    if mode in ("op", "exact", "deferred"):
        with detect(defer=mode == "deferred", exact=mode == "exact"):
            out = [runner() for _ in range(3)]
    else:
        out = [runner() for _ in range(3)]
    return out, [p.detach().clone() for p in model.parameters()]


def test_numerics_are_bit_identical_with_and_without_the_sanitizer():
    plain, p_plain = _run("plain")
    for mode in ("op", "exact", "deferred", "guard"):
        got, p_got = _run(mode)
        for (l0, g0), (l1, g1) in zip(plain, got, strict=True):
            assert torch.equal(l0, l1)
            assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(p_plain, p_got, strict=True)), mode


class Boom(Exception):
    pass


def test_user_exceptions_propagate_unchanged():
    with pytest.raises(Boom), detect():
        torch.exp(torch.ones(2))
        raise Boom
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"), detect():
        torch.ones(2, 3) @ torch.ones(2, 3)

    def bad_backward():
        class F(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2

            @staticmethod
            def backward(ctx, g):
                raise Boom

        x = torch.ones(2, requires_grad=True)
        F.apply(x).sum().backward()

    with pytest.raises(Boom), detect():
        bad_backward()
    # the sanitizer is fully off afterwards: nothing is checked outside the block
    torch.exp(torch.tensor([1000.0]))
    g = guard(lambda: (_ for _ in ()).throw(Boom()))
    with pytest.raises(Boom):
        g()


def test_detect_off_after_exit_and_reusable_as_decorator():
    calls = []

    @detect(action="record")
    def f(v):
        calls.append(v)
        return torch.exp(torch.tensor([v]))

    f(1.0)
    f(1000.0)
    f(2000.0)
    assert [e.kind for e in f.report.events if e.severity == "error"] == ["overflow", "overflow"]
    assert calls == [1.0, 1000.0, 2000.0]
    d = detect()
    with d:
        pass
    with pytest.raises(RuntimeError, match="already active"), d, d:
        pass


def test_optimizer_step_is_checked_after_the_update():
    p = nn.Parameter(torch.tensor([3e38, 1.0]))
    opt = torch.optim.SGD([p], lr=1e38)
    with detect(action="record") as d:
        for _ in range(16):  # parameters and optimizer state are checked every 16th step
            opt.zero_grad()
            (-p).sum().backward()
            opt.step()
    errors = [e for e in d.events if e.severity == "error"]
    assert [(e.op, e.phase, e.kind) for e in errors[:1]] == [("SGD.step", "optimizer", "overflow")]
    assert "parameter param 0 is inf" in errors[0].message


class Sqrt(nn.Module):
    def forward(self, x):
        return torch.sqrt(x)  # L:hook_sqrt


def test_module_hooks_and_activation_checkpointing(line):
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    seen = []
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), Sqrt())
    model[0].register_full_backward_hook(lambda mod, gi, go: seen.append("backward hook"))
    model[2].register_forward_hook(lambda mod, i, o: seen.append("forward hook"))
    model[0].weight.register_hook(lambda g: g * 2)
    x = torch.tensor([[-5.0, -5.0]], requires_grad=True)  # relu gives 0: sqrt's gradient divides by 0
    with detect(action="record") as d:
        checkpoint(model, x, use_reentrant=False).sum().backward()
    first = d.events[0]
    assert (first.kind, first.op, first.phase, first.forward_op, first.module) == (
        "div_by_zero", "aten::div", "backward", "aten::sqrt", "2")
    assert first.line == line("hook_sqrt")
    assert seen.count("forward hook") >= 1 and seen[-1] == "backward hook"


def test_module_paths_are_kept_per_thread():
    import threading

    inside, done = threading.Event(), threading.Event()

    class Waits(nn.Module):  # another thread's model, parked inside its forward
        def forward(self, x):
            inside.set()
            done.wait(10)
            return x

    class Overflows(nn.Module):
        def forward(self, x):
            assert inside.wait(10)
            return torch.exp(x)

    other = threading.Thread(target=lambda: nn.Sequential(Waits())(torch.ones(1)))
    with detect(action="record") as d:
        other.start()
        try:
            nn.Sequential(nn.Identity(), Overflows())(torch.tensor([1000.0]))
        finally:
            done.set()
            other.join()
    (e,) = d.events
    assert (e.kind, e.op, e.module) == ("overflow", "aten::exp", "1")


def test_deferred_path_reads_the_device_once_per_training_step():
    """The CUDA design, run on the CPU: flags stay tensors until the end of each backward."""
    from floatguard.sanitize._op_sanitizer import OpSanitizer

    reads = []
    orig = OpSanitizer._flush

    def counting(self):
        reads.append(sum(p[0] is not None for p in self._pending))
        return orig(self)

    model, make_inputs, y = _models()[2]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(OpSanitizer, "_flush", counting)
        with detect(action="record", defer=True) as d:
            _train(model, make_inputs, y, steps=3)
            with torch.no_grad():
                model(*make_inputs())  # inference: one read at the end of the forward
    assert d.events == []
    assert len(reads) == 4 and all(n > 50 for n in reads), reads
