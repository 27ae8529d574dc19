"""The paired cross-validation table, from the fold result files of ``scripts/crossval.sh``.

    python scripts/cv_summary.py                       # every experiment in docs/experiments, paired with 'reference'
    python scripts/cv_summary.py NAME [REFERENCE]      # one experiment (paired with REFERENCE, default 'reference')
    python scripts/cv_summary.py NAME --results DIR    # result files elsewhere
    python scripts/cv_summary.py c2-lungs --rule non-inferiority   # the rule written for that comparison

Each experiment is scored at its own best operating point (TTA mode and threshold with the best
mean over sources of the fold-averaged per-image Dice, chosen over the folds it has, as the
stored operating point is chosen), and also at threshold 0.5 with flip TTA. The paired table
lists, per fold both experiments finished, the per-source per-image Dice of each and the
difference, then mean and sd of the differences; then Dice by lesion size pooled over the
folds' held-out slices, and the lung figures of lung-output models.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from covidseg.evaluation.crossval import best_setting, pooled_by_lesion_size, read_records, sd, setting_scores, source_means

REPO = Path(__file__).resolve().parents[1]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def describe(name: str, records: dict[int, dict]) -> tuple[str, str]:
    """Prints one experiment's per-fold scores; returns its best setting."""
    tta, t, overall = best_setting(records)
    first = next(iter(records.values()))
    minutes = statistics.mean(r["train_seconds"] for r in records.values()) / 60
    print(f"\n## {name}: folds {sorted(records)} of {first['num_folds']}, {first['epochs']} epochs, {minutes:.1f} min training per fold (commit {first['commit']})")
    print(f"best setting over these folds: {'flip TTA' if tta == 'tta' else 'no TTA'}, threshold {t} (mean of sources {overall:.4f})\n")
    print("| setting | source | mean | sd | per fold |")
    print("|---|---|---|---|---|")
    for label, (m, th) in (("best", (tta, t)), ("TTA, 0.5", ("tta", "0.5")), ("no TTA, 0.5", ("plain", "0.5"))):
        for source in sorted(setting_scores(first, m, th)):
            values = [setting_scores(r, m, th)[source] for _, r in sorted(records.items())]
            print(f"| {label} | {source} | {statistics.mean(values):.3f} | {_fmt(sd(values))} | {', '.join(f'{v:.3f}' for v in values)} |")
    return tta, t


def paired(name: str, records: dict[int, dict], ref_name: str, refs: dict[int, dict], rule: str = "superiority") -> None:
    """Per fold both have: each experiment at its own best setting (chosen over the common folds) and the difference."""
    common = sorted(set(records) & set(refs))
    if not common:
        print(f"\n{name} and {ref_name} share no finished fold yet")
        return
    mine, theirs = {k: records[k] for k in common}, {k: refs[k] for k in common}
    a, b = best_setting(mine)[:2], best_setting(theirs)[:2]
    sources = sorted(setting_scores(mine[common[0]], *a))
    print(f"\n## paired: {name} ({'TTA' if a[0] == 'tta' else 'no TTA'} {a[1]}) against {ref_name} ({'TTA' if b[0] == 'tta' else 'no TTA'} {b[1]}), folds {common}\n")
    print("| fold | " + " | ".join(f"{s}: {name} / {ref_name} / diff" for s in sources) + " | mean of sources diff |")
    print("|---|" + "---|" * (len(sources) + 1))
    diffs: dict[str, list[float]] = {s: [] for s in sources}
    for k in common:
        x, y = setting_scores(mine[k], *a), setting_scores(theirs[k], *b)
        cells = []
        for s in sources:
            diffs[s].append(x[s] - y[s])
            cells.append(f"{x[s]:.3f} / {y[s]:.3f} / {x[s] - y[s]:+.3f}")
        print(f"| {k} | " + " | ".join(cells) + f" | {statistics.mean(x[s] - y[s] for s in sources):+.3f} |")
    ma, mb = source_means(mine, *a), source_means(theirs, *b)
    cells = [f"{ma[s]:.3f} / {mb[s]:.3f} / {statistics.mean(diffs[s]):+.3f} (sd {_fmt(sd(diffs[s]))})" for s in sources]
    total = statistics.mean(statistics.mean(d) for d in diffs.values())
    print("| mean | " + " | ".join(cells) + f" | {total:+.4f} |")
    lungs = [r["scores"][a[0]].get("lungs") for r in mine.values()]
    lung_dice = [v["lung_dice_image"] for v in lungs if v] if any(lungs) else None
    print("\n" + verdict({s: statistics.mean(d) for s, d in diffs.items()}, lung_dice, len(common), mine[common[0]]["num_folds"], rule))


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


def size_and_lungs(name: str, records: dict[int, dict], mode: str = "tta") -> None:
    """Dice by lesion size pooled over all folds' held-out slices, and lung figures (threshold 0.5)."""
    print(f"\n{name}, {'flip TTA' if mode == 'tta' else 'no TTA'}, threshold 0.5, by lesion size (px at the original resolution; all folds' held-out slices):\n")
    print("| source | lesion size | slices | per-image Dice |")
    print("|---|---|---|---|")
    for source, bins in pooled_by_lesion_size(records, mode).items():
        for label, b in bins.items():
            print(f"| {source} | {label} | {b['images']} | {b['dice_image']:.3f} |")
    lungs = {k: r["scores"][mode].get("lungs") for k, r in sorted(records.items()) if r["scores"][mode].get("lungs")}
    if lungs:
        print("\n| fold | lung Dice (per image / global) | involvement error, mean / max (pp) | grades right | cases |")
        print("|---|---|---|---|---|")
        for k, v in lungs.items():
            print(f"| {k} | {v['lung_dice_image']:.3f} / {v['lung_dice_global']:.3f} | {_fmt(v['mean_abs_error_pp'], 2)} / {_fmt(v['max_abs_error_pp'], 2)} | "
                  f"{_fmt(v['grade_accuracy'], 2)} | {len(v['cases'] or [])} |")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", help="experiment (default: all)")
    p.add_argument("reference", nargs="?", default="reference", help="experiment to pair with (default: reference)")
    p.add_argument("--results", default=str(REPO / "docs" / "experiments"), help="folder of NAME/fold-K.json")
    p.add_argument("--rule", choices=sorted(RULES), default="superiority", help="the adoption rule written for this comparison (docs/RESULTS.md)")
    a = p.parse_args(argv)
    root = Path(a.results)
    names = [a.name] if a.name else sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("fold-*.json")))
    if not names:
        raise SystemExit(f"cv_summary: no fold results under {root}")
    ref = read_records(root / a.reference) if (root / a.reference).is_dir() else {}
    for name in names:
        records = read_records(root / name)
        if not records:
            raise SystemExit(f"cv_summary: no {root / name}/fold-*.json")
        describe(name, records)
        size_and_lungs(name, records)
        if ref and name != a.reference:
            paired(name, records, a.reference, ref, a.rule)


if __name__ == "__main__":
    main()
