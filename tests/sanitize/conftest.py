"""Shared fixtures of the sanitizer tests."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest

collect_ignore_glob = ["programs/*"]


@functools.cache
def _markers(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, text in enumerate(Path(path).read_text().splitlines(), start=1):
        if "# L:" in text:
            name = text.split("# L:", 1)[1].split()[0]
            assert name not in out, f"marker {name} twice in {path}"
            out[name] = i
    return out


@pytest.fixture
def line() -> Callable[[str], int]:
    """``line("name")``: the line of the comment ``# L:name`` in the calling test's file."""

    def find(name: str, path: str | None = None) -> int:
        if path is None:
            frame = inspect.stack()[1]
            path = frame.filename
        return _markers(str(path))[name]

    return find
