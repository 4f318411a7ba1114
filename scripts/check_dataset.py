"""List the images of an ImageFolder dataset that would stop a MindSpore data pipeline.

    python scripts/check_dataset.py --data_dir /path/to/imagenet [--workers N] [--full_decode True]

Checks every sample under data_dir/{train,val,...}/<class>/ (or under data_dir/<class>/ for a single split):
empty, truncated or corrupt files, non-image and unsupported files (GIF, WebP, ...), wrong extensions, hidden files
(.DS_Store: ImageFolderDataset reads them too), directories, FIFOs and other special files inside class directories
(told from their stat, never opened), and files on which MindSpore's decoder crashes (SIGFPE/SIGSEGV) or hangs.
Prints one "path: reason" line per bad file. Exit code 0 when clean, 1 when anything is bad, 2 on usage errors.
Only reads the dataset; deleting or replacing the listed files is up to you.
"""
import argparse
import os
import sys
import time

import _common  # noqa: F401  (import path)

from mindcv_ext.cli import printable
from mindcv_ext.data.imagecheck import find_bad_images, list_image_entries


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir_pos", nargs="?", metavar="data_dir", help="same as --data_dir")
    p.add_argument("--data_dir", default=None, help="dataset root (with train/, val/) or one split directory")
    p.add_argument("--workers", type=int, default=None, help="parallel checker processes (default: CPU count)")
    p.add_argument("--full_decode", type=_common.str2bool, default=False,
                   help="also decode every image with MindSpore (thorough, ~50x slower); default: only files "
                        "whose structure is unusual are decoded")
    p.add_argument("--decode_timeout", type=int, default=60, help="seconds before a decode counts as hung")
    args = p.parse_args(argv)
    if args.data_dir and args.data_dir_pos and args.data_dir != args.data_dir_pos:
        p.error("give the dataset directory once (positional or --data_dir)")
    args.data_dir = args.data_dir or args.data_dir_pos
    if not args.data_dir:
        p.error("no dataset directory given: pass --data_dir /path/to/dataset")
    if os.path.exists(args.data_dir) and not os.path.isdir(args.data_dir):
        p.error(f"'{printable(args.data_dir)}' is a file, not a directory: pass the dataset directory (holding "
                f"train/<class>/<images> and val/<class>/<images>), or one split directory (<class>/<images>); "
                f"for a single image, pass a directory holding it in a class folder")
    if not os.path.isdir(args.data_dir):
        p.error(f"dataset directory not found: '{printable(args.data_dir)}' (expected data_dir/train/<class>/<images>, "
                f"data_dir/val/<class>/<images>)")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    if args.decode_timeout < 1:
        p.error("--decode_timeout must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    entries = list_image_entries(args.data_dir)
    if not entries:
        print(f"No images found under {printable(args.data_dir)} (expected <split>/<class>/<image> or "
              f"<class>/<image>).", file=sys.stderr)
        return 1
    bad = find_bad_images(args.data_dir, workers=args.workers, full_decode=args.full_decode,
                          decode_timeout=args.decode_timeout, paths=entries)
    elapsed = time.perf_counter() - start
    for path, reason in bad:
        print(f"{printable(path)}: {printable(reason)}")
    mode = "full decode" if args.full_decode else "structure check"
    print(f"{len(bad)} bad of {len(entries)} files under {printable(args.data_dir)} ({mode}, {elapsed:.1f} s, "
          f"{len(entries) / max(elapsed, 1e-9):.0f} files/s)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    from mindcv_ext.cli import run_tool

    run_tool(main, "check_dataset.py")  # Ctrl-C / SIGTERM (here or in a checker process): one line, 130 / 143
