"""Inference: eager fp32, the tuned PyTorch path and onnxruntime, round-robin on one batch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench.common import Clock, median, short
from covidseg.model.unet import LitUNet


def load_lit(ckpt_path: Path, channels_last: bool) -> LitUNet:
    from covidseg.model.checkpoint import read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    hp.update(encoder_weights=None, channels_last=channels_last)
    model = LitUNet(**hp)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def bench_inference(args, device: torch.device, ckpt_path: Path, onnx_path: Path, x_np: np.ndarray) -> dict:
    import onnxruntime as ort

    from covidseg.model.onnx import export_onnx

    notes: list[str] = []
    t0 = time.perf_counter()
    onnx_diff = export_onnx(ckpt_path, onnx_path)
    export_s = time.perf_counter() - t0

    eager = load_lit(ckpt_path, channels_last=False).to(device)
    tuned = load_lit(ckpt_path, channels_last=True).to(device)

    def eager_fn(model, channels_last: bool):
        def run() -> np.ndarray:
            with torch.no_grad():
                x = torch.from_numpy(x_np).to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                return model(x).sigmoid().cpu().numpy()

        return run

    def tuned_fn(model, bf16: bool):
        def run() -> np.ndarray:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                x = torch.from_numpy(x_np).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                return model(x).float().sigmoid().cpu().numpy()

        return run

    variants = {
        "eager_fp32": eager_fn(eager, False),
        "eager_fp32_channels_last": eager_fn(tuned, True),  # memory format alone, still no_grad
        "tuned_channels_last_fp32": tuned_fn(tuned, False),
    }
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            variants["tuned_channels_last_bf16"] = tuned_fn(tuned, True)
        if not args.no_compile:
            try:
                compiled = torch.compile(tuned)
                run = tuned_fn(compiled, torch.cuda.is_bf16_supported())
                for _ in range(3):  # compile (and re-compile for the memory format) up front
                    run()
                variants["tuned_channels_last_bf16_compiled" if torch.cuda.is_bf16_supported() else "tuned_channels_last_compiled"] = run
            except Exception as err:  # no triton, unsupported op ...: report and go on
                notes.append(f"torch.compile skipped: {short(err)}")

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            notes.append("onnxruntime has no CUDAExecutionProvider here: the ONNX figure is on CPU")
    options = ort.SessionOptions()
    if args.threads is not None:
        options.intra_op_num_threads = args.threads
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    except Exception as err:  # e.g. CUDA libraries that onnxruntime-gpu cannot load
        notes.append(f"onnxruntime {providers[0]} failed ({short(err)}): the ONNX figure is on CPU")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    if device.type == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider" and not any("ONNX figure" in n for n in notes):
        notes.append("onnxruntime did not take the CUDA provider: the ONNX figure is on CPU")
    name = session.get_inputs()[0].name
    variants["onnxruntime"] = lambda: session.run(None, {name: x_np})[0]

    # Round-robin: one batch of each variant per round, so drift in machine load hits all alike.
    times: dict[str, list[float]] = {k: [] for k in variants}
    clock = Clock(device)
    for r in range(args.warmup + max(args.steps, 3)):
        for key, fn in variants.items():
            t0 = clock()
            fn()
            dt = clock() - t0
            if r >= args.warmup:
                times[key].append(dt)
    bs = len(x_np)
    ips = {k: bs / median(v) for k, v in times.items()}
    tuned_keys = [k for k in ips if k.startswith("tuned")]
    best = max(tuned_keys, key=ips.get)
    return {
        "infer_images_per_s_eager": ips["eager_fp32"],
        "infer_images_per_s_eager_channels_last": ips["eager_fp32_channels_last"],
        "infer_images_per_s_tuned": ips[best],
        "infer_tuned_variant": best,
        "infer_images_per_s_onnx": ips["onnxruntime"],
        "infer_images_per_s_variants": ips,
        "onnx_vs_eager_inference_ratio": ips["onnxruntime"] / ips["eager_fp32"],
        "tuned_vs_eager_inference_ratio": ips[best] / ips["eager_fp32"],
        "onnx_providers": session.get_providers(),
        "onnx_max_abs_diff": onnx_diff,
        "onnx_export_s": export_s,
        "_inference_notes": notes,
    }
