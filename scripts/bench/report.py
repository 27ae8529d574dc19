"""The machine, the table of figures and their targets."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytorch_lightning as pl
import torch

from bench.common import TARGETS


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    import onnxruntime as ort

    info = {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "onnxruntime": ort.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    try:
        info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def verdict(key: str, value, device: torch.device) -> tuple[str, str]:
    if key not in TARGETS or value is None:
        return "", ""
    op, thr, where = TARGETS[key]
    if device.type not in where:
        return f"({op} {thr:g} on CPU)", "info"
    ok = value <= thr if op == "<=" else value >= thr
    return f"{op} {thr:g}", "PASS" if ok else "FAIL"


TABLE = (
    ("Training (Lightning, module metrics on)", "train_images_per_s_lightning", "img/s"),
    ("Training (plain PyTorch loop)", "train_images_per_s_plain", "img/s"),
    ("Lightning / plain time per step (median of pairs)", "lightning_vs_plain_step_ratio", "x"),
    ("  module metric work per step (as shipped)", "train_metrics_ms_per_step", "ms"),
    ("  same ratio, metric updates excluded", "lightning_excl_metrics_vs_plain_step_ratio", "x"),
    ("Input pipeline (CTDataModule train loader)", "loader_images_per_s", "img/s"),
    ("Loader / training-step throughput", "loader_vs_step_throughput_ratio", "x"),
    ("  epoch start to first batch, persistent workers", "loader_epoch_start_s_persistent", "s"),
    ("  epoch start to first batch, fresh workers", "loader_epoch_start_s_fresh_workers", "s"),
    ("Inference eager fp32 (NCHW, no_grad)", "infer_images_per_s_eager", "img/s"),
    ("Inference eager fp32, channels_last input+weights", "infer_images_per_s_eager_channels_last", "img/s"),
    ("Inference tuned PyTorch", "infer_images_per_s_tuned", "img/s"),
    ("Inference onnxruntime", "infer_images_per_s_onnx", "img/s"),
    ("Tuned / eager inference", "tuned_vs_eager_inference_ratio", "x"),
    ("ONNX / eager inference", "onnx_vs_eager_inference_ratio", "x"),
    ("Peak RSS, covidseg.fit run", "train_peak_rss_mib", "MiB"),
    ("  baseline: python -c 'import covidseg.fit'", "import_only_peak_rss_mib", "MiB"),
    ("Peak GPU memory, training", "train_peak_gpu_mib", "MiB"),
    ("GPU training fp32 128 px", "gpu_train_images_per_s_fp32_128px", "img/s"),
    ("GPU training bf16-mixed 128 px", "gpu_train_images_per_s_bf16_128px", "img/s"),
    ("GPU training fp32 256 px", "gpu_train_images_per_s_fp32_256px", "img/s"),
    ("GPU training bf16-mixed 256 px", "gpu_train_images_per_s_bf16_256px", "img/s"),
    ("DDP scaling efficiency", "ddp_scaling_efficiency", "x"),
    ("GPU host syncs per step, Lightning + module", "gpu_host_syncs_per_step_lightning", "n"),
    ("GPU host syncs per step, plain loop", "gpu_host_syncs_per_step_plain", "n"),
    ("GPU batch copy from pageable memory", "gpu_h2d_batch_ms_pageable", "ms"),
    ("GPU batch copy from pinned memory", "gpu_h2d_batch_ms_pinned", "ms"),
)


def format_table(res: dict, device: torch.device) -> str:
    rows = [("figure", "value", "target", "result")]
    for label, key, unit in TABLE:
        if key not in res:  # a figure this run does not measure at all (GPU diagnostics on CPU)
            continue
        value = res.get(key)
        if key == "infer_images_per_s_tuned" and value is not None:
            label = f"{label} ({res['infer_tuned_variant']})"
        shown = "n/a" if value is None else (f"{value:.3f} {unit}" if unit in ("x", "s") else f"{value:.1f} {unit}")
        target, result = verdict(key, value, device)
        rows.append((label, shown, target, result))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
