"""Fixes as edits of the original text: a character range and its replacement each, as ruff applies them.

Rules describe a fix as "replace the expression of this ``ast`` node by this text".
Here that becomes a :class:`TextEdit` (``start``/``end`` character offsets into the
source and the new text), plus one insertion edit per ``import`` the new text needs
(after the module's leading imports). Edits are applied by slicing the original
string, so every character outside the fixed spans stays as it was by construction
(form feeds, ``\\r`` line ends, a missing final newline, comments). The same edits
feed ``--fix`` and, as line/column :class:`~floatguard.events.Edit` records of the finding's
:class:`~floatguard.events.Fix`, every output format. No LibCST is needed.

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
import sys
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path

from ..events import Edit

__all__ = ["FileChanged", "Fingerprint", "ImportSite", "LineIndex", "TextEdit", "apply_edits", "atomic_write",
           "fingerprint", "import_section", "node_edit", "select_edits", "split_lines", "wrap_call"]

_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")


def split_lines(source: str) -> list[str]:
    """The lines of ``source`` with their ends, split on ``\\n``, ``\\r\\n`` and ``\\r`` only (as ``ast`` counts)."""
    if not _BREAKS.search(source):
        return source.splitlines(keepends=True)
    return _LINE.findall(source)


@dataclass(frozen=True, slots=True)
class TextEdit:
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

    def newline(self) -> str:
        """The file's line end (its first line's; ``\\n`` when no line has one)."""
        return next((ln[len(ln.rstrip("\r\n")):] for ln in self.lines if ln.endswith(("\n", "\r"))), "\n")

    def position(self, offset: int) -> tuple[int, int]:
        """(1-based line, 1-based character column) of an offset."""
        i = bisect.bisect_right(self.starts, offset) - 1
        i = min(i, max(len(self.lines) - 1, 0))
        return i + 1, offset - self.starts[i] + 1

    def edit(self, e: TextEdit, cell: int | None = None) -> Edit:
        """The record of an offset edit: 1-based line and character column of its start and (exclusive) end."""
        (l0, c0), (l1, c1) = self.position(e.start), self.position(e.end)
        return Edit(l0, c0, l1, c1, e.text, cell)

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


def node_edit(index: LineIndex, node: ast.AST, replacement: str, line_length: int | None = None) -> TextEdit | None:
    """The edit replacing ``node``'s text by ``replacement``; None when the range holds a comment or the text
    does not parse. The new text is parenthesised when it binds more loosely than what it replaces, and its
    call's arguments are wrapped (:func:`wrap_call`) when it would push a line that fitted ``line_length`` over."""
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
    elif line_length is not None:
        replacement = wrap_call(index, start, end, replacement.strip(), new, line_length)
    return TextEdit(start, end, replacement)


def wrap_call(index: LineIndex, start: int, end: int, text: str, call: ast.expr, limit: int) -> str:
    """``text`` (the call ``call``) as ruff format splits a call that does not fit ``limit`` columns.

    Only where that is safe and what the formatter does: the lines of the replaced span fitted before,
    the call ends its line (a trailing comment may follow) and is not inside an f-string. The arguments
    go on one line indented one level deeper (``f(\n    a, b\n)``), else one per line with a trailing
    comma; the text is left as it is when even that does not fit.
    """
    n, _ = index.position(start)
    m, _ = index.position(end)
    spanned = [ln.rstrip("\r\n") for ln in index.lines[n - 1:m]]
    body, last = spanned[0], spanned[-1]
    nl = index.lines[n - 1][len(body):] or index.newline()
    first = index.starts[n - 1]
    head, tail = index.source[first:start], last[end - index.starts[m - 1]:]
    if "\n" in text or "\r" in text or any(len(ln) > limit for ln in spanned) \
            or len(head) + len(text) + len(tail) <= limit:
        return text
    if not isinstance(call, ast.Call) or not (call.args or call.keywords) \
            or any(isinstance(a, ast.GeneratorExp) for a in call.args) \
            or (tail.strip() and not tail.lstrip().startswith("#")) or re.search(r"(?i)\b[rbu]?f[rb]?[\'\"]", head):
        return text
    raw = text.encode()
    func_end = len(raw[: call.func.end_col_offset or 0].decode())
    open_at = text.index("(", func_end)
    parts: list[ast.expr | ast.keyword] = sorted([*call.args, *call.keywords], key=lambda a: (a.lineno, a.col_offset))
    segs = [raw[p.col_offset:p.end_col_offset].decode() for p in parts]
    if not text.endswith(")") or any(not s for s in segs):
        return text
    indent = body[: len(body) - len(body.lstrip())]
    inner = indent + ("\t" if indent.startswith("\t") else "    ")
    opening = head + text[: open_at + 1]
    args = text[open_at + 1:-1].strip()
    if len(opening) > limit:
        return text
    if not args.endswith(",") and len(inner) + len(args) <= limit and "\n" not in args:
        return f"{text[: open_at + 1]}{nl}{inner}{args}{nl}{indent})"
    rows = [f"{inner}{seg}," for seg in segs]
    if any(len(r) > limit for r in rows):
        return text
    return f"{text[: open_at + 1]}{nl}{nl.join(rows)}{nl}{indent})"


def _has_comment(seg: str) -> bool:
    try:
        toks = tokenize.generate_tokens(io.StringIO("(" + seg + ")\n").readline)
        return any(t.type == tokenize.COMMENT for t in toks)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return True


#: isort's sections, in the order they appear in a file
FUTURE, STDLIB, THIRD_PARTY, FIRST_PARTY, LOCAL = range(5)
_STDLIB = frozenset(sys.stdlib_module_names)


def import_section(module: str, first_party: frozenset[str] = frozenset(), level: int = 0) -> int:
    """The isort section of an imported module: future, stdlib, third-party, first-party or local (relative)."""
    if level:
        return LOCAL
    top = module.split(".")[0]
    if top == "__future__":
        return FUTURE
    if top in first_party:
        return FIRST_PARTY
    return STDLIB if top in _STDLIB else THIRD_PARTY


def _key(module: str) -> tuple[str, str]:
    return module.lower(), module  # ruff's default order: case-insensitive, then as written


@dataclass(frozen=True, slots=True)
class _Stmt:
    section: int
    key: tuple[str, str]
    straight: bool  # `import x` (sorted before `from x import y` in its section)
    before: int  # offset where a line inserted before it goes (above the comments directly over it)
    after: int  # offset of the line after it (-1: another statement follows on its line)


class ImportSite:
    """Where the imports a fix needs go: into the module's leading import block, as isort/ruff would place them.

    A new ``import m`` goes into its section (``__future__``, stdlib, third-party, first-party, local) in
    sorted order (``import x`` before ``from x import y``, case-insensitive), with a blank line around a
    section it starts. In a file without imports it goes before the first statement (after a docstring
    and the comments above it), followed by the blank lines ruff wants (two before a ``def``/``class``).
    """

    def __init__(self, index: LineIndex, tree: ast.Module, first_party: frozenset[str] = frozenset()) -> None:
        self.index = index
        self.first_party = first_party
        self.bound: set[str] = set()
        for stmt in tree.body:
            if isinstance(stmt, ast.Import):
                for a in stmt.names:
                    if a.asname is None:
                        self.bound.add(a.name)
                        self.bound.add(a.name.split(".")[0])
        body = tree.body
        lines = index.lines
        self.newline = index.newline()
        k = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str) else 0
        block: list[ast.Import | ast.ImportFrom] = []
        while k < len(body) and isinstance(body[k], ast.Import | ast.ImportFrom):
            block.append(body[k])  # type: ignore[arg-type]  # narrowed by the isinstance above
            k += 1
        self.following = body[k] if k < len(body) else None
        self.stmts: list[_Stmt] = []
        self.valid = True
        prev_end = body[0].end_lineno or body[0].lineno if body and block and body[0] is not block[0] else 0
        for i, stmt in enumerate(block):
            if index.offset(stmt.lineno, stmt.col_offset) != index.starts[stmt.lineno - 1] or \
                    stmt.lineno <= prev_end:
                self.valid = False  # `x = 1; import a`: no line of its own
            end = stmt.end_lineno or stmt.lineno
            nxt = block[i + 1] if i + 1 < len(block) else self.following
            after = -1 if nxt is not None and nxt.lineno == end else (
                index.starts[end] if end < len(lines) else len(index.source))
            top = stmt.lineno
            if prev_end:  # move above comment lines directly over it, never above the previous statement
                while top - 1 > prev_end and lines[top - 2].lstrip().startswith("#"):
                    top -= 1
            if isinstance(stmt, ast.Import):
                name, level, straight = stmt.names[0].name, 0, True
            else:
                name, level, straight = stmt.module or "", stmt.level, False
            self.stmts.append(_Stmt(import_section(name, first_party, level), _key(name), straight,
                                    index.starts[top - 1], after))
            prev_end = end
        if block and self.stmts[-1].after < 0:
            self.valid = False
        self.first: ast.stmt | None = body[k] if not block and k < len(body) else None
        if self.first is not None and index.offset(self.first.lineno, self.first.col_offset) != \
                index.starts[self.first.lineno - 1]:
            self.valid = False  # the first statement does not start its line: no safe place

    def edits(self, modules: tuple[str, ...] | list[str]) -> list[TextEdit] | bool | None:
        """The insertions of the missing imports, in offset order (None: nothing missing; False: no safe place)."""
        missing = sorted({m for m in modules if m not in self.bound}, key=_key)
        if not missing:
            return None
        if not self.valid:
            return False
        nl = self.newline
        src = self.index.source
        imports = [(import_section(m, self.first_party), m) for m in missing]
        imports.sort(key=lambda t: (t[0], _key(t[1])))
        if not self.stmts:
            if self.first is None:  # a module of only a docstring (or nothing): at the end
                pre = "" if not src or src.endswith(("\n", "\r")) else nl
                return [TextEdit(len(src), len(src), pre + (nl if src else "") + _render(imports, nl))]
            off = self.index.starts[self.first.lineno - 1]
            gap = 2 if isinstance(self.first, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) else 1
            return [TextEdit(off, off, _render(imports, nl) + nl * gap)]
        at: dict[int, list[tuple[int, str]]] = {}
        for sec, m in imports:
            same = [s for s in self.stmts if s.section == sec]
            if same:
                hit = next((s for s in same if not s.straight or s.key > _key(m)), None)
                off = hit.before if hit is not None else same[-1].after
            else:  # a section of its own: before the next section, else after the last one
                later = next((s for s in self.stmts if s.section > sec), None)
                off = later.before if later is not None else self.stmts[-1].after
            at.setdefault(off, []).append((sec, m))
        out: list[TextEdit] = []
        for off, group in sorted(at.items()):
            prev = next((s.section for s in self.stmts if s.after == off), None)
            nxt = next((s.section for s in self.stmts if s.before == off), None)
            text = _render(group, nl)
            if prev is not None and prev != group[0][0]:
                text = nl + text
            if nxt is not None and nxt != group[-1][0]:
                text += nl
            if off == len(src) and src and not src.endswith(("\n", "\r")):
                text = nl + text
            out.append(TextEdit(off, off, text))
        return out


def _render(imports: list[tuple[int, str]], nl: str) -> str:
    """``import`` lines of (section, module) pairs in order, a blank line between sections."""
    out: list[str] = []
    for i, (sec, m) in enumerate(imports):
        if i and imports[i - 1][0] != sec:
            out.append(nl)
        out.append(f"import {m}{nl}")
    return "".join(out)


def select_edits(edits: list[TextEdit]) -> list[TextEdit]:
    """Non-overlapping edits, outermost first (an inner one is found again on the next pass)."""
    chosen: list[TextEdit] = []
    end = -1
    for e in sorted(edits, key=lambda e: (e.start, -e.end)):
        if e.start >= end:
            chosen.append(e)
            end = max(end, e.end)
    return chosen


def apply_edits(source: str, edits: list[TextEdit]) -> str:
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
