"""linear_cross_entropy: the LM head and its loss fused, against the unfused float64 computation.

Values and gradients (hidden, weight, bias) for every option on the PyTorch, JAX and NumPy paths,
over several chunks; gradcheck in float64; float32 and bfloat16 within their rounding; large
logits against mpmath; the memory property (no (tokens × vocabulary) tensor is ever made, and a
call without gradients does one matrix product per chunk); bad input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import floatguard as fg  # noqa: E402
import floatguard.testing as T  # noqa: E402

N, H, V = 37, 8, 53
OPTIONS: list[dict[str, Any]] = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"label_smoothing": 0.2, "z_loss": 0.1, "softcap": 2.0},
]


def reference(h: Any, w: Any, t: Any, *, bias: Any = None, ignore_index: int = -100, label_smoothing: float = 0.0,
              reduction: str = "mean", z_loss: float = 0.0, softcap: float | None = None) -> Any:
    """The unfused computation: full logits, F.cross_entropy, the z-loss added per kept token."""
    x = h @ w.T if bias is None else h @ w.T + bias
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    loss = F.cross_entropy(x, t, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none")
    keep = t != ignore_index
    loss = loss + z_loss * torch.where(keep, torch.logsumexp(x, -1) ** 2, 0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / keep.sum()


def _inputs(dtype: Any = torch.float64, bias: bool = False, seed: int = 0, n: int = N, hd: int = H, v: int = V,
            scale: float = 1.0) -> tuple[Any, Any, Any, Any]:
    g = torch.Generator().manual_seed(seed)
    h = (scale * torch.randn(n, hd, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    w = torch.randn(v, hd, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(v, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    t[::5] = -100
    return h, w, b, t


def _params(h: Any, w: Any, b: Any) -> list[Any]:
    return [h, w] if b is None else [h, w, b]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("chunk_size", [10])  # several chunks and a short last one
def test_torch_values_and_gradients_match_the_unfused_float64(
    reduction: str, bias: bool, opts: dict[str, Any], chunk_size: int | None
) -> None:
    h, w, b, t = _inputs(bias=bias)
    ref = reference(h, w, t, bias=b, reduction=reduction, **opts)
    go = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, _params(h, w, b), go)
    out = fg.linear_cross_entropy(h, w, t, bias=b, reduction=reduction, chunk_size=chunk_size, **opts)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    grads = torch.autograd.grad(out, _params(h, w, b), go)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-13)
    with torch.no_grad():
        plain = fg.linear_cross_entropy(h, w, t, bias=b, reduction=reduction, chunk_size=chunk_size, **opts)
    torch.testing.assert_close(plain, ref.detach(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.2, "z_loss": 0.1, "softcap": 2.0}])
def test_gradcheck_float64(reduction: str, opts: dict[str, Any]) -> None:
    h, w, b, t = _inputs(bias=True, n=7, hd=3, v=11)
    t[0] = -100

    def f(h: Any, w: Any, b: Any) -> Any:
        return fg.linear_cross_entropy(h, w, t, bias=b, reduction=reduction, chunk_size=3, **opts)

    assert torch.autograd.gradcheck(f, (h, w, b))


def test_only_the_gradients_asked_for_are_computed() -> None:
    h, w, _, t = _inputs()
    w.requires_grad_(False)
    out = fg.linear_cross_entropy(h, w, t, chunk_size=8)
    (gh,) = torch.autograd.grad(out, [h])
    (gh_ref,) = torch.autograd.grad(reference(h, w, t), [h])
    torch.testing.assert_close(gh, gh_ref, rtol=1e-12, atol=1e-14)
    assert w.grad is None


def test_backward_twice_with_retained_graph() -> None:
    h, w, _, t = _inputs()
    out = 2 * fg.linear_cross_entropy(h, w, t)
    out.backward(retain_graph=True)
    first = h.grad.clone()
    out.backward()
    torch.testing.assert_close(h.grad, 2 * first)


def test_tokens_keep_the_leading_shape() -> None:
    h, w, _, t = _inputs(n=12)
    h3, t3 = h.detach().reshape(3, 4, H), t.reshape(3, 4)
    out = fg.linear_cross_entropy(h3, w, t3, reduction="none")
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.reshape(-1), reference(h.detach(), w, t, reduction="none"))


def test_mean_over_no_token_is_nan_as_in_pytorch() -> None:
    h, w, _, t = _inputs()
    t[:] = -100
    assert math.isnan(float(fg.linear_cross_entropy(h, w, t)))
    assert math.isnan(float(F.cross_entropy(h @ w.T, t)))


def _error(a: Any, ref: Any) -> float:
    return float((a.double() - ref).abs().max())


@pytest.mark.parametrize("bias", [False, True])
def test_float32_is_within_float32_rounding(bias: bool) -> None:
    """Errors against float64 no larger than the unfused float32 computation's (with a little slack)."""
    h, w, b, t = _inputs(torch.float32, bias=bias, n=64, hd=32, v=1000, scale=0.5)
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    ref = reference(h64, w64, t, bias=b64, z_loss=1e-3)
    g_ref = torch.autograd.grad(ref, _params(h64, w64, b64))
    unf = reference(h, w, t, bias=b, z_loss=1e-3)
    g_unf = torch.autograd.grad(unf, _params(h, w, b))
    out = fg.linear_cross_entropy(h, w, t, bias=b, z_loss=1e-3, chunk_size=24)
    assert out.dtype == torch.float32
    g_out = torch.autograd.grad(out, _params(h, w, b))
    eps32 = torch.finfo(torch.float32).eps
    assert _error(out, ref) <= 2 * _error(unf, ref) + 4 * eps32 * float(ref)
    for g, gu, gr in zip(g_out, g_unf, g_ref, strict=True):
        assert g.dtype == torch.float32
        assert _error(g, gr) <= 2 * _error(gu, gr) + 4 * eps32 * float(gr.abs().max())


def _rel(g: Any, ref: Any) -> float:
    return float((g.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("seed", [0, 1])
def test_bfloat16_is_as_accurate_as_the_unfused_bfloat16_product(seed: int) -> None:
    """bfloat16 products (float32 accumulation inside the BLAS) as the unfused op does, the
    softmax and its gradient in float32: the loss within 1 bfloat16 ulp of the float64 value; the
    hidden and bias gradients as close to float64 as the unfused ones (the same rounded products;
    the bias gradient is summed in float32); the weight gradient is summed over token chunks in
    float32 from chunk products rounded to bfloat16 (no bfloat16 product with a float32 result on
    the CPU), which costs at most 1.5x the unfused relative error (measured: about 1.25x)."""
    h, w, b, t = _inputs(torch.bfloat16, bias=True, n=192, hd=64, v=700, scale=0.5, seed=seed)
    exact = [a.detach().double().requires_grad_() for a in (h, w, b)]
    ref = reference(exact[0], exact[1], t, bias=exact[2])
    g_ref = torch.autograd.grad(ref, exact)
    unf = F.cross_entropy(F.linear(h, w, b).float(), t)
    g_unf = torch.autograd.grad(unf, [h, w, b])
    out = fg.linear_cross_entropy(h, w, t, bias=b, chunk_size=16)
    assert out.dtype == torch.bfloat16
    bf16_ulp = 2**16  # in float32 ulps
    assert T.ulp_error(out.detach().double().numpy(), float(ref), np.float32) <= bf16_ulp
    g_out = torch.autograd.grad(out, [h, w, b])
    assert all(g.dtype == torch.bfloat16 for g in g_out)
    (gh, gw, gb), (uh, uw, ub), (rh, rw, rb) = g_out, g_unf, g_ref
    assert _rel(gh, rh) <= 1.02 * _rel(uh, rh)
    assert _rel(gb, rb) <= 1.1 * _rel(ub, rb)
    assert _rel(gw, rw) <= 1.5 * _rel(uw, rw)


def test_bfloat16_products_stay_in_bfloat16() -> None:
    """The three matrix products take bfloat16 operands (no float32 copy of the weight)."""
    h, w, b, t = _inputs(torch.bfloat16, bias=True, n=64, hd=16, v=300)
    dtypes: list[Any] = []

    class _Products(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
                dtypes.append(args[-1].dtype)
            return func(*args, **(kwargs or {}))

    with _Products():
        fg.linear_cross_entropy(h, w, t, bias=b, chunk_size=16).backward()
    assert dtypes and set(dtypes) == {torch.bfloat16}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=2, max_size=9),
    st.integers(0, 8),
)
def test_large_logits_match_mpmath(row: list[float], c: int) -> None:
    """Hidden size 1 and unit weights make the logits exactly ``hidden``: one row against mpmath."""
    c %= len(row)
    x = np.asarray(row, dtype=np.float32)
    weight = torch.from_numpy(x)[:, None]  # one token, hidden [[1]]: its logits are x exactly
    out = fg.linear_cross_entropy(torch.ones(1, 1), weight, torch.tensor([c]), chunk_size=1)
    exact = T.ref_cross_entropy_row(x, c)
    assert T.ulp_error(out.numpy(), exact, np.float32) <= 2 + 2 * len(row) * T.cond_cross_entropy_row(x, c)


class _Recorder(TorchDispatchMode):
    """Records the largest tensor made and the matrix products run."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.products = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            self.products += 1
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_no_tokens_by_vocabulary_tensor_is_made(reduction: str) -> None:
    n, hd, v, chunk = 256, 16, 512, 32
    h, w, b, t = _inputs(torch.float32, bias=True, n=n, hd=hd, v=v)
    with _Recorder() as rec:
        fg.linear_cross_entropy(h, w, t, bias=b, reduction=reduction, chunk_size=chunk).sum().backward()
    assert rec.largest <= max(chunk * v, v * hd, n * hd)
    with _Recorder() as unfused:
        reference(h, w, t, bias=b, reduction=reduction).sum().backward()
    assert unfused.largest >= n * v  # the recorder sees the full logits when they exist


def test_matrix_products_per_chunk() -> None:
    """Three products per chunk with gradients (as unfused), one without, four for "none"."""
    h, w, b, t = _inputs(torch.float32, bias=True, n=64, v=40)
    chunks = 64 // 16
    with _Recorder() as rec:
        fg.linear_cross_entropy(h, w, t, bias=b, chunk_size=16).backward()
    assert rec.products == 3 * chunks
    with torch.no_grad(), _Recorder() as rec:
        fg.linear_cross_entropy(h, w, t, bias=b, chunk_size=16)
    assert rec.products == chunks
    with _Recorder() as rec:
        fg.linear_cross_entropy(h, w, t, bias=b, chunk_size=16, reduction="none").sum().backward()
    assert rec.products == 4 * chunks


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", OPTIONS)
def test_numpy_matches_the_reference(reduction: str, opts: dict[str, Any]) -> None:
    h, w, b, t = _inputs(bias=True)
    ref = reference(h, w, t, bias=b, reduction=reduction, **opts).detach().numpy()
    out = fg.linear_cross_entropy(h.detach().numpy(), w.detach().numpy(), t.numpy(), bias=b.detach().numpy(),
                                  reduction=reduction, chunk_size=7, **opts)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-13)


BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"weight": torch.zeros(V, H + 1)}, ValueError, "'weight'"),
    ({"weight": torch.zeros(V, H, dtype=torch.float32)}, TypeError, "'weight'"),
    ({"bias": torch.zeros(V + 1)}, ValueError, "'bias'"),
    ({"target": torch.zeros(N)}, TypeError, "'target'"),
    ({"target": torch.zeros(N + 1, dtype=torch.int64)}, ValueError, "'target'"),
    ({"target": torch.full((N,), V)}, ValueError, "'target'"),
    ({"target": torch.full((N,), -1)}, ValueError, "'target'"),
    ({"hidden": torch.zeros(N, H, dtype=torch.int64)}, TypeError, "'hidden'"),
    ({"reduction": "avg"}, ValueError, "'reduction'"),
    ({"label_smoothing": 1.5}, ValueError, "'label_smoothing'"),
    ({"z_loss": -1.0}, ValueError, "'z_loss'"),
    ({"z_loss": "1e-4"}, TypeError, "'z_loss'"),
    ({"softcap": 0.0}, ValueError, "'softcap'"),
    ({"ignore_index": 1.5}, TypeError, "'ignore_index'"),
    ({"chunk_size": 0}, ValueError, "'chunk_size'"),
    ({"weight": np.zeros((V, H))}, TypeError, "'weight'"),
]


@pytest.mark.parametrize(("change", "error", "name"), BAD)
def test_bad_input_names_the_argument(change: dict[str, Any], error: type[Exception], name: str) -> None:
    args: dict[str, Any] = {"hidden": torch.zeros(N, H, dtype=torch.float64),
                            "weight": torch.zeros(V, H, dtype=torch.float64),
                            "target": torch.zeros(N, dtype=torch.int64),
                            "bias": torch.zeros(V, dtype=torch.float64)}
    args.update(change)
    with pytest.raises(error, match=name):
        fg.linear_cross_entropy(args.pop("hidden"), args.pop("weight"), args.pop("target"), **args)


# -- JAX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [OPTIONS[0], OPTIONS[-1]])
def test_jax_values_and_gradients_match_the_reference(reduction: str, opts: dict[str, Any]) -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    h, w, b, t = _inputs(bias=True)
    ref = reference(h, w, t, bias=b, reduction=reduction, **opts)
    go = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, [h, w, b], go)
    with jax.enable_x64(True):
        tj, goj = jnp.asarray(t.numpy()), jnp.asarray(go.numpy())

        def f(h: Any, w: Any, b: Any) -> Any:
            out = fg.linear_cross_entropy(h, w, tj, bias=b, reduction=reduction, chunk_size=10, **opts)
            return (out * goj).sum(), out

        (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(
            *(jnp.asarray(a.detach().numpy()) for a in (h, w, b)))
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out), ref.detach().numpy(), rtol=1e-12, atol=1e-13)
        for g, gr in zip(grads, g_ref, strict=True):
            np.testing.assert_allclose(np.asarray(g), gr.numpy(), rtol=1e-11, atol=1e-13)


def test_jax_float32_and_bfloat16_accumulate_in_float32() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    h, w, b, t = _inputs(bias=True, n=64, hd=64, v=700, scale=0.5)
    ref = reference(h, w, t, bias=b)
    g_ref = torch.autograd.grad(ref, [h, w])
    for dtype, rel in ((jnp.float32, 1e-5), (jnp.bfloat16, 2.0**-8)):
        args = [jnp.asarray(a.detach().numpy()).astype(dtype) for a in (h, w, b)]
        exact = [torch.from_numpy(np.asarray(a.astype(jnp.float32))).double().requires_grad_() for a in args]
        ref = reference(exact[0], exact[1], t, bias=exact[2])
        g_ref = torch.autograd.grad(ref, exact[:2])
        tj = jnp.asarray(t.numpy())

        def f(h: Any, w: Any, b: Any, tj: Any = tj) -> Any:
            return fg.linear_cross_entropy(h, w, tj, bias=b)

        out, grads = jax.value_and_grad(f, argnums=(0, 1))(*args)
        assert out.dtype == dtype
        assert abs(float(out) - float(ref)) <= rel * float(ref)
        for g, gr in zip(grads, g_ref, strict=True):
            assert g.dtype == dtype
            bound = rel * gr.abs() + 1e-5 * float(gr.abs().max())
            assert bool(((torch.from_numpy(np.asarray(g.astype(jnp.float32))).double() - gr).abs() <= bound).all())


def test_jax_target_out_of_range_is_refused() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    with pytest.raises(ValueError, match="'target'"):
        fg.linear_cross_entropy(jnp.zeros((3, 2)), jnp.zeros((5, 2)), jnp.asarray([0, 5, 1]))
