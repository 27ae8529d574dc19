"""Input pipeline: ``CTDataModule.train_dataloader()`` iterated alone."""

from __future__ import annotations

import time
from pathlib import Path

from torch.utils.data import DataLoader

from bench.common import median
from covidseg.data.datamodule import CTDataModule


def bench_loader(args, data_dir: Path) -> dict:
    dm = CTDataModule(str(data_dir), image_size=args.image_size, batch_size=args.batch_size)  # default workers
    dm.setup("fit")
    loader = dm.train_dataloader()
    workers = dm.num_workers
    warmup = max(args.warmup, 2 * workers + 1)  # first batches: worker start + prefetched queue
    wanted = warmup + max(args.steps, 10 if not args.tiny else 3)
    times, sizes = [], []
    t_prev = time.perf_counter()
    while len(times) < wanted:
        for batch in loader:
            t = time.perf_counter()
            times.append(t - t_prev)
            sizes.append(len(batch["image"]))
            t_prev = t
            if len(times) == wanted:
                break
    # Per-image time of each timed batch (the last batch of an epoch may be short).
    per_image = [dt / n for dt, n in zip(times[warmup:], sizes[warmup:])]
    out = {"loader_images_per_s": 1.0 / median(per_image), "loader_num_workers": workers, "loader_train_slices": len(dm.datasets["train"])}
    if workers > 0:
        # Start of an epoch: time to the first batch with the workers kept alive (the
        # DataModule's persistent_workers) and with workers started anew each epoch.
        fresh = DataLoader(dm.datasets["train"], batch_size=args.batch_size, shuffle=True, num_workers=workers,
                           persistent_workers=False, pin_memory=loader.pin_memory)  # fmt: skip
        reps = 2 if args.tiny else 3
        out["loader_epoch_start_s_persistent"] = median([first_batch_s(loader) for _ in range(reps)])
        out["loader_epoch_start_s_fresh_workers"] = median([first_batch_s(fresh) for _ in range(reps)])
    del loader
    return out


def first_batch_s(loader: DataLoader) -> float:
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    dt = time.perf_counter() - t0
    del it
    return dt
