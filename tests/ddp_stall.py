"""A callback for tests/test_ddp.py: rank 1 stops answering after its first training epoch,
as a rank on a cluster does when its node stalls."""

import time

from pytorch_lightning.callbacks import Callback


class StallOnRank1(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank == 1:
            time.sleep(3600)
