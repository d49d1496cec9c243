"""Concurrent use changes nothing it should not (issue 14, section 4).

Promise: two ``floatguard lint --fix`` runs on one tree at once leave every file fixed
exactly once (as one run alone would fix it); ``detect()`` contexts entered and left in
any order across threads, nested or not, leave torch patched exactly while one is active
and unpatched afterwards; the training monitor, fed by a DataLoader with worker processes,
never changes a bit of the training it watches (its replay of a bad step included).
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from floatguard.lint import lint_paths

if TYPE_CHECKING:
    import torch

# -- 1. two `floatguard lint --fix` on one tree at once -------------------------------------------------------

_FN = """
def f{k}(z, w):
    a = np.log(np.exp(z).sum())
    b = np.log(np.sum(np.exp(w), axis=0))
    return a + b + {k}
"""
# each child imports floatguard, says it is ready, and starts linting when told: both start together
_LINT = ("import sys\nfrom floatguard.cli import main\nprint('ready', flush=True)\nsys.stdin.readline()\n"
         "raise SystemExit(main(sys.argv[1:]))\n")


def _tree(root: Path, files: int) -> None:
    rng = random.Random(files)
    for i in range(files):
        folder = root / ("sub" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        fns = "".join(_FN.format(k=k) for k in range(rng.randrange(15, 30)))
        (folder / f"m{i}.py").write_text(f'"""Module {i}."""\nimport numpy as np\n{fns}')


def test_two_fix_runs_at_once_fix_each_file_exactly_once(tmp_path: Path) -> None:
    tree, alone = tmp_path / "tree", tmp_path / "alone"
    _tree(tree, 36)
    shutil.copytree(tree, alone)
    res_alone = lint_paths([alone], fix="safe", use_config=False)
    assert sum(r.fixed for r in res_alone) > 1000  # what one run alone writes: the reference

    procs = [subprocess.Popen([sys.executable, "-c", _LINT, "lint", str(tree), "--fix", "--no-config"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n", p.communicate()[1][-3000:]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode in (0, 1) and "Traceback" not in err, err[-3000:]
        # a file the other run fixed first is skipped with a message, never written twice
        fg000 = [line for line in out.splitlines() if "FG000" in line]
        assert all("changed on disk" in line for line in fg000), fg000[:3]

    # every fix is counted by the run that wrote it (both count a file only if both wrote the same bytes)
    counted = [int(m) for out, _ in outs for m in re.findall(r"\((\d+) fixed", out)]
    assert sum(counted) >= sum(r.fixed for r in res_alone), counted
    files = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    assert files == sorted(p.relative_to(alone) for p in alone.rglob("*"))  # no temporary file left
    for rel in files:
        if (tree / rel).is_dir():
            continue
        new = (tree / rel).read_bytes()
        assert new == (alone / rel).read_bytes(), rel  # fixed exactly once: as one run alone fixes it
        # NumPy's own op: a safe fix adds no import (no new dependency)
        assert new.count(b"import") == 1 and b"floatguard" not in new and b"np.log(np.exp" not in new
        compile(new, str(rel), "exec")
    before = {rel: (tree / rel).read_bytes() for rel in files if (tree / rel).is_file()}
    again = lint_paths([tree], fix="safe", use_config=False)
    assert sum(r.fixed for r in again) == 0
    assert {rel: (tree / rel).read_bytes() for rel in before} == before  # a second run changes nothing


# -- 2. detect() nested, in threads, left in any order ---------------------------------------------------------

def _schedule(seed: int) -> list[tuple[int, str]]:
    """A random interleaving of 2-3 threads, each entering 1-3 nested detect() and leaving them (LIFO)."""
    rng = random.Random(seed)
    per = [[(k, "enter")] * d + [(k, "exit")] * d
           for k, d in enumerate(rng.choice([1, 2, 3]) for _ in range(rng.choice([2, 3])))]
    out: list[tuple[int, str]] = []
    while any(per):
        out.append(rng.choice([q for q in per if q]).pop(0))
    return out


def _patches() -> tuple[object, ...]:
    import torch
    from torch.amp.grad_scaler import GradScaler

    return torch.compile, GradScaler.scale, GradScaler.update


@pytest.mark.parametrize("seed", range(8))
def test_nested_detect_in_threads_patches_exactly_while_one_is_active(seed: int) -> None:
    torch = pytest.importorskip("torch")
    from floatguard import detect

    schedule = _schedule(seed)
    if seed == 0:  # one fixed case always: thread 0 leaves both its nested contexts while thread 1 is in
        schedule = [(0, "enter"), (1, "enter"), (0, "enter"), (0, "exit"), (0, "exit"), (1, "exit")]
    originals = _patches()
    turn = threading.Condition()
    state = {"next": 0, "active": 0}
    problems: list[str] = []

    def worker(me: int) -> None:
        mine: list[contextlib.AbstractContextManager[object]] = []  # this thread's contexts, innermost last
        try:
            for i, (who, what) in enumerate(schedule):
                if who != me:
                    continue
                with turn:
                    if not turn.wait_for(lambda i=i: state["next"] == i, timeout=60):
                        problems.append(f"thread {me} waited for its turn {i} in vain")
                        return
                    if what == "enter":
                        cm = detect(action="record", quiet=True, torch=True)
                        d = cm.__enter__()
                        mine.append(cm)
                        state["active"] += 1
                        bad = torch.log(torch.zeros(2))  # recorded by this thread's context
                        if not bad.isinf().all() or not any(e.kind == "div_by_zero" for e in d.events):
                            problems.append(f"step {i}: thread {me}'s detect() did not record log(0)")
                    else:
                        mine.pop().__exit__(None, None, None)
                        state["active"] -= 1
                    patched = [now is not orig for now, orig in zip(_patches(), originals, strict=True)]
                    if patched != [state["active"] > 0] * 3:
                        problems.append(f"step {i} ({me} {what}): active {state['active']}, patched {patched}")
                    state["next"] += 1
                    turn.notify_all()
        finally:
            while mine:  # a failed run must not leave torch patched for the tests after it
                mine.pop().__exit__(None, None, None)

    threads = [threading.Thread(target=worker, args=(k,)) for k in sorted({w for w, _ in schedule})]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert state["next"] == len(schedule), problems
    assert not problems, (schedule, problems)
    assert _patches() == originals
    # the warning filter the patches add goes with them (other libraries may add their own meanwhile)
    assert not [f for f in warnings.filters if f[1] is not None and "global hooks on modules" in f[1].pattern]
    # outside any detect(), torch.compile is torch's own and an overflow is nobody's business
    assert torch.compile(lambda x: torch.exp(x), backend="eager")(torch.full((2,), 1000.0)).isinf().all()


# -- 3. the monitor in a DataLoader-with-workers loop changes no bit of training ------------------------------

def _train(monitor: dict[str, object] | None, tmp_path: Path) -> tuple[list[float], list[torch.Tensor], object]:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from floatguard import Monitor

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    x[37, 2] = float("nan")  # one bad sample: its batch's loss is NaN and that update is skipped
    y = torch.randint(0, 4, (96,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=12, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    mon = None if monitor is None else Monitor(model, opt, live=False, log=tmp_path / "m.jsonl", **monitor)
    losses: list[float] = []
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            if mon is not None:
                mon.step(loss)
            if all(bool(p.grad.isfinite().all()) for p in model.parameters()):
                opt.step()
            losses.append(loss.item())
    found = mon.close() if mon is not None else None
    return losses, [p.detach().clone() for p in model.parameters()], found


@pytest.mark.parametrize("monitor", [{}, {"detailed": True, "replay": True}], ids=["default", "detailed-replay"])
def test_monitor_with_dataloader_workers_keeps_training_bit_identical(tmp_path: Path,
                                                                     monitor: dict[str, object]) -> None:
    torch = pytest.importorskip("torch")
    plain_losses, plain_params, _ = _train(None, tmp_path)
    losses, params, found = _train(monitor, tmp_path)
    assert np.isfinite(plain_losses).sum() == len(plain_losses) - 2  # only the bad batch, once per epoch
    assert np.array_equal(np.array(losses), np.array(plain_losses), equal_nan=True)
    assert all(torch.equal(a, b) for a, b in zip(params, plain_params, strict=True))
    bad = [e for e in found if e.kind == "nonfinite_loss"]  # type: ignore[attr-defined]
    assert bad and (not monitor.get("replay") or bad[0].replay is not None)  # the replay did run
