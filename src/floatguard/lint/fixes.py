"""Apply fixes with LibCST, keeping every comment and all formatting outside the replaced expressions.

Rules describe a fix as "replace the expression at this source range by this text";
the range comes from the ``ast`` analysis. Here the file is parsed with LibCST (only
files being fixed are), the expression with exactly that range is found through
LibCST's position metadata, replaced by the parsed new expression (its own
parentheses kept), and needed ``import`` statements are added. A fix whose range
holds a comment, or whose text does not parse, is skipped rather than lose code.
Files are written atomically: a temporary file in the same directory, then
``os.replace``.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path

from .analysis import char_col

__all__ = ["TextFix", "apply_fixes", "atomic_write"]


@dataclass(frozen=True, slots=True)
class TextFix:
    """A fix located by 1-based lines and 0-based *character* columns."""

    start: tuple[int, int]
    end: tuple[int, int]
    replacement: str
    imports: tuple[str, ...] = ()


def to_text_fix(lines: list[str], node: ast.AST, replacement: str, imports: tuple[str, ...]) -> TextFix:
    """Locate an ``ast`` node (byte columns) as a :class:`TextFix` (character columns)."""
    l0, c0 = node.lineno, node.col_offset  # type: ignore[attr-defined]
    l1, c1 = node.end_lineno, node.end_col_offset  # type: ignore[attr-defined]
    return TextFix((l0, char_col(lines, l0, c0)), (l1, char_col(lines, l1, c1)), replacement, imports)


def _has_comment(lines: list[str], fix: TextFix) -> bool:
    (l0, c0), (l1, c1) = fix.start, fix.end
    if l0 == l1:
        seg = lines[l0 - 1][c0:c1]
    else:
        seg = lines[l0 - 1][c0:] + "".join(lines[l0:l1 - 1]) + lines[l1 - 1][:c1]
    if "#" not in seg:
        return False
    try:
        toks = tokenize.generate_tokens(io.StringIO("(" + seg + ")\n").readline)
        return any(t.type == tokenize.COMMENT for t in toks)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return True


def _overlaps(a: TextFix, b: TextFix) -> bool:
    return not (a.end <= b.start or b.end <= a.start)


def select_fixes(fixes: list[TextFix]) -> list[TextFix]:
    """Non-overlapping fixes, outermost first (an inner one is found again on the next pass)."""
    chosen: list[TextFix] = []
    for f in sorted(fixes, key=lambda f: (f.start, (-f.end[0], -f.end[1]))):
        if not any(_overlaps(f, c) for c in chosen):
            chosen.append(f)
    return chosen


def apply_fixes(source: str, fixes: list[TextFix]) -> tuple[str, int]:
    """Return the fixed source and the number of fixes applied."""
    import libcst as cst
    from libcst.codemod import CodemodContext
    from libcst.codemod.visitors import AddImportsVisitor
    from libcst.metadata import MetadataWrapper, PositionProvider

    lines = source.splitlines(keepends=True)
    todo = {(f.start, f.end): f for f in select_fixes([f for f in fixes if not _has_comment(lines, f)])}
    if not todo:
        return source, 0
    parsed: dict[tuple[tuple[int, int], tuple[int, int]], cst.BaseExpression] = {}
    for key, f in list(todo.items()):
        try:
            parsed[key] = cst.parse_expression(f.replacement)
        except cst.ParserSyntaxError:
            del todo[key]
    module = cst.parse_module(source)
    wrapper = MetadataWrapper(module)
    applied: list[TextFix] = []

    class Replace(cst.CSTTransformer):
        METADATA_DEPENDENCIES = (PositionProvider,)

        def on_leave(self, original: cst.CSTNode, updated: cst.CSTNode) -> cst.CSTNode:  # type: ignore[override]
            if isinstance(original, cst.BaseExpression):
                pos = self.get_metadata(PositionProvider, original, None)
                if pos is not None:
                    key = ((pos.start.line, pos.start.column), (pos.end.line, pos.end.column))
                    new = parsed.get(key)
                    if new is not None and key in todo:
                        applied.append(todo.pop(key))
                        lpar = getattr(updated, "lpar", ())
                        rpar = getattr(updated, "rpar", ())
                        if lpar and hasattr(new, "lpar"):
                            new = new.with_changes(lpar=lpar, rpar=rpar)
                        return new
            return updated

    out = wrapper.visit(Replace())
    imports = sorted({m for f in applied for m in f.imports})
    if imports:
        context = CodemodContext()
        for m in imports:
            AddImportsVisitor.add_needed_import(context, m)
        out = AddImportsVisitor(context).transform_module(out)
    return out.code, len(applied)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    p = Path(path)
    mode = p.stat().st_mode & 0o7777 if p.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
