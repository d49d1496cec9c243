"""A data pipeline that takes log(0) in a DataLoader worker (forked); prints the batches it got."""

import os

import torch
from torch.utils.data import DataLoader, Dataset


class LogData(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        x = torch.full((3,), 0.5)
        x[0] = 0.0 if i == 5 else 0.5  # one sample with a feature of 0
        return torch.log(x)  # L:worker_log


if __name__ == "__main__":
    print("main", os.getpid(), flush=True)
    loader = DataLoader(LogData(), batch_size=4, num_workers=2, multiprocessing_context="fork")
    print("batches", len(list(loader)), flush=True)
