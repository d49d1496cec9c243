"""The ops under ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``, ``jacrev``, ``hessian``) and ``jit.trace``.

The eager fast paths (numba kernels reading tensor storage, plain ``torch.autograd.Function`` classes)
cannot run on functorch's wrapped tensors; under a transform every op takes its generic path
(``_namespace.torch_generic_only``). Each transform's result is compared with what the same op gives
eagerly, on its fast path, through ``torch.autograd``: per-sample gradients (``vmap(grad)``) against a
loop, ``jvp`` and ``jacrev`` against the Jacobian of ``torch.autograd.functional``, ``hessian`` against
its double backward.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import torch

import floatguard as fg
from floatguard.ops import _kernels

F = torch.nn.functional
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's own


def _pos(x: Any) -> Any:
    return x.abs() + 0.1


def _neg(x: Any) -> Any:
    return -x.abs() - 1e-3


# op name -> a function of one (R, C) tensor; each applies the op on its rows' last axis or elementwise
ROW_OPS: dict[str, Callable[[Any], Any]] = {
    "logsumexp": lambda x: fg.logsumexp(x, axis=-1),
    "logsumexp_axis0": lambda x: fg.logsumexp(x, axis=0),
    "logmeanexp": lambda x: fg.logmeanexp(x, axis=-1),
    "softmax": lambda x: fg.softmax(x, axis=-1),
    "log_softmax": lambda x: fg.log_softmax(x, axis=-1),
    "log_softmax_axis0": lambda x: fg.log_softmax(x, axis=0),
    "logcumsumexp": lambda x: fg.logcumsumexp(x, axis=-1),
    "softplus": fg.softplus,
    "log_sigmoid": fg.log_sigmoid,
    "sigmoid": fg.sigmoid,
    "log1mexp": lambda x: fg.log1mexp(_neg(x)),
    "softplus_inverse": lambda x: fg.softplus_inverse(_pos(x)),
    "logaddexp": lambda x: fg.logaddexp(x, 0.5 * x.flip(-1)),
    "logsubexp": lambda x: fg.logsubexp(_pos(x) + 1, _pos(x)),
    "xlogy": lambda x: fg.xlogy(x, _pos(x)),
    "xlog1py": lambda x: fg.xlog1py(x, _pos(x)),
    "log_prod": lambda x: fg.log_prod(_pos(x) / 4, axis=-1),
    "safe_log": lambda x: fg.safe_log(x.abs()),
    "safe_div": lambda x: fg.safe_div(x, x.flip(-1)),
    "safe_sqrt": lambda x: fg.safe_sqrt(x.abs()),
    "log_matmul_exp": lambda x: fg.log_matmul_exp(x, x.T),
}

TARGET = torch.tensor([0, 3, 1, 4, 2, 3])
CLASS_WEIGHT = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.75], dtype=torch.float64)
PROBS = torch.softmax(torch.linspace(-2, 2, 30, dtype=torch.float64).reshape(6, 5), -1)
LABELS = (torch.arange(30).reshape(6, 5) % 3 == 0).to(torch.float64)

# losses: a function of the logits (6, 5) and the row indices it covers (for per-sample gradients)
LOSSES: dict[str, Callable[[Any, Any], Any]] = {
    "cross_entropy": lambda x, r: fg.cross_entropy(x, TARGET[r]),
    "cross_entropy_weight_smoothing": lambda x, r: fg.cross_entropy(
        x, TARGET[r], weight=CLASS_WEIGHT.to(x.dtype), label_smoothing=0.1, reduction="sum"),
    "cross_entropy_ignore_index": lambda x, r: fg.cross_entropy(x, torch.where(TARGET[r] == 3, -100, TARGET[r]),
                                                                ignore_index=-100, reduction="sum"),
    "cross_entropy_probs": lambda x, r: fg.cross_entropy(x, PROBS[r].to(x.dtype)),
    "cross_entropy_zloss_softcap": lambda x, r: fg.cross_entropy(x, TARGET[r], z_loss=1e-3, softcap=3.0),
    "bce": lambda x, r: fg.binary_cross_entropy_with_logits(x, LABELS[r].to(x.dtype)),
    "bce_pos_weight": lambda x, r: fg.binary_cross_entropy_with_logits(
        x, LABELS[r].to(x.dtype), pos_weight=CLASS_WEIGHT.to(x.dtype), reduction="sum"),
    "linear_cross_entropy": lambda x, r: fg.linear_cross_entropy(
        x, torch.eye(5, dtype=x.dtype) * 2 + 0.1, TARGET[r], reduction="sum"),
}

ROWS = torch.arange(6)


@pytest.fixture(autouse=True, scope="module")
def _kernels_loaded() -> None:
    """The torch kernels loaded by an eager call first, whatever ran before in this worker: the comparisons
    below are then with the fast path."""
    fg.softmax(_x(), axis=-1)
    assert _kernels.select_call("softmax", _x()) is not None


def _x(dtype: Any = torch.float64) -> Any:
    return (torch.linspace(-4.0, 4.0, 30, dtype=torch.float64).reshape(6, 5) * torch.tensor([1.0, -0.7, 1.3, 0.4,
                                                                                             -1.1])).to(dtype)


def _eager_grad(f: Callable[[Any], Any], x: Any) -> Any:
    leaf = x.clone().requires_grad_(True)
    return torch.autograd.grad(f(leaf), leaf)[0]


def _weighted_sum(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A scalar of ``f``'s output with unequal weights, so that its gradient is not that of a plain sum."""
    def g(x: Any) -> Any:
        y = f(x)
        return (y * torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).reshape(y.shape)).sum()

    return g


@pytest.mark.parametrize("name", sorted(ROW_OPS))
def test_grad_vmap_jvp_jacrev_match_the_eager_fast_path(name: str) -> None:
    f, x = ROW_OPS[name], _x()
    close = {"rtol": 1e-12, "atol": 1e-14}
    scalar = _weighted_sum(f)
    torch.testing.assert_close(torch.func.grad(scalar)(x), _eager_grad(scalar, x), **close)
    # vmap over a stack of inputs: each entry's value as the eager call's
    xs = torch.stack([x, 0.5 * x, x.flip(0)])
    torch.testing.assert_close(torch.vmap(f)(xs), torch.stack([f(v) for v in xs]), **close)
    # per-sample gradients of the stacked inputs
    torch.testing.assert_close(torch.vmap(torch.func.grad(scalar))(xs), torch.stack([_eager_grad(scalar, v)
                                                                                     for v in xs]), **close)
    jac = torch.autograd.functional.jacobian(f, x)  # eager autograd through the fast path
    direction = torch.linspace(-1.0, 1.0, x.numel(), dtype=x.dtype).reshape(x.shape)
    out_dims = jac.ndim - x.ndim
    expected = (jac.reshape(*jac.shape[:out_dims], -1) @ direction.reshape(-1))
    torch.testing.assert_close(torch.func.jvp(f, (x,), (direction,))[1], expected, **close)
    torch.testing.assert_close(torch.func.jacrev(f)(x), jac, **close)


@pytest.mark.parametrize("name", ["logsumexp", "softmax", "log_softmax", "softplus", "logaddexp", "log1mexp"])
def test_hessian_matches_double_backward(name: str) -> None:
    scalar = _weighted_sum(ROW_OPS[name])
    x = _x()[:3]
    torch.testing.assert_close(torch.func.hessian(scalar)(x), torch.autograd.functional.hessian(scalar, x),
                               rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_per_sample_gradients_match_a_loop(name: str, dtype: Any) -> None:
    """``vmap(grad(loss))`` over rows (differential privacy, influence functions): each row's gradient as
    the eager fast path gives it for that row alone; ``grad`` and ``jacrev`` of the batch loss likewise."""
    loss, x = LOSSES[name], _x(dtype)

    def one(row: Any, r: Any) -> Any:
        return loss(row[None], r[None])

    per_sample = torch.vmap(torch.func.grad(one))(x, ROWS)
    loop = torch.stack([_eager_grad(lambda v, r=r: loss(v[None], r[None]), x[r]) for r in ROWS])
    close = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 2e-6, "atol": 1e-7}
    torch.testing.assert_close(per_sample, loop, **close)
    batch = _eager_grad(lambda v: loss(v, ROWS), x)
    torch.testing.assert_close(torch.func.grad(lambda v: loss(v, ROWS))(x), batch, **close)
    torch.testing.assert_close(torch.func.jacrev(lambda v: loss(v, ROWS))(x), batch, **close)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_jit_trace_records_the_ops_and_computes_new_inputs() -> None:
    """``torch.jit.trace`` records torch ops only: the kernels' results used to enter the trace as constants (numba
    refused the traced arguments). The trace now records the generic path and gives eager's values on inputs it
    was not traced with, gradients included."""

    def model(x: Any, target: Any) -> Any:
        return (fg.log_softmax(x, axis=-1).square().mean() + fg.softplus(x).mean() + fg.logsumexp(x, axis=-1).mean()
                + fg.logaddexp(x, x.flip(-1)).mean() + fg.cross_entropy(x, target)
                + fg.binary_cross_entropy_with_logits(x, torch.sigmoid(x.flip(0))))

    traced = torch.jit.trace(model, (_x(torch.float32), TARGET))
    x, target = 3 * _x(torch.float32).flip(1), TARGET.flip(0)
    torch.testing.assert_close(traced(x, target), model(x, target), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_eager_grad(lambda v: traced(v, target), x), _eager_grad(lambda v: model(v, target), x),
                               rtol=1e-6, atol=1e-7)


def test_cross_entropy_checks_class_indices_under_vmap() -> None:
    """The indices are read under the wrappers: a bad one is the usual error naming the argument, not a failure
    of a data-dependent branch, and not a silent answer."""
    target = TARGET.clone()
    target[2] = 7
    with pytest.raises(ValueError, match="argument 'target' has class indices outside"):
        torch.vmap(torch.func.grad(lambda row, t: fg.cross_entropy(row[None], t[None])))(_x(), target)


def test_eager_calls_keep_their_kernels_after_a_transform() -> None:
    """A transform does not switch the fast paths off for the calls after it: the same kernel is chosen."""
    x = _x(torch.float32)
    before = _kernels.select_call("softmax", x)
    torch.func.grad(lambda v: fg.softmax(v, axis=-1)[:, 0].sum())(x)
    assert before is not None and _kernels.select_call("softmax", x) is before
    assert torch.equal(fg.softmax(x, axis=-1), fg.softmax(x, axis=-1))


def test_first_call_under_a_transform_loads_the_kernels_in_a_new_process() -> None:
    """The torch kernels are imported by the first torch call of an op; in a new process that call is under
    ``torch.func.grad`` here. The import used to fail there (a module-level tensor made under the transform
    has no storage), and the backend stayed marked as loaded: every later call took the generic path."""
    script = textwrap.dedent("""
        import torch, floatguard as fg
        from floatguard.ops import _kernels
        x = torch.linspace(-3, 3, 20, dtype=torch.float64).reshape(4, 5)
        g = torch.func.grad(lambda v: (fg.log_softmax(v, axis=-1) * v).sum())(x)
        leaf = x.clone().requires_grad_(True)
        (fg.log_softmax(leaf, axis=-1) * leaf).sum().backward()
        torch.testing.assert_close(g, leaf.grad, rtol=1e-12, atol=1e-14)
        assert _kernels.select_call("log_softmax", x) is not None, "no torch kernel after the transform"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_a_failed_kernel_import_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose kernel module failed to import is not marked loaded: the error reaches the caller and the
    next call imports it again (it used to stay marked, its ops silently on the generic path for good)."""
    import floatguard.ops
    from floatguard.ops import _numpy_fast

    monkeypatch.setattr(_kernels, "_LOADED", set())
    monkeypatch.delattr(floatguard.ops, "_numpy_fast")  # else ``from . import`` takes the attribute
    monkeypatch.setitem(sys.modules, "floatguard.ops._numpy_fast", None)  # the import statement raises
    with pytest.raises(ImportError):
        _kernels._load("numpy")
    assert "numpy" not in _kernels._LOADED
    monkeypatch.setitem(sys.modules, "floatguard.ops._numpy_fast", _numpy_fast)  # importable again (not re-run)
    _kernels._load("numpy")
    assert "numpy" in _kernels._LOADED
