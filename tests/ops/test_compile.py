"""The ops under ``torch.compile``: one graph (``fullgraph=True``), the eager values and gradients.

Dynamo cannot trace the eager fast path of logsumexp/softmax/log_softmax (compiled
NumPy kernels through zero-copy views, branches on values): under compilation it is
called as custom ops (``floatguard::logsumexp_rows``, ``floatguard::softmax_rows``; the
cross-entropy's, BCE's and the elementwise ops' likewise), and the other ops trace through
the generic array-API code, which Inductor fuses.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import floatguard as fg  # noqa: E402
from floatguard.ops import _numpy_fast  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's


def _all_ops(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    pos, neg = x.abs() + 0.1, -x.abs() - 1e-3
    return {
        "logsumexp": fg.logsumexp(x, axis=-1),
        "logsumexp_where": fg.logsumexp(x, dim=1, where=x > 0),
        "softmax": fg.softmax(x),
        "log_softmax": fg.log_softmax(x, dim=0),
        "log_softmax_3d": fg.log_softmax(x.reshape(3, 2, 9), dim=-1),  # plain calls: the custom op straight away
        "logsumexp_keep": fg.logsumexp(x.reshape(3, 2, 9), dim=-1, keepdim=True),
        "cross_entropy_probs": fg.cross_entropy(x, fg.softmax(y)),
        "bce": fg.binary_cross_entropy_with_logits(x, (y > 0).to(x.dtype)),
        "softplus": fg.softplus(x),
        "softplus_inverse": fg.softplus_inverse(pos),
        "sigmoid": fg.sigmoid(x),
        "log_sigmoid": fg.log_sigmoid(x),
        "log1mexp": fg.log1mexp(neg),
        "logaddexp": fg.logaddexp(x, y),
        "logsubexp": fg.logsubexp(pos + 1, pos),
        "logcumsumexp": fg.logcumsumexp(x),
        "logmeanexp": fg.logmeanexp(x, axis=-1),
        "log_prod": fg.log_prod(pos, axis=-1),
        "xlogy": fg.xlogy(x, pos),
        "safe_log": fg.safe_log(x.abs()),
        "safe_div": fg.safe_div(x, y),
        "safe_sqrt": fg.safe_sqrt(x.abs()),
        "log_matmul_exp": fg.log_matmul_exp(x, y.T),
    }


def _log_domain(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "logsumexp": fg.logsumexp(x, axis=-1),
        "softmax": fg.softmax(x),
        "log_softmax": fg.log_softmax(x),
        "logsumexp_where": fg.logsumexp(x, axis=-1, where=x > -1),
        "softmax_where": fg.softmax(x, where=x > -1),
        "logcumsumexp": fg.logcumsumexp(x),
        "logmeanexp": fg.logmeanexp(x, axis=-1),
        "log_matmul_exp": fg.log_matmul_exp(x, x.T),
    }


def _compare(fn, inputs, dtype, grad_tol):
    """Values and the gradient of the finite outputs, compiled (one graph) against eager."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)  # fullgraph: any graph break is an error
    xc, xe = inputs[0].clone().requires_grad_(), inputs[0].clone().requires_grad_()
    got, want = compiled(xc, *inputs[1:]), fn(xe, *inputs[1:])
    eps = torch.finfo(dtype).eps
    for k in want:
        assert got[k].dtype == dtype and got[k].shape == want[k].shape, k
        torch.testing.assert_close(got[k], want[k], equal_nan=True, rtol=4 * eps, atol=4 * eps, msg=k)
        if k in ("logsumexp", "softmax", "log_softmax", "log_softmax_3d", "logsumexp_keep"):  # eager's own code
            assert torch.equal(got[k], want[k]), k
    grads = []
    for x, out in ((xc, got), (xe, want)):
        ws = [torch.isfinite(v).to(dtype) for v in out.values()]
        grads.append(torch.autograd.grad(list(out.values()), x, grad_outputs=ws)[0])
    assert torch.isfinite(grads[0]).all()  # 0, not NaN, where an entry is -inf
    torch.testing.assert_close(grads[0], grads[1], rtol=grad_tol * eps, atol=grad_tol * eps)
    assert _numpy_fast.kernels is not False  # tracing never reaches (and so never disables) the numba kernels


def test_every_op_compiles_to_one_graph_with_the_eager_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(6, 9, generator=g) * 4 for _ in range(2))
    _compare(_all_ops, (x, y), torch.float32, grad_tol=64)


def test_log_domain_ops_keep_their_limits_under_compile():
    """-inf entries (masks, log 0) and a row with none finite: eager's values, finite zero gradients."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64) * 4
    x[1, 2] = -math.inf
    x[2] = -math.inf
    _compare(_log_domain, (x,), torch.float64, grad_tol=16)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_custom_ops_pass_torch_library_opcheck():
    """Schema, fake (meta) kernels, autograd registration, AOT dispatch of the ops torch.compile calls."""
    from floatguard.ops import _torch_fast

    x = torch.randn(6, 9, dtype=torch.float64)
    x[2] = -math.inf
    for t in (x, x.T.contiguous()):
        t = t.requires_grad_()
        torch.library.opcheck(_torch_fast.logsumexp_op, (t,))
        for log in (False, True):
            torch.library.opcheck(_torch_fast.softmax_op, (t, log))


def test_class_indices_are_still_checked_under_compile():
    """Checking targets reads their values: one graph break (not fullgraph), never a silent wrong loss."""
    torch._dynamo.reset()
    f = torch.compile(lambda x, t: fg.cross_entropy(x, t, dim=1))
    x = torch.randn(4, 3)
    t = torch.tensor([0, 2, 1, 0])
    torch.testing.assert_close(f(x, t), torch.nn.functional.cross_entropy(x, t))
    with pytest.raises(ValueError, match="class indices outside"):
        f(x, torch.tensor([0, 2, 3, 0]))


@pytest.mark.parametrize(("dtype", "reduction"), [(torch.float32, "mean"), (torch.bfloat16, "sum"),
                                                  (torch.float64, "none")], ids=str)
def test_cross_entropy_features_compile_to_one_graph_with_the_eager_values_and_gradients(dtype, reduction):
    """Class weights, label smoothing and probabilities enter the graph as ``floatguard::cross_entropy_features``
    (traced as torch ops they took 7 to 11 times the compiled F.cross_entropy): eager's losses bit for bit,
    its gradients within an ulp (float64 and 'none': the compiled backward computes them), bit for bit where the
    compiled forward writes them as eager's does (float32/bfloat16, a mean or a sum; for g = 3 within 1.5 ulp of
    eager's one rounding)."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(12, 7, generator=g) * 4).to(dtype)
    t = torch.randint(0, 7, (12,), generator=g)
    t[3] = -100
    w = torch.rand(7, generator=g) + 0.5
    p = torch.softmax(torch.randn(12, 7, generator=g), 1).to(dtype)
    calls = [
        lambda v: fg.cross_entropy(v, t, weight=w, label_smoothing=0.1, ignore_index=-100, reduction=reduction),
        lambda v: fg.cross_entropy(v, p, weight=w.double(), label_smoothing=0.2, reduction=reduction),
    ]
    eps = torch.finfo(dtype).eps
    for call in calls:
        torch._dynamo.reset()
        compiled = torch.compile(call, fullgraph=True)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = compiled(xc), call(xe)
        assert got.dtype == dtype and torch.equal(got, want)
        cot = torch.rand(got.shape, generator=g).to(dtype) if reduction == "none" else torch.ones((), dtype=dtype)
        got.backward(cot)
        want.backward(cot)
        torch.testing.assert_close(xc.grad, xe.grad, rtol=2 * eps, atol=2 * eps * float(xe.grad.abs().max()))
        if reduction != "none":
            assert torch.equal(xc.grad, xe.grad)
            xc.grad = xe.grad = None
            (3 * compiled(xc)).backward()
            (3 * call(xe)).backward()
            torch.testing.assert_close(xc.grad, xe.grad, rtol=3 * eps, atol=3 * eps * float(xe.grad.abs().max()))
    with pytest.raises(ValueError, match="'target'"):
        torch._dynamo.reset()
        torch.compile(lambda v: fg.cross_entropy(v, torch.full((12,), 7), label_smoothing=0.1))(x)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_cross_entropy_features_op_passes_opcheck():
    from floatguard.ops import _torch_ce_compile as C

    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 3, -100, 1, 2])
    w = torch.rand(4, dtype=torch.float64) + 0.5
    p = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    for red in ("mean", "none"):
        torch.library.opcheck(C.cross_entropy_features_op, (x, t, w, -100, True, 0.1, red))
        torch.library.opcheck(C.cross_entropy_features_op, (x, p, None, 0, False, 0.0, red))
    x32 = x.detach().float().requires_grad_()
    for red in ("mean", "sum"):
        torch.library.opcheck(C.cross_entropy_features_written_op, (x32, t, w, -100, True, 0.1, red))
        torch.library.opcheck(C.cross_entropy_features_written_op, (x32, p.float(), None, 0, False, 0.0, red))
    torch.library.opcheck(C.scale_written_gradient_op, (x32.detach(), torch.tensor(3.0)))


def test_large_compiled_features_recompute_the_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above ``WRITTEN_MAX_BYTES`` the compiled forward does not write the gradient (a fresh tensor's page faults
    cost more than the backward kernel): the backward computes it, within an ulp of eager's."""
    from floatguard.ops import _torch_ce_compile as C
    from floatguard.ops import _torch_rows

    monkeypatch.setattr(_torch_rows, "WRITTEN_MAX_BYTES", 0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 9, generator=g) * 4
    t = torch.randint(0, 9, (16,), generator=g)
    torch._dynamo.reset()
    calls: list[str] = []
    monkeypatch.setattr(C, "cross_entropy_features_written_op", lambda *a: calls.append("written"))
    compiled = torch.compile(lambda v: fg.cross_entropy(v, t, label_smoothing=0.1), fullgraph=True)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(xc).backward()
    fg.cross_entropy(xe, t, label_smoothing=0.1).backward()
    assert not calls
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(xc.grad, xe.grad, rtol=2 * eps, atol=2 * eps * float(xe.grad.abs().max()))


def _elementwise_inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, 7, generator=g, dtype=torch.float64) * 4
    neg = -torch.rand(12, 7, generator=g, dtype=torch.float64) * 3 - 1e-3
    neg[0, :3] = torch.tensor([0.0, -math.inf, -1e-30])
    a, b = x.clone(), torch.randn(12, 7, generator=g, dtype=torch.float64) * 4
    a[1, 1] = b[1, 1] = -math.inf  # no gradient
    a[2, 2] = math.inf
    y = torch.rand(12, 7, generator=g, dtype=torch.float64)
    y[3] = (y[3] > 0.5).to(torch.float64)
    ins = {"softplus": x.T, "log_sigmoid": x, "log1mexp": neg, "a": a, "b": b, "bce": x, "bce_w": x}  # x.T: strided
    return {k: v.to(dtype).requires_grad_() for k, v in ins.items()} | {"y": y.to(dtype)}


def _elementwise_ops(t: dict[str, torch.Tensor], reduction: str) -> dict[str, torch.Tensor]:
    w = torch.linspace(0.5, 1.5, 7, dtype=torch.float64)
    return {
        "softplus": fg.softplus(t["softplus"]),
        "log_sigmoid": fg.log_sigmoid(t["log_sigmoid"]),
        "log1mexp": fg.log1mexp(t["log1mexp"]),
        "logaddexp": fg.logaddexp(t["a"], t["b"]),
        "bce": fg.binary_cross_entropy_with_logits(t["bce"], t["y"], reduction=reduction),
        "bce_w": fg.binary_cross_entropy_with_logits(t["bce_w"], t["y"], weight=w, pos_weight=w.flip(0),
                                                     reduction=reduction),
    }


@pytest.mark.parametrize(("dtype", "reduction"), [(torch.float32, "mean"), (torch.bfloat16, "sum"),
                                                  (torch.float64, "none")], ids=str)
def test_elementwise_ops_and_bce_compile_to_custom_ops_with_the_eager_bits(dtype, reduction):
    """softplus, log_sigmoid, log1mexp, logaddexp and BCE enter the graph as the custom ops of
    ``_torch_elementwise_compile`` (traced as float64 torch ops they took 7.5 to 25 times the compiled framework
    op): eager's kernels forward and backward, so eager's values and gradients bit for bit, for a random upstream
    gradient too. BCE of float32/bfloat16, a mean or a sum: the compiled forward writes the gradient as eager's
    does; its backward ``g grad`` is eager's for ``g`` a power of two, within 1.5 ulp else (eager rounds once)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(_elementwise_ops, backend=counter, fullgraph=True)
    tc, te = _elementwise_inputs(dtype), _elementwise_inputs(dtype)
    got, want = compiled(tc, reduction), _elementwise_ops(te, reduction)
    ops = {str(n.target) for n in counter.graphs[0].graph.nodes if n.op == "call_function"}
    assert {f"floatguard.{o}.default" for o in ("unary", "logaddexp", "bce")} <= ops
    assert ("floatguard.bce_written.default" in ops) == (reduction != "none")
    gen = torch.Generator().manual_seed(8)
    cots = [torch.rand(v.shape, generator=gen).to(dtype) + 0.5 for v in want.values()]
    leaves = [k for k in tc if k != "y"]
    for k in want:
        assert got[k].dtype == dtype and torch.equal(got[k], want[k]), k
    for cot in (cots, [c if c.ndim else torch.ones((), dtype=dtype) for c in cots]):
        gc = torch.autograd.grad(list(got.values()), [tc[k] for k in leaves], cot, retain_graph=True)
        ge = torch.autograd.grad(list(want.values()), [te[k] for k in leaves], cot, retain_graph=True)
        for k, u, v in zip(leaves, gc, ge, strict=True):
            if k == "bce" and reduction != "none" and cot is cots:  # g grad against eager's one rounding
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(u, v, rtol=1.5 * eps, atol=1.5 * eps * float(v.abs().max()))
            else:
                assert torch.equal(u, v), k


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_elementwise_custom_ops_pass_opcheck():
    from floatguard.ops import _torch_elementwise_compile as C

    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.rand(5, 4, generator=g, dtype=torch.float64)
    w = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    for op in (0, 1, 2):
        torch.library.opcheck(C.unary_op, ((-x.abs() if op == 2 else x).reshape(-1).requires_grad_(), op))
    torch.library.opcheck(C.logaddexp_op, (x.reshape(-1).requires_grad_(), y.reshape(-1).requires_grad_()))
    torch.library.opcheck(C.unary_backward_op, (x.reshape(-1), y.reshape(-1), 0))
    torch.library.opcheck(C.logaddexp_backward_op, (x.reshape(-1), y.reshape(-1), w[:1].expand(20)))
    xg = x.clone().requires_grad_()
    torch.library.opcheck(C.bce_op, (xg, y, None, None, "mean"))
    torch.library.opcheck(C.bce_op, (xg, y, w, w.flip(0), "none"))
    torch.library.opcheck(C.bce_backward_op, (x, y, w, None, torch.rand((5, 4), generator=g), "none"))
    torch.library.opcheck(C.bce_written_op, (xg.detach().float().requires_grad_(), y.float(), "mean"))


def test_ops_compiled_one_after_another_in_a_new_process() -> None:
    """Compiling ``logaddexp`` and then ``logsumexp`` in one process: the kernel tables' caches, keyed by types, were
    traced by Dynamo and guarded by position; the second op's first call (a kernel module registering on first use
    clears them) raised ``StopIteration`` from the guard. A new process: the caches' state is the point. Each
    compiled function is called twice and must not recompile: the first call in a process loads the kernels while
    Dynamo traces, and state read then and changed after (the set of loaded backends, the cached ``is_compiling``)
    failed the guards of the second call."""
    import subprocess
    import sys

    code = """
import torch, floatguard as fg
torch._dynamo.config.error_on_recompile = True
a = torch.randn(16, 8, requires_grad=True); b = torch.randn(16, 8, requires_grad=True)
f = torch.compile(fg.logaddexp, dynamic=False)
f(a, b).sum().backward(); f(a, b)
ga = a.grad.clone(); a.grad = None
g = torch.compile(lambda v: fg.logsumexp(v, dim=-1), dynamic=False)
g(a).sum().backward(); g(a)
torch.testing.assert_close(a.grad, torch.softmax(a.detach(), -1))
torch.testing.assert_close(ga, torch.sigmoid(a.detach() - b.detach()))
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_first_compiled_function_of_a_process_compiles_once() -> None:
    """State the ops fill at their first call, read while ``torch.compile`` traced that call, was guarded as empty and
    failed the guard of the second call (a recompile): the losses' cache of torch objects (``cross_entropy``, BCE),
    the kernels module of ``softmax``, the torch backend of the generic path (``logcumsumexp``, ``logmeanexp``,
    ``linear_cross_entropy``, ...) and the set of loaded backends (``log_matmul_exp``). A new process, floatguard
    imported before torch (isort's order), one compiled function over all of them, eager calls in between."""
    import subprocess
    import sys

    code = """
import floatguard as fg
import torch
torch._dynamo.config.error_on_recompile = True
x = torch.randn(16, 8, requires_grad=True); t = torch.randint(0, 8, (16,))
def step(v):
    return (fg.cross_entropy(v, t) + fg.binary_cross_entropy_with_logits(v, torch.sigmoid(v.detach()))
            + fg.softmax(v, axis=-1).square().sum() + fg.logcumsumexp(v, axis=-1).sum() + fg.logmeanexp(v, axis=0).sum()
            + fg.log_matmul_exp(v, v.T).sum() + fg.linear_cross_entropy(v, torch.eye(8), t) + fg.softplus(v).sum())
f = torch.compile(step, dynamic=False, backend="eager")  # Dynamo's guards are the point, not Inductor
f(x).backward(); f(x).backward()
fg.cross_entropy(x.detach(), t); fg.softmax(x.detach()); fg.logcumsumexp(x.detach()); fg.log_matmul_exp(x.detach(), x.T)
f(x).backward()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_importing_a_module_after_compiling_recompiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled function's guards do not cover ``sys.modules``: importing a module later (a program does, at any
    step) keeps the compiled code. The ops used to look every library up there, and a missing one (JAX) made Dynamo
    guard each of its keys: a recompile at each new import, and ~0.3 ms of guards a call."""
    import sys
    import types

    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(lambda x, y: _all_ops(x, y), backend=counter, fullgraph=True)
    g = torch.Generator().manual_seed(3)
    x, y = (torch.randn(6, 9, generator=g) for _ in range(2))
    for _ in range(3):  # the first trace may load the torch kernels (then one recompile): settled after that
        compiled(x, y)
    frames = counter.frame_count
    name = "floatguard_test_imported_later"
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    compiled(x, y)
    assert counter.frame_count == frames


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_torch_export_with_a_dynamic_batch(strict: bool) -> None:
    """``torch.export`` (non-strict by default: the Python runs on fake tensors): the kernels module imported under
    its fake mode failed (a module-level tensor without storage), the class-index check branched on values, the
    override protocol went through export's own function modes, and ``take_along_dim`` specialized the dynamic
    batch to the example's. The exported program now takes other batch sizes with eager's values, and a bad class
    index still raises."""

    class Head(torch.nn.Module):
        def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return (fg.cross_entropy(z, t) + fg.cross_entropy(z, t, label_smoothing=0.1, ignore_index=3)
                    + fg.cross_entropy(z, t, z_loss=1e-3, softcap=5.0) + fg.log_softmax(z, axis=-1).mean()
                    + fg.softplus(z).mean() + fg.logsumexp(z, axis=-1).mean()
                    + fg.binary_cross_entropy_with_logits(z, torch.sigmoid(z.flip(0))))

    g = torch.Generator().manual_seed(4)
    z, t = torch.randn(8, 7, generator=g), torch.randint(0, 7, (8,), generator=g)
    batch = torch.export.Dim("batch", min=2, max=1024)
    exported = torch.export.export(Head(), (z, t), dynamic_shapes=({0: batch}, {0: batch}), strict=strict).module()
    for n in (3, 50):
        zn, tn = torch.randn(n, 7, generator=g), torch.randint(0, 7, (n,), generator=g)
        torch.testing.assert_close(exported(zn, tn), Head()(zn, tn))
    with pytest.raises((ValueError, RuntimeError), match="class indices outside"):
        exported(z, torch.full((8,), 9))


def test_compiled_graphs_carry_the_custom_ops_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile's on-disk AOTAutograd cache keys a graph by what Dynamo traced, where a custom op is its name and
    arguments, not its schema: after an upgrade that gave ``floatguard::softmax_columns`` an output, the old entry was
    found and the step failed in Inductor's code. Every route to the custom ops stamps the traced graph with their
    revision (``floatguard::revision(x, REV)``): the same revision finds the cache entry, another misses it, and the
    stamp leaves no op to run in the compiled code."""
    import uuid

    from torch._dynamo.utils import counters

    from floatguard.ops import _torch_revision

    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 5, generator=g)
    x4 = torch.randn(2, 5, 3, 4, generator=g)
    t = torch.randint(0, 5, (6,), generator=g)
    routes = {
        "softmax rows": lambda: fg.softmax(x, dim=-1),
        "logsumexp rows": lambda: fg.logsumexp(x, dim=-1),
        "log_softmax, a middle axis": lambda: fg.log_softmax(x4, dim=1),
        "logsumexp, a middle axis": lambda: fg.logsumexp(x4, dim=1),
        "cross_entropy": lambda: fg.cross_entropy(x, t),
        "cross_entropy, label smoothing": lambda: fg.cross_entropy(x, t, label_smoothing=0.1),
        "cross_entropy, a middle axis": lambda: fg.cross_entropy(x4, t.reshape(2, 3)[:, :, None].expand(2, 3, 4)
                                                                 .clamp(max=4).contiguous(), axis=1),
        "bce": lambda: fg.binary_cross_entropy_with_logits(x, torch.sigmoid(x)),
        "softplus": lambda: fg.softplus(x),
        "logaddexp": lambda: fg.logaddexp(x, x.flip(0)),
    }
    for name, route in routes.items():
        stamps: list[Any] = []

        def capture(gm: Any, _inputs: Any, stamps: list[Any] = stamps) -> Any:
            stamps += [n.args[1] for n in gm.graph.nodes if n.target is torch.ops.floatguard.revision.default]
            return gm.forward

        torch._dynamo.reset()
        torch.compile(route, backend=capture, fullgraph=True)()
        assert stamps == [_torch_revision.REV], name

    xr = x.clone().requires_grad_()

    def step(v: torch.Tensor) -> torch.Tensor:
        return fg.log_softmax(v, dim=-1).square().sum()

    # the forward and backward graphs AOTAutograd hands the compiler: the stamp is gone, the op is there
    from torch._dynamo.backends.common import aot_autograd

    ops: list[str] = []

    def compiler(gm: Any, _inputs: Any) -> Any:
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    torch.compile(step, backend=aot_autograd(fw_compiler=compiler, bw_compiler=compiler), fullgraph=True)(xr).backward()
    assert "floatguard.softmax_rows.default" in ops and "floatguard.softmax_rows_grad.default" in ops
    assert not any("revision" in op for op in ops)

    class Model(torch.nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return fg.log_softmax(v, dim=-1)

    exported = torch.export.export(Model(), (x,))
    assert not any("revision" in str(n.target) for n in exported.graph.nodes)

    def compiled() -> tuple[int, int]:
        torch._dynamo.reset()
        counters.clear()
        torch.compile(step, fullgraph=True)(xr).backward()
        aot = counters["aot_autograd"]
        return aot["autograd_cache_hit"], aot["autograd_cache_miss"]

    compiled()  # fills the cache, or finds it filled
    assert compiled() == (1, 0)
    monkeypatch.setattr(_torch_revision, "REV", uuid.uuid4().hex)
    assert compiled() == (0, 1)


@pytest.mark.parametrize("kw", [{"reduction": "none"}, {"z_loss": 1e-3}, {"softcap": 30.0, "reduction": "sum"},
                                {"label_smoothing": 0.1, "reduction": "none"}], ids=str)
def test_compiled_cross_entropy_rows_over_threads_give_the_bits_of_one_thread(
        kw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled cross-entropy's custom ops split large calls' rows over threads, the backward too (it ran on one
    thread whatever torch's setting): at 2 and 3 threads the loss and the gradient are one thread's bits."""
    import numpy as np

    from floatguard.ops import _torch_ce, _torch_rows

    kinds: list[str] = []
    monkeypatch.setattr(_torch_ce, "team_run", lambda team, kind, *a: (kinds.append(kind), _torch_rows.team_run(
        team, kind, *a))[1])
    monkeypatch.setattr(_torch_ce, "run_rows", lambda *a: (kinds.append("pool"), _torch_rows.run_rows(*a))[1])
    torch._dynamo.reset()
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((203, 700)) * 5, dtype=torch.float32)
    t = torch.tensor(rng.integers(0, 700, 203))
    up = torch.tensor(rng.uniform(0.5, 1.5, 203) if kw.get("reduction") == "none" else 0.7, dtype=torch.float32)
    f = torch.compile(lambda v: fg.cross_entropy(v, t, **kw), fullgraph=True)

    def run(threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            v = x.clone().requires_grad_(True)
            loss = f(v)
            loss.backward(up)
            assert v.grad is not None
            return loss.detach(), v.grad
        finally:
            torch.set_num_threads(old)

    one = run(1)
    kinds.clear()
    for threads in (2, 3):
        for a, b in zip(one, run(threads), strict=True):
            assert torch.equal(a, b), threads
    threaded_backward = {"ce_plain_bwd", "ce_bwd"} if _torch_rows.openmp_team() is not None else {"pool"}
    assert threaded_backward & set(kinds), kinds


DYNAMIC_CASES = {  # (function of (x, t), logits shape for a batch b, class count)
    "cross_entropy, dim=1": (lambda x, t: fg.cross_entropy(x, t, axis=1), lambda b: (b, 10, 3), 10),
    "cross_entropy, dim=1, z_loss, softcap": (
        lambda x, t: fg.cross_entropy(x, t, axis=1, z_loss=1e-3, softcap=5.0), lambda b: (b, 10, 3), 10),
    "cross_entropy, z_loss": (lambda x, t: fg.cross_entropy(x, t, z_loss=1e-3), lambda b: (b, 10), 10),
    "linear_cross_entropy": (lambda x, t: fg.linear_cross_entropy(x, WEIGHT, t), lambda b: (b, 8), 12),
    "linear_cross_entropy, z_loss, softcap, smoothing": (
        lambda x, t: fg.linear_cross_entropy(x, WEIGHT, t, z_loss=1e-3, softcap=5.0, label_smoothing=0.1),
        lambda b: (b, 8), 12),
    "linear_cross_entropy, sum, chunks": (
        lambda x, t: fg.linear_cross_entropy(x, WEIGHT, t, reduction="sum", chunk_size=3), lambda b: (b, 8), 12),
}
WEIGHT = torch.randn(12, 8, generator=torch.Generator().manual_seed(3)) * 2


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", list(DYNAMIC_CASES))
def test_losses_compile_to_one_graph_with_dynamic_shapes_too(case: str, dynamic: bool) -> None:
    """``fullgraph=True``, static or dynamic shapes, batches of 4, 7 and 13, a loss scaled before ``backward`` (a
    gradient scaler's): the eager values and gradients. Under ``dynamic=True`` Dynamo traces ``float()`` of a
    constant argument as a symbolic float, and the argument checks' ``math.isfinite`` broke the graph (the
    middle-axis cross-entropy, every feature); ``linear_cross_entropy`` branched on the target check's and the
    upstream gradient's values (a data-dependent guard: no graph at all)."""
    f, shape, n_cls = DYNAMIC_CASES[case]
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    g = torch.Generator().manual_seed(0)
    for b in (4, 7, 13):
        x = torch.randn(shape(b), generator=g) * 3
        t = torch.randint(0, n_cls, (b, *shape(b)[2:]), generator=g)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = compiled(xc, t), f(xe, t)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        (got * 1.5).backward()
        (want * 1.5).backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)


FAKE_CASES = {
    "softmax": lambda x, t: fg.softmax(x, dim=-1), "log_softmax": lambda x, t: fg.log_softmax(x, dim=0),
    "logsumexp": lambda x, t: fg.logsumexp(x, dim=-1), "cross_entropy": lambda x, t: fg.cross_entropy(x, t),
    "cross_entropy, none, smoothing": lambda x, t: fg.cross_entropy(x, t, reduction="none", label_smoothing=0.1),
    "cross_entropy, probabilities": lambda x, t: fg.cross_entropy(x, torch.softmax(x.detach(), -1)),
    "cross_entropy, z_loss": lambda x, t: fg.cross_entropy(x, t, z_loss=1e-3),
    "bce": lambda x, t: fg.binary_cross_entropy_with_logits(x, torch.sigmoid(x.detach())),
    "softplus": lambda x, t: fg.softplus(x), "log_sigmoid": lambda x, t: fg.log_sigmoid(x),
    "log1mexp": lambda x, t: fg.log1mexp(-x.abs() - 0.1), "logaddexp": lambda x, t: fg.logaddexp(x, x * 0.5),
    "logcumsumexp": lambda x, t: fg.logcumsumexp(x, dim=-1),
    "linear_cross_entropy": lambda x, t: fg.linear_cross_entropy(x, torch.ones(12, x.shape[-1]), t),
}


@pytest.mark.parametrize("shape", [(6, 10), (300, 1000)], ids=["small", "threaded"])
@pytest.mark.parametrize("case", list(FAKE_CASES))
def test_ops_under_a_fake_tensor_mode_give_fake_results(case: str, shape: tuple[int, int]) -> None:
    """Under a ``FakeTensorMode`` (FLOP counters, memory estimators, shape propagation) tensors have no storage: the
    ops take their generic path and give the eager shapes and dtypes, forward and backward. The kernels read the
    fake tensors through ``data_ptr``, and the interpreter crashed (a segmentation fault)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    f = FAKE_CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, requires_grad=True)
    t = torch.randint(0, 10, (shape[0],), generator=g)  # classes of the logits and of linear_cross_entropy's 12
    want = f(x, t)
    mode = FakeTensorMode()
    xf, tf = mode.from_tensor(x.detach()), mode.from_tensor(t)
    with mode:
        xf.requires_grad_()
        got = f(xf, tf)
        got.sum().backward()
        assert isinstance(got, FakeTensor) and isinstance(xf.grad, FakeTensor)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert xf.grad.shape == x.shape and xf.grad.dtype == x.dtype
