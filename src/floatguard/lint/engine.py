"""Run the rules over sources, files and trees (in parallel), honour ``# noqa``, apply fixes.

One pass over each file's ``ast`` sets parent links and hands every node to the
rules registered for its type. Files are spread over processes when there are
many; a file is parsed with LibCST only when it is being fixed.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from ..events import SEVERITIES, Edit, Event, Fix, Severity
from .analysis import Context, char_col
from .config import Config, Style, find_config, find_style
from .fixes import (
    FileChanged,
    ImportSite,
    LineIndex,
    TextEdit,
    apply_edits,
    atomic_write,
    fingerprint,
    node_edit,
    select_edits,
    split_lines,
)
from .notebook import Notebook
from .rule import Finding, Rule
from .rules import all_rules

__all__ = ["FileResult", "iter_python_files", "lint_file", "lint_paths", "lint_source"]

SYNTAX_ERROR = "FG000"
_NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Z]+\d+(?:[\s,]+[A-Z]+\d+)*))?", re.IGNORECASE)
EXCLUDED_DIRS = frozenset({".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox", "__pycache__", "build", "dist",
                           "node_modules", ".eggs", ".mypy_cache", ".ruff_cache", ".pytest_cache", "site-packages"})
MAX_FIX_PASSES = 8
_BYTE_LINE = re.compile(rb"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")


@dataclass
class FileResult:
    """Findings of one file; ``fixed`` counts applied fixes, ``error`` holds a read error."""

    path: str
    events: list[Event] = field(default_factory=list)
    lines: int = 0
    fixed: int = 0
    error: str | None = None


@lru_cache(maxsize=64)
def _dispatch(codes: frozenset[str]) -> dict[type[ast.AST], tuple[Rule, ...]]:
    table: dict[type[ast.AST], list[Rule]] = {}
    for cls in all_rules():
        if cls.code in codes:
            inst = cls()
            for t in cls.nodes:
                table.setdefault(t, []).append(inst)
    return {k: tuple(v) for k, v in table.items()}


def _all_codes() -> frozenset[str]:
    return frozenset(r.code for r in all_rules())


def _noqa(lines: list[str]) -> dict[int, frozenset[str] | None]:
    """Line number -> codes suppressed there (None: all)."""
    out: dict[int, frozenset[str] | None] = {}
    for i, line in enumerate(lines, 1):
        if "noqa" not in line and "NOQA" not in line:
            continue
        m = _NOQA.search(line)
        if m is None:
            continue
        codes = m.group("codes")
        out[i] = None if codes is None else frozenset(c.upper() for c in re.split(r"[\s,]+", codes) if c)
    return out


def _suppressed(noqa: dict[int, frozenset[str] | None], code: str, *lines: int) -> bool:
    for ln in lines:
        if ln in noqa:
            codes = noqa[ln]
            if codes is None or code in codes:
                return True
    return False


def _fg000(path: str, line: int, col: int, message: str, hint: str | None, kind: str = "syntax-error") -> Event:
    return Event(kind=kind, source="lint", code=SYNTAX_ERROR, file=path, line=line, col=col,
                 message=message, hint=hint)


@dataclass(frozen=True, slots=True)
class FixEdits:
    """A finding's fix as offset edits of the text, for ``--fix``: the replacement, the import insertions (and the
    modules they import, placed by ``site``), its safety. The finding's :class:`~floatguard.events.Fix` holds the
    same edits as line/column records."""

    edit: TextEdit
    imports: tuple[TextEdit, ...]
    safe: bool
    modules: tuple[str, ...] = ()
    site: ImportSite | None = None


def analyse(source: str, path: str, codes: frozenset[str] | None = None,
            tree: ast.Module | None = None, style: Style | None = None,
            ) -> tuple[list[Event], list[tuple[Event, FixEdits]]]:
    """Findings of ``source`` as events, and the (event, edits) pairs of the findings that carry a fix.

    ``style``: the project's line length and first-party modules (where fixes wrap lines and put imports).
    A source that does not parse, or nests too deeply to check, gives one ``FG000`` event.
    """
    try:
        return _analyse(source, path, codes, tree, style or Style())
    except (RecursionError, MemoryError):
        return [_fg000(path, 1, 1, "the file nests expressions too deeply to check (RecursionError)",
                       "the file was not checked (and not fixed); split the expression")], []


def _analyse(source: str, path: str, codes: frozenset[str] | None, tree: ast.Module | None,
             style: Style) -> tuple[list[Event], list[tuple[Event, FixEdits]]]:
    if tree is None:
        try:
            tree = ast.parse(source, filename=path)
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None) or 1
            col = getattr(exc, "offset", None) or 1
            msg = getattr(exc, "msg", None) or str(exc)
            return [_fg000(path, line, col, f"SyntaxError: {msg}", "the file was not checked (and not fixed)")], []
    table = _dispatch(codes if codes is not None else _all_codes())
    ctx = Context(source, tree, path)
    nodes: list[ast.AST] = []
    parents = ctx.parents
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
            stack.append(child)
    found: list[tuple[Rule, Finding]] = []
    for node in nodes:
        rules = table.get(type(node))
        if rules:
            for rule in rules:
                for f in rule.check(node, ctx):
                    found.append((rule, f))
    if not found:
        return [], []
    lines = ctx.lines
    index = LineIndex(source, lines)
    site: ImportSite | None = None
    noqa = _noqa(lines)
    events: list[Event] = []
    with_fix: list[tuple[Event, FixEdits]] = []
    seen: set[tuple[str, int, int]] = set()
    for rule, f in found:
        n = f.node
        line, end_line = n.lineno, getattr(n, "end_lineno", None) or n.lineno  # type: ignore[attr-defined]
        key = (rule.code, line, n.col_offset)  # type: ignore[attr-defined]
        if key in seen or _suppressed(noqa, rule.code, line, end_line):
            continue
        seen.add(key)
        col = char_col(lines, line, n.col_offset) + 1  # type: ignore[attr-defined]
        end_col = char_col(lines, end_line, n.end_col_offset or 0) + 1  # type: ignore[attr-defined]
        fix: FixEdits | None = None
        if f.fix is not None and (edit := node_edit(index, f.fix.node, f.fix.replacement,
                                                    style.line_length)) is not None:
            imp: list[TextEdit] | bool | None = None
            if f.fix.imports:
                site = site or ImportSite(index, tree, style.first_party)
                imp = site.edits(f.fix.imports)
            if imp is not False:
                fix = FixEdits(edit, tuple(imp) if isinstance(imp, list) else (), f.fix.safe,
                               tuple(f.fix.imports), site)
        op = ctx.op(n)
        ev = Event(kind=rule.name, source="lint", message=f.message, severity=_severity(rule.severity),
                   hint=f.hint, code=rule.code, file=path, line=line, col=col, end_line=end_line, end_col=end_col,
                   op=op.qual.lstrip(".") if op else None, fix=_fix_record(index, fix) if fix is not None else None)
        events.append(ev)
        if fix is not None:
            with_fix.append((ev, fix))
    events.sort(key=lambda e: (e.line or 0, e.col or 0, e.code or ""))
    return events, with_fix


def _severity(s: str) -> Severity:
    if s not in SEVERITIES:
        raise ValueError(f"a rule's 'severity' must be one of {SEVERITIES}, got {s!r}")
    return s  # type: ignore[return-value]  # checked against the Literal's values above


def _fix_record(index: LineIndex, fx: FixEdits) -> Fix:
    """The finding's :class:`Fix`: the same edits ``--fix`` applies, as line/column records."""
    edits = tuple(index.edit(e) for e in (fx.edit, *fx.imports))
    lines = fx.edit.text.strip().splitlines() or [""]
    title = f"Replace with `{lines[0]}{' ...' if len(lines) > 1 else ''}`"
    if fx.imports:
        mods = [ln.split()[1] for e in fx.imports for ln in split_lines(e.text) if ln.startswith("import ")]
        title += f" (adds `import {', '.join(mods)}`)"
    return Fix(title, "safe" if fx.safe else "unsafe", edits)


def lint_source(source: str, path: str = "<string>", *, select: Iterable[str] | None = None,
                ignore: Iterable[str] = ()) -> list[Event]:
    """Findings of a source string (``select``/``ignore`` take code prefixes)."""
    from .config import expand

    codes = frozenset(expand(tuple(select) if select is not None else ("ALL",)) - expand(tuple(ignore)))
    return analyse(source, path, codes)[0]


def fix_source(source: str, path: str = "<string>", *, codes: frozenset[str] | None = None,
               unsafe: bool = False, style: Style | None = None) -> tuple[str, int, list[Event]]:
    """Apply fixes until none is left: (new source, fixes applied, remaining findings).

    Each pass applies the non-overlapping fixes (outermost first) as edits of the text, and inserts the
    imports they need together (each once, sorted into the import block); a pass whose result does not
    parse is not taken.
    """
    total = 0
    events, fixes = analyse(source, path, codes, style=style)
    for _ in range(MAX_FIX_PASSES):
        usable = [fx for _, fx in fixes if fx.safe or unsafe]
        if not usable:
            break
        chosen = select_edits([fx.edit for fx in usable])
        keep = set(chosen)
        edits = list(chosen)
        needed = [fx for fx in usable if fx.edit in keep and fx.imports]
        if needed and needed[0].site is not None:
            more = needed[0].site.edits(tuple(dict.fromkeys(m for fx in needed for m in fx.modules)))
            edits += more if isinstance(more, list) else []
        new = apply_edits(source, edits)
        if new == source:
            break
        try:
            ast.parse(new)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            break
        source, total = new, total + len(chosen)
        events, fixes = analyse(source, path, codes, style=style)
    return source, total, events


def read_source(path: Path) -> tuple[str, str]:
    """(text, encoding) of a Python file, honouring its coding cookie; newlines kept as they are."""
    return decode_source(path.read_bytes())


def decode_source(data: bytes) -> tuple[str, str]:
    """(text, encoding) of a Python file's bytes (its coding cookie, a BOM as ``utf-8-sig``).

    The cookie is looked for in the first two lines as Python splits them (``\\r`` ends a line too).
    """
    lines = (m.group() for m in _BYTE_LINE.finditer(data))
    encoding, _ = tokenize.detect_encoding(lambda: next(lines, b""))
    text = data.decode(encoding)
    if text.startswith("\ufeff"):
        text = text[1:]
        encoding = "utf-8-sig"
    return text, encoding


def lint_file(path: str | os.PathLike[str], *, codes: frozenset[str] | None = None, fix: str | None = None,
              display: str | None = None, style: Style | None = None) -> FileResult:
    """Lint one file; ``fix`` is None, ``"safe"`` or ``"unsafe"`` (the file is rewritten atomically).

    ``style``: the project's line length and first-party modules (default: found from the file's directory).
    """
    p = Path(path)
    shown = display or str(path)
    if style is None:
        try:
            style = find_style(p.parent)
        except ValueError:  # a broken ruff/black configuration: the defaults
            style = Style()
    if p.suffix == ".ipynb":
        return _lint_notebook(p, shown, codes, fix, style)
    try:
        data = p.read_bytes()
        source, encoding = decode_source(data)
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        ev = _fg000(shown, 1, 1, f"cannot read file: {exc}", None, kind="io-error")
        return FileResult(shown, [ev], error=str(exc))
    res = FileResult(shown, lines=source.count("\n") + (not source.endswith("\n") and bool(source)))
    if fix is None:
        res.events = analyse(source, shown, codes, style=style)[0]
        return res
    new, n, events = fix_source(source, shown, codes=codes, unsafe=fix == "unsafe", style=style)
    if n and new != source:
        try:
            atomic_write(p, new.encode(encoding), expect=fingerprint(p, data))
        except (OSError, UnicodeEncodeError) as exc:
            return _not_written(res, source, shown, codes, exc)
    res.events, res.fixed = events, n
    return res


def _not_written(res: FileResult, source: str, shown: str, codes: frozenset[str] | None,
                 exc: BaseException) -> FileResult:
    """The file's findings as they stand on disk, and one ``FG000`` saying why its fixes were not written."""
    why = str(exc) if isinstance(exc, FileChanged) else f"cannot write the fixes: {exc}"
    res.events = [_fg000(shown, 1, 1, why, "the file was left as it was", kind="io-error"),
                  *analyse(source, shown, codes)[0]]
    res.error = why
    return res


def _lint_notebook(p: Path, shown: str, codes: frozenset[str] | None, fix: str | None,
                   style: Style | None = None) -> FileResult:
    """Lint a Jupyter notebook's code cells as one module; findings carry their cell (``Event.cell``)."""
    try:
        raw = p.read_bytes()
        nb = Notebook.parse(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        ev = _fg000(shown, 1, 1, f"cannot read notebook: {exc}", None, kind="io-error")
        return FileResult(shown, [ev], error=str(exc))
    res = FileResult(shown, lines=sum(o is not None for o in nb.origin))
    if not nb.source:
        return res
    if fix is None:
        events = analyse(nb.source, shown, codes, style=style)[0]
    else:
        new, n, events = fix_source(nb.source, shown, codes=codes, unsafe=fix == "unsafe", style=style)
        text = nb.with_source(new) if n else None
        if text is None:  # nothing written (a fix moved a cell boundary): what the notebook still has
            events = analyse(nb.source, shown, codes)[0] if n else events
        else:
            try:
                atomic_write(p, text.encode("utf-8"), expect=fingerprint(p, raw))
            except OSError as exc:
                return _not_written(res, nb.source, shown, codes, exc)  # lines of the joined source
            res.fixed = n
            nb = Notebook.parse(text)  # the same lines as the fixed source: locate the findings left
    res.events = [_in_cells(nb, e) for e in events]
    return res


def _in_cells(nb: Notebook, e: Event) -> Event:
    """``e`` located in the notebook: its cell, its lines (and its fix's edits) counted within their cells.

    A fix with an edit that does not lie within one cell is dropped (``--fix`` leaves such a notebook alone).
    """
    at = nb.where(e.line or 1)
    if at is None:
        return e
    end = nb.where(e.end_line) if e.end_line is not None else None
    fix = e.fix
    if fix is not None:
        edits: list[Edit] = []
        for d in fix.edits:
            a, b = nb.where(d.line), nb.where(d.end_line)
            if a is None or b is None or a[0] != b[0]:
                break
            edits.append(replace(d, line=a[1], end_line=b[1], cell=a[0]))
        fix = replace(fix, edits=tuple(edits)) if len(edits) == len(fix.edits) else None
    return replace(e, cell=at[0], line=at[1], end_line=end[1] if end is not None and end[0] == at[0] else None,
                   end_col=e.end_col if end is not None and end[0] == at[0] else None, fix=fix)


def iter_python_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Python files and notebooks under ``paths`` (given files always; directories walked, skipping venvs,
    VCS and caches)."""
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            yield p
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.endswith(".egg-info"))
            for name in sorted(filenames):
                if name.endswith((".py", ".pyi", ".ipynb")):
                    yield Path(dirpath) / name


def _job(args: tuple[str, frozenset[str], str | None]) -> FileResult:
    path, codes, fix = args
    return lint_file(path, codes=codes, fix=fix)


# libraries whose worker threads make fork unsafe; JAX itself warns on fork
_THREADED = ("jax", "torch", "tensorflow")


def _start_method(available: list[str], loaded: Iterable[str] | None = None) -> str | None:
    """``fork`` (the fastest start), unless JAX, PyTorch or TensorFlow is loaded: then ``forkserver``.

    Forking a process whose thread pools hold a lock (JAX's, PyTorch's, when :func:`lint_paths`
    is called from a notebook, say) can deadlock the children. NumPy's BLAS threads are
    fork-safe. ``loaded``: the imported modules' names (default ``sys.modules``).
    """
    names = sys.modules if loaded is None else set(loaded)
    if "fork" in available and not any(m in names for m in _THREADED):
        return "fork"
    return "forkserver" if "forkserver" in available else None


def lint_paths(paths: Iterable[str | os.PathLike[str]], *, select: tuple[str, ...] | None = None,
               ignore: tuple[str, ...] = (), fix: str | None = None, jobs: int | None = None,
               use_config: bool = True) -> list[FileResult]:
    """Lint files and directories with their ``pyproject.toml`` settings, in parallel when there are many files."""
    work: list[tuple[str, frozenset[str], str | None]] = []
    for f in iter_python_files(paths):
        cfg = find_config(f.parent) if use_config else Config()
        if cfg.excluded(f):
            continue
        work.append((str(f), cfg.codes_for(f, select, ignore), fix))
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1 and len(work) >= 16:
        import multiprocessing as mp

        with mp.get_context(_start_method(mp.get_all_start_methods())).Pool(jobs) as pool:
            results = pool.map(_job, work, chunksize=max(1, min(16, len(work) // (jobs * 8))))
    else:
        results = [_job(w) for w in work]
    return results
