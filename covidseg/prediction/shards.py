"""Shards: a deterministic share of a cohort for one of N processes, by study.

Study ``i`` of the cohort (in input order; the images of one ``--data.case_regex`` case are one
study) belongs to shard ``i % N``, so N processes given the same ``--input`` split it without
talking to each other, and every study is predicted by exactly one of them. ``K`` counts from 0.

When ``--shard`` is not given it comes from the launcher's environment: torchrun's ``RANK`` /
``WORLD_SIZE`` (each rank then predicts on ``cuda:LOCAL_RANK`` when CUDA exists), else a SLURM job
array's ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT`` (``_MIN`` and ``_STEP`` taken into
account, so ``--array=1-8`` is shards 0..7), else ``0/1``: the whole cohort.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from covidseg.errors import CovidSegError


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``."""
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        k, n = -1, 0
    if not 0 <= k < n:
        raise CovidSegError(f"--shard {text}: expected K/N with 0 <= K < N (shard K of N, counting from 0; e.g. 0/4)")
    return k, n


def launcher_shard(env: Mapping[str, str] | None = None) -> tuple[int, int, str]:
    """``(K, N, launcher)`` from torchrun's or SLURM's environment; ``(0, 1, "")`` under neither."""
    env = os.environ if env is None else env
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return int(env["RANK"]), int(env["WORLD_SIZE"]), "torchrun"
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            first, step = int(env.get("SLURM_ARRAY_TASK_MIN", 0)), int(env.get("SLURM_ARRAY_TASK_STEP", 1) or 1)
            return (int(env["SLURM_ARRAY_TASK_ID"]) - first) // step, int(env["SLURM_ARRAY_TASK_COUNT"]), "SLURM array"
    except ValueError as err:
        raise CovidSegError(f"launcher environment: {err}; pass --shard K/N") from None
    return 0, 1, ""


def launcher_device(env: Mapping[str, str] | None = None, cuda: bool = False) -> str | None:
    """``cuda:LOCAL_RANK`` under torchrun when CUDA exists (one GPU per rank), else ``None``."""
    env = os.environ if env is None else env
    return f"cuda:{int(env['LOCAL_RANK'])}" if cuda and "LOCAL_RANK" in env else None


def shard_indices(studies: Sequence[str], k: int, n: int) -> list[int]:
    """Indices of the items whose study is shard ``k`` of ``n`` (study ``i`` in order of first appearance -> ``i % n``)."""
    order: dict[str, int] = {}
    for s in studies:
        order.setdefault(s, len(order))
    return [i for i, s in enumerate(studies) if order[s] % n == k]
