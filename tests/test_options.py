"""One spelling per option across commands (issue 31, item 11): every spelling works everywhere."""

import sys
from pathlib import Path

import pytest

from covidseg import evaluate, export, options, predict
from covidseg.errors import CovidSegError
from covidseg.fit import build_cli

REPO = Path(__file__).resolve().parents[1]


def test_fit_takes_the_spellings_of_evaluate_and_predict(tmp_path):
    argv = options.rename_flags(["--threshold", "0.3", "--tta", "--window=[-500, 1400]", "--trainer.logger", "false"], options.FIT_ALIASES)
    assert argv == ["--model.threshold", "0.3", "--model.tta", "true", "--data.window=[-500, 1400]", "--trainer.logger", "false"]
    cli = build_cli(argv)
    assert cli.model.hparams.threshold == 0.3 and cli.model.hparams.tta is True and tuple(cli.datamodule.hparams.window) == (-500, 1400)
    with pytest.raises(CovidSegError, match=r"--ckpt_path .*nope.ckpt: checkpoint not found"):  # --ckpt is --ckpt_path
        build_cli(["--ckpt", str(tmp_path / "nope.ckpt"), "--trainer.logger.init_args.save_dir", str(tmp_path)])


def test_evaluate_predict_and_export_take_fits_spellings(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: seen.update(args=a, kwargs=k) or {})
    monkeypatch.setattr(evaluate, "metric_table", lambda m: "")
    evaluate.main(["--ckpt_path", "x.ckpt", "--data.root", "d", "--output", str(tmp_path), "--model.threshold", "0.3", "--model.tta",
                   "--data.window", "[-500, 1400]", "--data.lung_labels", "[1, 2]"])  # fmt: skip
    assert seen["args"][0] == ["x.ckpt"] and seen["args"][4:6] == (0.3, True)
    assert seen["kwargs"]["window"] == (-500, 1400) and seen["kwargs"]["lung_labels"] == [1, 2]
    a = predict.build_parser().parse_args(["--ckpt_path", "x", "--input", "i", "--output", "o", "--model.threshold", "0.4", "--model.tta", "false"])
    assert (a.ckpt, a.threshold, a.tta) == ("x", 0.4, False)
    assert export.build_parser().parse_args(["--ckpt_path", "x", "--output", "o.onnx"]).ckpt == "x"


def test_evaluate_window_replaces_the_models():
    class Fake:
        from covidseg.model.card import ModelCard

        card = ModelCard(image_size=64)

    assert evaluate._windowed(Fake(), (-500, 1400)).card.window == (-500.0, 1400.0)


def test_scripts_spell_batch_size_with_an_underscore_and_keep_the_old_spelling():
    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark

    assert benchmark.parse_args(["--batch_size", "4", "--image_size", "32"]).batch_size == 4
    assert benchmark.parse_args(["--batch-size", "4", "--image-size", "32"]).batch_size == 4


def test_json_is_a_path_in_covidseg_models_as_in_the_scripts(tmp_path, capsys):
    """Issue 31, item 11: --json was a flag in `covidseg models` and a path in the scripts."""
    import json

    from covidseg.models import main

    assert main(["--json", str(tmp_path / "cards.json")]) == 0
    assert "reference" in json.loads((tmp_path / "cards.json").read_text())
    assert main(["--json", "-"]) == 0 and '"reference"' in capsys.readouterr().out
