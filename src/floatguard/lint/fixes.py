"""Fixes as edits of the original text: a character range and its replacement each, as ruff applies them.

Rules describe a fix as "replace the expression of this ``ast`` node by this text".
Here that becomes an :class:`Edit` (``start``/``end`` character offsets into the
source and the new text), plus one insertion edit per ``import`` the new text needs
(after the module's leading imports). Edits are applied by slicing the original
string, so every character outside the fixed spans stays as it was by construction
(form feeds, ``\\r`` line ends, a missing final newline, comments). The same edits
feed ``--fix``, the JSON ``fix`` field and SARIF ``fixes``. No LibCST is needed.

Lines are split as Python's tokenizer splits them (``\\n``, ``\\r\\n``, ``\\r`` only;
``str.splitlines`` also splits on form feed, ``\\x85`` or U+2028, which would shift
every ``ast`` line number after one). Files are written atomically through a
temporary file and ``os.replace`` on the link's target (a symlink stays a symlink;
a file with hard links is written in place so the links stay one file), after
checking that nobody changed the file since it was read.
"""

from __future__ import annotations

import ast
import bisect
import contextlib
import hashlib
import io
import os
import re
import stat
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Edit", "FileChanged", "Fingerprint", "ImportSite", "LineIndex", "apply_edits", "atomic_write",
           "fingerprint", "node_edit", "select_edits", "split_lines"]

_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")


def split_lines(source: str) -> list[str]:
    """The lines of ``source`` with their ends, split on ``\\n``, ``\\r\\n`` and ``\\r`` only (as ``ast`` counts)."""
    if not _BREAKS.search(source):
        return source.splitlines(keepends=True)
    return _LINE.findall(source)


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace ``source[start:end]`` (character offsets) by ``text``; ``start == end`` inserts."""

    start: int
    end: int
    text: str


class LineIndex:
    """Character offsets of line starts: ``ast`` (line, byte column) <-> offset <-> (line, character column)."""

    def __init__(self, source: str, lines: list[str] | None = None) -> None:
        self.source = source
        self.lines = lines if lines is not None else split_lines(source)
        starts = [0]
        total = 0
        for line in self.lines:
            total += len(line)
            starts.append(total)
        self.starts = starts

    def offset(self, line: int, byte_col: int) -> int:
        """Offset of a 1-based line and a UTF-8 byte column (as ``ast`` gives them)."""
        if line > len(self.lines):
            return len(self.source)
        text = self.lines[line - 1]
        col = byte_col if text.isascii() else len(text.encode()[:byte_col].decode(errors="replace"))
        return self.starts[line - 1] + col

    def position(self, offset: int) -> tuple[int, int]:
        """(1-based line, 1-based character column) of an offset."""
        i = bisect.bisect_right(self.starts, offset) - 1
        i = min(i, max(len(self.lines) - 1, 0))
        return i + 1, offset - self.starts[i] + 1

    def node_range(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),  # type: ignore[attr-defined]
                self.offset(node.end_lineno or node.lineno, node.end_col_offset or 0))  # type: ignore[attr-defined]


# binding strength of an expression's top node (Python's precedence table, loosest first)
_PREC: dict[type, int] = {ast.Lambda: 1, ast.IfExp: 2, ast.BoolOp: 3, ast.Compare: 5, ast.BinOp: 9,
                          ast.UnaryOp: 14, ast.Await: 16, ast.NamedExpr: 0}
_BINOP = {ast.BitOr: 6, ast.BitXor: 7, ast.BitAnd: 8, ast.LShift: 9, ast.RShift: 9, ast.Add: 10, ast.Sub: 10,
          ast.Mult: 11, ast.MatMult: 11, ast.Div: 11, ast.FloorDiv: 11, ast.Mod: 11, ast.Pow: 15}


def _prec(node: ast.AST) -> int:
    if isinstance(node, ast.BinOp):
        return _BINOP.get(type(node.op), 9)
    if isinstance(node, ast.UnaryOp):
        return 4 if isinstance(node.op, ast.Not) else 14
    return _PREC.get(type(node), 20)


def node_edit(index: LineIndex, node: ast.AST, replacement: str) -> Edit | None:
    """The edit replacing ``node``'s text by ``replacement``; None when the range holds a comment or the text
    does not parse. The new text is parenthesised when it binds more loosely than what it replaces."""
    start, end = index.node_range(node)
    old = index.source[start:end]
    if "#" in old and _has_comment(old):
        return None
    try:
        new = ast.parse(replacement.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if _prec(new) < _prec(node):
        replacement = f"({replacement})"
    return Edit(start, end, replacement)


def _has_comment(seg: str) -> bool:
    try:
        toks = tokenize.generate_tokens(io.StringIO("(" + seg + ")\n").readline)
        return any(t.type == tokenize.COMMENT for t in toks)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return True


class ImportSite:
    """Where the imports a fix needs go: after the module's leading imports (docstring, ``__future__``)."""

    def __init__(self, index: LineIndex, tree: ast.Module) -> None:
        self.index = index
        self.bound: set[str] = set()
        for stmt in tree.body:
            if isinstance(stmt, ast.Import):
                for a in stmt.names:
                    if a.asname is None:
                        self.bound.add(a.name)
                        self.bound.add(a.name.split(".")[0])
        body = tree.body
        k = 0
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            k = 1
        last: ast.stmt | None = body[0] if k else None
        while k < len(body) and isinstance(body[k], ast.Import | ast.ImportFrom):
            last = body[k]
            k += 1
        lines = index.lines
        first_end = next((ln[len(ln.rstrip("\r\n")):] for ln in lines if ln.endswith(("\n", "\r"))), "\n")
        self.newline = first_end
        self.prefix = ""
        if last is None:
            # before the first statement (comments and a shebang above it stay above)
            line = body[0].lineno if body else len(lines) + 1
            self.offset = index.starts[line - 1] if line <= len(lines) else len(index.source)
            if line > len(lines) and index.source and not index.source.endswith(("\n", "\r")):
                self.prefix = self.newline
            if body and index.offset(body[0].lineno, body[0].col_offset) != self.offset:
                self.offset = -1  # the first statement does not start its line: no safe place
        else:
            end_line = last.end_lineno or last.lineno
            following = body[k] if k < len(body) else None
            if following is not None and following.lineno == end_line:
                self.offset = -1  # `import a; x = 1`: no line of its own after the imports
            elif end_line >= len(lines):
                self.offset = len(index.source)
                if not index.source.endswith(("\n", "\r")):
                    self.prefix = self.newline
            else:
                self.offset = index.starts[end_line]

    def edit(self, modules: tuple[str, ...] | list[str]) -> Edit | bool | None:
        """One insertion of the missing imports (None: nothing missing; False: no safe place to put them)."""
        missing = sorted({m for m in modules if m not in self.bound})
        if not missing:
            return None
        if self.offset < 0:
            return False
        text = self.prefix + "".join(f"import {m}{self.newline}" for m in missing)
        return Edit(self.offset, self.offset, text)


def select_edits(edits: list[Edit]) -> list[Edit]:
    """Non-overlapping edits, outermost first (an inner one is found again on the next pass)."""
    chosen: list[Edit] = []
    end = -1
    for e in sorted(edits, key=lambda e: (e.start, -e.end)):
        if e.start >= end:
            chosen.append(e)
            end = max(end, e.end)
    return chosen


def apply_edits(source: str, edits: list[Edit]) -> str:
    """``source`` with non-overlapping ``edits`` applied (insertions at one offset in the given order)."""
    out: list[str] = []
    pos = 0
    for e in sorted(edits, key=lambda e: (e.start, e.end)):
        if e.start < pos:
            raise ValueError(f"overlapping edits at offset {e.start}")
        out.append(source[pos:e.start])
        out.append(e.text)
        pos = e.end
    out.append(source[pos:])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a file was when it was read: size, modification time (ns) and SHA-256 of its bytes."""

    size: int
    mtime_ns: int
    digest: bytes


def fingerprint(path: str | os.PathLike[str], data: bytes | None = None) -> Fingerprint:
    """The :class:`Fingerprint` of ``path`` (``data``: its bytes, when already read)."""
    st = os.stat(path)
    if data is None:
        data = Path(path).read_bytes()
    return Fingerprint(st.st_size, st.st_mtime_ns, hashlib.sha256(data).digest())


class FileChanged(OSError):
    """The file changed on disk between reading it and writing its fixes: nothing was written."""


def _check(path: str, expect: Fingerprint | None) -> None:
    if expect is None:
        return
    st = os.stat(path)
    if st.st_size != expect.size or st.st_mtime_ns != expect.mtime_ns or \
            hashlib.sha256(Path(path).read_bytes()).digest() != expect.digest:
        raise FileChanged(f"{path} changed on disk while it was being fixed; fixes not written (run again)")


def atomic_write(path: str | os.PathLike[str], data: bytes, expect: Fingerprint | None = None) -> None:
    """Write ``data`` to ``path``: through a symlink to its target, in place for a file with hard links,
    else through a temporary file in the same directory and ``os.replace`` (the mode kept).

    ``expect``: the file as it was read; when it changed since, :class:`FileChanged` is raised and nothing
    is written.
    """
    target = os.path.realpath(path)
    st = os.stat(target) if os.path.exists(target) else None
    if st is not None and st.st_nlink > 1:
        _check(target, expect)
        with open(target, "r+b") as fh:  # keep the inode: every hard link sees the fix
            fh.write(data)
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
        return
    d, name = os.path.split(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=d or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        _check(target, expect)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
