"""``python -m floatguard.ops.precompile``: the ops' calls that compile the numba kernels ahead of use.

Not skipped without numba: it is in the test environment (``floatguard[dev]`` takes ``fast``), and ``make test``
runs this module's command."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from floatguard.ops import _numba_torch, precompile


def test_precompile_calls_the_ops_and_counts_the_kernels(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # one small shape: the kernels of small calls, which the rest of the suite compiles (or loads) as well
    monkeypatch.setattr(precompile, "SHAPES", ((3, 5),))
    count = precompile.precompile(verbose=True)
    assert count > 50, count
    assert f"floatguard: {count} kernel signatures" in capsys.readouterr().out
    assert _numba_torch.ptr_softmax_fwd.signatures  # a torch small call's kernel was compiled (or loaded)


def test_precompile_without_numba_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "numba" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert precompile.precompile() == 0


def test_the_two_parts_make_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--part 0`` and ``--part 1`` (``make test`` runs one process each) call what one process calls, once."""
    seen: list[Any] = []
    monkeypatch.setattr(precompile, "_run_torch", lambda torch, calls: seen.extend(calls))
    monkeypatch.setattr(precompile, "_run_numpy", lambda: seen.append("numpy"))

    def run(part: int | None) -> list[int]:
        seen.clear()
        precompile.precompile(part=part)
        return sorted(id(c) for c in seen)

    whole, first, second = run(None), run(0), run(1)
    assert first and second and sorted(first + second) == whole and len(set(whole)) == len(whole)
