"""Callbacks for tests/test_ddp.py: rank 1 stops answering, or fails, after its first training
epoch, as a rank on a cluster does when its node stalls or its job breaks."""

import time

from pytorch_lightning.callbacks import Callback


class StallOnRank1(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank == 1:
            time.sleep(3600)


class FailOnRank1(Callback):
    """Rank 1 raises after its first training epoch, as a rank does on a bad batch or a full disk."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank == 1:
            raise RuntimeError("rank 1 fails on purpose")

