"""The figures a report gives: per-image, per-source, per-lesion-size, per-case and lung summaries,
with bootstrap intervals over cases, and the rules they follow (``POLICY``, repeated in every
``metrics.json``). Built on the counts and curves of ``covidseg.metrics.scores``.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from covidseg.metrics.scores import BINS, METRICS, pr_from_histograms, rates, roc_from_histograms

RESAMPLES = 1000

SEED = 0

LESION_SIZE_EDGES = (500, 2000)  # lesion pixels per slice at its original resolution


POLICY = {
    "threshold": "a pixel is lesion when its probability is >= threshold",
    "resolution": "scored at each slice's original resolution: probabilities are resized to the slice, the ground truth never is",
    "dice_iou_empty": "per-image Dice and IoU: a slice with neither lesion nor predicted lesion scores 1, a slice with only one of them scores 0",
    "undefined_per_image": (
        "per-image recall is averaged over slices with lesion only, precision over slices with predicted lesion only, "
        "specificity over slices with background, AUROC over slices with both lesion and background (per_image_n gives each count)"
    ),
    "global": "global metrics pool the pixels of all slices; Dice/IoU are 1 when there is no lesion and no prediction at all; other undefined values are null",
    "auroc": f"pixel ROC, PR and AUROC from {BINS}-bin probability histograms (trapezoidal area, average precision as a step sum)",
    "lesion_size": (
        f"by_lesion_size bins slices by their ground-truth lesion pixels at the original resolution (edges {list(LESION_SIZE_EDGES)}: "
        "a bin holds low <= pixels < high); slices without lesion form the bin 'none'; each bin has its mean per-image Dice and slice count"
    ),
    "bootstrap": f"95% interval of the mean per-image Dice, resampling cases (patients) with replacement, {RESAMPLES} resamples, seed {SEED}",
}


def bootstrap_ci(values: np.ndarray, groups: list[str], resamples: int = RESAMPLES, seed: int = SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` ``[N]``, resampling whole groups
    (cases) ``[N]`` with replacement; a resample's mean is over all slices of its drawn cases."""
    values = np.asarray(values, dtype=np.float64)
    cases, index = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(cases))
    counts = np.bincount(index, minlength=len(cases)).astype(np.float64)
    draw = np.random.default_rng(seed).integers(0, len(cases), size=(resamples, len(cases)))
    stats = sums[draw].sum(1) / counts[draw].sum(1)
    alpha = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [alpha, 100 - alpha])
    return float(low), float(high)


def _number(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def lesion_size_labels(edges=LESION_SIZE_EDGES) -> list[str]:
    """Bin names: ``none`` (no lesion), then ``<e0``, ``e0-e1`` ..., ``>=eK`` for ``edges``."""
    edges = list(edges)
    inner = [f"{a}-{b}" for a, b in zip(edges, edges[1:])]
    return ["none", f"<{edges[0]}", *inner, f">={edges[-1]}"]


def by_lesion_size(counts: np.ndarray, edges=LESION_SIZE_EDGES) -> dict[str, dict]:
    """Per-image Dice by ground-truth lesion size.

    Args:
        counts: ``int [N, 4]`` per-slice ``(tp, fp, fn, tn)`` at the slice's own resolution; a
            slice's lesion size is ``tp + fn`` pixels.
        edges: increasing bin edges in pixels: slices with ``0 < size < edges[0]``, then
            ``edges[i] <= size < edges[i + 1]``, then ``size >= edges[-1]``; ``size == 0`` is
            ``none``.

    Returns:
        ``{label: {"images", "dice_image", "dice_global", "min_px", "max_px"}}`` in bin order
        (``lesion_size_labels``); ``dice_image`` is the mean per-image Dice of the bin's slices
        and ``dice_global`` their pooled Dice (``None`` for an empty bin); ``min_px`` and
        ``max_px`` bound the bin (``max_px`` exclusive, ``None`` when open).
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    size = counts[:, 0] + counts[:, 2]
    dice = rates(*counts.T)["dice"]
    bounds = [(0, 1), (1, edges[0]), *zip(edges, edges[1:]), (edges[-1], None)]
    out = {}
    for label, (low, high) in zip(lesion_size_labels(edges), bounds):
        sel = (size >= low) & (size < high if high is not None else True)
        n = int(sel.sum())
        out[label] = {
            "images": n,
            "dice_image": float(dice[sel].mean()) if n else None,
            "dice_global": float(rates(*counts[sel].sum(0))["dice"]) if n else None,
            "min_px": int(low),
            "max_px": None if high is None else int(high),
        }
    return out


def summarize(counts: np.ndarray, image_auroc: np.ndarray, pos: np.ndarray, neg: np.ndarray, cases: list[str], sources: list[str], threshold: float) -> dict:
    """Everything ``metrics.json`` holds except the run description.

    Args:
        counts: ``int [N, 4]`` per-slice ``(tp, fp, fn, tn)``.
        image_auroc: ``[N]`` per-slice AUROC (``nan`` where undefined).
        pos, neg: ``[bins]`` pooled lesion / background histograms.
        cases, sources: ``[N]`` case id and source folder of each slice.
        threshold: the threshold the counts were taken at.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    per_image = rates(*counts.T)
    per_image["auroc"] = np.asarray(image_auroc, dtype=np.float64)
    total = counts.sum(0)
    pooled = {k: _number(v) for k, v in rates(*total).items()}
    pooled["auroc"] = roc_from_histograms(pos, neg)[2]
    pooled["average_precision"] = pr_from_histograms(pos, neg)[2]
    defined = {k: ~np.isnan(per_image[k]) for k in METRICS}
    out = {
        "threshold": float(threshold),
        "counts": {
            "images": len(counts),
            "cases": len(set(cases)),
            "images_without_lesion": int(np.count_nonzero(counts[:, 0] + counts[:, 2] == 0)),
            "pixels": int(total.sum()),
            "lesion_pixels": int(total[0] + total[2]),
            "predicted_pixels": int(total[0] + total[1]),
        },
        "per_image_mean": {k: _number(per_image[k][defined[k]].mean()) if defined[k].any() else None for k in METRICS},
        "per_image_n": {k: int(defined[k].sum()) for k in METRICS},
        "global": {k: pooled[k] for k in (*METRICS, "average_precision")},
        "by_lesion_size": by_lesion_size(counts),
    }
    low, high = bootstrap_ci(per_image["dice"], cases)
    out["dice_ci95"] = {"mean": out["per_image_mean"]["dice"], "low": low, "high": high, "cases": len(set(cases)), "resamples": RESAMPLES, "seed": SEED}
    if len(set(sources)) > 1:
        by_source = defaultdict(list)
        for i, s in enumerate(sources):
            by_source[s].append(i)
        out["per_source"] = {
            s: {
                "images": len(idx),
                "cases": len({cases[i] for i in idx}),
                "dice_image": float(per_image["dice"][idx].mean()),
                "dice_global": float(rates(*counts[idx].sum(0))["dice"]),
                "by_lesion_size": by_lesion_size(counts[idx]),
            }
            for s, idx in sorted(by_source.items())
        }
    out["policy"] = POLICY
    return out


def headline(metrics: dict) -> dict[str, float]:
    """The flat ``{name: value}`` a ``summarize`` result is logged as (``test/*`` in TensorBoard,
    the table ``fit`` prints): per-image Dice first, then the global pixel metrics; for volumes
    (``per_case``), the per-case 3D Dice comes first: the case is the unit there."""
    out = {"dice_case": metrics["per_case"]["mean"]["dice"]} if metrics.get("per_case") else {}
    out["dice_image"] = metrics["per_image_mean"]["dice"]
    out.update({k: v for k, v in metrics["global"].items() if v is not None})
    return out


def case_summary(cases: list[dict]) -> dict:
    """Summary of per-volume rows (``metrics.volume.case_metrics`` plus ``case_id``): means of
    3D Dice, NSD, lesion mL error (signed and absolute) and HD95 over the cases where it is
    defined (``hd95_undefined`` counts the others: lesion in only one of truth and prediction)."""
    if not cases:
        return {}
    hd = [c["hd95_mm"] for c in cases if not math.isnan(c["hd95_mm"])]
    return {
        "cases": len(cases),
        "tolerance_mm": cases[0]["tolerance_mm"],
        "mean": {
            "dice": float(np.mean([c["dice"] for c in cases])),
            "nsd": float(np.mean([c["nsd"] for c in cases])),
            "diff_ml": float(np.mean([c["diff_ml"] for c in cases])),
            "abs_diff_ml": float(np.mean([abs(c["diff_ml"]) for c in cases])),
            "hd95_mm": float(np.mean(hd)) if hd else None,
        },
        "hd95_undefined": len(cases) - len(hd),
        "cases_table": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in c.items()} for c in cases],
    }


def lung_summary(rows: list[dict]) -> dict:
    """Lung segmentation and lesion-burden agreement from per-slice rows (``scoring._lung_row``):
    per-image and global lung Dice, and per case the true and predicted involvement and grade
    (``severity.compare_cases``: summed pixels per case, never a mean of slice percentages)."""
    from covidseg.metrics.severity import aggregate_cases, compare_cases

    if not rows:
        return {}
    counts = np.array([r["counts"] for r in rows], dtype=np.int64)

    def cases(which: str) -> list[dict]:
        return aggregate_cases({"case_id": r["case_id"], "lesion_pixels": r["lesion"][which == "true"], "lesion_in_lung_pixels": r[which][0], "lung_pixels": r[which][1]} for r in rows)

    out = {
        "slices": len(rows),
        "lung_dice_image": float(rates(*counts.T)["dice"].mean()),
        "lung_dice_global": float(rates(*counts.sum(0))["dice"]),
        "severity": compare_cases(cases("true"), cases("pred")),
    }
    if all("by_threshold" in r for r in rows):
        out["involvement_by_threshold"] = involvement_by_threshold(rows)
    return out


def involvement_by_threshold(rows: list[dict]) -> dict[str, dict]:
    """Per case: the true involvement and the predicted one at each candidate volume threshold
    (summed pixels over the case's slices, percent of predicted lung)."""
    sums: dict[str, dict] = {}
    for r in rows:
        c = sums.setdefault(r["case_id"], {"true": [0, 0], "lung": 0, "by": {}})
        c["true"][0] += r["true"][0]
        c["true"][1] += r["true"][1]
        c["lung"] += r["pred"][1]
        for t, n in r["by_threshold"].items():
            c["by"][t] = c["by"].get(t, 0) + n
    return {
        case: {"true_percent": 100.0 * c["true"][0] / c["true"][1] if c["true"][1] else None,
               "pred_percent": {t: (100.0 * n / c["lung"] if c["lung"] else None) for t, n in c["by"].items()}}
        for case, c in sums.items()
    }  # fmt: skip
