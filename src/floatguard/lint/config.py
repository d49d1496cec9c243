"""``[tool.floatguard.lint]`` in ``pyproject.toml``, and rule selection.

Keys (ruff's names)::

    [tool.floatguard.lint]
    select = ["FG1", "FG201"]           # code prefixes; "DEFAULT" (the default), "ALL" for every rule
    extend-select = ["FG201"]           # added to select: the opt-in rules (FG105, FG201, ...) this way
    ignore = ["FG106"]
    exclude = ["legacy/*"]
    [tool.floatguard.lint.per-file-ignores]       # replaces the default below
    "tests/" = ["FG111"]
    [tool.floatguard.lint.extend-per-file-ignores]  # added to the default
    "scripts/*" = ["ALL"]

``DEFAULT`` is every rule whose findings were judged mostly worth a change on code it had never seen
(``benchmarks/lint_precision``); ``--list-rules`` marks the others ``opt-in``: those whose findings there were
mostly nits or wrong (confidence ``low``, e.g. FG201's division by a norm), and new rules not judged yet.

Test code computes unstable expressions on purpose, so by default nothing is reported in
test files: ``per-file-ignores`` defaults to ``ALL`` for ``tests/`` and ``test/`` directories,
``test_*.py``, ``*_test.py`` and ``conftest.py`` (:data:`DEFAULT_PER_FILE_IGNORES`). To check
tests, set ``per-file-ignores = {}`` (``--no-config`` keeps this default). A pattern ending
in ``/`` with no other ``/`` matches a directory of that name at any depth.

The configuration of a file is the nearest ``pyproject.toml`` above it that has a
``[tool.floatguard.lint]`` table; globs are relative to that file's directory.
Command-line ``--select`` replaces ``select``; ``--ignore`` adds to ``ignore``.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .rules import all_rules

__all__ = ["DEFAULT_LINE_LENGTH", "DEFAULT_PER_FILE_IGNORES", "Config", "ConfigError", "Style", "clear_caches",
           "expand", "find_config", "find_style"]

#: ruff's and black's default
DEFAULT_LINE_LENGTH = 88

#: test code is quiet unless configured otherwise (ruff-style per-file-ignores)
DEFAULT_PER_FILE_IGNORES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tests/", ("ALL",)), ("test/", ("ALL",)), ("test_*.py", ("ALL",)), ("*_test.py", ("ALL",)),
    ("conftest.py", ("ALL",)),
)


class ConfigError(ValueError):
    """A bad selector or configuration value (exit status 2)."""


@dataclass(frozen=True)
class Config:
    """The lint settings that apply under ``root`` (None: defaults, no pyproject found)."""

    root: Path | None = None
    select: tuple[str, ...] = ("DEFAULT",)
    ignore: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_PER_FILE_IGNORES

    def codes_for(self, path: Path, select: tuple[str, ...] | None = None,
                  ignore: tuple[str, ...] = ()) -> frozenset[str]:
        """The rule codes enabled for ``path`` under this configuration and the command line."""
        chosen = expand(select if select is not None else self.select)
        drop = expand((*self.ignore, *ignore))
        rel = self._rel(path)
        for pattern, codes in self.per_file_ignores:
            if _match(rel, pattern):
                drop |= expand(codes)
        return frozenset(chosen - drop)

    def excluded(self, path: Path) -> bool:
        rel = self._rel(path)
        return any(_match(rel, pat) for pat in self.exclude)

    def _rel(self, path: Path) -> str:
        """``path`` relative to the project root, else to the working directory (both resolved), else as given."""
        cwd = os.getcwd()
        p = _resolved(path, cwd)
        for base in (self.root, cwd):
            if base is not None:
                try:
                    return p.relative_to(_resolved_dir(os.path.join(cwd, base))).as_posix()
                except ValueError:
                    pass
        return path.as_posix()


def _resolved(path: Path, cwd: str) -> Path:
    """``path.resolve()`` (``cwd`` the working directory), with its directory's resolution read from a cache: only
    a file that is itself a symbolic link (or a name such as ``..``) is resolved whole."""
    if path.name in ("", ".", "..") or path.is_symlink():
        return path.resolve()
    return _resolved_dir(os.path.join(cwd, path.parent)) / path.name


@lru_cache(maxsize=4096)
def _resolved_dir(directory: str) -> Path:
    """An absolute directory, resolved (symbolic links followed), once per process (:func:`clear_caches`)."""
    return Path(directory).resolve()


def _match(rel: str, pattern: str) -> bool:
    if pattern.endswith("/") and "/" not in pattern[:-1] and not any(c in pattern for c in "*?["):
        return pattern[:-1] in rel.split("/")[:-1]  # "tests/": a directory of that name at any depth
    pattern = pattern.rstrip("/")
    return fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel, pattern + "/*") or \
        fnmatch.fnmatch(Path(rel).name, pattern)


def expand(selectors: tuple[str, ...] | list[str]) -> set[str]:
    """Codes matched by selectors: ``"ALL"``, ``"FG"``, ``"FG1"``, ``"FG101"``; unknown ones raise ConfigError."""
    return set(_expand(tuple(selectors)))


@lru_cache(maxsize=256)
def _expand(selectors: tuple[str, ...]) -> frozenset[str]:
    codes = [r.code for r in all_rules()]
    out: set[str] = set()
    for sel in selectors:
        s = sel.strip().upper()
        if not s:
            continue
        if s == "ALL":
            out.update(codes)
            continue
        if s == "DEFAULT":
            out.update(r.code for r in all_rules() if r.default)
            continue
        hit = {c for c in codes if c.startswith(s)}
        if not hit:
            raise ConfigError(f"unknown rule selector {sel!r} (codes are {codes[0]}..{codes[-1]})")
        out |= hit
    return frozenset(out)


def _strs(value: object, key: str, where: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: [tool.floatguard.lint] {key} must be a list of strings")


@lru_cache(maxsize=256)
def _load(pyproject: Path) -> Config | None:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{pyproject}: {exc}") from exc
    table = data.get("tool", {}).get("floatguard", {}).get("lint")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{pyproject}: [tool.floatguard.lint] must be a table")
    known = {"select", "ignore", "exclude", "per-file-ignores", "extend-select", "extend-per-file-ignores"}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{pyproject}: unknown [tool.floatguard.lint] key(s) {sorted(unknown)}")
    select = _strs(table.get("select", ["DEFAULT"]), "select", pyproject) + _strs(
        table.get("extend-select", []), "extend-select", pyproject)
    pfi = table.get("per-file-ignores")
    extra = table.get("extend-per-file-ignores", {})
    if not isinstance(pfi, dict | None) or not isinstance(extra, dict):
        raise ConfigError(f"{pyproject}: per-file-ignores must be a table")
    pfi = {**({k: list(v) for k, v in DEFAULT_PER_FILE_IGNORES} if pfi is None else pfi), **extra}
    cfg = Config(
        root=pyproject.parent.resolve(),
        select=select,
        ignore=_strs(table.get("ignore", []), "ignore", pyproject),
        exclude=_strs(table.get("exclude", []), "exclude", pyproject),
        per_file_ignores=tuple((k, _strs(v, f"per-file-ignores.{k}", pyproject)) for k, v in pfi.items()),
    )
    expand(cfg.select)
    expand(cfg.ignore)
    for _, codes in cfg.per_file_ignores:
        expand(codes)
    return cfg


@dataclass(frozen=True)
class Style:
    """How the project formats its code, for the fixes: its line length and its first-party modules.

    ``line_length``: the nearest ``line-length`` of ``.ruff.toml``, ``ruff.toml``, ``[tool.ruff]`` or
    ``[tool.black]`` in ``pyproject.toml`` (default 88). ``first_party``: top-level modules sorted into
    isort's first-party section: ruff's ``known-first-party`` (or isort's ``known_first_party``) and the
    packages and modules in the project root and its ``src/`` directory (ruff's default ``src``).
    """

    line_length: int = DEFAULT_LINE_LENGTH
    first_party: frozenset[str] = frozenset()


def _toml(path: Path) -> dict[str, object]:
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return _toml_at(path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=256)
def _toml_at(path: Path, mtime_ns: int, size: int) -> dict[str, object]:
    """A TOML file's table, read once per version of the file (its modification time and size)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _table(data: dict[str, object], *keys: str) -> dict[str, object]:
    for k in keys:
        nxt = data.get(k)
        if not isinstance(nxt, dict):
            return {}
        data = nxt
    return data


def _line_length(value: object, where: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 320:
        raise ConfigError(f"{where}: line-length must be an integer from 1 to 320, got {value!r}")
    return value


@lru_cache(maxsize=64)
def _modules(root: Path) -> frozenset[str]:
    out: set[str] = set()
    for base in (root, root / "src"):
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for e in entries:
            if e.suffix == ".py" and e.stem.isidentifier():
                out.add(e.stem)
            elif e.name.isidentifier() and (e / "__init__.py").is_file():
                out.add(e.name)
    return frozenset(out)


@lru_cache(maxsize=4096)
def _style_walk(d: Path) -> tuple[int | None, Path | None, tuple[str, ...]]:
    """(the nearest line length, the project root and its known-first-party names) for directory ``d``,
    built on its parent's answer (each directory is looked at once per process)."""
    length: int | None = None
    root: Path | None = None
    known: list[str] = []
    for name in (".ruff.toml", "ruff.toml", "pyproject.toml"):
        f = d / name
        if not f.is_file():
            continue
        data = _toml(f)
        ruff = data if name != "pyproject.toml" else _table(data, "tool", "ruff")
        if root is None and (name != "pyproject.toml" or data):
            root = d
            for tab, key in ((_table(ruff, "lint", "isort"), "known-first-party"),
                             (_table(ruff, "isort"), "known-first-party"),
                             (_table(data, "tool", "isort"), "known_first_party")):
                known += _strs(tab.get(key, []), key, f)
        if length is None:
            for tab in (ruff, _table(data, "tool", "black")):
                if "line-length" in tab:
                    length = _line_length(tab["line-length"], f)
                    break
    if (length is None or root is None) and d.parent != d:
        p_length, p_root, p_known = _style_walk(d.parent)
        if root is None:
            root, known = p_root, list(p_known)
        length = length if length is not None else p_length
    return length, root, tuple(known)


@lru_cache(maxsize=1024)
def find_style(start: Path) -> Style:
    """The :class:`Style` of files in directory ``start``: the nearest configured line length, walking up, and
    the first-party modules of the project (the nearest directory with a ``pyproject.toml`` or ruff config)."""
    d = start.resolve()
    if d.is_file():
        d = d.parent
    length, root, known = _style_walk(d)
    first = frozenset(known) | (_modules(root) if root is not None else frozenset())
    return Style(length or DEFAULT_LINE_LENGTH, first)


def clear_caches() -> None:
    """Forget the configuration and style read so far (files are read once per process otherwise)."""
    for f in (find_style, _style_walk, _modules, find_config, _load, _resolved_dir):
        f.cache_clear()


@lru_cache(maxsize=1024)
def find_config(start: Path) -> Config:
    """The configuration for files in directory ``start``: nearest pyproject.toml with the table, walking up."""
    d = start.resolve()
    if d.is_file():
        d = d.parent
    for parent in (d, *d.parents):
        candidate = parent / "pyproject.toml"
        if candidate.is_file():
            cfg = _load(candidate)
            if cfg is not None:
                return cfg
    return Config()
