"""Two-rank DDP (gloo) training where rank 1 overflows at step 2; argv[1]: 'op' or 'step'."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import floatguard.sanitize as fgs

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)


class Act(nn.Module):
    def forward(self, x):
        return torch.exp(x)  # L:ddp_exp


model = DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), Act(), nn.Linear(8, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.01)


def step(i):
    x = torch.randn(8, 4)
    if rank == 1 and i == 2:
        x = x * 1e4
    opt.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    return loss


code = 0
try:
    if sys.argv[1] == "op":
        with fgs.detect(quiet=rank != 1):
            for i in range(5):
                step(i)
    else:
        g = fgs.guard(step, quiet=rank != 1)
        for i in range(5):
            g(i)
    print(f"rank {rank} finished", flush=True)
except fgs.NumericalError as e:
    ev = e.event
    print(f"RESULT rank={rank} event_rank={ev.rank} op={ev.op} kind={ev.kind} module={ev.module} line={ev.line}",
          flush=True)
    code = 3
dist.barrier()  # both ranks are out of their collectives before gloo is torn down
dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)  # skip interpreter teardown: gloo/DDP threads occasionally abort there (seen with 2 ranks on CPU)
