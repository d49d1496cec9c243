"""pytest plugin run inside the child pytest of ``test_peer_suites.py``: puts floatguard's ops
in place of the peer's, then records each test's outcome.

Nothing happens at import (the parent's ``--doctest-modules`` imports this file too); the
hooks act only when ``FG_PEER_SUITE`` is set:

- ``scipy``: the names ``logsumexp``, ``softmax``, ``log_softmax`` that SciPy's test module
  imported, and those of ``scipy.special``, become floatguard's (after collection, so
  SciPy's own internals are untouched during import).
- ``jax``: ``jax.nn.softmax``, ``jax.nn.log_softmax``, ``jax.nn.logmeanexp`` and
  ``jax.scipy.special.logsumexp`` become floatguard's before the test modules are imported
  (their ``@parameterized.parameters([nn.softmax, ...])`` read the names at import).
  SciPy stays SciPy: JAX's tests use it as the reference.

Outcomes go to the JSON file ``FG_PEER_REPORT``: ``{"file.py::test id": "passed" | "failed" | "skipped"}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

_outcomes: dict[str, str] = {}
_files: dict[str, str] = {}  # nodeid -> name of the test file (ids of files outside the rootdir lack it)


def _patch_jax() -> None:
    import jax.nn
    import jax.scipy.special

    import floatguard as fg

    jax.nn.softmax = fg.softmax
    jax.nn.log_softmax = fg.log_softmax
    jax.nn.logmeanexp = fg.logmeanexp
    jax.scipy.special.logsumexp = fg.logsumexp


def pytest_configure(config: Any) -> None:
    if os.environ.get("FG_PEER_SUITE") == "jax":
        _patch_jax()


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    _files.update({item.nodeid: item.path.name for item in items})
    if os.environ.get("FG_PEER_SUITE") != "scipy":
        return
    import scipy.special

    import floatguard as fg

    names = {"logsumexp": fg.logsumexp, "softmax": fg.softmax, "log_softmax": fg.log_softmax}
    for item in items:
        module = getattr(item, "module", None)
        for name, fn in names.items():
            if module is not None and hasattr(module, name):
                setattr(module, name, fn)
    for name, fn in names.items():
        setattr(scipy.special, name, fn)


def pytest_runtest_logreport(report: Any) -> None:
    if not os.environ.get("FG_PEER_SUITE"):
        return
    if report.when == "call" or report.outcome != "passed":
        # an xfail marker of the peer's own (e.g. for another array library) counts as failed
        outcome = "failed" if hasattr(report, "wasxfail") else report.outcome
        # the test file's name and the id within it (files outside the rootdir have no path in nodeid)
        key = f"{_files.get(report.nodeid, '')}::{report.nodeid.split('::', 1)[1]}"
        if _outcomes.get(key) in (None, "passed"):
            _outcomes[key] = outcome


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get("FG_PEER_REPORT")
    if path and os.environ.get("FG_PEER_SUITE"):
        with open(path, "w") as f:
            json.dump(_outcomes, f, indent=1, sort_keys=True)
