"""Learning curves: per-epoch scalars read back from a run's TensorBoard events, and their figure."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from covidseg.evaluation.report.figures import new_figure

CURVE_TAGS = ("train/loss", "val/loss", "train/dice_image", "val/dice_image")


def read_learning_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """Per-epoch ``CURVE_TAGS`` (loss and per-image Dice, train and validation) of a TensorBoard run.

    Returns:
        ``{tag: {epoch: value}}`` for the tags found (steps are mapped to epochs with the
        ``epoch`` scalar Lightning logs; the last value of an epoch wins).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "images": 1, "histograms": 1, "compressedHistograms": 1, "tensors": 1, "audio": 1}
    acc = EventAccumulator(str(run_dir), size_guidance=guidance)
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    epoch_of = {e.step: int(e.value) for e in acc.Scalars("epoch")} if "epoch" in tags else {}
    curves = {}
    for tag in CURVE_TAGS:
        if tag in tags:
            curves[tag] = {epoch_of.get(e.step, e.step): e.value for e in acc.Scalars(tag)}
    return curves


def learning_curves_figure(runs: dict[str, dict[str, dict[int, float]]]) -> Figure:
    """Loss and per-image Dice per epoch, train (solid) and validation (dashed), one colour per run."""
    fig = new_figure(11, 4.2)
    axes = fig.subplots(1, 2)
    for i, (name, curves) in enumerate(runs.items()):
        colour = f"C{i}"
        for ax, metric in zip(axes, ("loss", "dice_image")):
            for stage, style in (("train", "-"), ("val", "--")):
                points = sorted(curves.get(f"{stage}/{metric}", {}).items())
                if points:
                    label = f"{stage}" if len(runs) == 1 else f"{name} {stage}"
                    ax.plot(*zip(*points), style, marker="o", ms=3, c=colour if len(runs) > 1 else ("C0" if stage == "train" else "C1"), label=label)
    for ax, title in zip(axes, ("Loss (Dice + BCE)", "Per-image Dice")):
        ax.set(xlabel="epoch", ylabel=title.split()[0].lower() if title.startswith("Loss") else "Dice", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle("Learning curves")
    return fig
