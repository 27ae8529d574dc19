"""Peak memory of training from NIfTI volumes: generates a set, checks it (decoding each volume
once into the slice cache), iterates the training DataLoader over every slice, and optionally
runs a short ``covidseg.fit`` on it.

    python scripts/volume_memory.py [--volumes 20] [--slices 300] [--size 512] [--workers 2]
        [--fit_batches 20] [--baseline] [--out DIR] [--json OUT]

The default is the issue's requirement: 20 volumes of 512x512x300 int16 HU (.nii.gz, label
maps), which must train under 4 GiB RSS. One volume is generated and copied (the content does
not matter for memory; every copy is its own file and cache entry). Memory is sampled every
0.1 s over the process and all its descendants (DataLoader workers, the fit subprocess): the
peak of the summed RSS (an upper bound: pages shared by forked workers count once per process)
and of the summed PSS (shared pages split between their users) are reported, with the time to
decode one volume and to read one cached slice. Needs Linux (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MIB = 2**20


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in Path(f"/proc/{pids[i]}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
        i += 1
    return pids


def _memory(pids: list[int]) -> tuple[int, int, int]:
    """Summed RSS, summed PSS and the largest single RSS of ``pids``, in bytes."""
    rss = pss = largest = 0
    for pid in pids:
        before = rss
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
        largest = max(largest, rss - before)
    return rss, pss, largest


class PeakMemory:
    """Samples summed RSS/PSS of a process tree in a thread; ``peak()`` returns bytes."""

    def __init__(self, pid: int | None = None, interval: float = 0.1):
        self.pid, self.interval = pid or os.getpid(), interval
        self.rss = self.pss = self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            rss, pss, largest = _memory(_tree(self.pid))
            self.rss, self.pss, self.largest = max(self.rss, rss), max(self.pss, pss), max(self.largest, largest)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_set(out: Path, volumes: int, slices: int, size: int) -> Path:
    """``volumes`` copies of one HU chest phantom (``covidseg.data.phantom``, 0.7 x 0.7 x 1 mm)
    in ``images/`` with its lesion mask in ``masks/``."""
    from covidseg.data.phantom import phantom, write_nifti

    p = phantom("chest", slices=slices, size=size, spacing=(1.0, 0.7, 0.7), lesions=max(3, slices // 40))
    for folder, data, dtype in (("images", p.hu, np.int16), ("masks", p.lesion, np.uint8)):
        write_nifti(out / folder / "case000.nii.gz", data, p, dtype=dtype)
        for c in range(1, volumes):
            shutil.copyfile(out / folder / "case000.nii.gz", out / folder / f"case{c:03d}.nii.gz")
    return out


def _fit_memory(data: Path, extra: list[str], a: argparse.Namespace, runs: Path, name: str) -> dict:
    """Peak memory of a short ``covidseg.fit`` subprocess (and its workers) on ``data``."""
    cmd = [sys.executable, "-m", "covidseg.fit", "--data.root", str(data), *extra, "--data.num_workers", str(a.workers)]
    cmd += ["--data.image_size", str(a.image_size), "--data.batch_size", str(a.batch_size), "--data.val_fraction", "0.1", "--data.test_fraction", "0.1"]
    cmd += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(a.fit_batches), "--trainer.limit_val_batches", "2", "--test", "false"]
    cmd += ["--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(runs)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with PeakMemory(proc.pid) as mem:
        _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"covidseg.fit failed:\n{err[-2000:]}")
    return {
        f"{name}_s": round(time.perf_counter() - t, 1),
        f"{name}_peak_rss_mib": round(mem.rss / MIB),
        f"{name}_peak_pss_mib": round(mem.pss / MIB),
        f"{name}_largest_process_rss_mib": round(mem.largest / MIB),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python scripts/volume_memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", type=int, default=20)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--image_size", "--image-size", type=int, default=128)
    p.add_argument("--batch_size", "--batch-size", type=int, default=16)
    p.add_argument("--fit_batches", "--fit-batches", type=int, default=20, help="training batches of the covidseg.fit run (0: no fit)")
    p.add_argument("--baseline", action="store_true", help="also measure the same fit on a PNG slice set (--volumes cases x 8 slices, --size px)")
    p.add_argument("--out", default=None, help="folder for the set and its cache, kept and reused (default: a temporary one, deleted)")
    p.add_argument("--json", default=None, help="write the figures here")
    a = p.parse_args(argv)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="covidseg-volmem-"))
    os.environ["COVIDSEG_CACHE"] = str(work / "cache")  # the fit subprocess inherits it
    from covidseg.data.datamodule import CTDataModule
    from covidseg.data.samples import image_of, mask_of
    from covidseg.data.volumes import read_voxels

    result: dict = {"volumes": a.volumes, "shape": [a.size, a.size, a.slices], "workers": a.workers, "image_size": a.image_size, "batch_size": a.batch_size}
    try:
        t = time.perf_counter()
        data = work / "data"
        if not (a.out and (data / "masks" / f"case{a.volumes - 1:03d}.nii.gz").is_file()):  # --out: reuse a set made before
            make_set(data, a.volumes, a.slices, a.size)
        result["generate_s"] = round(time.perf_counter() - t, 1)
        result["volume_gz_mib"] = round((data / "images" / "case000.nii.gz").stat().st_size / MIB, 1)
        t = time.perf_counter()
        read_voxels(data / "images" / "case000.nii.gz")
        result["decode_one_volume_s"] = round(time.perf_counter() - t, 2)

        dm = CTDataModule(str(data), image_size=a.image_size, batch_size=a.batch_size, num_workers=a.workers, lesion_labels=[1, 2], val_fraction=0.1, test_fraction=0.1)
        with PeakMemory() as scan_mem:
            t = time.perf_counter()
            dm.validated()
            result["scan_s"] = round(time.perf_counter() - t, 1)
        result["scan_peak_rss_mib"] = round(scan_mem.rss / MIB)
        result["cache_gib"] = round(sum(f.stat().st_size for f in (work / "cache").rglob("*.npy")) / 2**30, 2)
        sample = dm.report.samples[a.slices // 2]
        t = time.perf_counter()
        for _ in range(20):
            image_of(sample), mask_of(sample, [1, 2])
        result["read_cached_slice_ms"] = round((time.perf_counter() - t) / 20 * 1000, 2)

        dm.setup("fit")
        loader = dm.train_dataloader()
        with PeakMemory() as loader_mem:
            t, n = time.perf_counter(), 0
            for batch in loader:
                n += len(batch["image"])
            result["loader_s"] = round(time.perf_counter() - t, 1)
        result["loader_samples"] = n
        result["loader_peak_rss_mib"] = round(loader_mem.rss / MIB)
        result["loader_peak_pss_mib"] = round(loader_mem.pss / MIB)
        result["loader_largest_process_rss_mib"] = round(loader_mem.largest / MIB)
        del loader

        if a.fit_batches:
            result.update(_fit_memory(data, ["--data.lesion_labels", "[1, 2]"], a, work / "runs", "fit"))
        if a.fit_batches and a.baseline:
            from covidseg.data.synthetic import generate

            png = generate(work / "png", cases=a.volumes, slices=8, size=a.size)
            result.update(_fit_memory(png, [], a, work / "runs", "fit_png"))
    finally:
        if not a.out:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
