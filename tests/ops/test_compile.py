"""The ops under ``torch.compile``: one graph (``fullgraph=True``), the eager values and gradients.

Dynamo cannot trace the eager fast path of logsumexp/softmax/log_softmax (compiled
NumPy kernels through zero-copy views, branches on values): under compilation it is
called as custom ops (``floatguard::logsumexp_rows``, ``floatguard::softmax_rows``),
and the other ops trace through the generic array-API code, which Inductor fuses.
"""

from __future__ import annotations

import math

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

    monkeypatch.setattr(C, "WRITTEN_MAX_BYTES", 0)
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
