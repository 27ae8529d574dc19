"""One progress line per study, with the rate and an ETA over the studies of this run."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts finished studies of ``total`` and prints ``[k/total] NAME: status, ..., ETA``."""

    def __init__(self, total: int, label: str = "", write=None):
        self.total, self.done, self.label = total, 0, label
        self.start = self.last = time.perf_counter()
        self.write = write or (lambda line: print(line, file=sys.stdout, flush=True))

    def step(self, name: str, status: str, count: int = 1) -> str:
        """Records ``count`` finished studies (a batch of images counts each) and prints the line."""
        now = time.perf_counter()
        self.done += count
        took, elapsed = now - self.last, now - self.start
        self.last = now
        rate = self.done / elapsed * 3600 if elapsed > 0 else float("inf")
        left = (self.total - self.done) * elapsed / self.done if self.done else 0.0
        line = f"{self.label}[{self.done}/{self.total}] {name}: {status} in {took:.1f} s; {rate:.0f} studies/h, ETA {_duration(left)}"
        self.write(line)
        return line
