"""Shared bits of the command-line scripts."""
import argparse
import os
import sys

# Let `python scripts/x.py` import the package from a source checkout without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def str2bool(v: str) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("1", "true", "yes", "y"):
        return True
    if v.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def quiet_exit(code: int = 0):
    """Exit without MindSpore 2.10's noisy Cell.__del__ tracebacks at interpreter shutdown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
