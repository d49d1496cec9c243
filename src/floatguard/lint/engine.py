"""Run the rules over sources, files and trees (in parallel), honour ``# noqa``, apply fixes.

One pass over each file's ``ast`` sets parent links and hands every node to the
rules registered for its type; a file whose text names none of the operations the
rules know (:func:`may_find`) and imports nothing from its own package (whose helpers may be operations,
:mod:`.resolve`) is parsed (for ``FG000``) but not walked. Files are
spread over processes when there are many; with a cache (:mod:`.cache`) a file whose
text and settings are unchanged is answered from it without a worker. Fixes are
edits of the text (:mod:`.fixes`), their imports sorted into the import block and
their lines wrapped to the project's line length (:class:`~.config.Style`).
"""

from __future__ import annotations

import ast
import contextlib
import gc
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
from .astwalk import walk
from .cache import Cache
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
from .resolve import parse, relative_imports, sibling_files
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


@lru_cache(maxsize=1)
def _tokens() -> re.Pattern[str]:
    """The words one of which a file must contain for any rule to find something in it.

    Every rule reports an expression built on a library operation it recognises (:mod:`.names`: ``exp``,
    ``log``, ``softmax``, ``sum``, ``where``, ``masked_fill``, ...), called as a function or a method, and a
    call names its operation in the text (``torch.exp(x)``, ``x.exp()``, ``from numpy import exp``). So the
    words are the names of those operations: the last part of every qualified name the rules resolve, and
    the tensor methods they know. Module names (``torch``, ``numpy``) are not among them.
    """
    from .names import _METHODS, _OPS, _TORCH_METHODS

    words = set(_OPS) | {q.rsplit(".", 1)[-1] for quals in _OPS.values() for q in quals}
    words |= set(_METHODS) | set(_TORCH_METHODS)
    return re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, words), key=lambda w: (-len(w), w))) + r")\b")


def may_find(source: str) -> bool:
    """Whether any rule could report something in ``source``: the cheap text test run before the rules
    (:func:`_tokens`); False means the file has no finding (a syntax error is still reported)."""
    return _tokens().search(source) is not None


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
            tree = parse(source, path)
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None) or 1
            col = getattr(exc, "offset", None) or 1
            msg = getattr(exc, "msg", None) or str(exc)
            return [_fg000(path, line, col, f"SyntaxError: {msg}", "the file was not checked (and not fixed)")], []
    table = _dispatch(codes if codes is not None else _all_codes())
    if not table or not (may_find(source) or relative_imports(tree, path, source)):
        return [], []
    ctx = Context(source, tree, path)
    found: list[tuple[Rule, Finding]] = []
    for node in walk(tree, ctx.parents, table):  # every parent link first: a rule may look anywhere
        for rule in table[node.__class__]:
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
            tree = ast.parse(new)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            break
        source, total = new, total + len(chosen)
        events, fixes = analyse(source, path, codes, tree=tree, style=style)  # parsed once, not twice
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


def _settings(codes: frozenset[str] | None, style: Style) -> str:
    """What, besides the text, decides a file's findings: the cache key's settings part."""
    chosen = ",".join(sorted(codes)) if codes is not None else "ALL"
    return f"{chosen}|{style.line_length}|{','.join(sorted(style.first_party))}"


def _siblings(data: bytes, shown: str) -> list[Path]:
    """The modules of the file's package whose helpers can change its findings (:func:`.resolve.sibling_files`,
    found as the check finds them: from the path the file is shown as); none without a relative import."""
    return sibling_files(shown, data)


def _cached(p: Path, shown: str, codes: frozenset[str] | None, style: Style,
            cache: Cache) -> tuple[FileResult | None, str | None]:
    """(the cached result of ``p``, or None; the entry's key, or None when the file cannot be read)."""
    try:
        data = p.read_bytes()
    except OSError:
        return None, None
    key = cache.key(data, shown, _settings(codes, style), _siblings(data, shown))
    hit = cache.get(key)
    return (FileResult(shown, hit[1], lines=hit[0]) if hit is not None else None), key


def _style_of(p: Path) -> Style:
    try:
        return find_style(p.parent)
    except ValueError:  # a broken ruff/black configuration: the defaults
        return Style()


def lint_file(path: str | os.PathLike[str], *, codes: frozenset[str] | None = None, fix: str | None = None,
              display: str | None = None, style: Style | None = None, cache: Cache | None = None) -> FileResult:
    """Lint one file; ``fix`` is None, ``"safe"`` or ``"unsafe"`` (the file is rewritten atomically).

    ``style``: the project's line length and first-party modules (default: found from the file's directory).
    ``cache``: results of unchanged files are read from it, and new ones stored (without ``fix`` only).
    """
    p = Path(path)
    shown = display or str(path)
    style = style or _style_of(p)
    if cache is not None and fix is None:
        hit, key = _cached(p, shown, codes, style, cache)
        if hit is not None:
            return hit
        res = lint_file(p, codes=codes, display=shown, style=style)
        if key is not None and res.error is None:
            cache.put(key, res.lines, res.events)
        return res
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


def _job(args: tuple[str, frozenset[str], str | None, Style, str | None]) -> FileResult:
    path, codes, fix, style, cache_dir = args
    return lint_file(path, codes=codes, fix=fix, style=style, cache=Cache(cache_dir) if cache_dir else None)


def _worker_init() -> None:
    """A worker process's set-up (forked workers have it from the parent already; the others, not)."""
    _fewer_collections()


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


#: the cyclic collector's first threshold while files are checked (Python's default: 700 allocations)
_GC_THRESHOLD = 50_000


def _fewer_collections() -> bool:
    """Let the cyclic garbage collector run less often, and not scan the objects alive now (the imported modules;
    unless something froze objects already), in a process that checks files; True when it froze them.

    A parse allocates a node per token or so, and nodes hold no cycles (reference counting frees them); at the
    default threshold the collector runs every 700 allocations and its full passes scan every tree and module
    alive: a third of the time of parsing (torch/nn, 138 files: 0.28 s with, 0.18 s without).
    """
    froze = gc.get_freeze_count() == 0
    if froze:
        gc.freeze()
    gc.set_threshold(_GC_THRESHOLD, *gc.get_threshold()[1:])
    return froze


@contextlib.contextmanager
def _collections_tuned() -> Iterator[None]:
    """:func:`_fewer_collections` for the time of a run; the collector's settings restored after."""
    before = gc.get_threshold()
    froze = _fewer_collections()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if froze:
            gc.unfreeze()


def lint_paths(paths: Iterable[str | os.PathLike[str]], *, select: tuple[str, ...] | None = None,
               ignore: tuple[str, ...] = (), fix: str | None = None, jobs: int | None = None,
               use_config: bool = True, cache_dir: str | os.PathLike[str] | None = None) -> list[FileResult]:
    """Lint files and directories with their ``pyproject.toml`` settings, in parallel when there are many files.

    ``cache_dir``: keep per-file results there (:class:`~floatguard.lint.cache.Cache`); files whose text and
    settings are unchanged since are not checked again (the command line's default; here off unless given).
    """
    with _collections_tuned():
        return _lint_paths(paths, select, ignore, fix, jobs, use_config, cache_dir)


def _lint_paths(paths: Iterable[str | os.PathLike[str]], select: tuple[str, ...] | None, ignore: tuple[str, ...],
                fix: str | None, jobs: int | None, use_config: bool,
                cache_dir: str | os.PathLike[str] | None) -> list[FileResult]:
    work: list[tuple[str, frozenset[str], str | None, Style, str | None]] = []
    cache = Cache(cache_dir) if cache_dir is not None and fix is None else None
    done: dict[int, FileResult] = {}
    for f in iter_python_files(paths):
        cfg = find_config(f.parent) if use_config else Config()
        if cfg.excluded(f):
            continue
        codes, style = cfg.codes_for(f, select, ignore), _style_of(f)
        if cache is not None:  # hits are answered here, without a worker
            hit, _ = _cached(f, str(f), codes, style, cache)
            if hit is not None:
                done[len(work)] = hit
        work.append((str(f), codes, fix, style, str(cache.root) if cache is not None else None))
    todo = [w for i, w in enumerate(work) if i not in done]
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1 and len(todo) >= 16:
        import multiprocessing as mp

        with mp.get_context(_start_method(mp.get_all_start_methods())).Pool(jobs, _worker_init) as pool:
            fresh = pool.map(_job, todo, chunksize=max(1, min(16, len(todo) // (jobs * 8))))
    else:
        fresh = [_job(w) for w in todo]
    it = iter(fresh)
    return [done[i] if i in done else next(it) for i in range(len(work))]
