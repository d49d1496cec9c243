"""torch.compile under the sanitizer and the monitor: the compiled step stays compiled, nothing is traced into.

Two fresh processes share one inductor cache (the second compiles nothing): each runs the
same compiled training step (forward and loss compiled, backward through the compiled
graph) plain and watched, and the watched losses must be bit-identical to the plain ones.
Before, the sanitizer's dispatch mode made dynamo fall back to eager for every compiled
call (other numerics) and dynamo tried to compile floatguard's own hooks and
``__torch_dispatch__`` until it hit its recompile limit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

PROGRAM = Path(__file__).parent / "programs" / "compiled_train.py"
SRC = Path(__file__).resolve().parents[2] / "src"


def _run(what: str, cache: Path) -> tuple[dict, str]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(PROGRAM), what], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _no_dynamo_trouble(stderr: str, out: dict) -> None:
    text = stderr + "\n".join(out["warnings"])
    assert not re.search(r"floatguard/\w+/\w+\.py", text), text[-3000:]  # dynamo met no floatguard frame
    assert "recompile_limit" not in text and "graph break" not in text.lower(), text[-3000:]


def test_sanitizer_and_monitor_on_a_compiled_training_step(tmp_path):
    cache = tmp_path / "inductor"
    out, err = _run("detect", cache)
    _no_dynamo_trouble(err, out)
    assert out["watched"] == out["plain"], "detect() changed the compiled step's numerics (eager fallback?)"
    assert out["graphs"] == 2  # the training step and the overflowing function: both compiled, once each
    first = out["events"][0]
    assert first[:4] == ["overflow", "torch.compile(<lambda>)", "produced", "error"]  # checked at its output
    assert out["bad"] == float("inf")

    out, err = _run("monitor", cache)  # a fresh process on the warm cache
    _no_dynamo_trouble(err, out)
    assert out["watched"] == out["plain"] and out["graphs"] == 1
    assert out["steps"] == 3 and out["events"] == [] and 0 < out["grad_norm"] < float("inf")
