"""Adoption rules for recipe comparisons, as docs/RESULTS.md writes them before each run, and
the verdict they give on paired cross-validation folds (``scripts/cv_summary.py`` prints it)."""

from __future__ import annotations

import statistics

# The current reference recipe: what a candidate is paired against by default. Its folds are
# docs/experiments/CURRENT_REFERENCE/; the built-in model is trained by its recipe.
CURRENT_REFERENCE = "c4-lite0"  # adopted 2026-12-03 (ImageNet Lite0 encoder, superiority over five folds); c3-aligned, c2-lungs before

# docs/RESULTS.md's rules, written before the runs: (least mean-of-sources difference, least per-source difference)
RULES = {"superiority": (0.01, -0.01), "non-inferiority": (-0.01, -0.02)}


def verdict(source_diffs: dict[str, float], lung_dice: list[float] | None, folds: int, num_folds: int, rule: str = "superiority") -> str:
    """An adoption rule of docs/RESULTS.md (written before the runs), applied to the paired means.
    ``superiority`` (a candidate recipe): mean of sources at least +0.01, no source below -0.01;
    ``non-inferiority`` (a part the product needs, e.g. the lung output): mean of sources no lower
    than -0.01, no source below -0.02. Both: lung Dice at least 0.95 on every fold (lung-output
    candidates); fewer folds than ``num_folds`` can discard a candidate, never adopt it."""
    least_mean, least_source = RULES[rule]
    mean = statistics.mean(source_diffs.values())
    worst = min(source_diffs, key=source_diffs.get)
    checks = [
        (mean >= least_mean, f"mean of sources {mean:+.4f} (needs >= {least_mean:+.2f})"),
        (source_diffs[worst] >= least_source, f"worst source {worst} {source_diffs[worst]:+.4f} (needs >= {least_source:+.2f})"),
    ]
    if lung_dice is not None:
        checks.append((min(lung_dice) >= 0.95, f"lung Dice at least {min(lung_dice):.3f} on every fold (needs >= 0.95)"))
    lines = [f"- {'met' if ok else 'NOT met'}: {what}" for ok, what in checks]
    if all(ok for ok, _ in checks):
        decision = "adopt" if folds >= num_folds else f"screening only ({folds} of {num_folds} folds): may not adopt yet"
    else:
        decision = "not adopted" if folds >= num_folds else f"screening ({folds} of {num_folds} folds): not met on these folds; the remaining folds decide"
    return f"adoption rule (docs/RESULTS.md, {rule}): " + decision + "\n" + "\n".join(lines)
