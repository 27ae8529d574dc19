"""``covidseg models``: the built-in models and their cards.

    covidseg models            # one block per built-in model: name, file, size, card
    covidseg models --json -           # the cards as JSON on stdout
    covidseg models --json cards.json  # ... into a file (--json is a path in every command and script)
"""

from __future__ import annotations

import json
from pathlib import Path

from covidseg import options
from covidseg.errors import user_errors
from covidseg.model import pretrained


def card_text(name: str, path, card: dict) -> str:
    """A readable model card: what it is, what it was trained on, how well it does, its terms."""
    lines = [f"{name}  (version {card.get('version', '?')}, {path.stat().st_size / 2**20:.1f} MB, {path})"]
    s = card.get("model", {})
    if s:
        lines.append(f"  input: {s.get('intensity')} at {s.get('image_size')} px, window {s.get('window')}; threshold {s.get('threshold')}, "
                     f"flip TTA {'on' if s.get('tta') else 'off'}; lung output {'yes' if s.get('lung_output') else 'no'}")  # fmt: skip
    t = card.get("trained_on") or {}
    if t:
        per_source = ", ".join(f"{k} {n} slices / {(t.get('cases_per_source') or {}).get(k, '?')} cases" for k, n in t.get("slices_per_source", {}).items())
        lines.append(f"  trained on: {t.get('slices')} slices of {t.get('cases', '?')} cases ({per_source}); {t.get('held_out_slices', 0)} held out")
    r = card.get("recipe") or {}
    if r:
        lines.append(f"  recipe: U-Net {r.get('encoder_name')}, {r.get('image_size')} px, {r.get('epochs', '?')} epochs, "
                     f"{'lesion + lung outputs' if r.get('lung_output') else 'lesion output'}")  # fmt: skip
    if "initialised_from" in card:
        semi = card.get("unlabelled_data")
        lines.append(f"  initialised from: {card['initialised_from']}; unlabelled data: "
                     + (f"{semi['folder']} ({semi['method']})" if semi else "none")
                     + (f"; lesion classes: {', '.join(card['lesion_classes'])}" if card.get("lesion_classes") else ""))  # fmt: skip
    cv = card.get("cross_validation") or {}
    if cv:
        dice = ", ".join(f"{k} {v:.3f}" for k, v in cv.get("per_image_dice", {}).items())
        lines.append(f"  cross-validated ({len(cv.get('folds', []))} folds, patients never seen): per-image Dice {dice}")
        for source, bins in (cv.get("per_image_dice_by_lesion_size_at_0.5") or {}).items():
            sizes = ", ".join(f"{label} px {b['dice_image']:.3f} ({b['images']})" for label, b in bins.items() if label != "none")
            lines.append(f"    {source} by lesion size (threshold 0.5, slices): {sizes}")
        if cv.get("lung_dice_image") is not None:
            err = cv.get("involvement_abs_error_pp") or {}
            lines.append(f"  lung Dice {cv['lung_dice_image']:.3f}; involvement error per patient at lesion threshold 0.5 mean {err.get('mean', float('nan')):.1f} pp, "
                         f"max {err.get('max', float('nan')):.1f} pp ({err.get('cases', '?')} patients)")  # fmt: skip
    classes = cv.get("classes_at_operating_point")
    if classes:
        f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        parts = [f"{c} Dice {f(v['dice'])} (sensitivity {f(v['sensitivity'])}, specificity {f(v['specificity'])})" for c, v in classes.items() if isinstance(v, dict)]
        lines.append(f"  lesion classes, cross-validated on {classes['slices']} class-labelled slices at its operating point: {'; '.join(parts)}")
    rule = card.get("volume_rule") or {}
    if rule.get("volume_threshold") is not None:
        at = (rule.get("by_threshold") or {}).get(f"{rule['volume_threshold']:.2f}") or {}
        lines.append(f"  volumes (lesion mL, involvement, grade) at lesion threshold {rule['volume_threshold']:g}"
                     + (f": involvement error per patient mean {at['mean_abs_error_pp']:.1f} pp, max {at['max_abs_error_pp']:.1f} pp, "
                        f"grades right {100 * at['grade_accuracy']:.0f}% (always {rule.get('baseline_grade')}: {100 * rule.get('baseline_accuracy', 0):.0f}%)" if at else ""))  # fmt: skip
    if card.get("agreement"):
        checks = {k: v for k, v in card["agreement"].items() if isinstance(v, dict)}
        least = min((v.get("lesion_dice_mean", 1.0) for v in checks.values()), default=float("nan"))
        most = max((v.get("max_prob_diff", 0.0) for v in checks.values()), default=float("nan"))
        below = sum(v.get("lesion_slices_below_0.99", 0) for v in checks.values())
        pixels = max((v.get("lesion_max_pixels_changed", 0) for v in checks.values()), default=0)
        lines.append(f"  agreement with its checkpoint on {sum(v.get('slices', 0) for v in checks.values())} slices: mean lesion Dice >= {least:.4f}, "
                     f"{below} slice(s) under 0.99, at most {pixels} lesion pixel(s) changed on a slice, probabilities within {most:.4f} "
                     f"(rule: {card['agreement'].get('rule')})")  # fmt: skip
    lines.append(f"  commit {card.get('commit', '?')}, created {card.get('created', '?')}")
    lines.append(f"  terms: {card.get('terms', pretrained.TERMS)}")
    return "\n".join(lines)


def build_parser():
    p = options.parser("covidseg models", __doc__)
    p.add_argument("--json", type=str | None, default=None, help="write the cards as JSON to this file ('-': stdout), as --json does in the scripts")
    return p


@user_errors
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    models = pretrained.available()
    if not models:
        print("no built-in models installed in this covidseg (covidseg/model/pretrained holds none); predict needs --ckpt")
        return 0
    cards = {name: pretrained.card(path) for name, path in models.items()}
    if a.json:
        text = json.dumps(cards, indent=1)
        if a.json in ("-", "true"):  # "true": the old flag spelling
            print(text)
        else:
            Path(a.json).write_text(text + "\n")
            print(f"wrote {a.json}")
    else:
        print("\n\n".join(card_text(name, models[name], cards[name]) for name in models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
