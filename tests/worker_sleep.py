"""A dataset for tests/test_ddp.py: its first item writes the worker's pid to a file and sleeps,
as a worker stuck in its first batch does."""

import os
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset


class SleepFirst(Dataset):
    def __init__(self, pid_file: str):
        self.pid_file = pid_file

    def __len__(self):
        return 2

    def __getitem__(self, i):
        if i == 0:
            Path(self.pid_file).write_text(str(os.getpid()))
            time.sleep(20)
        return torch.zeros(1)
