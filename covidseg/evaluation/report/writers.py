"""The report's text files: ``metrics.json``, ``metrics.md`` (and the table the CLIs print) and
``per_image.csv``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from covidseg.metrics.scores import METRICS

LABELS = {
    "dice": "Dice",
    "iou": "IoU",
    "recall": "recall (sensitivity)",
    "specificity": "specificity",
    "precision": "precision",
    "accuracy": "accuracy",
    "auroc": "AUROC",
}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def metric_table(metrics: dict) -> str:
    """The markdown table ``metric | per-image mean | global`` of a ``summarize`` result."""
    lines = []
    if metrics.get("per_case"):  # volumes: the case is the unit, its 3D Dice the headline
        pc = metrics["per_case"]
        lines += [f"per-case 3D Dice (headline, {pc['cases']} volumes): {_fmt(pc['mean']['dice'])}", ""]
    lines += ["| metric | per-image mean | global (pooled pixels) |", "|---|---|---|"]
    for k in METRICS:
        lines.append(f"| {LABELS[k]} | {_fmt(metrics['per_image_mean'][k])} | {_fmt(metrics['global'][k])} |")
    ci = metrics["dice_ci95"]
    lines.append(f"\nper-image Dice 95% CI (bootstrap over {ci['cases']} cases): [{_fmt(ci['low'])}, {_fmt(ci['high'])}]")
    if metrics.get("classes"):
        from covidseg.evaluation.classes import class_table

        lines += ["", class_table(metrics["classes"])]
    return "\n".join(lines)


def lesion_size_table(by_size: dict) -> str:
    """The markdown table ``lesion size | images | per-image Dice | global Dice`` of a
    ``metrics.by_lesion_size`` result (an empty bin shows ``n/a``)."""
    lines = ["| lesion size (px, original resolution) | images | per-image Dice | global Dice |", "|---|---|---|---|"]
    for label, v in by_size.items():
        name = "none (no lesion)" if label == "none" else label
        lines.append(f"| {name} | {v['images']} | {_fmt(v['dice_image'])} | {_fmt(v['dice_global'])} |")
    return "\n".join(lines)


def markdown(metrics: dict) -> str:
    """The whole ``metrics.md``: run description, metric table, counts, sources and rules."""
    c = metrics["counts"]
    lines = [
        "# Evaluation report",
        "",
        f"- models: {', '.join(metrics.get('checkpoints', []))}",
        f"- data: {', '.join(metrics.get('roots', []))}" + (f" (split: {metrics['split']})" if metrics.get("split") else " (all pairs)"),
        f"- threshold: {metrics['threshold']:.2f} ({metrics.get('threshold_source', 'given')})"
        + ("" if "tta" not in metrics else f"; flip TTA {'on' if metrics['tta'] else 'off'}"),
        f"- images: {c['images']}, cases: {c['cases']}, images without lesion: {c['images_without_lesion']}",
        f"- pixels: {c['pixels']}, lesion: {c['lesion_pixels']}, predicted lesion: {c['predicted_pixels']}",
        f"- average precision (pixels): {_fmt(metrics['global']['average_precision'])}",
        "",
        metric_table(metrics),
    ]
    if "by_lesion_size" in metrics:
        lines += ["", "## By lesion size", "", lesion_size_table(metrics["by_lesion_size"])]
    if "per_source" in metrics:
        lines += ["", "## Per source", "", "| source | images | cases | per-image Dice | global Dice |", "|---|---|---|---|---|"]
        lines += [f"| {s} | {v['images']} | {v['cases']} | {v['dice_image']:.4f} | {v['dice_global']:.4f} |" for s, v in metrics["per_source"].items()]
    if metrics.get("per_case"):
        pc = metrics["per_case"]
        m = pc["mean"]
        lines += ["", f"## Per case (3D, {pc['cases']} volumes)", "", "| 3D Dice | NSD @ {:g} mm | HD95 (mm) | lesion mL error (mean / mean abs) |".format(pc["tolerance_mm"]), "|---|---|---|---|",
                  f"| {m['dice']:.4f} | {m['nsd']:.4f} | {_fmt(m['hd95_mm'])} ({pc['hd95_undefined']} undefined) | {m['diff_ml']:+.2f} / {m['abs_diff_ml']:.2f} |"]  # fmt: skip
    if metrics.get("lungs"):
        lungs = metrics["lungs"]
        lines += ["", f"## Lungs and severity ({lungs['slices']} slices with lung masks)", "",
                  f"- lung Dice: per-image mean {lungs['lung_dice_image']:.4f}, global {lungs['lung_dice_global']:.4f}"]  # fmt: skip
        sev = lungs.get("severity")
        if sev:
            lines += [f"- involvement (lesion inside the lungs / lungs, per case): mean absolute error {sev['mean_abs_error_pp']:.2f} "
                      f"percentage points (max {sev['max_abs_error_pp']:.2f}) over {sev['cases']} cases; grade correct in {100 * sev['grade_accuracy']:.0f}% "
                      f"(always answering the most common grade, {sev['baseline_grade']}: {100 * sev['baseline_accuracy']:.0f}%; cases per true grade: "
                      + ", ".join(f"{g} {n}" for g, n in sev["cases_per_grade"].items() if n) + "; right per grade: "
                      + ", ".join(f"{g} {100 * a:.0f}%" for g, a in sev["accuracy_per_grade"].items()) + ")",
                      "", "| case | true % | predicted % | error (pp) | true grade | predicted grade |", "|---|---|---|---|---|---|"]  # fmt: skip
            lines += [f"| {c['case_id']} | {c['true_percent']:.2f} | {c['pred_percent']:.2f} | {c['abs_error_pp']:.2f} | {c['true_grade']} | {c['pred_grade']} |" for c in sev["cases_table"]]
            grades = list(sev["confusion"])
            lines += ["", "Grade confusion (rows: true, columns: predicted):", "", "| | " + " | ".join(grades) + " |", "|---" * (len(grades) + 1) + "|"]
            lines += [f"| {t} | " + " | ".join(str(sev["confusion"][t][p]) for p in grades) + " |" for t in grades]
    lines += ["", "## Rules", ""] + [f"- {k}: {v}" for k, v in metrics["policy"].items()]
    return "\n".join(lines) + "\n"


def write_json(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")


def write_per_case(path: Path, cases: list[dict]) -> None:
    """``per_case.csv``: one row per volume: 3D Dice, truth/predicted lesion mL and difference,
    HD95 (mm, empty where undefined) and NSD at the stated tolerance."""
    fields = ["case_id", "file", "slices", "dice", "truth_ml", "pred_ml", "diff_ml", "hd95_mm", "nsd", "tolerance_mm"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        for c in cases:
            w.writerow({k: ("" if isinstance(v, float) and v != v else v) for k, v in c.items()})


def write_per_image(path: Path, rows: list[dict]) -> None:
    """``per_image.csv``: file, case_id, dice, iou, gt_pixels, pred_pixels (one row per slice)."""
    fields = ["file", "case_id", "dice", "iou", "gt_pixels", "pred_pixels"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "dice": f"{r['dice']:.6f}", "iou": f"{r['iou']:.6f}"})
