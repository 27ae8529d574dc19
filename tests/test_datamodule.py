import numpy as np
import pytest
import torch

from covidseg.data.datamodule import CTDataModule, SliceDataset
from covidseg.data.io import write_image, write_mask
from covidseg.data.samples import Sample
from covidseg.data.transforms import train_transforms


def test_samples_follow_the_data_contract(tiny_data):
    dm = CTDataModule(str(tiny_data), image_size=48, batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, 48, 48) and batch["mask"].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert set(torch.unique(batch["mask"]).tolist()) <= {0.0, 1.0}
    total = sum(len(dm.datasets[k]) for k in ("train", "val", "test"))
    assert total == 32 and min(len(dm.datasets[k]) for k in ("train", "val", "test")) > 0


def test_augmentation_moves_image_and_mask_together(tmp_path):
    # image bright exactly where the mask is: after any geometric augmentation they must agree
    img = np.zeros((64, 64), np.uint8)
    img[10:30, 20:50] = 255
    write_image(tmp_path / "i.png", img)
    write_mask(tmp_path / "m.png", img > 0)
    ds = SliceDataset([Sample(str(tmp_path / "i.png"), str(tmp_path / "m.png"), "c", "s")], 64, transform=train_transforms(rotate=30, zoom=0.2, shift=0.2, hflip=1.0))
    for _ in range(5):
        item = ds[0]
        bright = item["image"][0] > 0.5
        mask = item["mask"][0] > 0.5
        assert mask.sum() > 0
        agree = (bright == mask).float().mean()
        assert agree > 0.98
        assert not torch.equal(mask, torch.from_numpy(img > 0))  # it did move


def test_eval_splits_are_not_augmented(tiny_data):
    dm = CTDataModule(str(tiny_data), image_size=40, num_workers=0)
    dm.setup("fit")
    a, b = dm.datasets["val"][0], dm.datasets["val"][0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_balanced_sampler_draws_sources_evenly(tiny_data, tmp_path):
    from covidseg.data.synthetic import generate

    small = generate(tmp_path / "small", cases=4, slices=1, size=40)
    dm = CTDataModule([str(tiny_data), str(small)], image_size=32, num_workers=0, balance_sources=True, val_fraction=0.2, test_fraction=0.0)
    dm.setup("fit")
    torch.manual_seed(0)
    sources = [dm.datasets["train"].samples[i].source for i in dm.train_dataloader().sampler]
    share = sources.count("small") / len(sources)
    assert 0.25 < share < 0.75  # unbalanced it would be ~3/35


def test_soft_masks_only_for_training(tiny_data):
    dm = CTDataModule(str(tiny_data), image_size=24, batch_size=4, num_workers=0, soft_masks=True, rotate=20)
    dm.setup("fit")
    train = torch.stack([dm.datasets["train"][i]["mask"] for i in range(4)])
    assert 0 <= train.min() and train.max() <= 1
    assert ((train > 0) & (train < 1)).any()  # fractions at lesion borders
    val = dm.datasets["val"][0]["mask"]
    assert set(torch.unique(val).tolist()) <= {0.0, 1.0}


def test_split_smaller_than_world_size_is_one_line_error(tmp_path):
    from types import SimpleNamespace

    from covidseg.data.synthetic import generate
    from covidseg.errors import DataError

    data = generate(tmp_path / "data", cases=10, slices=2, size=32)
    dm = CTDataModule(str(data), image_size=32, num_workers=0, val_fraction=0.1, test_fraction=0.0)
    dm.make_split()
    dm.check_world_size(1)
    dm.check_world_size(2)  # 2 val slices: one per process
    with pytest.raises(DataError) as err:
        dm.check_world_size(3)
    message = str(err.value)
    assert "\n" not in message
    assert "val split has 2 slice(s)" in message and "3 processes" in message
    assert "--data.val_fraction" in message and "--trainer.devices" in message
    # setup() enforces it too, on every rank alike, before anything else runs
    dm.trainer = SimpleNamespace(world_size=3, logger=None, is_global_zero=True)
    with pytest.raises(DataError, match="val split has 2 slice"):
        dm.setup("fit")
    assert not dm.datasets


@pytest.mark.parametrize(("local_world_size", "cores", "expected"), [(None, 32, 8), ("1", 32, 8), ("4", 32, 4), ("8", 32, 2), ("8", 8, 1), ("2", 1, 1)])
def test_workers_are_shared_by_the_processes_of_a_node(monkeypatch, local_world_size, cores, expected):
    from covidseg.data import datamodule

    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    monkeypatch.setattr(datamodule.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert datamodule.default_num_workers() == expected


@pytest.mark.parametrize(("devices", "expected"), [(1, 8), (2, 4)])
def test_default_workers_follow_the_trainers_processes(tiny_data, monkeypatch, devices, expected):
    """Lightning's own DDP launcher (``--trainer.devices 2 --trainer.strategy ddp``) sets no
    LOCAL_WORLD_SIZE, and the ranks do not exist when the DataModule is built: the workers
    are decided from the trainer it is attached to."""
    import pytorch_lightning as pl

    from covidseg.data import datamodule

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(datamodule.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    dm = CTDataModule(str(tiny_data), image_size=64)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False, enable_progress_bar=False)
    dm.trainer = trainer
    assert dm.num_workers == expected
    assert CTDataModule(str(tiny_data), num_workers=3).num_workers == 3
