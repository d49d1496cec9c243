"""flake8 plugin: ``flake8 --select FG`` runs the floatguard rules.

Registered through the entry point ``[project.entry-points."flake8.extension"] FG = "floatguard.lint.flake8:Plugin"``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

from .. import __version__
from .engine import SYNTAX_ERROR, analyse


class Plugin:
    """flake8 passes the parsed tree, the file name and its lines."""

    name = "floatguard"
    version = __version__

    def __init__(self, tree: ast.Module, filename: str = "stdin", lines: list[str] | None = None) -> None:
        self.tree = tree
        self.filename = filename
        self.lines = lines

    def run(self) -> Iterator[tuple[int, int, str, type[Any]]]:
        if self.lines is not None:
            source = "".join(self.lines)
        else:
            with open(self.filename, encoding="utf-8") as fh:
                source = fh.read()
        events, _ = analyse(source, self.filename, tree=self.tree)
        for e in events:
            if e.code == SYNTAX_ERROR:
                continue
            yield (e.line or 1, (e.col or 1) - 1, f"{e.code} {e.message}", type(self))
