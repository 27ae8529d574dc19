"""Slices per second of ``covidseg predict`` on a generated CT volume, per target size and TTA.

    python scripts/predict_speed.py [--slices 300] [--side 512] [--sizes 128 256] [--json OUT]
    python scripts/predict_speed.py --sizes 256 --lungs --backends ckpt onnx   # the reference's way, both model files
    python scripts/predict_speed.py --ckpt reference --lungs --backends ckpt onnx  # a trained or built-in model
    python scripts/predict_speed.py --fast          # smoke run: 6 slices of 96 px, tiny model

Writes one synthetic NIfTI volume (``--slices`` axial slices of ``--side`` x ``--side`` voxels,
int16 HU: body, two lungs, lesion blobs, noise), makes an untrained default ``LitUNet``
checkpoint per ``--sizes`` entry (speed does not depend on the weights; ``--ckpt`` times a given
checkpoint or built-in model instead, at its own size) and times
``covidseg predict --ckpt CKPT --input VOLUME`` in-process, end to end (model loading, NIfTI
reading and windowing, preprocessing, the network, resizing back, writing the mask volume),
once with flip TTA off and once on. Prints a markdown table and, with ``--json``, the figures,
settings and machine. The target of issue 17: a 300-slice 512x512 volume in <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

TARGET_S = 60.0  # for a 300-slice volume
TINY = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}


def make_volume(path: Path, slices: int, side: int, seed: int = 0) -> Path:
    """The generated scan (``covidseg.data.phantom.write_chest``: a chest in HU, 0.7 x 0.7 x 1 mm)."""
    from covidseg.data.phantom import write_chest

    return write_chest(path, slices, side, seed)


def make_checkpoint(path: Path, image_size: int, tiny: bool, lungs: bool = False) -> Path:
    """An untrained covidseg checkpoint of the default model (or the tests' tiny one), with a
    lung output if ``lungs`` (the reference's)."""
    import torch

    from covidseg.model.unet import LitUNet

    model = LitUNet(image_size=image_size, lung_output=lungs, **(TINY if tiny else {}))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def time_predict(ckpt: Path, volume: Path, out: Path, tta: bool, batch_size: int, lungs: bool = False) -> float:
    """Wall seconds of one ``covidseg predict`` call (exit status checked)."""
    from covidseg.predict import main

    args = ["--ckpt", str(ckpt), "--input", str(volume), "--output", str(out), "--tta", str(tta).lower(),
            "--device", "cpu", "--batch_size", str(batch_size), "--overwrite", "true", "--lungs", str(lungs).lower()]  # fmt: skip
    start = time.perf_counter()
    status = main(args)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"covidseg predict exited with {status}")
    return seconds


def run(args) -> dict:
    import numpy as np
    import torch

    from covidseg.data.volumes import read_volume

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="predict_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    volume = make_volume(work / "ct.nii.gz", args.slices, args.side)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, slices = read_volume(volume)
    read_s = time.perf_counter() - t0
    assert slices.shape == (args.slices, args.side, args.side)
    rows = []
    given = None
    if args.ckpt:
        from covidseg import options
        from covidseg.model.card import read_card
        from covidseg.model.checkpoint import read_checkpoint

        given = Path(options.model_paths(args.ckpt)[0])
        args.sizes = [read_card(read_checkpoint(given)).image_size]
    for size in args.sizes:
        ckpt = given or make_checkpoint(work / f"model_{size}.ckpt", size, args.fast, args.lungs)
        models = {"ckpt": ckpt}
        if "onnx" in args.backends:
            from covidseg.export import export_onnx

            models["onnx"] = work / f"model_{size}.onnx"
            export_onnx(ckpt, models["onnx"])
        for backend in args.backends:
            for tta in (False, True):
                seconds = time_predict(models[backend], volume, work / f"out_{size}_{backend}_{'tta' if tta else 'plain'}", tta, args.batch_size, args.lungs)
                per_300 = seconds * 300 / args.slices
                rows.append({"image_size": size, "backend": backend, "tta": tta, "lungs": args.lungs, "seconds": seconds, "slices_per_s": args.slices / seconds,
                             "seconds_per_300_slices": per_300, "meets_60s_target": per_300 <= TARGET_S})  # fmt: skip
                print(f"image_size {size} {backend} tta {'on ' if tta else 'off'}: {seconds:.1f} s, {args.slices / seconds:.1f} slices/s", flush=True)
    mask = work / f"out_{args.sizes[0]}_{args.backends[0]}_plain" / "ct_mask.nii.gz"
    import nibabel as nib

    assert nib.load(str(mask)).shape == (args.side, args.side, args.slices)  # masks at the input's size
    return {
        "settings": {"slices": args.slices, "side": args.side, "sizes": args.sizes, "batch_size": args.batch_size, "fast": args.fast, "lungs": args.lungs,
                     "model": args.ckpt or ("tiny (depth 3)" if args.fast else "default LitUNet (resnet18 U-Net), untrained")},  # fmt: skip
        "volume_write_s": made,
        "volume_read_and_window_s": read_s,
        "runs": rows,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": sys.version.split()[0],
                    "load_average_1m_start": load_start, "load_average_1m_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},  # fmt: skip
        "numpy": np.__version__,
    }


def table(result: dict) -> str:
    n = result["settings"]["slices"]
    lines = [f"| image_size | model file | lungs | TTA | wall, {n} slices (s) | slices/s | per 300 slices (s) | 300 slices <= 60 s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['image_size']} | {r['backend']} | {'yes' if r['lungs'] else 'no'} | {'on' if r['tta'] else 'off'} | {r['seconds']:.1f} | {r['slices_per_s']:.1f} | "
                     f"{r['seconds_per_300_slices']:.1f} | {'yes' if r['meets_60s_target'] else 'no'} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=None, help="slices of the volume (default 300; --fast 6)")
    p.add_argument("--side", type=int, default=None, help="in-plane size (default 512; --fast 96)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="model image_size values (default 128 256; --fast 32 64)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--workdir", type=str, default=None, help="where the volume, checkpoints and outputs go (default: a temp dir)")
    p.add_argument("--lungs", action="store_true", help="a model with the lung output, predicted with --lungs true (the reference's way)")
    p.add_argument("--backends", nargs="+", choices=["ckpt", "onnx"], default=["ckpt"], help="predict from the checkpoint and/or its ONNX export")
    p.add_argument("--ckpt", type=str, default=None, help="time this checkpoint or built-in model (e.g. reference) at its own image size, not untrained ones")
    p.add_argument("--json", type=str, default=None)
    p.add_argument("--fast", action="store_true", help="tiny smoke run")
    args = p.parse_args(argv)
    args.slices = args.slices or (6 if args.fast else 300)
    args.side = args.side or (96 if args.fast else 512)
    args.sizes = args.sizes or ([32, 64] if args.fast else [128, 256])
    result = run(args)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
