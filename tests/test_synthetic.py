"""The built-in demo set: generated once, also when several processes start at the same time."""

from __future__ import annotations

from covidseg.data import synthetic


def test_demo_race_loser_leaves_no_temp_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("COVIDSEG_CACHE", str(tmp_path))
    real_generate = synthetic.generate
    out = synthetic.demo_dir()

    def racing_generate(path, **_):
        # another rank finishes first: `out` appears while this process writes its own copy
        real_generate(out, cases=2, slices=1, size=32)
        return real_generate(path, cases=2, slices=1, size=32)

    monkeypatch.setattr(synthetic, "generate", racing_generate)
    assert synthetic.ensure_demo() == out
    assert (out / "manifest.csv").is_file() and len(list((out / "images").glob("*.png"))) == 2
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no demo-v2.tmp<pid> left behind
