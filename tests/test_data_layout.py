"""Issue 14, data side: what the data package refuses before any work, in one line with the fix (class folder names
that are not UTF-8, a train split of one class, hidden/empty/special/non-image entries in class folders,
ckpt_save_dir inside a split), and that nothing there opens a FIFO."""
import io
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from _train_utils import ROOT, TRAIN, explain, make_data, train_args
from mindcv_ext.data import create_train_loader
from mindcv_ext.data.imagecheck import check_images, list_image_entries, quick_check, scan_entries
from mindcv_ext.data.loaders import class_folders


def _jpeg(seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


def _folders(root, split, names, files=("a.jpg",)):
    """root/split/<name>/<files> with real JPEGs; names may be bytes (not UTF-8)."""
    for name in names:
        d = os.path.join(os.fsencode(str(root)), split.encode(), os.fsencode(name))
        os.makedirs(d, exist_ok=True)
        for f in files:
            with open(os.path.join(d, f.encode()), "wb") as out:
                out.write(JPEG)
    return str(root)


def _no_hang(fn, *args, timeout=60, **kwargs):
    """fn(*args, **kwargs) in a thread; fails instead of hanging the suite if it blocks (as an open() of a FIFO
    does), and raises what fn raised."""
    result = []

    def call():
        try:
            result.append((fn(*args, **kwargs), None))
        except Exception as e:  # re-raised in the test's thread
            result.append((None, e))

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn.__name__} blocked (opened a FIFO?)"
    value, error = result[0]
    if error is not None:
        raise error
    return value


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("demo"))


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return str(dst)


def _refused(data, out, *extra, cwd):
    """train.py's run on `data` must stop before any work: exit 2, one 'error:' line, no traceback, no out dir."""
    proc = subprocess.run([sys.executable, TRAIN] + train_args(data, out, *extra), capture_output=True, text=True,
                          timeout=300, cwd=cwd)
    assert proc.returncode == 2, explain(proc)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not os.path.exists(os.path.join(cwd, out)) and "epoch 1/" not in proc.stdout
    return errors[0]


def _class_dir(data, i=1):
    return os.path.join(data, "train", sorted(os.listdir(os.path.join(data, "train")))[i])


# --------------------------------------------------------------------- class folders: UTF-8 names in MindSpore's order

def test_class_folder_not_utf8_is_refused_in_one_line(tmp_path):
    # MindSpore numbers b'\xe9t\xe9' (Latin-1 'ete') before '\xea\xb0\x80' (UTF-8 of U+AC00) by bytes; Python sorts
    # the surrogate-escaped str the other way, so the recorded names were swapped against the labels.
    root = _folders(tmp_path / "ds", "train", [b"\xe9t\xe9", "\uac00"])
    with pytest.raises(ValueError) as e:
        class_folders(root, "train")
    msg = str(e.value)
    assert "'\\xe9t\\xe9'" in msg and "not valid UTF-8" in msg and "Rename it" in msg and "\n" not in msg
    msg.encode("utf-8")  # printable on a strict UTF-8 console: no surrogates in the message


def test_class_order_is_imagefolderdatasets(tmp_path):
    # the labels MindSpore gives each folder's image (decode=False: the bytes tell which folder it came from)
    import mindspore.dataset as ds

    names = ["Zebra", "apple", "\u00e9clair", "\uac00", "\U0001f600", "b_2", "b-1"]
    split = os.path.join(_folders(tmp_path / "ds", "train", []), "train")
    for i, name in enumerate(names):
        os.makedirs(os.path.join(split, name))
        with open(os.path.join(split, name, "x.bin"), "wb") as f:
            f.write(name.encode())
    data = ds.ImageFolderDataset(split, shuffle=False, decode=False)
    label_of = {bytes(img).decode(): int(label) for img, label in data.create_tuple_iterator(output_numpy=True)}
    order = class_folders(str(tmp_path / "ds"), "train")
    assert {n: i for i, n in enumerate(order)} == label_of


# --------------------------------------------------------------------------------------- a train split needs 2 classes

def test_train_split_needs_two_classes_eval_takes_a_subset(tmp_path):
    root = _folders(tmp_path / "ds", "train", ["cat"])
    _folders(root, "val", ["cat"])
    with pytest.raises(ValueError, match=r"one class folder \('cat'\): training needs at least 2 classes"):
        class_folders(root, "train", training=True)
    with pytest.raises(ValueError, match="at least 2 classes"):
        create_train_loader(root, batch_size=1, image_size=16, num_classes=2, num_parallel_workers=1)
    # validate.py / infer.py on a subset of the classes (here one) is legitimate
    assert class_folders(root, "val") == ["cat"]
    assert class_folders(root, "val", num_classes=10) == ["cat"]


def test_train_refuses_a_one_class_split(tmp_path):
    data = _folders(tmp_path / "one", "train", ["cat"], files=[f"{i}.jpg" for i in range(8)])
    _folders(data, "val", ["cat"])
    line = _refused(data, tmp_path / "run", cwd=str(tmp_path))
    assert "training needs at least 2 classes" in line


# -------------------------------------------------------- hidden, empty, special and non-image entries: the quick scan

def test_hidden_class_folder_is_refused(tmp_path):
    root = _folders(tmp_path / "ds", "train", ["cat", "dog", ".ipynb_checkpoints"])
    with pytest.raises(ValueError, match=r"Hidden folder '\.ipynb_checkpoints' .*read it as a class"):
        class_folders(root, "train")


def test_imagefolder_reads_every_entry_hidden_or_not(tmp_path):
    # why hidden files are refused rather than assumed harmless: mindcv's create_dataset passes no `extensions`,
    # so ImageFolderDataset reads every entry of a class folder, .DS_Store and extension-less names included
    from mindcv.data import create_dataset

    root = _folders(tmp_path / "ds", "train", ["a", "b"], files=("x.jpg", ".DS_Store", "noext"))
    assert create_dataset(name="imagenet", root=root, split="train", shuffle=False).get_dataset_size() == 6


def _plant_bad(cls_dir):
    """Every kind of entry the quick scan must refuse, by name -> words of the reason."""
    d = str(cls_dir)
    os.mkfifo(os.path.join(d, "pipe.jpg"))
    os.symlink("missing.jpg", os.path.join(d, "broken.jpg"))
    os.makedirs(os.path.join(d, "subdir"))
    os.symlink(".", os.path.join(d, "linked_dir"))
    for name, data in {"empty.jpg": b"", "text.jpg": b"hello, I am not an image\n", ".DS_Store": b"\0\0\0\1Bud1",
                       "._a.jpg": JPEG, "anim.jpg": b"GIF89a" + bytes(40)}.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    cwd = os.getcwd()
    os.chdir(d)  # a socket path must be short: bind by relative name
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("sock.jpg")
    finally:
        os.chdir(cwd)
    return {"pipe.jpg": "FIFO", "broken.jpg": "broken symbolic link", "subdir": "directory",
            "linked_dir": "directory", "empty.jpg": "empty", "text.jpg": "not an image (a text file)",
            ".DS_Store": "hidden", "._a.jpg": "hidden", "anim.jpg": "unsupported format GIF",
            "sock.jpg": "socket"}, sock


def test_quick_scan_refuses_without_opening_special_files(tmp_path):
    root = _folders(tmp_path / "ds", "train", ["a", "b"], files=("ok.jpg", "png_named.jpg"))
    with open(os.path.join(root, "train", "a", "png_named.jpg"), "wb") as f:  # decodes fine in MindSpore
        Image.new("RGB", (8, 8)).save(f, "PNG")
    os.symlink("ok.jpg", os.path.join(root, "train", "a", "link.jpg"))  # a link to an image is an image
    expected, sock = _plant_bad(os.path.join(root, "train", "b"))
    entries, bad = _no_hang(scan_entries, root)
    sock.close()
    assert entries == list_image_entries(root)
    bad = {os.path.basename(p): reason for p, reason in bad}
    assert set(bad) == set(expected)
    for name, words in expected.items():
        assert words in bad[name], (name, bad[name])
    assert quick_check(os.path.join(root, "train", "a", "link.jpg")) is None


def test_check_images_quick_is_one_line_with_count_and_fix(tmp_path):
    root = _folders(tmp_path / "ds", "train", ["a", "b"])
    expected, sock = _plant_bad(os.path.join(root, "train", "b"))
    with pytest.raises(ValueError) as e:
        _no_hang(check_images, root, full=False)
    sock.close()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{len(expected)} unreadable image(s) under {root}: ")
    assert f"; and {len(expected) - 5} more." in msg and "delete these or move them out of the class folders" in msg
    assert "check_dataset.py" in msg


def test_full_check_refuses_a_fifo_without_opening_it(tmp_path):
    # validate.py's default and train.py --check_data: the quick scan runs first, the workers never see the FIFO
    root = _folders(tmp_path / "ds", "val", ["a"])
    os.mkfifo(os.path.join(root, "val", "a", "pipe.jpg"))
    with pytest.raises(ValueError, match=r"1 unreadable image\(s\) .*pipe\.jpg: a FIFO \(named pipe\)"):
        _no_hang(check_images, root, workers=1, splits=["val"])


def test_train_refuses_a_fifo_without_hanging(demo_data, tmp_path):
    # before: MindSpore's reader blocked on open() of the FIFO, and train.py hung forever
    data = _copy(demo_data, tmp_path / "data")
    os.mkfifo(os.path.join(_class_dir(data), "pipe.jpg"))
    line = _refused(data, tmp_path / "run", cwd=str(tmp_path))
    assert f"{os.path.join(_class_dir(data), 'pipe.jpg')}: a FIFO (named pipe), not a regular file" in line


def test_train_refuses_bad_entries_by_default(demo_data, tmp_path):
    # without --check_data: before, a MindSpore RuntimeError traceback mid-epoch, after the run had started
    data = _copy(demo_data, tmp_path / "data")
    cls = _class_dir(data)
    for name, content in {".DS_Store": b"\0\0\0\1Bud1", "empty.jpg": b"", "notes.jpg": b"just text\n"}.items():
        with open(os.path.join(cls, name), "wb") as f:
            f.write(content)
    os.makedirs(os.path.join(cls, "more"))
    line = _refused(data, tmp_path / "run", cwd=str(tmp_path))
    assert line.startswith(f"error: 4 unreadable image(s) under {data}: ")
    for name in (".DS_Store", "empty.jpg", "notes.jpg", "more"):
        assert os.path.join(cls, name) + ": " in line


# ---------------------------------------------------------------------------------------------------- scripts/infer.py

def test_image_finder_leaves_out_special_files_without_opening_them(tmp_path):
    # before: the FIFO was listed, and infer.py's read of it blocked forever. One finder for infer.py and
    # predict_seg.py (their extension lists differed).
    from mindcv_ext.data.imagecheck import find_images

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(JPEG)
    (folder / "sub" / "b.png").write_bytes(b"")  # empty: left to the tool's own check, which counts it as skipped
    os.mkfifo(folder / "sub" / "pipe.jpg")
    os.symlink("gone.jpg", folder / "broken.jpg")
    found, skipped = _no_hang(find_images, str(folder))
    assert found == [str(folder / "a.jpg"), str(folder / "sub" / "b.png")]
    assert skipped == [(str(folder / "broken.jpg"), "broken symbolic link"),
                       (str(folder / "sub" / "pipe.jpg"), "a FIFO (named pipe), not a regular file (MindSpore's "
                                                          "reader would block or fail on it)")]
    with pytest.raises(ValueError, match=r"--image_path '.*pipe\.jpg': a FIFO \(named pipe\)"):
        _no_hang(find_images, str(folder / "sub" / "pipe.jpg"))
    assert find_images(str(folder / "a.jpg")) == ([str(folder / "a.jpg")], [])


# ---------------------------------------------------------------------------------------- ckpt_save_dir inside a split

def test_train_refuses_ckpt_save_dir_inside_a_split(demo_data, tmp_path):
    data = _copy(demo_data, tmp_path / "data")
    line = _refused(data, os.path.join(data, "train", "run1"), cwd=str(tmp_path))
    assert f"is inside the train split {os.path.join(data, 'train')}" in line
    assert "--ckpt_save_dir " + os.path.join(str(tmp_path), "outputs", "run1") in line
    line = _refused(data, os.path.join("data", "val", "run1"), cwd=str(tmp_path))  # relative spelling too
    assert "is inside the val split" in line
