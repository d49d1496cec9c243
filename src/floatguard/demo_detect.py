"""``floatguard demo``, second half: silent failures found while (or before) they happen.

The cures of :mod:`floatguard.demo` help only where someone knows to use them. These
sections show the tools that find the places that need them, each on a small live run:

* the training monitor (:class:`floatguard.Monitor`) on a run that fails silently — a
  softmax at the end of the model, then ``cross_entropy``, which applies another: no
  error, no NaN, the loss creeps down, and it can never fall below a floor;
* the sanitizer (:func:`floatguard.detect`) on a run that goes NaN, naming the first
  bad op, its module and its line (NumPy through ``np.errstate`` without torch);
* the linter (:func:`floatguard.lint.lint_source`) flagging that same line before
  anything runs, and the fix it writes, which then trains without a finding.

:func:`run_detection` prints the sections and returns what they found as data.
"""

from __future__ import annotations

import difflib
import linecache
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["PROGRAM_NAME", "program_source", "run_detection"]

PROGRAM_NAME = "train.py"  # the file name the demo's NaN program runs under (and is linted as)
TORCH_EXTRA = ("`pip install 'floatguard[torch]'` adds the training monitor (here: a softmax fed to cross_entropy, "
               "named with its remedy) and the sanitizer's nn.Module paths and backward ops")

_NUMPY_PROGRAM = '''\
import numpy as np


def softmax(z):
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def train(x, y, steps=6, lr=0.5):
    w = np.zeros((x.shape[1], 3))
    for step in range(steps):
        p = softmax(x @ w)
        loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
        w -= lr * x.T @ (p - np.eye(3)[y]) / len(y)
        yield step, float(loss)
'''

_TORCH_PROGRAM = '''\
import torch
from torch import nn


class Softmax(nn.Module):
    def forward(self, z):
        return torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)


class Classifier(nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.probs = Softmax()

    def forward(self, x):
        return self.probs(self.linear(x))


def train(x, y, steps=6, lr=0.5):
    torch.manual_seed(0)
    model = Classifier(x.shape[1], 3)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        loss = -torch.log(model(x)[torch.arange(len(y)), y] + 1e-12).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield step, loss.item()
'''


def program_source(torch: bool) -> str:
    """The source of the demo's NaN program: the torch one, or the NumPy one (base install)."""
    return _TORCH_PROGRAM if torch else _NUMPY_PROGRAM


def _data(torch: Any) -> tuple[Any, Any]:
    """Three classes of raw (unnormalised, scale 40) features: the logits outgrow exp's range at once."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)) * 40.0
    y = (x @ rng.normal(size=(4, 3))).argmax(1)
    if torch is not None:
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return x, y


def _load(source: str, name: str) -> dict[str, Any]:
    """Execute ``source`` as the module ``name``; its lines stay readable to the sanitizer (linecache)."""
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace: dict[str, Any] = {"__name__": name.removesuffix(".py")}
    exec(compile(source, name, "exec"), namespace)  # the demo's own program text, shown in full above
    return namespace


def _losses(steps: Iterator[tuple[int, float]]) -> list[float]:
    with np.errstate(all="ignore"):
        return [loss for _, loss in steps]


# -- the runs -----------------------------------------------------------------------
def _monitor_run(torch: Any) -> dict[str, Any]:
    """A softmax at the end of the model, then cross_entropy: the monitor's ``stalled_loss``."""
    import torch.nn.functional as F
    from torch import nn

    from .monitor import Monitor

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    y = (x @ torch.randn(20, 10, generator=g)).argmax(1)
    curves: dict[str, list[tuple[int, float, float]]] = {}
    findings: list[Any] = []
    log = logging.getLogger("floatguard.monitor")
    was_disabled, log.disabled = log.disabled, True  # the demo prints the findings itself
    try:
        for label, softmax in (("with the softmax", True), ("softmax removed", False)):
            torch.manual_seed(0)
            layers: list[Any] = [nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10)]
            model = nn.Sequential(*layers, *([nn.Softmax(dim=1)] if softmax else []))
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            mon = Monitor(model, opt, live=False)
            rows = curves[label] = []
            for step in range(40):
                idx = torch.arange(32) + (step * 32) % 512
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                mon.step(loss)
                opt.step()
                if step % 10 == 0 or step == 39:
                    with torch.no_grad():
                        acc = float((model(x).argmax(1) == y).float().mean())
                    rows.append((step, loss.item(), acc))
            mon.close()
            if softmax:
                findings = list(mon.findings)
            elif mon.findings:
                curves[label + " (findings: " + ", ".join(e.kind for e in mon.findings) + ")"] = curves.pop(label)
    finally:
        log.disabled = was_disabled
    return {"curves": curves, "findings": [e.to_dict() for e in findings],
            "code": "nn.Sequential(..., nn.Linear(64, 10), nn.Softmax(dim=1));  F.cross_entropy(model(x), y)"}


def _sanitizer_run(torch: Any) -> dict[str, Any]:
    """The NaN program once plainly (losses), once under ``detect()`` (the first bad op)."""
    from .sanitize import NumericalError, detect

    source = program_source(torch is not None)
    x, y = _data(torch)
    losses = _losses(_load(source, PROGRAM_NAME)["train"](x, y))
    event = None
    failed_at = None
    train = _load(source, PROGRAM_NAME)["train"]
    with detect(quiet=True, torch=torch is not None):  # action="raise": stop at the first finding
        try:
            for step, _ in train(x, y):
                failed_at = step + 1
        except NumericalError as err:
            event = err.event
    return {"backend": "torch" if torch is not None else "numpy", "source": source, "losses": losses,
            "event": None if event is None else event.to_dict(), "step": failed_at if event is not None else None}


def _lint_run(torch: Any) -> dict[str, Any]:
    """Lint the NaN program, apply its fixes, and train the fixed program under ``detect()``.

    The safe fixes come first; where they leave the finding (the NumPy program: its fix adds
    ``import floatguard``, which the linter counts as unsafe), the unsafe ones too, as
    ``--fix --unsafe-fixes`` does (``"unsafe"`` in the result says which)."""
    from .lint import fix_source, lint_source
    from .sanitize import detect

    source = program_source(torch is not None)
    findings = [e.to_dict() for e in lint_source(source, PROGRAM_NAME)]
    fixed, applied, left = fix_source(source, PROGRAM_NAME)
    unsafe = bool(left)
    if unsafe:
        fixed, applied, _ = fix_source(source, PROGRAM_NAME, unsafe=True)
    old, new = source.splitlines(), fixed.splitlines()
    changed: list[dict[str, Any]] = []
    for op, i0, i1, j0, j1 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op != "equal":
            changed.append({"line": i0 + 1, "before": old[i0:i1], "after": new[j0:j1]})
    x, y = _data(torch)
    name = "train_fixed.py"
    train = _load(fixed, name)["train"]
    with detect(action="record", quiet=True, torch=torch is not None) as d:
        losses = _losses(train(x, y))
    return {"findings": findings, "fixes_applied": applied, "fixed_source": fixed, "unsafe": unsafe,
            "changed": changed,
            "fixed_losses": losses, "fixed_events": [e.to_dict() for e in d.events]}


# -- the sections ----------------------------------------------------------------------
def _g(v: float) -> str:
    return f"{v:.4g}"


def _panel(console: Any, title: str, rows: list[tuple[str, str]], style: str = "red") -> None:
    """A finding as a panel: one labelled line for what, where, the evidence and what to do."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, text in rows:
        grid.add_row(Text(label), Text(text))
    console.print(Panel(grid, title=Text(title, style=f"bold {style}"), title_align="left", border_style=style))


def _monitor_section(console: Any, index: int, torch: Any) -> dict[str, Any]:
    from rich.table import Table
    from rich.text import Text

    run = _monitor_run(torch)
    section = {
        "title": "A run that fails silently: the monitor names the cause",
        "why": ("Nothing errors and nothing is NaN: the loss creeps down as if training were merely slow. The model "
                "ends in a softmax and cross_entropy applies its own, so the loss has a floor and its gradient is "
                "squashed (the same model without it: right). floatguard.Monitor sees probabilities reach the loss."),
        "naive_code": run["code"],
        "stable_code": "mon = floatguard.Monitor(model, opt); ...; mon.step(loss)",
        **run,
    }
    _header(console, index, section)
    table = Table(header_style="bold")
    table.add_column("step", justify="right")
    for label in run["curves"]:
        table.add_column(f"loss, {label}", justify="right")
        table.add_column("accuracy", justify="right")
    curves = list(run["curves"].values())
    for i, (step, *_) in enumerate(curves[0]):
        table.add_row(Text(str(step)), *(Text(t) for c in curves for t in (_g(c[i][1]), f"{c[i][2]:.0%}")))
    console.print(table)
    for e in run["findings"]:
        found = e["stats"].get("detected_at", e["step"])
        _panel(console, f"monitor: {e['kind']}, found at step {found} of {curves[0][-1][0] + 1}",
               [("what", e["message"]), ("where", e["module"] or "the loss curve"), ("remedy", e["hint"] or "")],
               style="yellow")
    if not run["findings"]:
        console.print(Text("the monitor found nothing (unexpected: please report it)", style="bold red"))
    return section


def _sanitizer_section(console: Any, index: int, torch: Any) -> dict[str, Any]:
    from rich.text import Text

    run = _sanitizer_run(torch)
    fmax = "88.7 in float32" if torch is not None else "709 in float64"
    section = {
        "title": "A run that goes NaN: the sanitizer names the first bad op",
        "why": (f"Unnormalised features push the logits past exp's range ({fmax}); a hand-written softmax turns "
                "inf / inf into NaN and every later loss is NaN, with nothing to say where it began. "
                "floatguard.detect() checks each op as it runs and stops at the first that goes bad."),
        "naive_code": "for step, loss in train(x, y): print(step, loss)",
        "stable_code": "with floatguard.detect(): ...",
        **run,
    }
    _header(console, index, section)
    losses = ", ".join(f"{i}: {_g(v)}" for i, v in enumerate(run["losses"]))
    console.print(Text(f"{PROGRAM_NAME} ({run['backend']}), loss by step: {losses}"))
    e = run["event"]
    if e is None:
        console.print(Text("the sanitizer found nothing (unexpected: please report it)", style="bold red"))
        return section
    where = f"{e['file']}:{e['line']}" + (f", module {e['module']!r}" if e["module"] else "")
    rows = [("what", f"{e['kind']} in {e['op']} ({e['phase']}), step {run['step']}: {e['message']}"),
            ("where", where),
            ("line", linecache.getline(e["file"], e["line"]).strip())]
    st = e["stats"]
    if "input0.absmax" in st:
        rows.append(("evidence", f"{e['dtype']} {e['shape']}: inputs up to {_g(st['input0.absmax'])}, "
                                 f"{st['output.inf']} of {st['output.numel']} outputs inf"))
    rows.append(("remedy", e["hint"] or ""))
    _panel(console, f"sanitizer: {e['kind']} in {e['op']}", rows)
    return section


def _lint_section(console: Any, index: int, torch: Any) -> dict[str, Any]:
    from rich.table import Table
    from rich.text import Text

    run = _lint_run(torch)
    section = {
        "title": "Found before it runs: floatguard lint, and its fix",
        "why": ("The linter reads the source, not the values: it flags the same line before anything runs, and "
                "--fix writes the stable op in its place (same function, same inputs); the fixed program trains "
                "without a single finding."),
        "naive_code": f"floatguard lint {PROGRAM_NAME}",
        "stable_code": f"floatguard lint --fix {'--unsafe-fixes ' if run['unsafe'] else ''}{PROGRAM_NAME}",
        **run,
    }
    _header(console, index, section)
    table = Table(header_style="bold")
    for col in ("location", "code", "finding", "fix"):
        table.add_column(col, overflow="fold")
    for f in run["findings"]:
        table.add_row(Text(f"{PROGRAM_NAME}:{f['line']}:{f['col']}"), Text(f"{f['code']} {f['kind']}", style="bold"),
                      Text(f["message"]), Text(f["fix"]["edits"][0]["text"] if f["fix"] else "(none)"))
    console.print(table)
    for ch in run["changed"]:
        for text in ch["before"]:
            console.print(Text(f"- {ch['line']:>3} {text}", style="red"))
        for text in ch["after"]:
            console.print(Text(f"+ {ch['line']:>3} {text}", style="green"))
    losses = ", ".join(f"{i}: {_g(v)}" for i, v in enumerate(run["fixed_losses"]))
    console.print(Text(f"fixed {PROGRAM_NAME}, loss by step: {losses}"))
    console.print(Text(f"sanitizer findings in the fixed run: {len(run['fixed_events'])}"))
    return section


def _header(console: Any, index: int, section: dict[str, Any]) -> None:
    from .demo import _print_header

    _print_header(console, index, section)


def run_detection(console: Any, torch: Any, torch_missing: str | None = None,
                  skipped: list[str] | None = None, first: int = 9) -> dict[str, Any]:
    """Print the detection sections, numbered from ``first``; return ``{"monitor", "sanitizer", "lint"}``.

    ``torch`` is the imported module or None (base install: the monitor is skipped and
    the sanitizer and linter run on the NumPy program); what was skipped is appended
    to ``skipped``. Each value is the section's dict (``title``, ``why``, the run's data:
    ``findings``, ``event``, ``losses``, ``changed``...), ``monitor`` None when skipped.
    """
    from rich.text import Text

    console.print()
    console.rule(Text("detection: silent failures, found", style="bold"))
    out: dict[str, Any] = {"monitor": None}
    if torch is not None:
        out["monitor"] = _monitor_section(console, first, torch)
        first += 1
    elif skipped is not None:
        skipped.append(f"the training monitor and nn.Module names: torch is not importable ({torch_missing}); "
                       + TORCH_EXTRA)
    out["sanitizer"] = _sanitizer_section(console, first, torch)
    out["lint"] = _lint_section(console, first + 1, torch)
    return out
