"""The demo dataset (layout, determinism, idempotence, interrupted runs) and the mindcv-based loaders."""
import hashlib
import json
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

from mindcv_ext.data import create_eval_loader, create_train_loader, ensure_demo_dataset
from mindcv_ext.data.demo import DEMO_CLASSES

SMALL = dict(num_classes=4, image_size=32, train_per_class=6, val_per_class=3)


def _digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # 10 classes as the CPU demo uses them, few images: enough for loader shapes and label order
    return ensure_demo_dataset(str(tmp_path_factory.mktemp("demo")), train_per_class=8, val_per_class=5)


def test_layout_and_real_jpegs(demo):
    for split, per_class in (("train", 8), ("val", 5)):
        classes = sorted(os.listdir(os.path.join(demo, split)))
        assert classes == [f"{i:02d}_{DEMO_CLASSES[i][0]}" for i in range(10)]
        for cls in classes:
            files = os.listdir(os.path.join(demo, split, cls))
            assert len(files) == per_class and all(f.endswith(".jpg") for f in files)
    sample = os.path.join(demo, "val", "03_ring", "03_00002.jpg")
    with open(sample, "rb") as f:
        assert f.read(3) == b"\xff\xd8\xff"
    with Image.open(sample) as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
    marker = json.load(open(os.path.join(demo, ".demo_dataset.json")))
    assert marker["num_samples"] == {"train": 80, "val": 50}


def test_classes_differ_and_images_vary(demo):
    # not a constant image per class: position / colour / scale change within a class
    a = np.asarray(Image.open(os.path.join(demo, "train", "00_circle", "00_00000.jpg")), dtype=np.float32)
    b = np.asarray(Image.open(os.path.join(demo, "train", "00_circle", "00_00001.jpg")), dtype=np.float32)
    assert np.abs(a - b).mean() > 10


def test_deterministic_from_seed(tmp_path):
    a = ensure_demo_dataset(str(tmp_path / "a"), seed=3, **SMALL)
    b = ensure_demo_dataset(str(tmp_path / "b"), seed=3, **SMALL)
    c = ensure_demo_dataset(str(tmp_path / "c"), seed=4, **SMALL)
    assert _digest(a) == _digest(b) != _digest(c)


def test_idempotent_and_refuses_other_settings(tmp_path):
    root = ensure_demo_dataset(str(tmp_path / "d"), **SMALL)
    sample = os.path.join(root, "train", "00_circle", "00_00000.jpg")
    before = os.stat(sample).st_mtime_ns
    assert ensure_demo_dataset(root, **SMALL) == root
    assert os.stat(sample).st_mtime_ns == before  # reused, not regenerated
    with pytest.raises(ValueError, match="already holds a demo dataset"):
        ensure_demo_dataset(root, **dict(SMALL, num_classes=5))


def test_interrupted_generation_is_redone(tmp_path):
    root = ensure_demo_dataset(str(tmp_path / "e"), **SMALL)
    expected = _digest(root)
    # simulate a run killed half way: in-progress marker, no completion marker, a partial / stray file
    os.remove(os.path.join(root, ".demo_dataset.json"))
    with open(os.path.join(root, ".demo_generating"), "w") as f:
        f.write("{}")
    os.remove(os.path.join(root, "val", "01_square", "01_00001.jpg"))
    with open(os.path.join(root, "train", "00_circle", "half_written.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff")
    ensure_demo_dataset(root, **SMALL)
    assert _digest(root) == expected
    assert not os.path.exists(os.path.join(root, ".demo_generating"))


def test_never_overwrites_foreign_data(tmp_path):
    os.makedirs(tmp_path / "real" / "train" / "cat")
    (tmp_path / "real" / "train" / "cat" / "1.jpg").write_bytes(b"precious")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        ensure_demo_dataset(str(tmp_path / "real"), **SMALL)
    assert (tmp_path / "real" / "train" / "cat" / "1.jpg").read_bytes() == b"precious"


def test_concurrent_callers_share_one_generation(tmp_path):
    # msrun starts every rank at once; they must not generate over each other
    root = str(tmp_path / "shared")
    results, errors = [], []

    def call():
        try:
            results.append(ensure_demo_dataset(root, **SMALL))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [os.path.abspath(root)] * 3
    assert sum(len(fs) for _, _, fs in os.walk(os.path.join(root, "train"))) == 4 * 6


@pytest.mark.parametrize("bad", [dict(num_classes=1), dict(num_classes=len(DEMO_CLASSES) + 1),
                                 dict(image_size=8), dict(train_per_class=0)])
def test_demo_argument_errors(tmp_path, bad):
    with pytest.raises(ValueError):
        ensure_demo_dataset(str(tmp_path / "x"), **dict(SMALL, **bad))


def _batches(loader):
    return list(loader.create_tuple_iterator(output_numpy=True))


def test_train_loader_shapes_labels(demo):
    loader, n = create_train_loader(demo, batch_size=16, image_size=48, num_classes=10, num_parallel_workers=2,
                                    seed=0, auto_augment="randaug-m9-mstd0.5-inc1", re_prob=0.25, scale=(0.35, 1.0))
    assert n == 80
    batches = _batches(loader)
    assert len(batches) == 80 // 16
    labels = []
    for x, y in batches:
        assert x.shape == (16, 3, 48, 48) and x.dtype == np.float32
        assert y.shape == (16,) and y.dtype == np.int32
        labels.append(y)
    assert sorted(np.concatenate(labels).tolist()) == sorted(list(range(10)) * 8)  # one epoch, every image once


def test_train_loader_mixup_gives_soft_targets(demo):
    loader, _ = create_train_loader(demo, batch_size=8, image_size=32, num_classes=10, num_parallel_workers=2,
                                    mixup=0.8, cutmix=1.0, label_smoothing=0.1, seed=0)
    x, y = _batches(loader)[0]
    assert x.shape == (8, 3, 32, 32)
    assert y.shape == (8, 10) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    assert y.min() > 0  # smoothed


def test_train_loader_shards_split_the_data(demo):
    seen = []
    for shard in range(2):
        loader, n = create_train_loader(demo, batch_size=4, image_size=32, num_classes=10, num_parallel_workers=1,
                                        num_shards=2, shard_id=shard, shuffle=False)
        assert n == 40
        seen.append(sum(len(y) for _, y in _batches(loader)))
    assert seen == [40, 40]


def test_eval_loader_order_shapes_and_preprocessing(demo):
    loader, n = create_eval_loader(demo, batch_size=16, image_size=64, crop_pct=1.0, num_parallel_workers=2)
    batches = _batches(loader)
    assert n == 50 and [len(y) for _, y in batches] == [16, 16, 16, 2]  # last batch kept
    labels = np.concatenate([y for _, y in batches])
    assert labels.tolist() == [c for c in range(10) for _ in range(5)]  # file order, labels = sorted class dirs
    # crop_pct 1.0 at native size: decode + ImageNet normalisation only
    img = np.asarray(Image.open(os.path.join(demo, "val", "00_circle", "00_00000.jpg")), dtype=np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    ref = ((img - mean) / std).transpose(2, 0, 1)
    assert np.abs(batches[0][0][0] - ref).mean() < 0.05
    # crop_pct 0.875: resize to 73, centre crop 64
    x, _ = _batches(create_eval_loader(demo, batch_size=5, image_size=64, num_parallel_workers=1)[0])[0]
    assert x.shape == (5, 3, 64, 64) and not np.allclose(x[0], batches[0][0][0], atol=0.05)


def test_loader_argument_errors(demo, tmp_path):
    common = dict(batch_size=8, image_size=32, num_parallel_workers=1)
    with pytest.raises(FileNotFoundError, match=r"No 'test' split .*<class name>"):
        create_eval_loader(demo, split="test", **common)
    with pytest.raises(FileNotFoundError, match="not found"):
        create_eval_loader(str(tmp_path / "nope"), **common)
    with pytest.raises(ValueError, match="interpolation"):
        create_eval_loader(demo, interpolation="bilinaer", **common)
    with pytest.raises(ValueError, match="crop_pct"):
        create_eval_loader(demo, crop_pct=1.2, **common)
    with pytest.raises(ValueError, match="num_classes=5"):
        create_eval_loader(demo, num_classes=5, **common)
    with pytest.raises(ValueError, match="even batch_size"):
        create_train_loader(demo, num_classes=10, mixup=0.2, **dict(common, batch_size=7))
    with pytest.raises(ValueError, match="smooth in the loss"):
        create_train_loader(demo, num_classes=10, label_smoothing=0.1, **common)
    with pytest.raises(ValueError, match="auto_augment"):
        create_train_loader(demo, num_classes=10, auto_augment="randaugment", **common)
    with pytest.raises(ValueError, match="shard_id"):
        create_train_loader(demo, num_classes=10, num_shards=2, shard_id=2, **common)
    with pytest.raises(ValueError, match="every batch would be dropped"):
        create_train_loader(demo, num_classes=10, **dict(common, batch_size=128))


def test_generation_says_what_it_does(tmp_path, capsys):
    # the first run generates for ~20 s before training starts: one line before, one with the time after
    root = ensure_demo_dataset(str(tmp_path / "talk"), **SMALL)
    lines = capsys.readouterr().out.splitlines()
    n = SMALL["num_classes"] * (SMALL["train_per_class"] + SMALL["val_per_class"])
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"demo dataset: generating {n:,} JPEG images") and root in lines[0]
    assert re.fullmatch(r"demo dataset: \d+ train \+ \d+ val images written in \d+\.\d s", lines[1]), lines[1]
    ensure_demo_dataset(root, **SMALL)
    assert capsys.readouterr().out == ""  # reused: nothing to say
