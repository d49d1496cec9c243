"""The Triton kernels of linear_cross_entropy, run by Triton's interpreter on CPU tensors.

``TRITON_INTERPRET=1`` runs each program of a kernel in NumPy, so the kernels' arithmetic (tiles,
online log-sum-exp, recomputed gradient tiles, atomic adds, masks of ragged edges) is checked here
against the unfused float64 computation without a GPU; ``FLOATGUARD_LCE_TRITON=1`` sends CPU tensors
through them. Shapes are small (the interpreter is slow) but span several token and vocabulary
tiles with ragged last ones. Speed on a GPU is not measured here.

The interpreter must be chosen before Triton is first imported (``triton.language``'s own jitted
helpers are decorated then), so under a plain ``pytest`` this module runs itself in a child
pytest with ``TRITON_INTERPRET=1`` (:func:`test_kernels_under_the_interpreter`) and its other tests
run only there.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

import floatguard as fg  # noqa: E402
import floatguard.testing as T  # noqa: E402

N, H, V = 70, 20, 150  # two token tiles of 64, ten vocabulary tiles of 16 (chunk_size=16)
OPTIONS: list[dict[str, Any]] = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"label_smoothing": 0.2, "z_loss": 0.1, "softcap": 2.0},
]


INTERPRETED = os.environ.get("TRITON_INTERPRET", "") == "1"


def test_kernels_under_the_interpreter() -> None:
    """The parent's one test: this file's tests in a child pytest with ``TRITON_INTERPRET=1``."""
    if INTERPRETED:
        return  # (the child: its other tests are the checks)
    here = Path(__file__)
    r = subprocess.run([sys.executable, "-m", "pytest", str(here), "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
                       env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                       cwd=here.parents[2], timeout=600)
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]


@pytest.fixture
def lt(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The kernels' module, with CPU tensors sent to it; checks the Triton path was taken."""
    monkeypatch.setenv("FLOATGUARD_LCE_TRITON", "1")
    mod = importlib.import_module("floatguard.ops._lce_triton")
    calls = {"n": 0}
    real = mod.linear_cross_entropy

    def counted(*args: Any) -> Any:
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(mod, "linear_cross_entropy", counted)
    yield mod
    assert calls["n"] > 0, "the Triton path was not taken"


def reference(h: Any, w: Any, t: Any, *, bias: Any = None, ignore_index: int = -100, label_smoothing: float = 0.0,
              reduction: str = "mean", z_loss: float = 0.0, softcap: float | None = None) -> Any:
    x = h @ w.T if bias is None else h @ w.T + bias
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    loss = F.cross_entropy(x, t, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none")
    keep = t != ignore_index
    loss = loss + z_loss * torch.where(keep, torch.logsumexp(x, -1) ** 2, 0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / keep.sum()


def _inputs(dtype: Any, bias: bool, seed: int = 0, scale: float = 0.5) -> tuple[Any, Any, Any, Any]:
    g = torch.Generator().manual_seed(seed)
    h = (scale * torch.randn(N, H, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    w = torch.randn(V, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    t[::7] = -100
    return h, w, b, t


def _params(h: Any, w: Any, b: Any) -> list[Any]:
    return [h, w] if b is None else [h, w, b]


def _exact(ps: list[Any]) -> list[Any]:
    return [p.detach().double().requires_grad_() for p in ps]


def _err(a: Any, ref: Any) -> float:
    return float((a.detach().double() - ref.detach()).abs().max())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", OPTIONS)
def test_float32_is_within_float32_rounding_of_the_float64_reference(
    lt: ModuleType, reduction: str, opts: dict[str, Any]
) -> None:
    """Values and all three gradients: errors no larger than the unfused float32 computation's
    (twice, plus a few ulps of the largest value: the sums run in another order)."""
    h, w, b, t = _inputs(torch.float32, bias=reduction != "sum")
    ps = _params(h, w, b)
    ex = _exact(ps)
    ref = reference(ex[0], ex[1], t, bias=ex[2] if b is not None else None, reduction=reduction, **opts)
    go = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g_ref = torch.autograd.grad(ref, ex, go)
    unf = reference(h, w, t, bias=b, reduction=reduction, **opts)
    g_unf = torch.autograd.grad(unf, ps, go.float())
    out = fg.linear_cross_entropy(h, w, t, bias=b, reduction=reduction, chunk_size=16, **opts)
    assert out.dtype == torch.float32
    g_out = torch.autograd.grad(out, ps, go.float())
    eps32 = float(torch.finfo(torch.float32).eps)
    assert _err(out, ref) <= 2 * _err(unf, ref) + 4 * eps32 * float(ref.abs().max())
    for g, gu, gr in zip(g_out, g_unf, g_ref, strict=True):
        assert g.dtype == torch.float32
        assert _err(g, gr) <= 2 * _err(gu, gr) + 4 * eps32 * float(gr.abs().max())


def test_no_gradient_call_and_only_the_gradients_asked_for(lt: ModuleType) -> None:
    h, w, b, t = _inputs(torch.float32, bias=True)
    with torch.no_grad():
        out = fg.linear_cross_entropy(h, w, t, bias=b, chunk_size=16)
    torch.testing.assert_close(out.double(), reference(*_exact([h, w]), t, bias=b.double()).detach(),
                               rtol=1e-5, atol=1e-6)
    w.requires_grad_(False)
    (gh,) = torch.autograd.grad(fg.linear_cross_entropy(h, w, t, chunk_size=16), [h])
    ex = _exact([h])
    (gh_ref,) = torch.autograd.grad(reference(ex[0], w.double(), t), ex)
    torch.testing.assert_close(gh.double(), gh_ref, rtol=1e-4, atol=1e-7)


def _rel(g: Any, ref: Any) -> float:
    return float((g.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("opts", [OPTIONS[0], OPTIONS[-1]])
def test_bfloat16_is_as_accurate_as_the_unfused_bfloat16_product(lt: ModuleType, opts: dict[str, Any]) -> None:
    """bfloat16 in and out, float32 inside the tiles: the loss within 1 bfloat16 ulp of the float64
    value of the rounded inputs, gradients about as close to it as the unfused bfloat16 op's (equal
    without options; with smoothing, z-loss and a soft cap up to 1.21x its relative error measured:
    the kernel's logits are not rounded to bfloat16 before the cap, the unfused op's are)."""
    h, w, b, t = _inputs(torch.bfloat16, bias=True)
    ps = _params(h, w, b)
    ex = _exact(ps)
    ref = reference(ex[0], ex[1], t, bias=ex[2], **opts)
    g_ref = torch.autograd.grad(ref, ex)
    cap = opts.get("softcap")
    x = F.linear(h, w, b).float()
    x = x if cap is None else cap * torch.tanh(x / cap)
    unf = F.cross_entropy(x, t, label_smoothing=opts.get("label_smoothing", 0.0)) + opts.get("z_loss", 0.0) * (
        torch.where(t != -100, torch.logsumexp(x, -1) ** 2, 0).sum() / (t != -100).sum())
    g_unf = torch.autograd.grad(unf, ps)
    out = fg.linear_cross_entropy(h, w, t, bias=b, chunk_size=16, **opts)
    assert out.dtype == torch.bfloat16
    assert T.ulp_error(out.detach().double().numpy(), float(ref), np.float32) <= 2**16  # 1 bfloat16 ulp
    g_out = torch.autograd.grad(out, ps)
    for g, gu, gr in zip(g_out, g_unf, g_ref, strict=True):
        assert g.dtype == torch.bfloat16
        assert _rel(g, gr) <= (1.1 if not opts else 1.3) * _rel(gu, gr)


def test_large_logits_match_mpmath(lt: ModuleType) -> None:
    """Logits of +-1e4 (``exp`` alone overflows): hidden size 1 and unit hidden make the logits
    exactly the weight column, one row against mpmath."""
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = (rng.uniform(-1, 1, 40) * 1e4).astype(np.float32)
        c = int(rng.integers(0, 40))
        out = fg.linear_cross_entropy(torch.ones(1, 1), torch.from_numpy(x)[:, None], torch.tensor([c]))
        exact = T.ref_cross_entropy_row(x, c)
        assert T.ulp_error(out.numpy(), exact, np.float32) <= 2 + 2 * len(x) * T.cond_cross_entropy_row(x, c)


def test_tiny_capped_logits_keep_their_digits(lt: ModuleType) -> None:
    """cap * tanh(z / cap) for tiny z is z to float32 rounding (tanh from expm1, no cancellation):
    the gradient of a loss over logits of size 1e-4 matches float64 to float32 rounding."""
    h, w, _, t = _inputs(torch.float32, bias=False, scale=1e-5)
    ex = _exact([h, w])
    (g_ref,) = torch.autograd.grad(reference(ex[0], ex[1], t, softcap=5.0), ex[1:])
    (g,) = torch.autograd.grad(fg.linear_cross_entropy(h, w, t, softcap=5.0, chunk_size=16), [w])
    assert _rel(g, g_ref) <= 1e-5


def test_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA tensors of float32/bfloat16/float16 go to the kernels unless FLOATGUARD_LCE_TRITON=0;
    CPU tensors only with FLOATGUARD_LCE_TRITON=1 under the interpreter; float64 never."""
    from floatguard.ops import _lce_triton as mod

    h32, h64 = torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.float64)
    monkeypatch.delenv("FLOATGUARD_LCE_TRITON", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not mod.use_triton(h32)
    monkeypatch.setenv("FLOATGUARD_LCE_TRITON", "1")
    assert not mod.use_triton(h32)  # CPU without the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert mod.use_triton(h32) and mod.use_triton(h32.bfloat16())
    assert not mod.use_triton(h64)
    monkeypatch.setenv("FLOATGUARD_LCE_TRITON", "0")
    assert not mod.use_triton(h32)


if not INTERPRETED:  # the parent runs only test_kernels_under_the_interpreter
    for _name in [n for n in list(globals()) if n.startswith("test_") and n != "test_kernels_under_the_interpreter"]:
        del globals()[_name]
