"""A per-file result cache, as ruff keeps one: a file whose text and settings are unchanged is not checked again.

An entry is keyed by the SHA-256 of the file's bytes, the path it is shown as, the settings that decide its
findings (the selected codes, the project's :class:`~floatguard.lint.config.Style`, the path and bytes of every
module of its package it imports helpers from, :func:`~floatguard.lint.resolve.sibling_files`) and the linter itself
(``floatguard.__version__`` and a fingerprint of the ``floatguard.lint`` sources, so a development checkout
never reads results of older rules). Entries are JSON files under ``<project root>/.floatguard_cache/``
(``--cache-dir`` elsewhere, ``--no-cache`` to bypass), written atomically (a temporary file and
``os.replace``), so concurrent runs never see a half-written entry; an entry that cannot be read or does not
hold the expected record is ignored (checked again and overwritten).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from ..events import Event

__all__ = ["CACHE_DIR_NAME", "Cache", "default_cache_dir", "linter_fingerprint"]

CACHE_DIR_NAME = ".floatguard_cache"
_FORMAT = 1


@lru_cache(maxsize=1)
def linter_fingerprint() -> str:
    """``floatguard.__version__`` and the size and modification time of every ``floatguard.lint`` source."""
    import floatguard

    h = hashlib.sha256(f"{floatguard.__version__}\0{_FORMAT}".encode())
    here = Path(__file__).parent
    for p in sorted(here.rglob("*.py")):
        st = p.stat()
        h.update(f"{p.relative_to(here)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    events = Path(floatguard.__file__).parent / "events.py"  # the record the entries hold
    with contextlib.suppress(OSError):
        st = events.stat()
        h.update(f"events\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def default_cache_dir(start: Path | None = None) -> Path:
    """``.floatguard_cache`` in the project root: the nearest directory above ``start`` (default: the working
    directory) with a ``pyproject.toml``, else ``start`` itself (as ruff places ``.ruff_cache``)."""
    d = (start or Path.cwd()).resolve()
    for parent in (d, *d.parents):
        if (parent / "pyproject.toml").is_file():
            return parent / CACHE_DIR_NAME
    return d / CACHE_DIR_NAME


class Cache:
    """Results of unchanged files under ``root`` (a directory created on first write, with a ``.gitignore``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.version = linter_fingerprint()
        self.dir = self.root / self.version

    def key(self, data: bytes, shown: str, settings: str, deps: Iterable[Path] = ()) -> str:
        """The entry's name: a hash of the file's bytes, where it is shown, the settings, and the path and bytes
        of each of ``deps`` (the other modules of its package whose helpers its findings depend on; a file that
        cannot be read counts as such, so creating it changes the key too)."""
        h = hashlib.sha256(data)
        h.update(b"\0" + shown.encode("utf-8", "surrogateescape") + b"\0" + settings.encode())
        for dep in deps:
            h.update(b"\0dep\0" + str(dep).encode("utf-8", "surrogateescape") + b"\0")
            try:
                h.update(hashlib.sha256(dep.read_bytes()).digest())
            except OSError:
                h.update(b"unreadable")
        return h.hexdigest()

    def get(self, key: str) -> tuple[int, list[Event]] | None:
        """(lines, events) of an entry; None when missing, unreadable or not a record this version wrote."""
        try:
            data = json.loads((self.dir / key[:2] / f"{key}.json").read_bytes())
            if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("lines"), int):
                return None
            events = data["events"]
            if not isinstance(events, list):
                return None
            return data["lines"], [Event.from_dict(e) for e in events]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def put(self, key: str, lines: int, events: list[Event]) -> None:
        """Store an entry atomically; a cache that cannot be written is not an error (the run goes on)."""
        d = self.dir / key[:2]
        try:
            if not self.root.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                (self.root / ".gitignore").write_text("# created by floatguard lint\n*\n")
            d.mkdir(parents=True, exist_ok=True)
            payload = json.dumps({"key": key, "lines": lines, "events": [e.to_dict() for e in events]},
                                 separators=(",", ":")).encode()
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}.", suffix=".tmp", dir=d)
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, d / f"{key}.json")
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
