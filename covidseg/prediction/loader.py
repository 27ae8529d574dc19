"""Volumes read and windowed in background worker processes while the network runs.

A ``torch.utils.data.DataLoader`` over the cohort's volume studies (one item = one study, in
order): each worker reads a NIfTI file or DICOM series (``volumes.read_scan``, gunzip and pydicom
included), checks the HU protocol and windows it, and hands the main process the HU and 8-bit
slices as shared-memory tensors. With ``num_workers`` 0 the same code runs in the main process.
``prefetch_factor`` 1 bounds memory: at most ``num_workers`` studies wait beside the one predicted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import nibabel as nib
import numpy as np
import torch

from covidseg.data.volumes import apply_window, read_scan
from covidseg.prediction.jobs import Job

READ_ERRORS = (ValueError, OSError, cv2.error)


@dataclass
class Loaded:
    """One study as read by a worker. Shape: ``hu`` float32 ``[Z, H, W]``; ``slices`` uint8 the same."""

    ref: nib.Nifti1Image | None = None  # header, affine and shape for the outputs (no voxel data)
    hu: np.ndarray | None = None
    slices: np.ndarray | None = None
    note: str | None = None
    error: str = ""


class Studies(torch.utils.data.Dataset):
    """The volume jobs as a dataset: item ``i`` is ``(i, payload)`` (see ``Loaded``)."""

    def __init__(self, jobs: Sequence[Job], window: tuple[float, float]):
        self.jobs, self.window = list(jobs), window

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int):
        job = self.jobs[i]
        try:
            img, hu, note = read_scan(job.path, job.series or None)
        except READ_ERRORS as err:
            return i, {"error": str(err).removeprefix(f"{job.path}: ")}
        slices = apply_window(hu, *self.window)
        return i, {"ref": (type(img), img.header, img.affine, img.shape), "hu": torch.from_numpy(hu), "slices": torch.from_numpy(slices), "note": note}


def _first(batch):
    return batch[0]


def read_studies(jobs: Sequence[Job], window: tuple[float, float], num_workers: int = 0) -> Iterator[tuple[int, Loaded]]:
    """``(index in jobs, Loaded)`` for every volume job, in order, read by ``num_workers`` processes."""
    if not jobs:
        return
    loader = torch.utils.data.DataLoader(
        Studies(jobs, window), batch_size=1, collate_fn=_first, num_workers=num_workers,
        prefetch_factor=1 if num_workers else None, persistent_workers=False,
    )  # fmt: skip
    for i, item in loader:
        if "error" in item:
            yield i, Loaded(error=item["error"])
            continue
        cls, header, affine, shape = item["ref"]  # the header travels, not the voxels: a zero-stride view
        ref = cls(np.broadcast_to(np.uint8(0), shape), affine, header)
        yield i, Loaded(ref, item["hu"].numpy(), item["slices"].numpy(), item["note"])
