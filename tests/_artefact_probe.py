"""Run by test_suite_hygiene.py only (its name keeps pytest from collecting it): a test that writes a large file."""


def test_writes_a_large_file(tmp_path):
    (tmp_path / "weights.ckpt").write_bytes(b"\0" * (9 << 20))
    (tmp_path / "train.log").write_text("small\n")
