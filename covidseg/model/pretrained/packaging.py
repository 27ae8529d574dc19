"""Making a built-in model: a trained checkpoint slimmed to fp16 weights (its model card kept in the
hyper-parameters) with its provenance, kept only if its masks agree with the checkpoint's (``scripts/package_model.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from covidseg.errors import CovidSegError
from covidseg.metrics.scores import image_dice
from covidseg.metrics.severity import LUNG_THRESHOLD
from covidseg.model.checkpoint import read_checkpoint
from covidseg.model.predictor import Predictor
from covidseg.model.pretrained import CARD_KEY, TERMS

MIN_DICE = 0.99  # mean per-slice Dice of the slim model's masks against the checkpoint's
MAX_PROB_DIFF = 0.02  # largest probability difference allowed on any pixel


def slim(ckpt: dict, card: dict, volume_threshold: float | None = None) -> dict:
    """What a built-in model keeps of a checkpoint: floating weights in fp16, the
    hyper-parameters (encoder weights never downloaded), the card; no optimizer state, no data.
    ``volume_threshold``: the volume operating point chosen on the recipe's folds
    (``evaluation.volume_rule``), written into the model card (``None``: keep the checkpoint's)."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    hp["encoder_weights"] = None
    if volume_threshold is not None:
        hp["volume_threshold"] = float(volume_threshold)
    return {"state_dict": state, "hyper_parameters": hp, "epoch": ckpt.get("epoch"), CARD_KEY: {"terms": TERMS, **card}}


def training_inputs(ckpt: dict) -> dict:
    """What a model card says a model was made from besides its labelled data: the weights it
    was initialised from (with their licence), the unlabelled slices of semi-supervised training
    (``data.unlabelled``, with the mean teacher's knobs) and the lesion classes it outputs."""
    from covidseg.model.encoders import LICENCE

    hp, data = ckpt["hyper_parameters"], ckpt.get("datamodule_hyper_parameters") or {}
    weights, encoder = hp.get("encoder_weights"), hp.get("encoder_name")
    if weights is None:
        start = f"random initialisation ({encoder}; no pretrained weights)"
    else:
        start = LICENCE.get(encoder, f"{encoder} {weights} weights")
    unlabelled = data.get("unlabelled")
    semi = None
    if unlabelled:
        semi = {"folder": Path(str(unlabelled)).name, "method": "mean teacher",
                **{k: hp.get(k) for k in ("consistency_weight", "ema_decay", "consistency_rampup", "consistency_noise")}}  # fmt: skip
    classes = hp.get("classes")  # linked from data.lesion_classes
    return {"initialised_from": start, "unlabelled_data": semi, "lesion_classes": list(classes) if classes else None}


def agreement(original: Predictor, candidate: Predictor, raws: Iterable[np.ndarray], batch_size: int = 16) -> dict:
    """How closely two predictors agree on raw slices, each at the original's operating point.

    Returns:
        ``{"slices", "lesion_dice_mean", "lesion_dice_min", "lesion_slices_below_0.99",
        "lesion_max_pixels_changed", "lung_dice_mean", "lung_dice_min", "max_prob_diff", "same_outputs"}``
        (lung entries ``None`` without a lung output); a slice where both masks are empty has Dice 1.
        Per slice, a tiny lesion makes Dice jumpy (one pixel of 25 costs 0.02), hence the pixel count.
    """
    t = original.card.threshold
    raws = list(raws)
    lesion, lungs, changed, worst, same_outputs = [], [], [], 0.0, True
    for a, b in zip(original.predict_maps(raws, batch_size), candidate.predict_maps(raws, batch_size)):
        same_outputs &= len(a) == len(b)
        worst = max(worst, float(np.abs(a[: len(b)] - b[: len(a)]).max()))
        mask_a, mask_b = a[0] >= t, b[0] >= t
        lesion.append(image_dice(mask_a, mask_b))
        changed.append(int((mask_a != mask_b).sum()))
        if len(a) > 1 and len(b) > 1:
            lungs.append(image_dice(a[1] >= LUNG_THRESHOLD, b[1] >= LUNG_THRESHOLD))
    return {
        "slices": len(raws),
        "lesion_dice_mean": float(np.mean(lesion)),
        "lesion_dice_min": float(np.min(lesion)),
        "lesion_slices_below_0.99": int(np.sum(np.array(lesion) < MIN_DICE)),  # the card's key names the rule's 0.99
        "lesion_max_pixels_changed": max(changed),
        "lung_dice_mean": float(np.mean(lungs)) if lungs else None,
        "lung_dice_min": float(np.min(lungs)) if lungs else None,
        "max_prob_diff": worst,
        "same_outputs": bool(same_outputs),
    }


def check(report: dict, min_dice: float = MIN_DICE, max_prob_diff: float = MAX_PROB_DIFF) -> list[str]:
    """The reasons an agreement report fails (empty when it passes)."""
    bad = [] if report["same_outputs"] else ["the models have different outputs (lesion / lungs)"]
    if report["lesion_dice_mean"] < min_dice:
        bad.append(f"lesion masks agree with mean Dice {report['lesion_dice_mean']:.4f} < {min_dice}")
    if report["lung_dice_mean"] is not None and report["lung_dice_mean"] < min_dice:
        bad.append(f"lung masks agree with mean Dice {report['lung_dice_mean']:.4f} < {min_dice}")
    if report["max_prob_diff"] > max_prob_diff:
        bad.append(f"probabilities differ by up to {report['max_prob_diff']:.4f} > {max_prob_diff}")
    return bad


def write(ckpt_path: str | Path, output: str | Path, card: dict, checks: dict[str, list[np.ndarray]], min_dice: float = MIN_DICE,
          max_prob_diff: float = MAX_PROB_DIFF, volume_threshold: float | None = None) -> dict:  # fmt: skip
    """Slims ``ckpt_path`` into ``output`` if, on every named set of raw slices in ``checks``, its
    masks agree with the checkpoint's; raises ``CovidSegError`` (nothing written) otherwise.

    Returns:
        The card written, with ``agreement`` ``{set name: agreement report}``.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp.ckpt")
    original = Predictor(ckpt_path, device="cpu")
    card = dict(card)
    payload = slim(read_checkpoint(ckpt_path), card, volume_threshold)
    torch.save(payload, tmp)
    try:
        candidate = Predictor(tmp, device="cpu")
        reports, failures = {}, []
        for name, raws in checks.items():
            reports[name] = agreement(original, candidate, raws)
            failures += [f"{name}: {reason}" for reason in check(reports[name], min_dice, max_prob_diff)]
        if failures:
            raise CovidSegError(f"{ckpt_path}: not packaged, the slim model disagrees with it ({'; '.join(failures)})")
        card["agreement"] = {"rule": f"mean per-slice Dice >= {min_dice} (lesion and lungs), probabilities within {max_prob_diff}", **reports}
        payload[CARD_KEY] = {**payload[CARD_KEY], **card}  # the agreement, measured on the file as written
        torch.save(payload, tmp)
        os.replace(tmp, output)
        return payload[CARD_KEY]
    finally:
        tmp.unlink(missing_ok=True)
