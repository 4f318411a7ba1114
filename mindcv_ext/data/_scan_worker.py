"""Per-file image checks, run in worker processes started by `imagecheck.find_bad_images`.

Run as a script (`python _scan_worker.py --decode auto`), not imported through the package: workers then start in
milliseconds without loading MindSpore, which is only imported the first time a file needs a real decode.

Protocol: one JSON line per chunk on stdin (a list of paths); one JSON line per path on stdout, in order, each
null (good) or the reason the file is bad. Files are handled one by one, and the answers so far are flushed before
every decode, so when the process dies (MindSpore's decoder raises SIGFPE/SIGSEGV or hangs on some broken JPEGs)
the parent knows exactly which file did it.

Cost per file in the default mode: one open, a read of the first 8 KiB and the last 64 bytes; the whole file is
read only when its end is not where it should be. No pixel is decoded unless the structure is unusual.
"""
import errno
import io
import json
import os
import re
import signal
import stat
import sys
import threading
from typing import Optional

HEAD = 8 * 1024  # covers JFIF/EXIF headers of typical photos; larger headers are read on demand
TAIL = 64

# Extensions each format may carry. MindSpore picks the decoder from the bytes, so a mismatch does not crash it,
# but it means the file is not what its name says (ImageNet's PNG named .JPEG is the famous case).
EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "PNG": {".png"},
    "BMP": {".bmp"},
    "TIFF": {".tif", ".tiff"},
}
UNSUPPORTED = {"GIF", "WebP", "HEIF", "AVIF", "JPEG 2000", "ICO", "PSD"}  # MindSpore's C++ Decode refuses these

# JPEG start-of-frame markers libjpeg(-turbo) decodes without question: baseline, extended, progressive.
_SOF_COMMON = {0xC0, 0xC1, 0xC2}
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic
_STANDALONE = {0x01} | set(range(0xD0, 0xD8))  # TEM, RST0-7: markers without a length field
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class Bad(Exception):
    """The file is not a usable image; the message is the reason shown to the user."""


class NeedsDecode(Exception):
    """The structure looks fine but is unusual enough that only a real decode can tell."""


def sniff(head: bytes):
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == _PNG_SIG:
        return "PNG"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        return "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIF"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if head[:4] == b"8BPS":
        return "PSD"
    return None


def _looks_like_text(head: bytes) -> bool:
    sample = head[:1024]
    if not sample or b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut by the end of the sample is still text
        return e.reason == "unexpected end of data"
    return True


def _jpeg_eoi_after_scan(data: bytes, pos: int) -> bool:
    """Walk entropy-coded data and the segments between scans from `pos`; True when an EOI marker is reached."""
    n = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            return False
        m = data[pos + 1]
        if m == 0x00 or m == 0xFF or m in _STANDALONE:  # byte stuffing, fill byte, restart marker
            pos += 1 if m == 0xFF else 2
            continue
        if m == 0xD9:
            return True
        if pos + 4 > n:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")  # DHT/DQT/SOS... between progressive scans


_DHT_SEEN = {}  # segment bytes -> the tables it defines: most datasets repeat a handful of tables


def _check_dht(seg: bytes, pos: int, tables: dict):
    """Record the Huffman tables a DHT segment defines in `tables` ((class, id) -> whether a DC table holds a symbol
    above 15, which libjpeg refuses when a scan uses it); Bad on what libjpeg calls a "Bogus Huffman table"."""
    known = _DHT_SEEN.get(seg)
    if known is not None:
        tables.update(known)
        return
    bad = Bad(f"corrupt JPEG Huffman table at byte {pos}")
    i, defined = 0, {}
    while i < len(seg):
        if i + 17 > len(seg) or seg[i] >> 4 > 1 or seg[i] & 15 > 3:
            raise bad
        counts = seg[i + 1:i + 17]
        n = sum(counts)
        if n > 256 or i + 17 + n > len(seg):
            raise bad
        code = 0  # canonical code assignment: the codes of each length must fit in that many bits (not all ones)
        for bits, count in enumerate(counts, 1):
            code += count
            if code >= 1 << bits:
                raise bad
            code <<= 1
        defined[(seg[i] >> 4, seg[i] & 15)] = seg[i] >> 4 == 0 and n > 0 and max(seg[i + 17:i + 17 + n]) > 15
        i += 17 + n
    if len(_DHT_SEEN) > 4096:
        _DHT_SEEN.clear()
    _DHT_SEEN[bytes(seg)] = defined
    tables.update(defined)


def _check_dqt(seg: bytes, pos: int) -> set:
    """The table ids a DQT segment defines; Bad when its layout is not what libjpeg reads."""
    i, ids = 0, set()
    while i < len(seg):
        step = 65 if seg[i] >> 4 == 0 else 129
        if seg[i] >> 4 > 1 or seg[i] & 15 > 3 or i + step > len(seg):
            raise Bad(f"corrupt JPEG quantization table at byte {pos}")
        ids.add(seg[i] & 15)
        i += step
    return ids


def _check_sof(m: int, seg: bytes, pos: int):
    """(marker, precision, {component id: (h, v, quant table)}) of a frame header, or Bad."""
    bad = Bad(f"corrupt JPEG frame header at byte {pos}")
    if len(seg) < 6:
        raise bad
    height, width, ncomp = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
    if width == 0 or height == 0:
        raise Bad(f"corrupt JPEG (frame size {width}x{height})")
    if width > 65500 or height > 65500:  # libjpeg's JPEG_MAX_DIMENSION
        raise Bad(f"JPEG too large for libjpeg ({width}x{height}, the limit is 65500 pixels a side)")
    if ncomp not in (1, 3, 4) or len(seg) != 6 + 3 * ncomp:
        raise Bad(f"corrupt JPEG frame header ({ncomp} colour components)")
    comps = {}
    for c in range(ncomp):
        h, v = seg[7 + 3 * c] >> 4, seg[7 + 3 * c] & 15
        if not (1 <= h <= 4 and 1 <= v <= 4) or seg[8 + 3 * c] > 3:
            raise bad
        comps[seg[6 + 3 * c]] = (h, v, seg[8 + 3 * c])
    if len(comps) != ncomp:  # libjpeg renames duplicate ids; only a real decode tells how that ends
        raise NeedsDecode("JPEG with duplicate component ids")
    max_h, max_v = max(h for h, _, _ in comps.values()), max(v for _, v, _ in comps.values())
    if any(max_h % h or max_v % v for h, v, _ in comps.values()):  # libjpeg: "Fractional sampling not implemented"
        raise Bad(f"corrupt JPEG frame header (sampling factors {[(h, v) for h, v, _ in comps.values()]})")
    return m, seg[0], comps


def _check_sos(seg: bytes, pos: int, frame, quant_ids: set, tables: dict) -> int:
    """Validate a scan header against the frame and the tables defined so far; return its number of components."""
    bad = Bad(f"corrupt JPEG scan header at byte {pos}")
    if not seg or not 1 <= seg[0] <= 4 or len(seg) != 4 + 2 * seg[0]:
        raise bad
    n, comps = seg[0], frame[2]
    ids = [seg[1 + 2 * c] for c in range(n)]
    if len(set(ids)) != n or any(i not in comps for i in ids):
        raise bad
    for i in ids:
        if comps[i][2] not in quant_ids:
            raise Bad(f"corrupt JPEG (quantization table {comps[i][2]} is used but never defined)")
    if n > 1 and sum(comps[i][0] * comps[i][1] for i in ids) > 10:  # libjpeg's D_MAX_BLOCKS_IN_MCU
        raise bad
    ss, se, ah, al = seg[-3], seg[-2], seg[-1] >> 4, seg[-1] & 15
    progressive = frame[0] == 0xC2
    if progressive:  # libjpeg refuses an invalid progression outright
        if (se != 0 if ss == 0 else (ss > se or se > 63 or n != 1)) or (ah and al != ah - 1) or al > 13:
            raise Bad(f"corrupt JPEG scan header at byte {pos} (invalid progression Ss={ss} Se={se} Ah={ah} "
                      f"Al={al})")
    # Huffman-coded frames: the tables this scan decodes with (libjpeg looks only at those: an out-of-range id of
    # an unused one is harmless)
    if frame[0] in (0xC0, 0xC1, 0xC2):
        used = []
        for c in range(n):
            dc, ac = (0, seg[2 + 2 * c] >> 4), (1, seg[2 + 2 * c] & 15)
            if not progressive:
                used += [dc, ac]
            elif ss == 0:
                used += [dc] if ah == 0 else []  # a DC refinement scan reads raw bits
            else:
                used.append(ac)
        for t in used:
            if t[1] > 3:
                raise Bad(f"corrupt JPEG scan header at byte {pos} (Huffman table {t[1]}; there are 4)")
            if t not in tables:
                # sequential libjpeg falls back to the standard tables (motion-JPEG frames); progressive crashes
                if progressive:
                    raise Bad(f"corrupt JPEG (the scan at byte {pos} uses {('DC', 'AC')[t[0]]} Huffman table "
                              f"{t[1]}, which is never defined)")
                raise NeedsDecode("JPEG without Huffman tables")
            if tables[t]:
                raise Bad(f"corrupt JPEG Huffman table (DC table {t[1]} holds a symbol above 15)")
    return n


# Segment markers libjpeg reads between (or after) scans. Anything else there (SOI, SOF, an undefined marker)
# stops the decoder with "Unsupported marker" or "Invalid JPEG file structure".
_BETWEEN_SCANS = {0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xFE} | set(range(0xE0, 0xF0))
_HEADER = _BETWEEN_SCANS | _SOF_COMMON | _SOF_OTHER
_SCAN_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy-coded data: not stuffing, fill or RSTn


def _check_later_scans(data: bytes, pos: int, frame, quant_ids: set, tables: dict):
    """A multi-scan (progressive) JPEG: MindSpore's decoder reads every marker through EOI before the first pixel
    comes out, so each must be one libjpeg accepts, with sound tables and scan headers."""
    n = len(data)
    while True:
        found = _SCAN_MARKER.search(data, pos)
        if found is None:
            raise Bad("truncated JPEG (no end-of-image marker: the file was cut short)")
        at = found.start()
        m = data[at + 1]
        if m == 0xD9:
            return
        if m == 0x01:  # TEM: no length
            pos = at + 2
            continue
        if m not in _BETWEEN_SCANS:
            raise Bad(f"corrupt JPEG data (marker 0x{m:02X} at byte {at}, between or inside the scans: MindSpore's "
                      f"decoder refuses it)")
        length = int.from_bytes(data[at + 2:at + 4], "big")
        end = at + 2 + length
        if at + 4 > n or length < 2 or end > n:
            raise Bad(f"truncated JPEG (a segment at byte {at} runs past the end of the file)")
        seg = data[at + 4:end]
        if m == 0xC4:
            _check_dht(seg, at, tables)
        elif m == 0xDB:
            quant_ids |= _check_dqt(seg, at)
        elif m == 0xDD and length != 4:
            raise Bad(f"corrupt JPEG restart interval segment at byte {at}")
        elif m == 0xDA:
            _check_sos(seg, at, frame, quant_ids, tables)
        pos = end


def check_jpeg(f, head: bytes, size: int):
    pos, frame, quant_ids, tables = 2, None, set(), {}
    while True:  # header segments up to the first start-of-scan
        if pos + 4 > len(head):
            if len(head) >= size:
                raise Bad("truncated JPEG (the file ends inside its header)")
            f.seek(0)
            head = f.read(max(2 * len(head), pos + HEAD))  # rare: headers larger than 64 KiB (big EXIF/ICC)
            continue
        if head[pos] != 0xFF:
            raise Bad(f"corrupt JPEG header (no marker at byte {pos})")
        m = head[pos + 1]
        if m == 0xFF:  # fill bytes before a marker are legal
            pos += 1
            continue
        if m == 0xD9:
            raise Bad("corrupt JPEG (end-of-image marker before any image data)")
        if m in _STANDALONE:
            pos += 2
            continue
        if m not in _HEADER:  # libjpeg stops ("Unsupported marker"), or skips on and crashes (0x00, a second SOI)
            raise Bad(f"corrupt JPEG header (marker 0x{m:02X} at byte {pos} is not a JPEG header marker)")
        length = int.from_bytes(head[pos + 2:pos + 4], "big")
        if length < 2:
            raise Bad(f"corrupt JPEG header (segment length {length} at byte {pos})")
        if m in _SOF_COMMON or m in _SOF_OTHER or m in (0xC4, 0xDB, 0xDA, 0xDD):
            end = pos + 2 + length
            if end > len(head):
                if end > size:
                    raise Bad("truncated JPEG (the file ends inside its header)")
                f.seek(0)
                head = f.read(end + HEAD)
            # libjpeg trusts these tables: garbage in them made MindSpore's decoder crash (SIGSEGV) or refuse the
            # file ("Bogus Huffman table definition") in our tests
            seg = head[pos + 4:end]
            if m == 0xC4:
                _check_dht(seg, pos, tables)
            elif m == 0xDB:
                quant_ids |= _check_dqt(seg, pos)
            elif m == 0xDD:
                if length != 4:
                    raise Bad(f"corrupt JPEG restart interval segment at byte {pos}")
            elif m == 0xDA:
                if frame is None:
                    raise Bad("corrupt JPEG (image data before any frame header)")
                scan_comps = _check_sos(seg, pos, frame, quant_ids, tables)
                scan_start = end
                break
            elif frame is not None:
                raise Bad(f"corrupt JPEG header (a second frame header at byte {pos})")
            else:
                frame = _check_sof(m, seg, pos)
        pos += 2 + length
    if scan_start >= size:
        raise Bad("truncated JPEG (the file ends before its image data)")
    if frame[0] not in (0xC0, 0xC1) or scan_comps < len(frame[2]):
        # Several scans: libjpeg reads the whole file, every marker and table in it, before the first pixel.
        f.seek(0)
        _check_later_scans(f.read(), scan_start, frame, quant_ids, tables)
    else:
        # One scan: the decoder stops at the first marker in the data (the rest of the image is left blank), so
        # only a missing end matters: it would run past the end of the file.
        f.seek(max(size - TAIL, 0))
        tail = f.read(TAIL).rstrip(b"\x00")  # some writers pad after EOI
        if not tail.endswith(b"\xff\xd9"):
            # Either truncated or followed by trailing data (camera / phone makers append some): walk the scan.
            f.seek(0)
            data = f.read()
            if not _jpeg_eoi_after_scan(data, scan_start):
                raise Bad("truncated JPEG (no end-of-image marker: the file was cut short)")
    if frame[0] not in _SOF_COMMON or frame[1] != 8:
        raise NeedsDecode(f"JPEG with SOF{frame[0] - 0xC0} / {frame[1]}-bit samples")


def check_png(f, head: bytes, size: int):
    if head[12:16] != b"IHDR" or len(head) < 24:
        raise Bad("corrupt PNG (no IHDR header)")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if width == 0 or height == 0:
        raise Bad(f"corrupt PNG (size {width}x{height})")
    f.seek(max(size - 4096, 0))
    if _PNG_IEND not in f.read():
        raise Bad("truncated PNG (no IEND chunk: the file was cut short)")


def check_bmp(f, head: bytes, size: int):
    declared = int.from_bytes(head[2:6], "little")
    offset = int.from_bytes(head[10:14], "little")
    if len(head) < 26 or offset >= size:
        raise Bad("truncated BMP (the file ends before its pixel data)")
    if declared > size:
        raise Bad(f"truncated BMP ({size} bytes, the header says {declared})")


def check_format(head: bytes, ext: Optional[str] = None) -> str:
    """The image format the first bytes of a file announce (a few dozen bytes are enough), or Bad: not an image,
    or a format MindSpore cannot decode; with `ext`, also when the name's extension does not fit the format."""
    fmt = sniff(head)
    if fmt is None:
        kind = "a text file" if _looks_like_text(head) else f"unknown format, starts with {head[:8]!r}"
        raise Bad(f"not an image ({kind})")
    if fmt in UNSUPPORTED:
        raise Bad(f"unsupported format {fmt} (MindSpore decodes JPEG, PNG, BMP, TIFF): convert it to JPEG")
    if ext is not None and ext not in EXTENSIONS[fmt]:
        raise Bad(f"wrong extension: {fmt} data in a file named '{ext or '(none)'}'")
    return fmt


def _check_content(f, head: bytes, size: int, ext: Optional[str]):
    """Raise Bad or NeedsDecode for an open, non-empty file (or its bytes) whose first bytes are `head`; `ext`,
    when given, must fit the format found."""
    fmt = check_format(head, ext)
    if fmt == "JPEG":
        check_jpeg(f, head, size)
    elif fmt == "PNG":
        check_png(f, head, size)
    elif fmt == "BMP":
        check_bmp(f, head, size)
    else:
        raise NeedsDecode(fmt)  # TIFF: too many layouts to verify without decoding


def check_bytes(data: bytes) -> Optional[str]:
    """Why MindSpore's decoder must not be given these bytes (check_file's structure walk, without its file
    extension test), or None: safe, or unusual but plausible (then a decode decides). For tools that hold the
    bytes already (scripts/infer.py)."""
    if not data:
        return "empty file (0 bytes)"
    try:
        _check_content(io.BytesIO(data), data[:HEAD], len(data), ext=None)
    except Bad as e:
        return str(e)
    except NeedsDecode:
        pass
    return None


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def stat_regular(path: str) -> os.stat_result:
    """The stat of a regular file (or a link to one), else Bad: a directory, FIFO, socket, device, broken link or
    link loop. From stat alone: a FIFO is never opened (MindSpore's reader, and ours, would block on it forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise Bad("broken symbolic link" if os.path.islink(path) else "file vanished during the check")
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Bad("symbolic link loop: remove the link or point it at a real directory or image")
        raise
    if stat.S_ISDIR(st.st_mode):
        raise Bad("a directory inside a class directory (ImageFolderDataset reads every entry as an image)")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _SPECIAL if test(st.st_mode)), "a special file")
        raise Bad(f"{kind}, not a regular file (MindSpore's reader would block or fail on it)")
    return st


def stat_sample(path: str) -> os.stat_result:
    """stat_regular, and Bad for an empty file or a hidden name (.DS_Store, ._photo.jpg): ImageFolderDataset reads
    every entry of a class folder, hidden or not, as an image of that class, while their owners expect them to be
    ignored."""
    st = stat_regular(path)
    if os.path.basename(path).startswith("."):
        raise Bad("hidden file (ImageFolderDataset reads it as an image of its class folder)")
    if st.st_size == 0:
        raise Bad("empty file (0 bytes)")
    return st


def read_head(path: str, n: int) -> bytes:
    """The first `n` bytes of a file checked by stat_sample. O_NONBLOCK: should it have been replaced by a FIFO
    since, the open returns at once instead of waiting for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, n)
    finally:
        os.close(fd)


def check_file(path: str):
    """Raise Bad or NeedsDecode, or return None when the file structure is sound."""
    st = stat_sample(path)
    with open(path, "rb") as f:
        _check_content(f, f.read(HEAD), st.st_size, os.path.splitext(path)[1].lower())


class Decoder:
    """MindSpore's own C++ decoder, the one training uses, loaded on first use."""

    def __init__(self, timeout: int):
        self.timeout = timeout
        self.op = None

    def __call__(self, path: str):
        sys.stdout.flush()  # answers so far must reach the parent before anything here can kill the process
        if self.op is None:
            import numpy as np
            import mindspore.dataset.vision as vision
            self.np, self.op = np, vision.Decode()
        data = self.np.fromfile(path, dtype=self.np.uint8)
        error = []

        def decode():
            try:
                self.op(data)
            except Exception as e:  # MindSpore wraps libjpeg/OpenCV errors in RuntimeError
                error.append(e)

        # A hung decoder never returns to Python, so a Python-level timeout cannot fire; the default SIGALRM
        # action kills the process instead and the parent reports the file as hanging.
        signal.alarm(self.timeout)
        try:
            # A fresh thread per file: MindSpore keeps some libjpeg errors in a thread-local list and reports
            # them on the next decode of that thread, which would blame the next (good) file.
            worker = threading.Thread(target=decode)
            worker.start()
            worker.join()
        finally:
            signal.alarm(0)
        if error:
            lines = [ln.strip() for ln in str(error[0]).splitlines() if "[ERROR]" in ln or "rror raised" in ln]
            reason = (lines[0] if lines else type(error[0]).__name__).split(" Dump the abnormal image")[0]
            raise Bad("MindSpore cannot decode it: " + reason[:300])


def reason_of(check_fn, *args) -> Optional[str]:
    """None when `check_fn(*args)` passes; else why not: the Bad message, or the error that kept it unread."""
    try:
        check_fn(*args)
    except Bad as e:
        return str(e)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    return None


def _check_and_decode(path: str, mode: str, decoder: Decoder) -> None:
    try:
        check_file(path)
        if mode == "all":
            decoder(path)
    except NeedsDecode:
        decoder(path)


def check(path: str, mode: str, decoder: Decoder):
    return reason_of(_check_and_decode, path, mode, decoder)


def main():
    mode = sys.argv[sys.argv.index("--decode") + 1] if "--decode" in sys.argv else "auto"
    timeout = int(sys.argv[sys.argv.index("--timeout") + 1]) if "--timeout" in sys.argv else 60
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    decoder = Decoder(timeout)
    out = sys.stdout
    for line in sys.stdin:
        for path in json.loads(line):
            out.write(json.dumps(check(path, mode, decoder)) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
