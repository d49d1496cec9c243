"""Two-process DDP training (gloo, CPU) under the monitor; run by test_distributed.py.

``python ddp_worker.py RANK WORLD OUTDIR PORT`` (one process per rank): rank 1 gets
a NaN sample at step 20. Each rank
writes its findings to ``OUTDIR/findings<rank>.json``; the monitor of each rank is
given its own log path ``OUTDIR/rank<rank>.jsonl`` so that the test sees which rank wrote.
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from floatguard.monitor import Monitor

STEPS = 40


def worker(rank: int, world: int, outdir: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = Monitor(model, opt, log=os.path.join(outdir, f"rank{rank}.jsonl"), live=False)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    losses = []
    for step in range(STEPS):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
        if rank == 1 and step == 20:
            x[3, 4] = math.nan
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss)
        opt.step()
        losses.append(loss.item())
    mon.close()
    with open(os.path.join(outdir, f"findings{rank}.json"), "w") as fh:
        json.dump({"findings": [e.to_dict() for e in mon.findings], "losses": losses,
                   "world_size": mon.world_size, "rank": mon.rank}, fh)
    # every rank is done with its collectives before either tears gloo down: without the
    # barrier, the rank that hosts the store (0) could exit while the other still used it
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    sys.stdout.flush()
    sys.stderr.flush()
    # skip the interpreter's teardown: gloo's threads still abort a process there now and then
    # on a loaded machine ("terminate called without an active exception"), after all is done
    os._exit(0)
