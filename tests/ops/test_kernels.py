"""The kernel table of the ops (:mod:`floatguard.ops._kernels`): registration, selection, fallback, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import floatguard as fg
from floatguard.ops import _kernels
from floatguard.ops._namespace import Backend

_NUMPY = Backend("numpy", np)


def test_each_backend_registers_the_rows_kernels_of_the_reductions() -> None:
    for backend in ("numpy", "torch", "jax"):
        for op in ("logsumexp", "softmax", "log_softmax"):
            found = _kernels.kernels(op, backend)
            assert found, f"no {backend} kernel for {op}"
            assert all(k.op == op and k.backend == backend and k.stage == "rows" for k in found)


def test_torch_call_kernels_are_keyed_by_dtype() -> None:
    for op in ("logsumexp", "softmax", "log_softmax", "softplus", "log_sigmoid", "log1mexp", "logaddexp"):
        (k,) = _kernels.kernels(op, "torch", "call")
        assert k.dtypes == frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16})
    x = torch.zeros(3, 4)
    assert _kernels.select_call("softplus", x) is not None
    assert _kernels.select_call("softplus", x.to(torch.int64)) is None  # no kernel for that dtype
    assert _kernels.select_call("softplus", np.zeros(3)) is None  # NumPy has no call kernel


def test_call_kernels_are_remembered_by_type_and_dtype_unless_a_predicate_decides(monkeypatch: Any) -> None:
    monkeypatch.setattr(_kernels, "_TABLE", {})
    monkeypatch.setattr(_kernels, "_CALL", {})
    monkeypatch.setattr(_kernels, "_CALL_FN", {})
    monkeypatch.setattr(_kernels, "_LOADED", {"torch"})

    @_kernels.register("softplus", "torch", stage="call", dtypes=(torch.float32,))
    def f32(x: torch.Tensor) -> torch.Tensor:
        return x

    x = torch.zeros(3)
    assert _kernels.select_call("softplus", x) is f32
    assert _kernels.select_call("softplus", x.double()) is None
    assert set(_kernels._CALL_FN) == {("softplus", torch.Tensor, dt) for dt in (torch.float32, torch.float64)}

    @_kernels.register("softplus", "torch", stage="call", predicate=lambda t: t.ndim == 2)
    def two_d(x: torch.Tensor) -> torch.Tensor:
        return x

    assert not _kernels._CALL_FN  # a registration forgets the choices
    assert _kernels.select_call("softplus", x.double()) is None  # 1-d: the predicate says no
    assert _kernels.select_call("softplus", torch.zeros(2, 2).double()) is two_d  # not remembered by dtype alone
    assert not _kernels._CALL_FN

    class Odd:
        def __init__(self) -> None:
            self.dtype: list[int] = []  # unhashable

    assert _kernels.select_call("softplus", Odd()) is None


def test_select_picks_the_first_kernel_that_applies_and_else_the_generic_path(monkeypatch: Any) -> None:
    table: dict[Any, list[_kernels.Kernel]] = {}
    monkeypatch.setattr(_kernels, "_TABLE", table)
    monkeypatch.setattr(_kernels, "_LOADED", {"numpy"})

    @_kernels.register("logsumexp", "numpy", dtypes=(np.dtype(np.float32),))
    def f32(rows: np.ndarray) -> np.ndarray:
        return rows.sum(axis=1)

    @_kernels.register("logsumexp", "numpy", predicate=lambda x: x.shape[1] > 2)
    def wide(rows: np.ndarray) -> np.ndarray:
        return rows.max(axis=1)

    assert _kernels.select("logsumexp", "numpy", np.ones((2, 3), np.float32)) is f32
    assert _kernels.select("logsumexp", "numpy", np.ones((2, 3))) is wide  # float64: not f32's dtype
    assert _kernels.select("logsumexp", "numpy", np.ones((2, 2))) is None  # neither applies: generic
    assert _kernels.select("logsumexp", "numpy", np.ones((0, 3), np.float32)) is None  # empty rows: generic
    assert _kernels.select("softmax", "numpy", np.ones((2, 3))) is None  # no kernel for the op


def test_the_chosen_kernel_is_what_the_op_runs(monkeypatch: Any) -> None:
    """logsumexp runs the kernel the table selects, and the generic path when the table has none."""
    x = np.random.default_rng(0).normal(size=(5, 7)) * 30
    expected = fg.logsumexp(x, axis=1)
    calls = []

    def spy(rows: np.ndarray) -> np.ndarray:
        calls.append(rows.shape)
        return np.full(rows.shape[0], 42.0)

    monkeypatch.setattr(_kernels, "_TABLE", {("logsumexp", "numpy", "rows"): [_kernels.Kernel("logsumexp", "numpy",
                                                                                               "rows", spy)]})
    monkeypatch.setattr(_kernels, "_LOADED", {"numpy"})
    assert np.all(fg.logsumexp(x, axis=1) == 42.0)
    assert calls == [(5, 7)]
    monkeypatch.setattr(_kernels, "_TABLE", {})  # no kernel: the array-namespace path, same values
    generic = fg.logsumexp(x, axis=1)
    np.testing.assert_allclose(generic, expected, rtol=2**-52, atol=0)
    np.testing.assert_allclose(fg.softmax(x, axis=0).sum(axis=0), 1.0, rtol=1e-15)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_numpy_kernel_and_generic_path_agree_on_rows_with_limits(op: str) -> None:
    x = np.array([[0.0, 1.0, -2.0], [np.inf, 1.0, np.inf], [-np.inf] * 3, [np.nan, 0.0, 1.0], [1e300, -1e300, 0.0]])
    (kernel,) = _kernels.kernels(op, "numpy")
    from floatguard.ops import _core

    got = kernel.fn(x)
    want = _core.softmax_rows(_NUMPY, x, op == "log_softmax")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=2**-51, atol=0)


def test_torch_call_kernel_declines_and_the_full_path_answers() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    kernel = _kernels.select_call("softmax", x)
    assert kernel is not None
    assert kernel(x, 0) is None  # not the last axis: the kernel declines
    torch.testing.assert_close(fg.softmax(x, dim=0), torch.softmax(x, dim=0), rtol=1e-15, atol=0)


@pytest.mark.parametrize(("args", "name"), [(("nosuchop", "numpy"), "op"), (("softmax", "cupy"), "backend"),
                                            (("softmax", "numpy", "lowering"), "stage")])
def test_a_bad_registration_names_the_argument(args: tuple[str, ...], name: str) -> None:
    with pytest.raises(ValueError, match=f"argument '{name}'"):
        _kernels.kernels(*args)  # type: ignore[arg-type]
    if len(args) == 2:
        with pytest.raises(ValueError, match=f"argument '{name}'"):
            _kernels.register(*args)
