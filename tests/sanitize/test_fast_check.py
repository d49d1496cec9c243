"""The sum-of-squares check of large float32/float64 outputs finds what the exact (min, max) check finds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from floatguard.sanitize import detect

torch = pytest.importorskip("torch")

from floatguard.sanitize import _op_sanitizer as fg_torch  # noqa: E402

N = 1 << 15  # above _DOT_MIN: large outputs take the fast path


def _big(dtype: Any, value: float = 1.0, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(N, generator=g, dtype=torch.float64) + 0.5).to(dtype) * value


def _at(t: Any, i: int, v: float) -> Any:
    t = t.clone()
    t[i] = v
    return t


def _findings(program: Callable[[Any], Any], dtype: Any, **options: Any) -> list[tuple[Any, ...]]:
    with detect(action="record", quiet=True, numpy=False, **options) as d:
        program(dtype)
    return [(e.kind, e.op, e.severity) for e in d.events]


def _f32max(dtype: Any) -> float:
    return float(torch.finfo(dtype).max)


PROGRAMS: dict[str, tuple[Callable[[Any], Any], str | None]] = {
    # near overflow at one entry out of 32768: max / 40 (not near) times 4 is within 16x of the max
    "near_overflow": (lambda dt: _at(_big(dt), 7, _f32max(dt) / 40) * 4.0, "near_overflow"),
    "negative_near_overflow": (lambda dt: _at(_big(dt), 7, -_f32max(dt) / 40) * 4.0, "near_overflow"),
    "overflow_to_minus_inf": (lambda dt: _at(_big(dt), 3, -_f32max(dt)) + _at(_big(dt, seed=1), 3, -_f32max(dt)),
                              "overflow"),
    "nan_from_0_times_inf": (lambda dt: _at(_big(dt), 5, 0.0) * _at(_big(dt, seed=1), 5, float("inf")), "nan"),
    # every product underflows to 0: a whole-tensor flush
    "flush_to_zero": (lambda dt: _big(dt, 1e-30 if dt == torch.float32 else 1e-200)
                      * _big(dt, 1e-30 if dt == torch.float32 else 1e-200, seed=1), "underflow"),
    # products ~1e-24 are normal float32 values, but their squares (and the sum of squares) are 0
    "tiny_but_normal": (lambda dt: _big(dt, 1e-12 if dt == torch.float32 else 1e-160)
                        * _big(dt, 1e-12 if dt == torch.float32 else 1e-160, seed=1), None),
    "healthy": (lambda dt: torch.tanh(_big(dt) @ _big(dt, seed=1).reshape(N, 1).expand(N, 4)), None),
    "healthy_matmul": (lambda dt: _big(dt).reshape(128, 256) @ _big(dt, seed=1).reshape(256, 128), None),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_fast_check_agrees_with_the_exact_check(name, dtype, monkeypatch):
    program, kind = PROGRAMS[name]
    dt = getattr(torch, dtype)
    fast = _findings(program, dt)
    monkeypatch.setattr(fg_torch, "_DOT_MIN", 1 << 62)  # every output through aminmax
    exact = _findings(program, dt)
    assert fast == exact
    if kind is None:
        assert fast == []
    else:
        assert fast and fast[0][0] == kind


def test_fast_check_is_used_on_large_outputs(monkeypatch):
    calls = []
    real = fg_torch._dot

    def counting(a: Any, b: Any) -> Any:
        calls.append(a.numel())
        return real(a, b)

    monkeypatch.setattr(fg_torch, "_dot", counting)
    x = _big(torch.float32)
    with detect(action="record", quiet=True, numpy=False) as d:
        x * 2.0  # large: sum of squares
        x[:100] * 2.0  # small: aminmax
        torch.exp(x)  # non-negative output: its zeros are judged, aminmax
    assert calls == [N] and d.events == []


def test_a_low_near_overflow_threshold_turns_the_fast_check_off():
    # with near_overflow=1e30 the float32 threshold is ~3.4e8: below the ~1.8e19 a finite sum of squares bounds
    x = _big(torch.float32)
    with detect(action="record", quiet=True, numpy=False, near_overflow=1e30) as d:
        _at(x, 11, 1e8) * 10.0
    assert [(e.kind, e.op) for e in d.events] == [("near_overflow", "aten::mul")]
