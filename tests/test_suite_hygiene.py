"""The suite cleans up after itself: no weight files of passed tests pile up under pytest's base temp."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_large_artefacts_do_not_outlive_their_test(tmp_path):
    base = tmp_path / "basetemp"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={base}",
                           os.path.join(ROOT, "tests", "_artefact_probe.py")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = [os.path.join(d, f) for d, _, files in os.walk(base) for f in files]
    assert not [p for p in left if os.path.getsize(p) > (8 << 20)], left
