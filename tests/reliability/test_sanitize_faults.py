"""The sanitizer never loses a finding or changes the program (issue 14, section 2).

Promise: ``floatguard run --json PATH`` writes this run's findings whatever the outcome
(SIGTERM included), never leaves a previous run's file as if it were this run's, and
keeps the script's exit status; ``guard`` never applies an update twice and keeps its
finding when the replay fails; ``detect()`` restores everything it patched, whatever
the order threads leave it in, and never overrides the user's own NumPy settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from floatguard.sanitize import cli  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}

# a script that records a finding (np.log(0)), says it is ready, then waits to be killed
_WAITS = textwrap.dedent("""
    import sys, time
    import numpy as np
    np.log(np.zeros(3))
    open(sys.argv[1], "w").close()
    time.sleep(60)
""")


def _floatguard_run(*argv: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "floatguard", "run", *argv], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the script never became ready"
        time.sleep(0.05)


# -- 4. floatguard run --json -------------------------------------------------------------------------------
def test_sigterm_still_writes_the_json(tmp_path: Path) -> None:
    script, ready, out = tmp_path / "waits.py", tmp_path / "ready", tmp_path / "out.json"
    script.write_text(_WAITS)
    proc = _floatguard_run("--action", "record", "--json", str(out), str(script), str(ready))
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    events = json.loads(out.read_text())["events"]
    assert [(e["kind"], e["op"]) for e in events] == [("div_by_zero", "np.log")]


def test_a_previous_runs_json_is_not_left_after_sigkill(tmp_path: Path) -> None:
    script, ready, out = tmp_path / "waits.py", tmp_path / "ready", tmp_path / "out.json"
    script.write_text(_WAITS)
    out.write_text('{"events": [], "first": null}\n')  # an earlier, clean run's findings
    proc = _floatguard_run("--action", "record", "--json", str(out), str(script), str(ready))
    _wait_for(ready, proc)
    assert not out.exists()  # removed at the start
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists()  # the killed run leaves no findings file passing for its own


def test_a_missing_directory_is_refused_before_the_script_runs(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "exits3.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    out = tmp_path / "no" / "such" / "out.json"
    ns = argparse_ns("--json", str(out), str(script))
    assert cli.run(ns) == 2
    assert not marker.exists()
    assert str(tmp_path / "no" / "such") in capsys.readouterr().err


def test_a_full_disk_keeps_the_scripts_exit_code(tmp_path: Path) -> None:
    resource = pytest.importorskip("resource")
    script, out = tmp_path / "exits3.py", tmp_path / "out.json"
    script.write_text("import numpy as np\nnp.log(np.zeros(2))\nraise SystemExit(3)\n")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))  # the report is longer than 16 bytes

    proc = subprocess.run([sys.executable, "-m", "floatguard", "run", "--action", "record", "--json", str(out),
                           str(script)], env=ENV, text=True, capture_output=True, timeout=120, preexec_fn=limit)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"cannot write the report to {out}" in proc.stderr
    assert not out.exists()  # no half-written report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".floatguard-")]


def argparse_ns(*argv: str) -> object:
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


# -- 9. a SyntaxError in the user's script ---------------------------------------------------------------
def test_a_syntax_error_shows_only_the_users_error(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("x = 1\ndef f(:\n    pass\n")
    ours = subprocess.run([sys.executable, "-m", "floatguard", "run", str(script)], env=ENV, text=True,
                          capture_output=True, timeout=120)
    plain = subprocess.run([sys.executable, str(script)], text=True, capture_output=True, timeout=60)
    assert ours.returncode == 1
    assert "cli.py" not in ours.stderr and "runpy" not in ours.stderr and "Traceback" not in ours.stderr
    assert ours.stderr.strip() == plain.stderr.strip()


# -- 5. guard with two optimizers ---------------------------------------------------------------------------
def _two_models() -> tuple[list[torch.nn.Module], list[torch.optim.Optimizer]]:
    torch.manual_seed(0)
    models = [torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)]
    return models, [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]


def _two_step(models: list[torch.nn.Module], opts: list[torch.optim.Optimizer], poison: bool) -> torch.Tensor:
    x = torch.ones(4, 3)
    losses = []
    for k, (m, o) in enumerate(zip(models, opts, strict=True)):
        o.zero_grad()
        loss = m(x).pow(2).mean()
        if poison and k == 1:
            loss = loss * float("nan")
        loss.backward()
        o.step()
        losses.append(loss.detach())
    return losses[0]


@pytest.mark.parametrize("action", ["warn", "record", "raise"])
def test_guard_refuses_two_updates_per_step_without_snapshot(action: str) -> None:
    from floatguard import guard

    models, opts = _two_models()
    step = guard(_two_step, action=action, quiet=True)
    with pytest.raises(RuntimeError, match="snapshot=True"):
        step(models, opts, False)  # refused at the first such step, healthy or not


def test_guard_with_snapshot_applies_each_update_once() -> None:
    from floatguard import guard

    models, opts = _two_models()
    step = guard(_two_step, action="record", quiet=True, snapshot=True)
    step(models, opts, False)
    before = models[0].weight.detach().clone()
    x = torch.ones(4, 3)
    grad = torch.autograd.grad(models[0](x).pow(2).mean(), models[0].weight)[0]
    step(models, opts, True)  # model 1's gradient is NaN: restored, replayed
    assert torch.equal(models[0].weight.detach(), before - 0.1 * grad)  # one update, not two
    assert any(e.kind == "nan" and e.step == 1 for e in step.report.events)


# -- 6. guard whose replay raises ------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["warn", "record", "raise"])
def test_guard_keeps_the_finding_when_the_replay_raises(action: str) -> None:
    from floatguard import guard

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = iter([torch.full((2, 3), float("nan"))])  # one batch: the replay finds the iterator exhausted

    def train_step() -> torch.Tensor:
        x = next(batches)
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        opt.step()
        return loss

    step = guard(train_step, action=action, quiet=True)
    with pytest.warns() if action == "warn" else contextlib.nullcontext(), pytest.raises(StopIteration):
        step()
    kinds = [(e.kind, e.severity, e.step) for e in step.report.events]
    assert ("nan", "error", 0) in kinds, kinds
    assert "StopIteration" in step.report.events[0].message


# -- 7. detect() in two threads, exits not LIFO ----------------------------------------------------------------
def test_detect_in_two_threads_restores_every_patch_whatever_the_exit_order() -> None:
    from torch.amp.grad_scaler import GradScaler

    from floatguard import detect

    originals = (torch.compile, GradScaler.scale, GradScaler.update)
    filters = list(__import__("warnings").filters)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []
    seen: dict[str, object] = {}

    def first() -> None:  # enters first, exits first
        try:
            with detect(action="record", quiet=True, torch=True):
                a_in.set()
                assert b_in.wait(30)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            a_out.set()

    def second() -> None:  # enters second, exits last
        try:
            assert a_in.wait(30)
            with detect(action="record", quiet=True, torch=True):
                b_in.set()
                assert a_out.wait(30)
                seen["compile"] = torch.compile  # still patched: this thread's context is active
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert seen["compile"] is not originals[0]
    assert (torch.compile, GradScaler.scale, GradScaler.update) == originals
    assert list(__import__("warnings").filters) == filters
    # and outside any detect(), a compiled function is torch's own again
    assert torch.compile(lambda x: x + 1, backend="eager")(torch.ones(2)).tolist() == [2.0, 2.0]


def test_torch_compile_in_another_thread_is_not_wrapped() -> None:
    from floatguard import detect

    out: list[object] = []
    inside, done = threading.Event(), threading.Event()

    def other() -> None:
        assert inside.wait(30)
        fn = torch.compile(lambda x: torch.log(x), backend="eager")
        out.append(fn(torch.zeros(2)))  # no detect() in this thread: nothing recorded, nothing raised
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with detect(action="raise", quiet=True, torch=True) as d:
        inside.set()
        assert done.wait(60)
    t.join(60)
    assert out and bool(torch.isinf(out[0]).all()) and d.events == []


# -- 8. the user's own NumPy settings win ------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["record", "warn"])
def test_numpy_seterr_raise_is_kept_inside_detect(action: str) -> None:
    from floatguard import detect

    old = np.seterr(all="raise")
    try:
        with (pytest.warns() if action == "warn" else contextlib.nullcontext()), \
                detect(action=action, quiet=True, torch=False) as d, \
                pytest.raises(FloatingPointError, match="divide by zero"):
            np.float64(1.0) / np.float64(0.0)
        assert [e.kind for e in d.events] == ["div_by_zero"]  # recorded, and raised as the user asked
        with (pytest.warns() if action == "warn" else contextlib.nullcontext()), \
                detect(action=action, quiet=True, torch=False), pytest.raises(FloatingPointError, match="invalid"):
            np.sqrt(np.array([-1.0]))
        assert np.geterr() == {"divide": "raise", "over": "raise", "under": "raise", "invalid": "raise"}
    finally:
        np.seterr(**old)


def test_numpy_seterr_call_is_still_called_inside_detect() -> None:
    from floatguard import detect

    calls: list[str] = []
    old = np.seterr(divide="call")
    old_call = np.seterrcall(lambda kind, flag: calls.append(kind))
    try:
        with detect(action="record", quiet=True, torch=False) as d:
            np.array([1.0]) / 0.0
        assert calls == ["divide by zero"] and [e.kind for e in d.events] == ["div_by_zero"]
    finally:
        np.seterr(**old)
        np.seterrcall(old_call)
