"""Screenshots of floatguard's HTML reports for the docs, made from fresh runs of the examples.

    python docs/screenshots.py OUTDIR

writes ``OUTDIR/monitor-report.png`` (the report of ``examples/monitor_basic.py``, a run that
cannot learn) and ``OUTDIR/sanitizer-report.png`` (``floatguard report`` of the findings of
``floatguard run --json`` on ``examples/nan_training.py``). The two runs go in parallel, then
headless Chromium renders each page. The docs build (``docs/hooks.py``) calls this.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("docs/screenshots.py: headless Chromium is needed (apt-get install -y chromium)")
    return exe


def _shoot(page: Path, png: Path, size: str) -> subprocess.Popen[bytes]:
    profile = png.with_suffix(".profile")
    return subprocess.Popen([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                             f"--screenshot={png}", page.as_uri()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(outdir: str) -> None:
    out = Path(outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "floatguard"]
    monitor = subprocess.Popen([sys.executable, str(ROOT / "examples" / "monitor_basic.py"), str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    findings = out / "findings.json"
    run = subprocess.run([*cli, "run", "--json", str(findings), "examples/nan_training.py"],
                         capture_output=True, cwd=ROOT, timeout=300)
    if not findings.exists():
        raise SystemExit(f"docs/screenshots.py: floatguard run wrote no findings:\n{run.stderr.decode()[-2000:]}")
    subprocess.run([*cli, "report", str(findings), "-o", str(out / "sanitizer.html"), "-q"], check=True, cwd=ROOT)
    shots = [_shoot(out / "sanitizer.html", out / "sanitizer-report.png", "1100,700")]
    if monitor.wait(timeout=300) != 0:
        raise SystemExit("docs/screenshots.py: examples/monitor_basic.py failed")
    shots.append(_shoot(out / "monitor_basic.html", out / "monitor-report.png", "1200,1400"))
    for s in shots:
        s.wait(timeout=120)
    missing = [p.name for p in (out / "sanitizer-report.png", out / "monitor-report.png") if not p.exists()]
    if missing:
        raise SystemExit(f"docs/screenshots.py: Chromium wrote no {', '.join(missing)}")


if __name__ == "__main__":
    main(sys.argv[1])
