"""Outputs written under a temporary name and renamed when the study is complete, so a killed
run leaves nothing that looks finished.

Each process stages into ``OUTPUT/.partial/HOST-PID/`` (same file system, so ``os.replace`` is
atomic) and removes its folder at the end; a killed process leaves its folder, which no output
name matches and ``covidseg merge`` removes once the cohort is complete.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path

PARTIAL = ".partial"


class Staging:
    """Temporary paths for one process's outputs in ``output``."""

    def __init__(self, output: str | Path):
        self.root = Path(output) / PARTIAL
        self.folder = self.root / f"{socket.gethostname()}-{os.getpid()}"

    def path(self, final: Path) -> Path:
        """Where ``final`` is written before ``commit`` (same name, so suffixes pick the format)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / final.name

    def commit(self, finals: Iterable[Path]) -> None:
        """Renames the staged files of ``finals`` onto their final names."""
        for final in finals:
            staged = self.folder / final.name
            if staged.exists():
                os.replace(staged, final)

    def discard(self, finals: Iterable[Path]) -> None:
        for final in finals:
            (self.folder / final.name).unlink(missing_ok=True)

    def close(self) -> None:
        """Removes this process's staging folder (and ``.partial`` when it is empty)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.root.rmdir()
        except OSError:
            pass  # other processes' folders, or none


def remove_leftovers(output: str | Path) -> None:
    """Removes ``.partial`` with what killed processes left there (call when the cohort is complete)."""
    shutil.rmtree(Path(output) / PARTIAL, ignore_errors=True)
