"""Jupyter notebooks (``.ipynb``): the code cells checked as one module, findings located by cell.

The code cells are joined in order into one Python source (so that an ``import torch``
in the first cell is known in the fifth), each followed by a boundary comment. IPython
syntax is not Python: a line magic, shell escape or help query (``%timeit f(x)``,
``!pip install``, ``x = !ls``, ``obj?``) becomes ``pass`` or ``None`` tagged with its
number, and a cell whose cell magic runs another language (``%%bash``) is left out.
Findings are mapped back to ``(cell, line in the cell)``: cells are numbered from 1
among all cells, as notebook front ends show them (ruff's ``path:cell N:line:col``).
A fix is applied to the joined source and the cells are split out again, the magic
lines restored; the notebook is rewritten only when a cell changed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Notebook"]

BOUNDARY = "# floatguard: end of cell"
_TAG = "# floatguard: ipython "
_TAGGED = re.compile(r"(?:pass|None)  # floatguard: ipython (\d+)$")
_ASSIGN_MAGIC = re.compile(r"^(\s*[\w.\[\], ]+?=\s*)[!%]")
_HELP = re.compile(r"^(\?{1,2}[\w.]+|[\w.]+\?{1,2})$")  # ?obj, obj?, obj??
# cell magics whose body is Python (the rest, %%bash or %%html, is not checked)
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "python", "python3", "debug", "pypy"})


@dataclass
class Notebook:
    """A parsed notebook: its JSON, the joined source and where each source line came from."""

    data: dict[str, Any]
    source: str
    origin: list[tuple[int, int] | None]  # per source line: (cell number, line in cell), None for boundaries
    magics: list[str] = field(default_factory=list)  # the IPython lines replaced, by tag number
    cells: list[int] = field(default_factory=list)  # index in data["cells"] of each joined cell
    cell_magic: dict[int, str] = field(default_factory=dict)  # cell index -> the tagged stand-in of its %%magic

    @classmethod
    def parse(cls, text: str) -> Notebook:
        """Read a notebook's JSON text; a ``ValueError`` when it is not an nbformat 4 notebook."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
            raise ValueError("not a Jupyter notebook (no 'cells' list)")
        lang = (data.get("metadata", {}).get("language_info", {}) or {}).get("name", "python")
        nb = cls(data, "", [])
        if lang != "python":
            return nb  # an R or Julia notebook: nothing to check
        parts: list[str] = []
        for i, cell in enumerate(data["cells"]):
            if cell.get("cell_type") != "code":
                continue
            lines = _text(cell.get("source", "")).split("\n")
            if lines[0].startswith("%%"):
                magic = lines[0][2:].split(maxsplit=1)[0] if lines[0][2:].strip() else ""
                if magic not in PYTHON_CELL_MAGICS:
                    continue
                lines[0] = nb.cell_magic[i] = nb._tag(lines[0], "pass", "")
            scan = _Scanner()
            shell_indent: str | None = None  # inside a `!cmd \` (or `%magic \`) continued over lines
            for k, line in enumerate(lines):
                stripped = line.lstrip()
                indent = line[: len(line) - len(stripped)]
                if shell_indent is not None:  # a continuation line of an IPython line: not Python either
                    lines[k] = nb._tag(line, "pass", shell_indent)
                    shell_indent = shell_indent if _continued(line) else None
                    continue
                if not scan.at_statement_start:  # inside brackets, a string or after a backslash: Python
                    scan.feed(line)
                    continue
                if stripped.startswith(("%", "!")) or _HELP.match(stripped):
                    lines[k] = nb._tag(line, "pass", indent)
                elif m := _ASSIGN_MAGIC.match(line):
                    lines[k] = nb._tag(line, "None", m.group(1))
                else:
                    scan.feed(line)
                    continue
                if _continued(line):
                    shell_indent = indent
            nb.cells.append(i)
            for k, line in enumerate(lines, 1):
                parts.append(line)
                nb.origin.append((i + 1, k))
            parts.append(BOUNDARY)
            nb.origin.append(None)
        nb.source = "\n".join(parts) + "\n" if parts else ""
        return nb

    def _tag(self, line: str, stand_in: str, prefix: str) -> str:
        self.magics.append(line)
        return f"{prefix}{stand_in}  {_TAG}{len(self.magics) - 1}"

    def where(self, line: int) -> tuple[int, int] | None:
        """(cell number, line in the cell) of a line of the joined source."""
        if 1 <= line <= len(self.origin):
            return self.origin[line - 1]
        return None

    def with_source(self, source: str) -> str | None:
        """The notebook's JSON text with its cells replaced from a (fixed) joined source; None if unchanged."""
        chunks = source.split(BOUNDARY + "\n")
        if source.endswith(BOUNDARY + "\n"):
            chunks = chunks[:-1]
        if len(chunks) != len(self.cells):
            return None  # a fix moved a boundary: leave the notebook as it was
        changed = False
        for i, chunk in zip(self.cells, chunks, strict=True):
            lines = chunk.removesuffix("\n").split("\n")
            if i in self.cell_magic and lines[0] != self.cell_magic[i]:  # imports a fix added go after it
                lines.remove(self.cell_magic[i])
                lines.insert(0, self.cell_magic[i])
            text = "\n".join(self._untag(line) for line in lines)
            cell = self.data["cells"][i]
            if text != _text(cell.get("source", "")):
                cell["source"] = text.splitlines(keepends=True)
                changed = True
        if not changed:
            return None
        return json.dumps(self.data, indent=1, ensure_ascii=False) + "\n"

    def _untag(self, line: str) -> str:
        m = _TAGGED.search(line)
        return self.magics[int(m.group(1))] if m else line


class _Scanner:
    """Where a line of Python leaves the tokenizer: open brackets, an open triple-quoted string, a backslash.

    IPython reads ``%``/``!``/``?`` as its own syntax only where a statement starts; inside
    ``y = (a`` / ``% b)`` the ``%`` is Python's modulo.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.string: str | None = None  # the open triple quote
        self.backslash = False

    @property
    def at_statement_start(self) -> bool:
        return self.depth == 0 and self.string is None and not self.backslash

    def feed(self, line: str) -> None:
        i, n = 0, len(line)
        self.backslash = False
        while i < n:
            c = line[i]
            if self.string is not None:
                if c == "\\":
                    i += 2
                    continue
                if line.startswith(self.string, i):
                    i += len(self.string)
                    self.string = None
                    continue
                i += 1
                continue
            if c == "#":
                break
            if c in "'\"":
                q = line[i:i + 3] if line.startswith(c * 3, i) else c
                self.string = q
                i += len(q)
                continue
            if c in "([{":
                self.depth += 1
            elif c in ")]}":
                self.depth = max(0, self.depth - 1)
            elif c == "\\" and i == n - 1:
                self.backslash = True
            i += 1
        if self.string is not None and len(self.string) == 1:
            self.string = None


def _continued(line: str) -> bool:
    """Whether an IPython line goes on in the next (a final backslash; a cell saved with ``\\r\\n`` keeps the
    ``\\r``)."""
    return line.rstrip("\r").endswith("\\")


def _text(source: Any) -> str:
    return "".join(source) if isinstance(source, list) else str(source)
