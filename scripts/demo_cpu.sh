#!/usr/bin/env bash
# The CPU demo, end to end on a fresh machine:
#   install -> generate the demo dataset -> train demo_repmlp (graph mode) -> re-parameterize the best checkpoint
#   -> validate the train-form and the deploy-form checkpoints (same top-1 expected) -> predict on images.
# Re-running continues the same run (resume) instead of starting over. OUT=dir overrides the output folder.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/demo}
CONFIG=configs/repmlp/repmlp_demo_cpu.yaml

python -m pip install -q -e .

if [ -f "$OUT/latest.ckpt" ]; then
  python train.py --config "$CONFIG" --ckpt_save_dir "$OUT" --ckpt_path "$OUT/latest.ckpt" --resume_opt True
else
  python train.py --config "$CONFIG" --ckpt_save_dir "$OUT"
fi

python scripts/reparameterize.py --model demo_repmlp --ckpt_path "$OUT/best.ckpt" --output "$OUT/best_deploy.ckpt"

# validate with the training recipe (mindcv's convention): same model, image size, crop and class folders
python validate.py -c "$CONFIG" --ckpt_path "$OUT/best.ckpt" | tee "$OUT/val_train_form.txt"
python validate.py -c "$CONFIG" --ckpt_path "$OUT/best_deploy.ckpt" | tee "$OUT/val_deploy_form.txt"
# predict: top-5 class names (recorded in the checkpoint) for one val image of each class
python scripts/infer.py -c "$CONFIG" --ckpt_path "$OUT/best_deploy.ckpt" --image_path data/demo/val \
    --output "$OUT/predictions.jsonl" --log_interval 0 | awk 'NR % 50 == 1'

python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
train, deploy = (json.loads(open(f"{out}/val_{f}_form.txt").read().strip().splitlines()[-1]) for f in ("train", "deploy"))
print(f"\ndemo: val top-1 {train['top1']:.2f} (train form) vs {deploy['top1']:.2f} (deploy form), "
      f"chance is {100 / 10:.0f}; metrics {out}/metrics.jsonl, curves {out}/curves.png")
if abs(train["top1"] - deploy["top1"]) > 1e-6:
    sys.exit("train and deploy forms disagree")
PY
