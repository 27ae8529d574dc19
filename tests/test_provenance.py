"""Provenance (issue 31, item 9): the commit a checkpoint was trained from and whether its tree was clean."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from covidseg.model.checkpoint import read_checkpoint
from covidseg.model.pretrained import packaging
from covidseg.model.provenance import PROVENANCE_KEY, RecordProvenance, card_fields, git_provenance, read_provenance

REPO = Path(__file__).resolve().parents[1]


def _git(folder, *args):
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_commit_and_dirty_flag_of_a_checkout(tmp_path):
    assert git_provenance(tmp_path) is None  # not a git checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = git_provenance(tmp_path)
    assert clean["commit"] == _git(tmp_path, "rev-parse", "HEAD") and clean["dirty"] is False
    (tmp_path / "new.txt").write_text("untracked files do not make the tree dirty")
    assert git_provenance(tmp_path)["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    dirty = git_provenance(tmp_path)
    assert dirty["dirty"] is True and dirty["describe"].endswith("-dirty")


def test_fit_stores_the_training_commit_in_its_checkpoints(tiny_run):
    for name in ("best.ckpt", "last.ckpt"):
        assert read_provenance(read_checkpoint(tiny_run / "checkpoints" / name)) == git_provenance(REPO / "covidseg")


def test_a_resume_from_another_commit_keeps_the_earlier_one():
    cb = RecordProvenance({"commit": "b" * 40, "describe": "b", "dirty": False})
    cb.on_load_checkpoint(None, None, {PROVENANCE_KEY: {"commit": "a" * 40, "describe": "a", "dirty": True}})
    saved = {}
    cb.on_save_checkpoint(None, None, saved)
    assert saved[PROVENANCE_KEY]["commit"] == "b" * 40 and saved[PROVENANCE_KEY]["earlier"][0]["commit"] == "a" * 40
    assert card_fields(saved)["earlier"][0]["dirty"] is True
    assert card_fields({})["commit"].startswith("unknown") and card_fields({})["tree_clean"] is None


def test_package_model_copies_the_training_provenance_into_the_card(tiny_ckpt, tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    import package_model

    cards = []

    def write(ckpt, output, card, checks, *args):  # the agreement check is tested in test_pretrained
        cards.append(card)
        Path(output).write_bytes(b"")
        return {"agreement": {}}

    monkeypatch.setattr(packaging, "write", write)
    volume = tmp_path / "ct.nii.gz"
    hu = np.full((32, 32, 2), -1000, np.int16)
    hu[4:28, 4:28] = 40
    hu[8:24, 8:15], hu[8:24, 17:24] = -850, -850
    nib.save(nib.Nifti1Image(hu, np.eye(4)), volume)
    assert package_model.main([str(tiny_ckpt), "--volume", str(volume), "--output", str(tmp_path / "m.ckpt")]) == 0
    trained = read_provenance(read_checkpoint(tiny_ckpt))
    (card,) = cards
    assert card["commit"] == trained["commit"] and card["tree_clean"] is (not trained["dirty"])
    assert card["packaged_from"] == git_provenance(REPO)
