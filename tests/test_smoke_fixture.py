def test_tiny_ckpt_exists(tiny_ckpt):
    assert tiny_ckpt.is_file()
    assert (tiny_ckpt.parent.parent / "splits.csv").is_file()
    assert (tiny_ckpt.parent.parent / "config.yaml").is_file()
