"""A torch.compile'd training step (forward and loss compiled, inductor) under detect() or Monitor.

``python compiled_train.py detect|monitor``: runs the same steps plain and watched in one
process and prints one JSON line: the two loss trajectories (exact, as hex), the findings
and how many graphs dynamo compiled. Run by tests/sanitize/test_compile.py in fresh processes.
"""

import json
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
init = {k: v.clone() for k, v in model.state_dict().items()}
x = torch.randn(32, 8)
y = torch.randint(0, 4, (32,))


def loss_fn(inp, target):
    return F.cross_entropy(model(inp), target)


def train(step, steps=3, watch=None):
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        loss = step(x, y)
        loss.backward()
        if watch is not None:
            watch.step(loss)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss).hex())
    return losses, opt


what = sys.argv[1]
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    plain, _ = train(torch.compile(loss_fn))
    if what == "detect":
        from floatguard.sanitize import detect

        with detect(action="record", quiet=True) as d:
            watched, _ = train(torch.compile(loss_fn))  # compiled inside detect(): checked at its outputs
            bad = torch.compile(lambda a: (a * a).sum())(x * 1e20)  # overflows inside the compiled graph
        out["events"] = [[e.kind, e.op, e.origin, e.severity] for e in d.events]
        out["bad"] = float(bad)
    else:
        from floatguard.monitor import Monitor

        model.load_state_dict(init)
        mon = Monitor(model, num_classes=4, every=1, live=False)
        watched, _ = train(torch.compile(loss_fn), watch=mon)
        mon.close()
        out["events"] = [[e.kind, e.message] for e in mon.findings]
        out["steps"] = mon.steps
        out["grad_norm"] = mon.state.gnorm[-1]
out["plain"], out["watched"] = plain, watched
out["graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
out["warnings"] = [str(w.message)[:200] for w in caught]
print(json.dumps(out))
