"""Studies per hour of ``covidseg predict`` over a generated cohort: one process (volumes read in
the main process, or by a background worker) and two processes (``--shard 0/2`` and ``1/2`` at once).

    python scripts/cohort_speed.py [--studies 20] [--slices 32] [--side 128] [--json OUT]

Writes ``--studies`` HU chest phantoms (``covidseg.data.phantom``; every fourth a DICOM series,
the rest gzipped NIfTI) and a ``cohort.txt``, then times each setting as users run it: the
``covidseg predict`` command in fresh processes (process start, imports and model loading
included), the built-in model with its own settings (lungs on, flip TTA as on its card). Two
processes get one torch thread each (as torchrun sets ``OMP_NUM_THREADS=1``); one process keeps
torch's default. Prints a markdown table and, with ``--json``, the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_cohort(root: Path, studies: int, slices: int, side: int) -> Path:
    import nibabel as nib

    from covidseg.data.phantom import phantom, write_dicom_series, write_nifti

    lines = []
    for i in range(studies):
        p = phantom("chest", slices=slices, size=side, spacing=(300.0 / slices, 350.0 / side, 350.0 / side), seed=i)
        path = write_nifti(root / f"s{i:03d}.nii.gz", p.hu, p)
        if i % 4 == 3:
            write_dicom_series(nib.load(path), root / f"d{i:03d}")
            path.unlink()
            path = root / f"d{i:03d}"
        lines.append(str(path))
    (root / "cohort.txt").write_text("\n".join(lines) + "\n")
    return root / "cohort.txt"


def run(cohort: Path, out: Path, processes: int, workers: int) -> float:
    """Seconds from launching the processes to the last one's exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    if processes > 1:
        env["OMP_NUM_THREADS"] = "1"
    base = [sys.executable, "-m", "covidseg", "predict", "--input", str(cohort), "--output", str(out), "--lungs", "true", "--num_workers", str(workers)]
    start = time.perf_counter()
    procs = [subprocess.Popen(base + (["--shard", f"{k}/{processes}"] if processes > 1 else []), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for k in range(processes)]  # fmt: skip
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"covidseg predict failed ({p.returncode}): {err[-1500:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    settings = [("1 process, volumes read in the main process", 1, 0), ("1 process, 1 background reader (--num_workers 1)", 1, 1),
                ("2 processes (--shard 0/2, 1/2), 1 thread each", 2, 0), ("2 processes, 1 background reader each", 2, 1)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cohort = make_cohort(Path(tmp) / "cohort", args.studies, args.slices, args.side)
        results = []
        for i, (label, processes, workers) in enumerate(settings):
            seconds = run(cohort, Path(tmp) / f"out{i}", processes, workers)
            results.append({"setting": label, "processes": processes, "num_workers": workers, "seconds": round(seconds, 1), "studies_per_hour": round(args.studies / seconds * 3600)})
    print(f"{args.studies} studies of {args.slices} x {args.side} x {args.side} (every fourth a DICOM series), built-in model, --lungs true; {os.cpu_count()} CPUs\n")
    print("| setting | wall s | studies/hour |\n|---|---|---|")
    for r in results:
        print(f"| {r['setting']} | {r['seconds']} | {r['studies_per_hour']} |")
    record = {"studies": args.studies, "slices": args.slices, "side": args.side, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
