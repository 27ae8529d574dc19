"""Segment lesions in CT slices and volumes with trained checkpoints or exported ONNX models.

    covidseg predict --ckpt best.ckpt --input "[scans/, scan.nii.gz]" --output preds/

Inputs are image files (png/jpg/tif/bmp, 8- or 16-bit, gray or RGB), folders of them
(not recursive, sorted), NIfTI volumes in HU (``.nii``/``.nii.gz``, windowed and sliced as
described in ``covidseg.data.volumes``) and DICOM series (a folder of one series' files, or a
folder of such folders; read by ``covidseg.data.dicom``, output named after the folder). Several ``--ckpt`` models are averaged (an ensemble).
Preprocessing, threshold and TTA come with the model(s) through ``model.predictor.Predictor`` (the model card);
``--threshold`` and ``--tta true|false`` override them. A pixel is lesion where its probability
is at or above the threshold (as in ``covidseg.evaluate``). Volumes go through the HU window the
model was trained with (its intensity protocol; the lung window -600/1500 for a model trained on
image exports); ``--data.window`` overrides it. An input of another kind than the model was trained
on (a HU volume into a model trained on 8-bit exports, or the reverse) is predicted with one
warning that names the mismatch.

With ``--lungs`` (a model with a lung output), ``NAME_lungs.png`` / ``NAME_lungs.nii.gz`` and
the lesion burden (lung pixels, lung mL, involvement % = lesion inside the lungs / lungs, the
CT-0..CT-4 grade of ``covidseg.metrics.severity``) are written too; ``--data.case_regex`` groups image
files into cases (patients) and writes ``cases.csv`` with per-case sums and grades.

Every prediction passes the anatomy stage (``covidseg.anatomy``; ``--anatomy false`` skips it):
on volumes in HU nothing outside the patient's body is lung or lesion, lungs are cleaned in 3D
(gas, airways and small pieces dropped, holes filled) and labelled right 1 / left 2 in
``NAME_lungs.nii.gz``, lesions are kept only inside the lungs (grown by 5 mm), and a study is
graded only if its scan checks pass (CT in HU, lungs inside the scan, a plausible lung volume,
spacing); otherwise ``summary.csv``'s ``qc`` says why and one warning line is printed.

With ``--viewer true``, ``index.html`` and ``viewer/`` (``covidseg.viewer``) show every case
(a volume, the images of a ``--data.case_regex`` case, or one image) in a browser, offline: a
sortable index with involvement and grade, and a slice-by-slice view with the overlay.

Outputs in ``--output`` for ``NAME.ext``: ``NAME.png`` (mask {0, 255} at the input's size),
``NAME.npy`` (``--probabilities``, float32 in [0, 1]), ``NAME_overlay.png`` (``--overlay``,
images only); for ``NAME.nii.gz``: ``NAME_mask.nii.gz`` (uint8 {0, 1}, the input's shape,
affine and header) and ``NAME_prob.nii.gz`` (``--probabilities``, float32). ``summary.csv``
has one row per input: status, lesion pixels and fraction, and lesion volume in mL for volumes.

Existing outputs are never replaced without ``--overwrite``: the run refuses up front, before
anything is written, and names them. An unreadable input is reported on stderr and skipped;
the others are processed and the exit status is 1. Bad arguments or models exit with 2.

Cohorts (docs/COHORTS.md): ``--input`` also takes a list file (``.txt``, one path per line, or a
``.csv`` with a ``path`` and an optional ``study_id`` column). Every study's outputs are written
under a temporary name and renamed when complete, and its ``summary.csv`` row is appended when it
finishes; ``--resume true`` skips the studies whose outputs are complete and predicts the rest.
``--shard K/N`` predicts shard K (from 0) of N, by study (default: torchrun's ``RANK/WORLD_SIZE``,
each rank on ``cuda:LOCAL_RANK``, or a SLURM array's task); shards write
``summary.part-K-of-N.csv`` and the last to finish (or ``covidseg merge OUTPUT``) merges them into
``summary.csv``. ``--num_workers`` processes read and window the volumes while the network runs;
a line per study gives the rate and an ETA. ``--dicom_seg true`` also writes ``NAME_seg.dcm``, a
DICOM Segmentation (highdicom) of each DICOM series input: lesion, and right/left lung with ``--lungs``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse.typing import NonNegativeInt

from covidseg import options
from covidseg.errors import CovidSegError, user_errors
from covidseg.model.predictor import Predictor
from covidseg.prediction import CASES, SUMMARY, extra_outputs, predict_paths
from covidseg.prediction.cohort import select
from covidseg.prediction.dicom_seg import check_available
from covidseg.prediction.shards import launcher_device, launcher_shard, parse_shard
from covidseg.viewer import OUTPUTS as VIEWER_OUTPUTS


def build_parser():
    p = options.parser("covidseg predict", __doc__)
    options.add_model(p, builtin_default=True)
    p.add_argument("--input", type=list[str] | str, required=True, help="image files, folders of images, .nii/.nii.gz volumes, DICOM series folders, cohort list files (.txt: a path per line; .csv: path[, study_id])")
    p.add_argument("--output", type=str, required=True, help="output folder")
    p.add_argument("--probabilities", type=bool, default=False, help="also write probability maps (.npy / _prob.nii.gz)")
    p.add_argument("--overlay", type=bool, default=False, help="also write NAME_overlay.png (images only)")
    options.add_inference(p)
    p.add_argument("--overwrite", type=bool, default=False, help="replace existing outputs")
    p.add_argument("--lungs", type=bool, default=False, help="also write lung masks (NAME_lungs.png / _lungs.nii.gz) and the lesion burden: lung pixels, involvement %%, CT-0..CT-4 (a model with a lung output)")
    p.add_argument("--data.case_regex", "--case_regex", type=str | None, default=None, help="group image files into cases by the first group of this regex on the file stem (name without extension); writes cases.csv (summed pixels, involvement, grade)")
    p.add_argument("--viewer", type=bool, default=False, help="also write index.html and viewer/: every case in a browser (offline), with involvement, grade and a slice-by-slice overlay")
    p.add_argument("--anatomy", type=bool, default=True, help="the anatomy stage (covidseg.anatomy): nothing outside the body, lungs cleaned in 3D and split right/left, lesions only inside the lungs, scan checks before a grade; false writes the network's maps as they are")
    p.add_argument("--data.window", "--window", type=tuple[float, float] | None, default=None, help="HU window [center, width] for volumes (default: the model's; lung -600, 1500 for image-trained models)")
    p.add_argument("--resume", type=bool, default=False, help="skip the studies whose outputs are complete (a row in the summary and every output file), predict the rest")
    p.add_argument("--shard", type=str | None, default=None, help="K/N: predict shard K (from 0) of N of the cohort, by study; default: torchrun's RANK/WORLD_SIZE or a SLURM array task, else 0/1")
    p.add_argument("--num_workers", type=NonNegativeInt, default=2, help="processes that read and window volumes while the network runs (0: in the main process)")
    p.add_argument("--dicom_seg", type=bool, default=False, help="also write NAME_seg.dcm, a DICOM Segmentation (lesion; right/left lung with --lungs) referencing each DICOM series input")
    return p


def shard_of(value: str | None) -> tuple[int, int]:
    """``--shard`` or the launcher's (torchrun, SLURM array), announced in one line when taken from it."""
    if value is not None:
        return parse_shard(value)
    k, n, launcher = launcher_shard()
    if n > 1:
        print(f"shard {k}/{n} from the {launcher} environment")
    if not 0 <= k < n:
        raise CovidSegError(f"{launcher} environment gives shard {k} of {n}; pass --shard K/N")
    return k, n


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 when an input failed)."""
    args = build_parser().parse_args(argv)
    options.checked(args)
    window, case_regex = args.data.window, args.data.case_regex  # one name per concept, as fit's
    if window is not None and window[1] <= 0:
        raise CovidSegError(f"--data.window {window[0]:g} {window[1]:g}: width must be positive")
    output = Path(args.output)
    inputs = options.as_list(args.input)
    shard = shard_of(args.shard)
    flags = dict(probabilities=args.probabilities, overlay=args.overlay, lungs=args.lungs, case_regex=case_regex, viewer=args.viewer, overwrite=args.overwrite, resume=args.resume, shard=shard)
    select(inputs, output, dicom_seg=args.dicom_seg, extra=extra_outputs(case_regex, args.viewer), **flags)  # before loading models
    if args.dicom_seg:
        check_available()
    device = args.device
    if device in (None, "cuda"):  # torchrun: one GPU per rank
        device = launcher_device(cuda=torch.cuda.is_available()) or device
    predictor = Predictor(options.model_paths(args.ckpt), device=device, threshold=args.threshold, tta=args.tta)
    rows = predict_paths(
        predictor,
        inputs,
        output,
        batch_size=args.batch_size,
        window=window,
        anatomy=args.anatomy,
        num_workers=args.num_workers,
        dicom_seg=args.dicom_seg,
        **flags,
    )
    failed = sum(row["status"] != "ok" for row in rows)
    s = predictor.card
    print(f"{len(rows) - failed} ok, {failed} failed (threshold {s.threshold:g}, tta {'on' if s.tta else 'off'}); summary: {output / SUMMARY}")
    if case_regex:
        print(f"cases: {output / CASES}")
    if args.viewer:
        print(f"viewer: {output / VIEWER_OUTPUTS[0]}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
