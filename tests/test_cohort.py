"""Cohorts (issue 34): list files, a SIGKILLed run resumed with --resume, shards as processes and
under torchrun, all equal to one uninterrupted run, voxel for voxel; the launcher environment.

The cohort is 8 tiny HU phantoms (5 NIfTI, 3 DICOM series with shuffled file names) predicted by
the built-in model without TTA, so a run takes seconds."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covidseg.data.phantom import phantom, write_dicom_series, write_nifti
from covidseg.errors import CovidSegError
from covidseg.merge import main as merge_main
from covidseg.predict import main
from covidseg.prediction.listfile import read_list
from covidseg.prediction.shards import launcher_device, launcher_shard, parse_shard, shard_indices

REPO = Path(__file__).resolve().parents[1]
STUDIES = 8
FLAGS = ["--lungs", "true", "--tta", "false", "--device", "cpu", "--batch_size", "8"]


def write_cohort(root: Path, studies: int = STUDIES) -> Path:
    """``root/cohort.csv``: NIfTI files and DICOM series (every third study), relative paths."""
    lines = ["path,study_id"]
    for i in range(studies):
        p = phantom("chest", slices=8, size=48, spacing=(10.0, 6.5, 6.5), lesions=2, seed=i)
        nifti = write_nifti(root / "scans" / f"s{i:02d}.nii.gz", p.hu, p)
        if i % 3 == 1:
            write_dicom_series(nib.load(nifti), root / "scans" / f"d{i:02d}")
            nifti.unlink()
            lines.append(f"scans/d{i:02d},study{i:02d}")
        else:
            lines.append(f"scans/s{i:02d}.nii.gz,")
    (root / "cohort.csv").write_text("\n".join(lines) + "\n")
    return root / "cohort.csv"


def summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def volumes(out: Path) -> dict[str, np.ndarray]:
    """Every mask and lung volume in ``out`` by file name."""
    return {p.name: np.asanyarray(nib.load(p).dataobj) for p in sorted(out.glob("*.nii.gz"))}


def command(cohort: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "covidseg", "predict", "--input", str(cohort), "--output", str(out), *FLAGS, *extra]


def env(**values: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")}
    return {**clean, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1", **values}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> Path:
    """One uninterrupted run, in process, volumes read in the main process."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["--input", str(cohort), "--output", str(out), "--num_workers", "0", *FLAGS]) == 0
    return out


def test_list_files_and_shards_by_study(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.txt").write_text("# a cohort\na.nii.gz\n\n/abs/b.nii.gz\n")
    assert read_list(tmp_path / "sub" / "list.txt") == [(tmp_path / "sub" / "a.nii.gz", ""), (Path("/abs/b.nii.gz"), "")]
    (tmp_path / "c.csv").write_text("Path,study_id,age\nx/ct.nii.gz,P1,50\n")
    assert read_list(tmp_path / "c.csv") == [(tmp_path / "x" / "ct.nii.gz", "P1")]
    (tmp_path / "bad.csv").write_text("file,study_id\nx,y\n")
    with pytest.raises(CovidSegError, match=r"bad.csv: a cohort CSV needs a 'path' column \(found: file, study_id\)"):
        read_list(tmp_path / "bad.csv")
    # by study: the images of one case stay together, studies alternate over the shards
    studies = ["a", "a", "b", "c", "c", "c", "d"]
    assert shard_indices(studies, 0, 2) == [0, 1, 3, 4, 5] and shard_indices(studies, 1, 2) == [2, 6]
    assert sorted(shard_indices(studies, 0, 3) + shard_indices(studies, 1, 3) + shard_indices(studies, 2, 3)) == list(range(7))
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(CovidSegError, match="expected K/N"):
            parse_shard(bad)
    assert launcher_shard({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, "torchrun")
    assert launcher_shard({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}) == (4, 8, "SLURM array")
    assert launcher_shard({}) == (0, 1, "")
    assert launcher_device({"LOCAL_RANK": "1"}, cuda=True) == "cuda:1" and launcher_device({"LOCAL_RANK": "1"}, cuda=False) is None


def test_reference_run_is_a_real_cohort(reference, cohort):
    rows = summary(reference)
    assert [r["study_id"] for r in rows] == ["s00", "study01", "s02", "s03", "study04", "s05", "s06", "study07"]  # cohort order
    assert all(r["status"] == "ok" for r in rows)
    masks = volumes(reference)
    assert len(masks) == 2 * STUDIES and sum(int(m.sum()) for n, m in masks.items() if n.endswith("_lungs.nii.gz")) > 0
    assert not (reference / ".partial").exists()
    # neither --resume nor --overwrite: existing outputs still stop the run before anything is written
    with pytest.raises(SystemExit) as exc:
        main(["--input", str(cohort), "--output", str(reference), *FLAGS])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["--input", str(cohort), "--output", str(reference), "--resume", "--overwrite", *FLAGS])


def test_sigkill_then_resume_equals_one_run(cohort, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(command(cohort, out, "--num_workers", "1"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env())
    seen = []
    for line in proc.stdout:  # kill after the third study's progress line
        seen.append(line)
        if line.startswith("[3/"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    done = {r["input"] for r in csv.DictReader(open(out / "summary.csv", newline=""))}
    assert 3 <= len(done) < STUDIES  # rows appended as studies finished, before the end
    for name, data in volumes(out).items():  # whatever has a final name is complete and readable
        assert data.shape == (48, 48, 8), name

    resumed = subprocess.run(command(cohort, out, "--resume", "true"), capture_output=True, text=True, cwd=REPO, env=env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"--resume: {len(done)} complete (skipped)" in resumed.stdout
    rows = summary(out)
    assert sorted(r["input"] for r in rows) == sorted(r["input"] for r in summary(reference))  # every study exactly once
    assert [r["study_id"] for r in rows] == [r["study_id"] for r in summary(reference)]
    ref, got = volumes(reference), volumes(out)
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
    assert not (out / ".partial").exists()


def _same_as_reference(out: Path, reference: Path) -> None:
    rows, ref_rows = summary(out), summary(reference)
    assert [(r["study_id"], r["status"], r["lesion_pixels"], r["lung_pixels"]) for r in rows] == [
        (r["study_id"], r["status"], r["lesion_pixels"], r["lung_pixels"]) for r in ref_rows
    ]
    ref, got = volumes(reference), volumes(out)
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_two_shards_as_processes_equal_one_run(cohort, reference, tmp_path, capsys):
    out = tmp_path / "out"
    procs = [subprocess.Popen(command(cohort, out, "--shard", f"{k}/2", "--num_workers", "0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env())
             for k in (0, 1)]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-1500:] + results[1][1][-1500:]
    parts = [summary_part(out, k) for k in (0, 1)]
    assert sorted(len(p) for p in parts) == [4, 4] and not {r["input"] for r in parts[0]} & {r["input"] for r in parts[1]}
    assert any("summary: " in stdout and "(8 of 8 studies)" in stdout for stdout, _ in results)  # the last shard merged
    _same_as_reference(out, reference)
    (out / "summary.csv").unlink()
    assert merge_main([str(out)]) == 0 and "(8 of 8 studies)" in capsys.readouterr().out
    _same_as_reference(out, reference)
    for name in ("summary.csv", "summary.part-1-of-2.csv"):  # as if shard 1 had been stopped: merge names its studies
        (out / name).unlink()
    assert merge_main([str(out)]) == 1
    assert "4 missing" in capsys.readouterr().out and len(summary(out)) == 4


def summary_part(out: Path, k: int) -> list[dict]:
    with open(out / f"summary.part-{k}-of-2.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_torchrun_two_cpu_processes_equal_one_run(cohort, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", "-m", "covidseg", "predict",
           "--input", str(cohort), "--output", str(out), *FLAGS, "--num_workers", "0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env(), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shard 0/2 from the torchrun environment" in proc.stdout and "shard 1/2 from the torchrun environment" in proc.stdout
    assert (out / "summary.part-0-of-2.csv").is_file() and (out / "summary.part-1-of-2.csv").is_file()
    _same_as_reference(out, reference)


def _index_rows(out: Path) -> dict[str, dict]:
    import json
    import re

    page = (out / "index.html").read_text()
    data = json.loads(re.search(r'<script id="covidseg-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    return {r["name"]: {k: v for k, v in r.items() if k not in ("href", "thumb")} for r in data["rows"]}


def test_shards_with_a_viewer_rebuild_the_one_an_uninterrupted_run_draws(cohort, tmp_path, capsys):
    """Issue 34: the last shard (and covidseg merge --viewer true) writes the viewer index from the
    studies' outputs: the same cases, slices, mL, involvement, grades and reasons as one run's."""
    one = tmp_path / "one"
    assert main(["--input", str(cohort), "--output", str(one), "--num_workers", "0", "--viewer", "true", *FLAGS]) == 0
    out = tmp_path / "shards"
    for k in (0, 1):  # in turn, in process: the second is the last to finish and merges
        assert main(["--input", str(cohort), "--output", str(out), "--num_workers", "0", "--viewer", "true", "--shard", f"{k}/2", *FLAGS]) == 0
    assert "rebuilt from the 8 studies' outputs" in capsys.readouterr().out
    want, got = _index_rows(one), _index_rows(out)
    assert set(got) == set(want) and len(got) == STUDIES
    for name in want:
        assert got[name] == pytest.approx(want[name]) if all(isinstance(v, (int, float)) for v in want[name].values()) else got[name] == want[name], name
    assert sorted(p.name for p in (out / "viewer").glob("*/ov_*.png")) == sorted(p.name for p in (one / "viewer").glob("*/ov_*.png"))
    (out / "index.html").unlink()
    assert merge_main([str(out), "--viewer", "true"]) == 0 and _index_rows(out) == got
