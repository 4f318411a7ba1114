"""bench/ascend_memory_plan.py: its activation count against a hand count, and the Ascend recipes against its
plan (a changed figure or recipe that no longer agrees fails here)."""
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import ascend_memory_plan as plan  # noqa: E402


def test_saved_bytes_counts_what_autodiff_keeps_per_image():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).train()
    (all1, bn1), (all2, bn2) = (plan.saved_bytes(net, torch.randn(bs, 3, 8, 8)) for bs in (1, 2))
    # Per image, fp32: the conv keeps its input (3*8*8), BN its input (4*6*6), ReLU its output (4*6*6); the conv
    # weight is a parameter and BN's per-channel statistics do not grow with the batch.
    assert all2 - all1 == 4 * (3 * 8 * 8 + 2 * 4 * 6 * 6)
    assert bn2 - bn1 == 4 * 4 * 6 * 6


@pytest.mark.parametrize("variant", plan.VARIANTS)
def test_ascend_recipe_takes_the_planned_batch_and_lr(variant):
    with open(os.path.join(ROOT, "bench", "ascend_memory_plan.jsonl")) as f:
        row = next(r for r in map(json.loads, f) if r["model"] == variant)
    expected = plan.plan(row)
    with open(os.path.join(ROOT, "configs", "repmlp", f"{variant}_ascend.yaml")) as f:
        text = f.read()
    assert int(re.search(r"^batch_size: (\d+)$", text, re.M).group(1)) == expected["recipe_batch"]
    assert float(re.search(r"^lr: ([\d.e-]+)$", text, re.M).group(1)) == pytest.approx(expected["lr"])
    assert f"about {expected['largest_batch_fitting']} images fit" in text


def test_unknown_model_is_refused_before_counting(capsys):
    with pytest.raises(SystemExit) as stop:
        plan.main(["--models", "repmlp_t225"])
    assert stop.value.code == 2 and "unknown model(s) repmlp_t225; choose from repmlp_t224" in capsys.readouterr().err
