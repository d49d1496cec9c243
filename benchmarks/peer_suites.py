"""The peers' own test suites run against floatguard: SciPy's ``test_logsumexp.py`` and JAX's
softmax / logsumexp / logmeanexp tests (``tests/nn_test.py``, ``tests/lax_scipy_test.py``).

The harness is ``tests/peer/test_peer_suites.py``: each suite runs unchanged in a child
pytest with the peer's functions replaced by floatguard's, and every remaining failure
must be one of the listed deliberate differences. SciPy's file ships in its wheel and runs
in the test suite; JAX's tests are not in any package on PyPI, so they run here, from
``--jax-tests DIR`` (a folder with the two files, e.g. a checkout of jax at the installed
version's tag) or downloaded from the jax repository when that is reachable.

Run ``python benchmarks/peer_suites.py [--jax-tests DIR]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "peer"))

import test_peer_suites as harness  # the harness lives beside the test that uses it


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jax-tests", help="folder holding jax's tests/nn_test.py and tests/lax_scipy_test.py")
    args = parser.parse_args()
    if args.jax_tests:
        os.environ["FLOATGUARD_JAX_TESTS"] = args.jax_tests
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        sargs, env = harness.scipy_args()
        (Path(tmp) / "scipy").mkdir()
        runs["SciPy test_logsumexp.py"] = (harness.run_suite("scipy", sargs, Path(tmp) / "scipy", [], env),
                                           harness.SCIPY_EXPECTED_FAILURES)
        files, extra, reason = harness.jax_sources()
        if reason:
            print(f"JAX: not run: {reason}")
            status = 1
        else:
            (Path(tmp) / "jax").mkdir()
            runs[f"JAX nn_test.py + lax_scipy_test.py (-k '{harness.JAX_SELECT}')"] = (
                harness.run_suite("jax", [*files, "-k", harness.JAX_SELECT], Path(tmp) / "jax", extra, {}),
                harness.JAX_EXPECTED_FAILURES)
        for name, (result, expected) in runs.items():
            if isinstance(result, Exception):
                print(f"{name}: {result}")
                status = 1
                continue
            outcomes, _ = result
            run = {k: v for k, v in outcomes.items() if v != "skipped"}
            failed = sorted(k for k, v in run.items() if v != "passed")
            passed = len(run) - len(failed)
            print(f"{name}: {passed}/{len(run)} passed ({100 * passed / max(len(run), 1):.1f}%)")
            for case in failed:
                why = expected.get(case)
                print(f"  - {case}: {why if why else 'NEW FAILURE (not a listed deliberate difference)'}")
                status |= why is None
    return status


if __name__ == "__main__":
    raise SystemExit(main())
