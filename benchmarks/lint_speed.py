"""Speed and false-positive rate of ``floatguard lint`` on real, mature code.

Lints the Python sources of the installed torch package (``torch/nn`` by default,
the tree TorchFix was measured on in the issue; ``--tree all`` for the whole
package) with every core, and prints lines per second side by side with TorchFix
(``torchfix --select ALL``) on the same tree when TorchFix is installed. Then it
lists every finding on ``torch/nn`` and the rate per 5,000 lines (target: at most
one per 5,000 lines of mature code).

    python benchmarks/lint_speed.py [--tree nn|all|PATH] [--jobs N] [--repeat 3] [--no-torchfix]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default="nn", help="'nn' (torch/nn), 'all' (the torch package) or a directory")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-torchfix", action="store_true")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
