"""The default (structure-only) image check against MindSpore's own decoder on fuzzed JPEGs: every file the decoder
refuses, crashes or hangs on must be flagged. Bytes are changed in the headers, in the scans and between the scans
of baseline, progressive, 4:4:4, grayscale and CMYK JPEGs, from a fixed seed."""
import io
import json
import os
import random
import subprocess
import sys

import numpy as np
from PIL import Image

from mindcv_ext.data import imagecheck
from mindcv_ext.data.imagecheck import find_bad_images

SEED = 0
COUNT = 240


def _photo(seed, size):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    img = np.stack([128 + 90 * np.sin(xx / (4 + c) + yy / (7 - c)) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _jpeg(seed, size, mode="RGB", **kw):
    buf = io.BytesIO()
    Image.fromarray(_photo(seed, size)).convert(mode).save(buf, format="JPEG", **kw)
    return buf.getvalue()


BASES = [_jpeg(0, (48, 40), quality=90), _jpeg(1, (64, 64), quality=75, progressive=True),
         _jpeg(2, (33, 57), quality=95, optimize=True, subsampling=0), _jpeg(3, (40, 40), mode="L"),
         _jpeg(4, (100, 80), quality=85, subsampling=1), _jpeg(5, (64, 64), mode="CMYK")]


def _scan_start(data):
    pos = 2
    while data[pos + 1] != 0xDA:
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")


def _fuzzed(seed, count):
    rnd = random.Random(seed)
    for i in range(count):
        base = BASES[i % len(BASES)]
        data, scan = bytearray(base), _scan_start(base)
        where = rnd.choice(["header", "scan", "both"])
        for j in range(rnd.choice([1, 1, 2, 3])):
            in_header = where == "header" or (where == "both" and j % 2 == 0)
            pos = rnd.randrange(2, scan) if in_header else rnd.randrange(scan, len(data) - 2)
            data[pos] = rnd.choice([rnd.randrange(256), data[pos] ^ (1 << rnd.randrange(8)), 0xFF, 0x00])
        yield bytes(data)


# MindSpore's decoder on each file, in a separate process, independent of the checker. It crashes on some files:
# the decoding runs in a forked child that is replaced when it dies (forking costs milliseconds, a fresh Python
# with MindSpore seconds). Each decode gets a fresh thread: MindSpore reports some libjpeg errors on the next
# decode of the same thread.
_ORACLE = r"""
import json, os, signal, sys, threading
import numpy as np
import mindspore.dataset.vision as vision
paths = json.load(sys.stdin)
op = vision.Decode()
results, i = {}, 0

def decode(path, out):
    try:
        op(np.fromfile(path, dtype=np.uint8))
    except Exception as e:
        out.append([ln for ln in str(e).splitlines() if "ERROR" in ln][:1] or [type(e).__name__])

while i < len(paths):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        with os.fdopen(w, "w") as out:
            for path in paths[i:]:
                errors = []
                signal.alarm(20)  # a hang kills the child: reported like a crash
                t = threading.Thread(target=decode, args=(path, errors))
                t.start()
                t.join()
                signal.alarm(0)
                out.write(json.dumps(errors[0][0] if errors else None) + "\n")
                out.flush()
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as inp:
        answers = [json.loads(line) for line in inp]
    _, status = os.waitpid(pid, 0)
    results.update(zip(paths[i:], answers))
    i += len(answers)
    if i < len(paths):
        results[paths[i]] = f"decoder process died ({os.waitstatus_to_exitcode(status)})"
        i += 1
json.dump(results, sys.stdout)
"""


def _mindspore_verdicts(paths, cwd):
    # cwd: MindSpore writes the images it cannot decode there (abnormal_image.jpg)
    proc = subprocess.run([sys.executable, "-c", _ORACLE], input=json.dumps(paths), capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_default_check_flags_every_jpeg_mindspore_rejects(tmp_path):
    cls = tmp_path / "ds" / "train" / "c0"
    cls.mkdir(parents=True)
    paths = []
    for i, data in enumerate(list(BASES) + list(_fuzzed(SEED, COUNT))):
        path = str(cls / f"{i:04d}.jpg")
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    verdicts = _mindspore_verdicts(paths, str(scratch))
    flagged = dict(find_bad_images(str(tmp_path / "ds"), workers=2))

    assert not any(verdicts[p] for p in paths[:len(BASES)]), "the unmodified JPEGs must decode"
    rejected = {p: v for p, v in verdicts.items() if v is not None}
    assert len(rejected) > COUNT // 10, "the fuzzing should break a good share of the files"
    assert any("died" in v for v in rejected.values()), "some files should crash the decoder"
    missed = {os.path.basename(p): v for p, v in rejected.items() if p not in flagged}
    assert not missed, f"passed the default check, but MindSpore's decoder rejects them: {missed}"
    assert not any(p in flagged for p in paths[:len(BASES)])


def test_decoder_errors_do_not_leak_to_the_next_file(tmp_path):
    # MindSpore keeps the libjpeg error of some broken files (a progressive JPEG cut short) in a thread-local list
    # and raises it on the next decode of that thread: full_decode used to blame the good file that came next.
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(BASES[1][:len(BASES[1]) * 2 // 3])
    good = tmp_path / "good.jpg"
    good.write_bytes(BASES[0])
    code = (f"import runpy, sys\nw = runpy.run_path({imagecheck._WORKER!r})\nd = w['Decoder'](60)\n"
            f"for p in ({str(cut)!r}, {str(good)!r}):\n"
            f"    try:\n        d(p)\n        print(p, 'ok')\n"
            f"    except w['Bad'] as e:\n        print(p, 'bad', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=300)
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stderr[-2000:]
    assert lines[0].startswith(f"{cut} bad MindSpore cannot decode it")
    assert lines[1] == f"{good} ok"
