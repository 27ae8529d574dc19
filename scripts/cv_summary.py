"""The paired cross-validation table, from the fold result files of ``scripts/crossval.sh``.

    python scripts/cv_summary.py                       # every experiment in docs/experiments, paired with the current reference
    python scripts/cv_summary.py NAME [REFERENCE]      # one experiment (paired with REFERENCE, default the current reference, adoption.CURRENT_REFERENCE)
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

from covidseg.evaluation.adoption import CURRENT_REFERENCE, RULES, verdict
from covidseg.evaluation.crossval import best_setting, class_means, pooled_by_lesion_size, read_records, sd, setting_scores, source_means

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


def classes(name: str, records: dict[int, dict], mode: str = "tta") -> None:
    """Per-class scores of a class model (issue 33) on each fold's held-out class-labelled slices:
    at the best setting's lesion threshold where the records score classes by threshold, and at
    0.5 (the records' ``classes``)."""
    from covidseg.data.classes import CLASS_NAMES

    best_mode, best_t, _ = best_setting(records)
    views = [(f"at {'flip TTA' if mode == 'tta' else 'no TTA'}, lesion threshold 0.5", {k: r["scores"][mode].get("classes") for k, r in records.items()})]
    if all("classes_by_threshold" in r["scores"][best_mode] for r in records.values()):
        views.insert(0, (f"at the best setting ({'flip TTA' if best_mode == 'tta' else 'no TTA'}, lesion threshold {best_t})",
                         {k: r["scores"][best_mode]["classes_by_threshold"].get(best_t) for k, r in records.items()}))  # fmt: skip
    for label, per in views:
        per = {k: v for k, v in sorted(per.items()) if v}
        if not per:
            continue
        print(f"\n{name}, per class {label} (per-image means over each fold's held-out class-labelled slices):\n")
        print("| fold | slices | " + " | ".join(f"{c} Dice / sens. / spec." for c in CLASS_NAMES) + " |")
        print("|---|---|" + "---|" * len(CLASS_NAMES))
        metrics = ("dice", "sensitivity", "specificity")
        for k, v in per.items():
            print(f"| {k} | {v['slices']} | " + " | ".join(" / ".join(_fmt(v[c][m]) for m in metrics) for c in CLASS_NAMES) + " |")
        mean = class_means(list(per.values()))
        print(f"| mean of folds | {mean['slices']} | " + " | ".join(" / ".join(_fmt(mean[c][m]) for m in metrics) for c in CLASS_NAMES) + " |")


def volume_rule(name: str, records: dict[int, dict]) -> None:
    """The volume operating point chosen over the folds' patients (``evaluation.volume_rule``)."""
    from covidseg.evaluation.volume_rule import choose

    try:
        rule = choose(records)
    except ValueError as err:
        print(f"\n{name}: volume operating point: {err}")
        return
    print(f"\n{name}, flip TTA: per-patient involvement error by lesion threshold ({next(iter(rule['by_threshold'].values()))['patients']} patients; "
          f"always answering {rule['baseline_grade']} gets {100 * rule['baseline_accuracy']:.0f}% of grades right):\n")  # fmt: skip
    print("| threshold | mean error (pp) | max error (pp) | grade right |")
    print("|---|---|---|---|")
    for t, v in rule["by_threshold"].items():
        mark = " **chosen**" if float(t) == rule["volume_threshold"] else ""
        print(f"| {t}{mark} | {v['mean_abs_error_pp']:.2f} | {v['max_abs_error_pp']:.2f} | {100 * v['grade_accuracy']:.0f}% |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", help="experiment (default: all)")
    p.add_argument("reference", nargs="?", default=CURRENT_REFERENCE, help=f"experiment to pair with (default: the current reference, {CURRENT_REFERENCE})")
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
        classes(name, records)
        volume_rule(name, records)
        if ref and name != a.reference:
            paired(name, records, a.reference, ref, a.rule)


if __name__ == "__main__":
    main()
