"""Speed and false-positive rate of ``floatguard lint`` on real, mature code.

Lints the Python sources of the installed torch package (``torch/nn`` by default,
the tree TorchFix was measured on in the issue; ``--tree all`` for the whole
package) with every core, and prints lines per second side by side with TorchFix
(``torchfix --select ALL``) on the same tree when TorchFix is installed. Then it
lists every finding on ``torch/nn`` and the rate per 5,000 lines (target: at most
one per 5,000 lines of mature code).

Then cold and warm runs side by side with ruff, each a fresh process on the same tree (medians of
interleaved rounds, wall and CPU seconds): ``ruff check --select ALL --no-cache`` (cold) and with its
cache primed (warm), against ``floatguard lint --no-cache`` (cold) and with its per-file result cache
primed (warm). Targets (issue 11, section 4): warm <= ruff's warm time, cold <= 3x ruff's cold time.

Figures (torch/nn, 138 files, 50.7k lines; 2 workers beside ruff 0.17.6 with 2 threads; a 2-core machine shared
with other jobs, so a ratio moves by up to 20% from run to run: medians of 9-11 interleaved rounds). Cold, before
and after the cold-run work of session 10 (one tree-walk table per node type, imports read from statements only, a
text test before following callees back, one parse per text for a module and its helpers, fewer garbage
collections while parsing): interleaved in one run, 4.8x -> 3.2x ruff's wall and 4.2x -> 3.3x its CPU; over six
runs after, 3.0-4.2x wall and 3.3-3.5x CPU (before: 3.7-4.8x wall, 3.8-4.3x CPU). The same findings before and
after on 3.3 M lines (the 23 packages of ``lint_precision`` and torch, ``--select ALL``). Warm: 0.78-0.99x wall,
0.83-0.89x CPU. Of a cold run, start-up alone (``import floatguard``, which imported NumPy for its ops) was 0.55x
ruff's whole run, parsing about a quarter of the rest, the rules' analysis the remainder.

Then the last changes of session 10 (the package's ops imported on first use, PEP 562, so a lint run imports no
NumPy and starts in about 0.1 s CPU, 0.3x ruff's whole run; FG301/FG303 asking ``ctx.may_call`` before following a
callee back; ``flow.py`` walking by the per-type field tables of ``lint/astwalk.py``; ``Config`` resolving each
directory once): the trees before and after interleaved in one run with ruff, three runs of 9 rounds on a machine
at load 8-10: cold 4.1-4.4x -> 2.9-3.3x ruff's wall and 3.4-3.6x -> 2.40-2.49x its CPU; warm 0.9-1.1x -> 0.49-0.58x
wall and 0.83-0.87x -> 0.45x CPU. This script alone, after: cold 2.74x wall, 2.36x CPU; warm 0.43x wall, 0.44x CPU;
on a quiet machine (load < 1, ``--jobs 2 --ruff-rounds 11``, three runs): cold 1.60-1.63x wall, 2.18-2.22x CPU;
warm 0.48-0.51x wall, 0.39-0.42x CPU.
The same findings before and after (the 23 packages and ``torch/nn``, ``--select ALL``: 191 findings, equal in
path, line, column, code and message).

Then ``--fix`` on one generated file (``--fix-blocks`` functions of 4 lines, each with one
floatguard fix ``np.log(np.exp(z).sum())`` and one ruff fix ``f"x"``, F541): plain lint, ``--fix``
and ``ruff check --select F541 --fix`` on copies of the same file, in subprocesses, medians
of interleaved rounds. Target: ``--fix`` within 10x of plain lint.

    python benchmarks/lint_speed.py [--tree nn|all|PATH] [--jobs N] [--repeat 3] [--no-torchfix]
                                    [--ruff-rounds 5] [--fix-blocks 50000] [--fix-rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from floatguard.lint import lint_paths
from floatguard.lint.engine import iter_python_files


def torch_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        sys.exit("torch is not installed")
    return Path(spec.origin).parent


def count_lines(tree: Path) -> tuple[int, int]:
    files = list(iter_python_files([tree]))
    lines = 0
    for f in files:
        with open(f, "rb") as fh:
            lines += fh.read().count(b"\n")
    return len(files), lines


def time_floatguard(tree: Path, jobs: int, repeat: int) -> tuple[float, int]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        results = lint_paths([tree], jobs=jobs, use_config=False)
        best = min(best, time.perf_counter() - t0)
        n = sum(len(r.events) for r in results)
    return best, n


def time_torchfix(tree: Path, jobs: int, repeat: int) -> float | None:
    exe = shutil.which("torchfix") or str(Path(sys.executable).parent / "torchfix")
    if not os.path.exists(exe):
        return None
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([exe, "--select", "ALL", "-j", str(jobs), str(tree)], capture_output=True, check=False)
        best = min(best, time.perf_counter() - t0)
    return best


def _run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one subprocess; CPU is user + system time of the child and its workers."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=False, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def time_vs_ruff(tree: Path, jobs: int, rounds: int) -> None:
    """Cold and warm ``floatguard lint`` beside cold and warm ``ruff check --select ALL``: medians of ``rounds``
    interleaved rounds, each command a fresh process (start-up included, as a user runs it)."""
    import statistics
    import tempfile

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not os.path.exists(ruff):
        print("\nruff: not installed (pip install ruff); no side-by-side timing")
        return
    env = {**os.environ, "RAYON_NUM_THREADS": str(jobs)}  # ruff's threads = floatguard's worker processes
    with tempfile.TemporaryDirectory() as d:
        # as an installed package runs: bytecode compiled once (kept out of the source tree), not on every start
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(d) / "pycache")
        rc, fc = Path(d) / "ruff_cache", Path(d) / "fg_cache"
        fg = [sys.executable, "-m", "floatguard.lint", "--no-config", "--exit-zero", "-j", str(jobs)]
        rf = [ruff, "check", "--isolated", "--select", "ALL", "--exit-zero", "-q"]
        cmds = {
            "ruff cold      ": [*rf, "--no-cache", str(tree)],
            "ruff warm      ": [*rf, "--cache-dir", str(rc), str(tree)],
            "floatguard cold": [*fg, "--no-cache", str(tree)],
            "floatguard warm": [*fg, "--cache-dir", str(fc), str(tree)],
        }
        for name in ("ruff warm      ", "floatguard warm"):  # prime the caches
            _run_timed(cmds[name], env)
        wall: dict[str, list[float]] = {k: [] for k in cmds}
        cpu: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(rounds):
            for name, cmd in cmds.items():
                w, c = _run_timed(cmd, env)
                wall[name].append(w)
                cpu[name].append(c)
    mw = {k: statistics.median(v) for k, v in wall.items()}
    mc = {k: statistics.median(v) for k, v in cpu.items()}
    version = subprocess.run([ruff, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"\nside by side with {version}"
          f" ({jobs} threads/processes; median of {rounds} interleaved rounds; fresh processes)")
    for k in cmds:
        print(f"  {k}: {mw[k]:6.2f} s wall  {mc[k]:6.2f} s CPU")
    for what, ref, target in (("cold", "ruff cold      ", 3.0), ("warm", "ruff warm      ", 1.0)):
        ours = f"floatguard {what}"
        print(f"  {what}: floatguard / ruff = {mw[ours] / mw[ref]:.2f}x wall, {mc[ours] / mc[ref]:.2f}x CPU "
              f"(target <= {target:g}x)")


def fix_file(blocks: int, path: Path) -> None:
    parts = ["import numpy as np\n\n"]
    parts += [f"def f{i}(z):\n    a = f\"x\"\n    return np.log(np.exp(z).sum())\n\n" for i in range(blocks)]
    path.write_text("".join(parts))


def time_fix(blocks: int, rounds: int) -> None:
    """Median seconds of plain lint, ``--fix`` and ruff's ``--fix`` on the same generated file."""
    import statistics
    import tempfile

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    cmds = {
        "floatguard lint      ": [sys.executable, "-m", "floatguard.lint", "--no-config", "--exit-zero"],
        "floatguard lint --fix": [sys.executable, "-m", "floatguard.lint", "--no-config", "--exit-zero", "--fix"],
    }
    if os.path.exists(ruff):
        cmds["ruff check --fix     "] = [ruff, "check", "--no-cache", "--isolated", "--select", "F541", "--fix",
                                         "--exit-zero"]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "src.py"
        fix_file(blocks, src)
        nlines = src.read_text().count("\n")
        for _ in range(rounds):
            for name, cmd in cmds.items():
                f = Path(d) / "work.py"
                shutil.copyfile(src, f)
                t0 = time.perf_counter()
                subprocess.run([*cmd, str(f)], capture_output=True, check=False)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n--fix on one file of {nlines:,} lines, {blocks:,} fixes each (median of {rounds} interleaved rounds)")
    lint = med["floatguard lint      "]
    for k, v in med.items():
        print(f"  {k}: {v:7.2f} s  ({v / lint:5.2f}x plain lint)")
    print(f"  --fix / plain lint: {med['floatguard lint --fix'] / lint:.2f}x (target <= 10x)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default="nn", help="'nn' (torch/nn), 'all' (the torch package) or a directory")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-torchfix", action="store_true")
    ap.add_argument("--ruff-rounds", type=int, default=5, help="rounds of the side-by-side with ruff (0: skip)")
    ap.add_argument("--fix-blocks", type=int, default=50000, help="functions in the --fix file (0: skip)")
    ap.add_argument("--fix-rounds", type=int, default=3)
    args = ap.parse_args(argv)

    root = torch_root()
    tree = {"nn": root / "nn", "all": root}.get(args.tree, Path(args.tree))
    nfiles, nlines = count_lines(tree)
    print(f"tree: {tree}  ({nfiles} files, {nlines:,} lines; {args.jobs} worker processes)")

    seconds, nfind = time_floatguard(tree, args.jobs, args.repeat)
    rate = nlines / seconds
    print(f"floatguard lint : {seconds:7.2f} s  {rate:10,.0f} lines/s  ({nfind} findings)")
    if not args.no_torchfix:
        tf = time_torchfix(tree, args.jobs, 1)
        if tf is None:
            print("torchfix        : not installed (pip install torchfix)")
        else:
            print(f"torchfix 0.7    : {tf:7.2f} s  {nlines / tf:10,.0f} lines/s")
            print(f"speed-up        : {tf / seconds:.1f}x")

    nn = root / "nn"
    results = lint_paths([nn], jobs=args.jobs, use_config=False)
    events = [e for r in sorted(results, key=lambda r: r.path) for e in r.events]
    nn_lines = sum(r.lines for r in results)
    print(f"\nfindings on torch/nn: {len(events)} in {nn_lines:,} lines = "
          f"{len(events) / nn_lines * 5000:.2f} per 5,000 lines (target <= 1)")
    for e in events:
        print(f"  {Path(e.file or '').relative_to(root.parent)}:{e.line}:{e.col}: {e.code} {e.message}")
    if args.ruff_rounds:
        time_vs_ruff(tree, args.jobs, args.ruff_rounds)
    if args.fix_blocks:
        time_fix(args.fix_blocks, args.fix_rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
