"""The revision in the on-disk cache stamp of floatguard's numba kernels (``_numba_bits.kernels_revision``).

numba stamps a cached function with its own source file only; floatguard's entry kernels inline helpers from the
other ``_numba_*`` modules, so the stamp also carries a hash of all of them. Not skipped without numba: it is in the
test environment (``floatguard[dev]`` takes ``fast``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from floatguard.ops import _numba_bits, _numba_log

# a kernel of floatguard compiled (or loaded) in a fresh process; prints its cache hits and misses
CHILD = """
import json, sys
import numpy as np
from floatguard.ops import _numba_bits
if sys.argv[1] != "-":  # before the kernels' module is imported: numba reads the stamp when it decorates
    _numba_bits.kernels_revision = lambda: sys.argv[1]
from floatguard.ops import _numba_log
x = np.linspace(0.0, 3.0, 7)
out = np.empty_like(x)
_numba_log.log1p_nonneg_array(x, out)
st = _numba_log.log1p_nonneg_array.stats
print(json.dumps([sum(st.cache_hits.values()), sum(st.cache_misses.values())]))
"""


def _run(cache: Path, revision: str) -> list[int]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", CHILD, revision], env=env, capture_output=True, text=True,
                          check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_kernels_revision_is_in_their_cache_stamp(tmp_path: Path) -> None:
    """The same revision loads the cached kernel; another one (a helper module changed) misses and compiles."""
    assert _numba_bits.REVISION_LOCATOR
    assert _run(tmp_path, "-") == [0, 1]  # compiled and saved
    assert _run(tmp_path, "-") == [1, 0]  # loaded
    assert _run(tmp_path, "another revision") == [0, 1]  # stale: compiled again
    assert _run(tmp_path, "-") == [0, 1]  # the entry was overwritten by the other revision's


def test_the_stamp_wraps_numba_own_locator(tmp_path: Path) -> None:
    locator = _numba_log.log1p_nonneg_array._cache._impl._locator
    assert getattr(locator, "floatguard_revision", False)
    inner_stamp, revision = locator.get_source_stamp()
    assert revision == _numba_bits.kernels_revision() and inner_stamp == locator._inner.get_source_stamp()
    # a function of another file keeps numba's locators
    user = tmp_path / "user_kernel.py"
    user.write_text("import numba\n\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import user_kernel  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    try:
        assert not getattr(user_kernel.f._cache._impl._locator, "floatguard_revision", False)
    finally:
        del sys.modules["user_kernel"]


def test_the_revision_hashes_every_kernel_module() -> None:
    ops = Path(_numba_bits.__file__).parent
    names = sorted(p.name for p in ops.glob("_numba_*.py"))
    assert "_numba_log.py" in names and "_numba_columns.py" in names
    assert len(_numba_bits.kernels_revision()) == 16
