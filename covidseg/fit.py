"""Train, then evaluate the best checkpoint: ``covidseg fit [--config X.yaml] [--flags]``.

A LightningCLI over ``LitUNet`` and ``CTDataModule``. Every output of a run lives in one run
directory, ``<save_dir>/<name>/version_N`` (default ``runs/covidseg/version_N``): the resolved
``config.yaml``, ``splits.csv``, ``checkpoints/best.ckpt`` and ``last.ckpt`` (each with the git commit
the code was trained from and whether its tree was clean, ``model.provenance``), TensorBoard events
and ``report/``: the test split scored by ``covidseg evaluate`` at the model's operating point
(threshold and TTA), the run's one test score (also logged as ``test/*`` in TensorBoard). ``--ckpt_path last`` resumes the newest run of that name exactly (the ``version_N`` of the highest
``N``; one line names the checkpoint; refused in one line when that run has no ``last.ckpt`` or
a run folder of another name makes "newest" ambiguous); ``--ckpt_path RUN/checkpoints/last.ckpt``
resumes that run. A resume keeps the run's ``config.yaml`` and writes its own configuration
beside it, ``config.resume-1.yaml`` (then ``-2``, ...).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from covidseg import options
from covidseg.data.datamodule import CTDataModule
from covidseg.errors import CovidSegError, user_errors
from covidseg.evaluate import evaluate
from covidseg.evaluation.report.writers import metric_table
from covidseg.metrics.scores import VAL_DICE_IMAGE, VAL_DICE_LESION_IMAGE
from covidseg.model.callbacks import EpochLine, LastEpochCheckpoint, ValidationSamples
from covidseg.model.card import FIT_COMPUTED_LINKS, FIT_LINKS
from covidseg.model.ddp import bound_collectives, dump_stacks_on_signal, is_timeout, lost_peer, stop_other_ranks
from covidseg.model.provenance import RecordProvenance
from covidseg.model.unet import LitUNet


LAST = Path("checkpoints", "last.ckpt")


def find_last_checkpoint(save_dir: str, name: str) -> Path:
    """The ``last.ckpt`` of the newest run under ``save_dir/name``: the ``version_N`` folder of
    the highest ``N``. Raises ``CovidSegError`` (one line) when there is none, when that newest
    run has no ``last.ckpt`` (an older run's is never taken silently), or when a run folder not
    named ``version_N`` has one (which run is newest is then ambiguous)."""
    base = Path(save_dir, name)
    folders = sorted(d for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    numbered = sorted((d for d in folders if re.fullmatch(r"version_\d+", d.name)), key=lambda d: int(d.name.split("_")[1]))
    named = [d for d in folders if d not in numbered and (d / LAST).is_file()]
    if not any((d / LAST).is_file() for d in numbered) and not named:
        raise CovidSegError(f"--ckpt_path last: no {base}/version_*/{LAST.as_posix()} to resume")
    if named and (len(named) > 1 or numbered):
        runs = ", ".join(d.name for d in [*named, *numbered[-1:]])
        raise CovidSegError(f"--ckpt_path last: which run under {base} is newest is ambiguous ({runs}: not all named version_N); pass --ckpt_path RUN/{LAST.as_posix()}")
    newest = named[0] if named else numbered[-1]
    if not (newest / LAST).is_file():
        older = next(d for d in reversed(numbered) if (d / LAST).is_file())
        raise CovidSegError(f"--ckpt_path last: the newest run {newest} has no {LAST.as_posix()}; to resume the older {older.name}, pass --ckpt_path {older / LAST}")
    return newest / LAST


def resume_config_name(run_dir: Path) -> str:
    """Where a resume writes its configuration: ``config.yaml`` for a run that has none, else
    the next free ``config.resume-K.yaml``, so the run's own ``config.yaml`` is never replaced."""
    if not (run_dir / "config.yaml").exists():
        return "config.yaml"
    k = 1
    while (run_dir / f"config.resume-{k}.yaml").exists():
        k += 1
    return f"config.resume-{k}.yaml"


class CovidSegCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for source, field, when in FIT_LINKS:  # the model card's data fields travel in every checkpoint
            parser.link_arguments(source, f"model.{field}", apply_on=when)
        for source, field, when, compute in FIT_COMPUTED_LINKS:
            parser.link_arguments(source, f"model.{field}", compute_fn=compute, apply_on=when)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": VAL_DICE_IMAGE,
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                # last.ckpt is LastEpochCheckpoint's (every epoch); Lightning's save_last is not
                "checkpoint.save_last": False,
                "checkpoint.auto_insert_metric_name": False,
                # a resumed run overwrites its own best.ckpt instead of writing best-v1.ckpt beside it
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": VAL_DICE_IMAGE, "early_stopping.mode": "max", "early_stopping.patience": 10})
        parser.add_argument("--ckpt_path", "--ckpt", type=str | None, default=None, help="resume: 'last' (newest run of this name) or a last.ckpt path")
        parser.add_argument("--test", type=bool, default=True, help="evaluate the best checkpoint on the test split after fitting (report/)")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        if not cfg.get("ckpt_path"):
            return
        logger = cfg.trainer.logger
        if not (hasattr(logger, "init_args") and "TensorBoardLogger" in str(getattr(logger, "class_path", ""))):
            return  # custom logger: resume into a new run directory
        args = logger.init_args
        ckpt = find_last_checkpoint(args.save_dir, args.name) if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
        if not ckpt.is_file():
            raise CovidSegError(f"--ckpt_path {ckpt}: checkpoint not found")
        run_dir = ckpt.resolve().parent.parent
        args.save_dir, args.name, args.version = str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        # the run's config.yaml records how it started; this command's goes beside it
        self.save_config_kwargs["config_filename"] = config = resume_config_name(run_dir)
        rank_zero_info(f"--ckpt_path {cfg.ckpt_path}: resuming {ckpt}; this command's configuration goes to {run_dir / config}")
        if not cfg.data.split_file and (run_dir / "splits.csv").is_file():
            cfg.data.split_file = str(run_dir / "splits.csv")  # same patients in the same splits
        cfg.ckpt_path = str(ckpt)


def train_without_validation(trainer, model: LitUNet, reason: str) -> None:
    """No validation split (e.g. ``--data.val_fraction 0 --data.test_fraction 0`` for a final
    model on all cases) or validation turned off (``--trainer.limit_val_batches 0``, e.g. a
    cross-validation fold scored afterwards): nothing to select a checkpoint or stop early on, so
    validation is off, early stopping is dropped and ``best.ckpt`` holds the latest weights, as
    ``last.ckpt``."""
    if model.hparams.scheduler == "plateau":
        raise CovidSegError("model.scheduler=plateau follows val/dice_image, but there is no validation split; use cosine or none")
    trainer.limit_val_batches = 0
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, EarlyStopping)]
    for cb in trainer.checkpoint_callbacks:
        cb.monitor = None
    rank_zero_info(f"{reason}; no early stopping, checkpoints keep the latest weights")


def _val_has_lesion(dm: CTDataModule) -> bool:
    """Whether any validation slice's truth holds lesion (volumes: one read per mask volume)."""
    from covidseg.data.cache import read_mask_volume
    from covidseg.data.samples import mask_of

    split = dm.make_split()  # as setup() will make it (deterministic)
    val = [s for s in dm.validated().samples if split.get(s.image) == "val"]
    volumes: dict[str, np.ndarray] = {}
    for s in val:
        if s.slice is None:
            if mask_of(s, dm.hparams.lesion_labels).any():
                return True
            continue
        if s.mask not in volumes:
            volumes[s.mask] = read_mask_volume(s.mask, dm.hparams.lesion_labels)[0].any(axis=(1, 2))
        if volumes[s.mask][s.slice]:
            return True
    return not val  # no validation split: nothing to monitor anyway


def monitor_volumes(trainer, model: LitUNet, dm: CTDataModule) -> None:
    """On volume data most slices hold no lesion and score 1.0 when left empty, so the default
    monitor ``val/dice_image`` would mostly measure empty slices: checkpointing, early stopping
    and the plateau scheduler follow ``val/dice_lesion_image`` (per-image Dice over the slices
    whose truth has lesion) instead. A monitor set by the user is kept."""
    if not dm.report.volumes:
        return
    if not _val_has_lesion(dm):
        rank_zero_info(f"volume data: no validation slice holds lesion, so {VAL_DICE_LESION_IMAGE} is undefined; checkpoints and early stopping follow "
                       f"{VAL_DICE_IMAGE} (give validation a case with lesion: --data.split_seed, --data.val_fraction)")  # fmt: skip
        return
    for cb in [*trainer.checkpoint_callbacks, *(c for c in trainer.callbacks if isinstance(c, EarlyStopping))]:
        if cb.monitor == VAL_DICE_IMAGE:
            cb.monitor = VAL_DICE_LESION_IMAGE
    model.monitor = VAL_DICE_LESION_IMAGE
    rank_zero_info(f"volume data: checkpoints and early stopping follow {VAL_DICE_LESION_IMAGE} (per-image Dice over slices with lesion)")


def build_cli(args: list[str] | None = None) -> CovidSegCLI:
    return CovidSegCLI(
        LitUNet,
        CTDataModule,
        run=False,
        args=args,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "max_epochs": 40,
            "log_every_n_steps": 10,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "covidseg", "default_hp_metric": False},
            },
            "callbacks": [LearningRateMonitor(logging_interval="epoch"), ValidationSamples(), EpochLine(), LastEpochCheckpoint()],
        },
        parser_kwargs={"prog": "covidseg fit", "description": __doc__.split("\n\n")[0]},
    )


def test_report(trainer, dm: CTDataModule, best: str, run_dir: Path) -> dict:
    """Evaluates ``best`` on the test split (the validation split when there is no test split)
    exactly as ``covidseg evaluate --ckpt BEST --split test`` does, into ``RUN/report``."""
    split = "test" if dm.samples("test") else "val"  # as CTDataModule.test_dataloader
    logger = trainer.logger
    writer = logger.experiment if isinstance(logger, TensorBoardLogger) else None
    device = "cuda" if trainer.strategy.root_device.type == "cuda" else "cpu"
    # the report's scalars are test/*; scored on the validation split they go to report_val/*, so
    # they never add a point to the val/* training curves of the same names
    prefix = "test" if split == "test" else "report_val"
    metrics = evaluate(best, output=run_dir / "report", split=split, tensorboard=writer, step=trainer.global_step, batch_size=dm.batch_size, device=device,
                       tensorboard_prefix=prefix)  # fmt: skip
    t = metrics["threshold"]
    print(f"\n{split.capitalize()} metrics (best checkpoint; threshold {t:.2f}, TTA {'on' if metrics['tta'] else 'off'}, each slice at its own resolution):")
    print(metric_table(metrics))
    print(f"report:          {run_dir / 'report'}")
    return metrics


@user_errors
def main(args: list[str] | None = None) -> dict:
    """Fits, evaluates the best checkpoint and returns its ``report/metrics.json`` (on global
    rank 0; other ranks return ``{}``)."""
    dump_stacks_on_signal()  # kill -USR1 PID: every thread's stack to stderr (what a hung rank waits on)
    typed = sys.argv[1:] if args is None else list(args)
    renamed = options.rename_flags(typed, options.FIT_ALIASES)  # --threshold, --tta, ... as in evaluate and predict
    cli = build_cli(renamed if args is not None or renamed != typed else None)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    if trainer.logger is None:  # --trainer.logger false: no TensorBoard files, so nothing to log learning rates to
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        rank_zero_info(f"no logger (--trainer.logger false): no TensorBoard events or learning-rate curve; checkpoints, config and report go to {trainer.log_dir}")
    trainer.callbacks.append(RecordProvenance())  # the commit and clean/dirty tree, in every checkpoint
    dm.validated()  # validate all data before any process group or worker starts
    monitor_volumes(trainer, model, dm)
    validated = "val" in dm.make_split().values()
    dm.check_world_size(trainer.world_size)  # before any process starts: one error line, exit 2
    timeout = bound_collectives(trainer)
    if not validated:
        train_without_validation(trainer, model, "no validation split: training on every case")
    elif trainer.limit_val_batches == 0:
        train_without_validation(trainer, model, "validation off (--trainer.limit_val_batches 0)")
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=cli.config.get("ckpt_path"))
    except BaseException as err:
        ddp_error = timeout is not None and isinstance(err, RuntimeError)  # torch.distributed.DistBackendError is a RuntimeError
        # a rank left behind would wait out its own timeout (and hold a CI job's pipes); after a
        # timeout the stuck processes first say where they are
        stop_other_ranks(trainer, dump_stacks=ddp_error and is_timeout(err))
        if ddp_error and lost_peer(err):
            raise CovidSegError(f"DDP: rank {trainer.global_rank} lost its connection to another rank, which failed (its error is above); "
                                "the run stops, nothing was lost before the last checkpoint") from None  # fmt: skip
        if not (ddp_error and is_timeout(err)):
            raise
        raise CovidSegError(f"DDP: rank {trainer.global_rank} waited {timeout:.0f} s in a collective that another process never joined (it died or is stuck); "
                            f"nothing was lost before the last checkpoint; set COVIDSEG_DDP_TIMEOUT (seconds) to wait longer") from None  # fmt: skip
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb else ""
    run_dir = Path(trainer.log_dir or ".")  # a collective under DDP: every rank asks
    results: dict = {}
    if not trainer.is_global_zero:
        return results
    if cli.config.get("test", True) and best and (dm.samples("test") or dm.samples("val")):
        results = test_report(trainer, dm, best, run_dir)
    if not best:
        print("\nno checkpoint saved (fast_dev_run, or checkpointing disabled)")
        return results
    print(f"\nrun directory:   {run_dir}")
    print(f"best checkpoint: {best}" + ("" if validated else "  (the latest weights: no validation split)"))
    if trainer.logger is not None:
        print(f"monitor with:    tensorboard --logdir {run_dir.parent}")
    return results


if __name__ == "__main__":
    main()
