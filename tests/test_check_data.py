"""find_bad_images / scripts/check_dataset.py: planted bad files are all found, good ones of many kinds are not."""
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from mindcv_ext.data import imagecheck
from mindcv_ext.data.imagecheck import find_bad_images, list_image_entries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photo(seed=0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    img = np.stack([128 + 90 * np.sin(xx / (4 + c) + yy / (7 - c)) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _encode(fmt="JPEG", mode="RGB", **kw):
    buf = io.BytesIO()
    Image.fromarray(_photo()).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _jpeg_segments(data):
    """(marker, offset, length) of the header segments up to SOS."""
    pos, out = 2, []
    while True:
        m, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        out.append((m, pos, length))
        if m == 0xDA:
            return out
        pos += 2 + length


JPEG = _encode(quality=90)
SEGMENTS = _jpeg_segments(JPEG)
SOF = next(off for m, off, _ in SEGMENTS if m == 0xC0)
DHT = next(off for m, off, _ in SEGMENTS if m == 0xC4)
SCAN = next(off + 2 + n for m, off, n in SEGMENTS if m == 0xDA)

GOOD = {
    "baseline.jpg": JPEG,
    "progressive.jpeg": _encode(quality=85, progressive=True),
    "optimized_444.JPEG": _encode(quality=95, optimize=True, subsampling=0),
    "gray.jpg": _encode(mode="L"),
    "cmyk.jpg": _encode(mode="CMYK"),
    "exif_big.jpg": _encode(exif=b"Exif\x00\x00" + bytes(20000)),  # header larger than the first read
    "trailing_data.jpg": JPEG + b"trailer written by a phone camera" * 10,
    "zero_padded.jpg": JPEG + bytes(300),
    "plain.png": _encode("PNG"),
    "palette.png": _encode("PNG", mode="P"),
    "image.bmp": _encode("BMP"),
    "image.tiff": _encode("TIFF"),
}

BAD = {  # name -> (content, words the reason must contain)
    "empty.jpg": (b"", "empty"),
    "cut_in_scan.jpg": (JPEG[:(SCAN + len(JPEG)) // 2], "truncated"),
    "cut_before_eoi.jpg": (JPEG[:-2], "truncated"),
    "cut_after_sof.jpg": (JPEG[:SOF + 22], "truncated"),  # MindSpore's decoder dies with SIGFPE on these
    "cut_at_marker.jpg": (JPEG[:SEGMENTS[1][1] + 1], "truncated"),  # ... and loops forever on these
    "cut_in_header.jpg": (JPEG[:7], "truncated"),
    "only_soi.jpg": (b"\xff\xd8\xff", "truncated"),
    "bad_huffman.jpg": (JPEG[:DHT + 5] + b"\xff" * 16 + JPEG[DHT + 21:], "Huffman"),  # SIGSEGV in the decoder
    "text.jpg": (b"this is not an image\n", "text"),
    "binary_junk.jpg": (bytes(range(256)) * 4, "not an image"),
    "png_named.jpg": (_encode("PNG"), "wrong extension"),
    "jpeg_named.png": (JPEG, "wrong extension"),
    "animation.gif": (_encode("GIF"), "unsupported format GIF"),
    "photo.webp": (_encode("WEBP"), "unsupported format WebP"),
    "cut.png": (_encode("PNG")[:-30], "truncated PNG"),
    "cut.bmp": (_encode("BMP")[:-100], "truncated BMP"),
    ".DS_Store": (b"\x00\x00\x00\x01Bud1" + bytes(100), "hidden file"),  # ImageFolderDataset reads it as a sample
    "._photo.jpg": (JPEG, "hidden file"),  # macOS metadata next to a copied photo: hidden, however it decodes
}


def _plant(root, files, cls="c0", split="train"):
    d = os.path.join(root, split, cls)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    return d


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("planted"))
    good_dir = _plant(root, GOOD, "a_good")
    bad_dir = _plant(root, {k: v for k, (v, _) in BAD.items()}, "b_bad")
    os.makedirs(os.path.join(bad_dir, "nested_dir"))  # ImageFolderDataset would read it as an image and fail
    _plant(root, {"ok.jpg": JPEG}, "a_good", split="val")
    with open(os.path.join(root, "train", "README.txt"), "w") as f:  # not a sample: not in a class directory
        f.write("notes")
    return root, good_dir, bad_dir


def test_finds_every_planted_bad_file_and_no_good_one(planted):
    root, good_dir, bad_dir = planted
    bad = dict(find_bad_images(root, workers=2))
    expected = {os.path.join(bad_dir, n) for n in BAD} | {os.path.join(bad_dir, "nested_dir")}
    assert set(bad) == expected
    for name, (_, words) in BAD.items():
        assert words.lower() in bad[os.path.join(bad_dir, name)].lower(), (name, bad[os.path.join(bad_dir, name)])
    assert "directory" in bad[os.path.join(bad_dir, "nested_dir")]


def test_lists_what_imagefolder_reads(planted):
    root, good_dir, bad_dir = planted
    entries = list_image_entries(root)
    assert os.path.join(root, "train", "README.txt") not in entries
    assert os.path.join(root, "val", "a_good", "ok.jpg") in entries
    assert os.path.join(bad_dir, ".DS_Store") in entries  # hidden files are samples too
    assert len(entries) == len(GOOD) + len(BAD) + 1 + 1
    # a single split directory works as a root as well
    assert list_image_entries(os.path.join(root, "val")) == [os.path.join(root, "val", "a_good", "ok.jpg")]


def test_good_files_really_decode_with_mindspore(planted):
    # full_decode runs MindSpore's own decoder on every file: the "good" set must pass it, or the test data lies
    root, good_dir, bad_dir = planted
    paths = sorted(os.path.join(good_dir, n) for n in GOOD)
    assert find_bad_images(good_dir, workers=1, full_decode=True, paths=paths) == []


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        find_bad_images(str(tmp_path / "nope"))


_FAKE_WORKER = """
import os, runpy, signal, sys, time
real = runpy.run_path({real!r})
decoder_cls = real["Decoder"]

class Dying(decoder_cls):
    def __call__(self, path):
        sys.stdout.flush()
        name = os.path.basename(path)
        if name.startswith("crashme"):
            os.kill(os.getpid(), signal.SIGFPE)
        if name.startswith("hangme"):
            signal.alarm(self.timeout)
            time.sleep(60)
        return None

real["main"].__globals__["Decoder"] = Dying
real["main"]()
"""


def test_worker_crash_and_hang_cost_one_file_not_the_run(tmp_path, monkeypatch):
    # Stand-in for MindSpore's decoder dying on a file: same worker code, but its decoder kills the process
    # (SIGFPE) or hangs on chosen names; every other file must still be checked and reported correctly.
    fake = tmp_path / "fake_worker.py"
    fake.write_text(textwrap.dedent(_FAKE_WORKER.format(real=imagecheck._WORKER)))
    monkeypatch.setattr(imagecheck, "_WORKER", str(fake))
    names = [f"{i:03d}.jpg" for i in range(40)]
    files = {n: JPEG for n in names}
    files.update({"crashme_1.jpg": JPEG, "crashme_2.jpg": JPEG, "hangme.jpg": JPEG, "zz_empty.jpg": b""})
    d = _plant(str(tmp_path / "ds"), files)
    bad = dict(find_bad_images(str(tmp_path / "ds"), workers=2, full_decode=True, decode_timeout=1))
    assert set(bad) == {os.path.join(d, n) for n in ("crashme_1.jpg", "crashme_2.jpg", "hangme.jpg", "zz_empty.jpg")}
    assert "SIGFPE" in bad[os.path.join(d, "crashme_1.jpg")]
    assert "hangs" in bad[os.path.join(d, "hangme.jpg")]
    assert "empty" in bad[os.path.join(d, "zz_empty.jpg")]


def test_cli_exit_codes(planted, tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import check_dataset
    finally:
        sys.path.pop(0)
    root, good_dir, bad_dir = planted
    clean = _plant(str(tmp_path / "clean"), {"a.jpg": JPEG, "b.png": GOOD["plain.png"]})
    assert check_dataset.main(["--data_dir", str(tmp_path / "clean"), "--workers", "1"]) == 0
    assert check_dataset.main([root, "--workers", "2"]) == 1
    out = capsys.readouterr().out
    for name in BAD:
        assert os.path.join(bad_dir, name) + ": " in out
    assert good_dir not in out
    assert os.path.isdir(clean)
    # as a real command: usage errors exit 2 before any work
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check_dataset.py"), "--data_dir",
                           str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr


def _check_dataset_cli(args, cwd, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check_dataset.py"), *args], cwd=cwd,
                          env=env, capture_output=True, timeout=120)


def test_cli_relative_data_dir(tmp_path):
    # the workers run in a scratch directory: relative paths used to make every file "vanish"
    _plant(str(tmp_path / "ds"), {"a.jpg": JPEG, "b.jpg": b""})
    proc = _check_dataset_cli(["--data_dir", "ds", "--workers", "1"], cwd=str(tmp_path))
    out = proc.stdout.decode()
    assert proc.returncode == 1, proc.stderr.decode()
    assert out.splitlines() == [os.path.join("ds", "train", "c0", "b.jpg") + ": empty file (0 bytes)"]
    assert find_bad_images(str(tmp_path / "ds"), workers=1,
                           paths=[os.path.relpath(str(tmp_path / "ds" / "train" / "c0" / "a.jpg"))]) == []


def test_symlink_loop_class_folder_is_reported_not_a_traceback(tmp_path):
    d = _plant(str(tmp_path / "ds"), {"a.jpg": JPEG})
    split = os.path.dirname(d)
    os.symlink("loop", os.path.join(split, "loop"))  # a class folder that points at itself
    os.symlink(os.path.join("..", "c0"), os.path.join(d, "up"))  # a link to a directory inside a class
    bad = dict(find_bad_images(str(tmp_path / "ds"), workers=1))
    assert set(bad) == {os.path.join(split, "loop"), os.path.join(d, "up")}
    assert "symbolic link loop" in bad[os.path.join(split, "loop")]
    proc = _check_dataset_cli([str(tmp_path / "ds")], cwd=str(tmp_path))
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert b"loop: symbolic link loop" in proc.stdout


def test_cli_non_utf8_file_name(tmp_path):
    d = _plant(str(tmp_path / "ds"), {"ok.jpg": JPEG})
    with open(os.path.join(os.fsencode(d), b"caf\xe9.jpg"), "wb") as f:  # a Latin-1 name
        f.write(b"not an image")
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")  # stdout as under e.g. LANG=en_US.UTF-8
    proc = _check_dataset_cli([str(tmp_path / "ds")], cwd=str(tmp_path), env=env)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    assert proc.stdout.decode() == os.path.join(d, "caf\\xe9.jpg") + ": not an image (a text file)\n"


def test_train_log_takes_a_non_utf8_file_name(tmp_path):
    # train.py logs check_data's list of bad files; a Latin-1 name used to raise inside logging, so the line
    # never reached train.log. Run in a subprocess: stdout strict UTF-8 as under LANG=en_US.UTF-8.
    code = textwrap.dedent(f"""
        import logging, os
        from mindcv_ext.training.console import setup_logging
        log = setup_logging({str(tmp_path)!r}, 0, 1)
        log.info("bad image: " + os.fsdecode(b"/data/caf\\xe9.jpg"))
        logging.shutdown()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    assert proc.returncode == 0 and b"Logging error" not in proc.stderr, proc.stderr.decode(errors="replace")
    assert proc.stdout.decode().endswith("bad image: /data/caf\\xe9.jpg\n")
    assert (tmp_path / "train.log").read_text(encoding="utf-8").endswith("bad image: /data/caf\\xe9.jpg\n")


def test_splits_limits_the_check(planted):
    # validate.py checks only the split it reads
    root, good_dir, bad_dir = planted
    assert find_bad_images(root, workers=1, splits=["val"]) == []
    assert list_image_entries(root, splits=["val"]) == [os.path.join(root, "val", "a_good", "ok.jpg")]
    assert len(find_bad_images(root, workers=1, splits=["train", "val"])) == len(BAD) + 1


def test_cli_file_instead_of_directory(tmp_path):
    # used to say "directory not found" for a path that exists
    image = tmp_path / "photo.jpg"
    image.write_bytes(JPEG)
    proc = _check_dataset_cli(["--data_dir", str(image)], cwd=str(tmp_path))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and f"'{image}' is a file, not a directory: pass the dataset directory" in err, err
    assert "not found" not in err and "Traceback" not in err


def test_cli_fifo_is_reported_never_opened(tmp_path):
    d = _plant(str(tmp_path / "ds"), {"a.jpg": JPEG})
    os.mkfifo(os.path.join(d, "pipe.jpg"))
    proc = _check_dataset_cli([str(tmp_path / "ds"), "--workers", "1"], cwd=str(tmp_path))  # timeout: no hang
    assert proc.returncode == 1 and proc.stdout.decode() == (
        os.path.join(d, "pipe.jpg") + ": a FIFO (named pipe), not a regular file (MindSpore's reader would block or "
        "fail on it)\n")


def test_cli_escapes_control_characters_in_file_names(tmp_path):
    # A newline in a file name split the report into a forged second line; an escape sequence reached the terminal.
    _plant(str(tmp_path / "ds"), {"a.jpg": JPEG, "evil\nfake.jpg: ok\x1b[2J.jpg": b""})
    proc = _check_dataset_cli(["--data_dir", "ds", "--workers", "1"], cwd=str(tmp_path))
    out = proc.stdout.decode()
    assert proc.returncode == 1, out
    assert "evil\\nfake.jpg: ok\\x1b[2J.jpg: " in out and "\x1b" not in out, out
    assert not any(line.startswith("fake.jpg") for line in out.splitlines()), out
