"""The training-health monitor in a training loop, then its report.

Trains a deep sigmoid network (it cannot learn: the gradient vanishes and the loss
stays at ln 10), logs to ``monitor_basic.jsonl`` and writes ``monitor_basic.html``::

    python examples/monitor_basic.py [OUTPUT_DIR]
    floatguard report monitor_basic.jsonl -o monitor_basic.html   # the same report from the CLI
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from floatguard.monitor import Monitor
from floatguard.monitor.report import print_summary, write_report


def main(outdir: str = ".") -> list:
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 10)).argmax(1)
    layers: list[nn.Module] = [nn.Linear(20, 32), nn.Sigmoid()]
    for _ in range(9):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    log = os.path.join(outdir, "monitor_basic.jsonl")
    if os.path.exists(log):
        os.remove(log)  # a second run would append, as a resumed run does
    mon = Monitor(model, opt, num_classes=10, log=log)
    for step in range(220):
        idx = torch.randint(0, 512, (32,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        mon.step(loss)  # after backward, before optimizer.step()
        opt.step()
    mon.close()
    print_summary(mon.findings, steps=mon.steps)
    write_report(log, os.path.join(outdir, "monitor_basic.html"))
    return mon.findings


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
