#!/usr/bin/env bash
# The segmentation CPU demo, end to end (a few minutes on 2 cores):
#   generate the Cityscapes-layout demo set -> train demo_repmlp + UPerNet (graph mode) -> validate the train form
#   (mIoU next to a trivial baseline) -> re-parameterize, save and validate the deploy form (same mIoU expected)
#   -> predict coloured masks for the val canvases into $OUT/masks.
# Re-running continues the same run (resume) instead of starting over. OUT=dir and DATA=dir override the folders.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/seg_demo}
DATA=${DATA:-data/seg_demo}
CONFIG=configs/seg/demo_seg_cpu.yaml
start=$(date +%s)

if [ -f "$OUT/latest.ckpt" ]; then
  python train_seg.py --config "$CONFIG" --data_dir "$DATA" --ckpt_save_dir "$OUT" --ckpt_path "$OUT/latest.ckpt" \
      --resume_opt True
else
  python train_seg.py --config "$CONFIG" --data_dir "$DATA" --ckpt_save_dir "$OUT"
fi

python validate_seg.py -c "$CONFIG" --data_dir "$DATA" --ckpt_path "$OUT/best.ckpt" | tee "$OUT/val_train_form.txt"
python validate_seg.py -c "$CONFIG" --data_dir "$DATA" --ckpt_path "$OUT/best.ckpt" \
    --save_deploy "$OUT/best_deploy.ckpt" | tee "$OUT/val_deploy_form.txt"
python scripts/predict_seg.py -c "$CONFIG" --ckpt_path "$OUT/best_deploy.ckpt" \
    --image_path "$DATA/leftImg8bit/val" --output "$OUT/masks" | awk 'NR <= 4 || /written/'

python - "$OUT" "$start" <<'PY'
import json, sys, time
out, start = sys.argv[1], int(sys.argv[2])
train, deploy = (json.loads(open(f"{out}/val_{f}_form.txt").read().strip().splitlines()[-1]) for f in ("train", "deploy"))
print(f"\nsegmentation demo: val mIoU {train['mIoU']:.2f} (train form) vs {deploy['mIoU']:.2f} (deploy form); trivial "
      f"baseline ('{'predict the most frequent class everywhere'}') {train['baseline_mIoU']:.2f}; aAcc {train['aAcc']:.2f} "
      f"vs {train['baseline_aAcc']:.2f}. Masks in {out}/masks; {time.time() - start:.0f} s in all.")
if abs(train["mIoU"] - deploy["mIoU"]) > 0.05:
    sys.exit("train and deploy forms disagree")
PY
