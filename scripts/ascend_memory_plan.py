"""On paper: memory per 32 GB Ascend 910 card for each RepMLPNet recipe, from activations measured here.

    python scripts/ascend_memory_plan.py --output bench/ascend_memory_plan.jsonl      # measures, then plans
    python scripts/ascend_memory_plan.py --from_file bench/ascend_memory_plan.jsonl   # plans from saved figures

Measured (CPU, MindSpore graph mode, fp32): the training step's memory per image, as the slope of peak RSS over
two batch sizes (scripts/memory_probe.py; weights, optimizer state and compile caches cancel out). Computed, NOT
measured on a device: that slope scaled to AMP O2 (activations stored in fp16: x0.5, then x1.25 for the fp32 BN
inputs O2 keeps and allocator fragmentation), plus 18 bytes per parameter (fp32 master weights 4, fp16 copies 2,
fp32 gradients 4, AdamW moments 8), plus a fixed reserve for the runtime, HCCL buffers and workspaces, against
the memory one card gives a process. The recipe's batch: the largest multiple of 16 within 90% of the
computed fit, at most 128 (mindcv's T224 batch per card); lr by the linear rule 0.005 x global batch / 1024.
"""
import argparse
import json
import os
import sys

import memory_probe

VARIANTS = ("repmlp_t224", "repmlp_t256", "repmlp_b224", "repmlp_b256", "repmlp_d256", "repmlp_l256")
CARD_GIB = 32.0          # Ascend 910 (32 GB HBM)
USABLE_GIB = 30.0        # what MindSpore can allocate of it, roughly (the driver and runtime keep the rest)
RESERVE_GIB = 3.0        # runtime, HCCL buffers, operator workspaces, graph
FP16_SCALE = 0.5 * 1.25  # fp16 activations, +25% for O2's fp32 BN inputs and fragmentation
BYTES_PER_PARAM = 18     # fp32 master 4 + fp16 copy 2 + fp32 grad 4 + AdamW m, v 8
SAFETY = 0.9
BATCH_CAP = 128          # mindcv's T224 recipe batch per card; larger would change the recipe, not just fit
BASE_LR, BASE_BATCH = 0.005, 1024  # linear rule of the T224 recipe
CARDS = 8


def measure(model, batches, threads):
    rows = []
    for bs in batches:
        cfg = dict(case="model", model=model, form="train", task="train_step", mode="graph", stage=0, depth=1,
                   batch_size=bs, calls=2, threads=threads, memory_optimize_level=None)
        rows.append(memory_probe.run(cfg))
    slope = (rows[-1]["call_peak_mib"] - rows[0]["call_peak_mib"]) / (batches[-1] - batches[0])
    return dict(model=model, batches=list(batches), call_peak_mib=[r["call_peak_mib"] for r in rows],
                fp32_train_mib_per_image=round(slope, 1))


def plan(row, params):
    per_image = row["fp32_train_mib_per_image"] * FP16_SCALE
    fixed = params * BYTES_PER_PARAM / 2 ** 20 + RESERVE_GIB * 1024
    room = USABLE_GIB * 1024 - fixed
    largest = int(room // per_image)
    # 10% under the computed fit (it is an estimate), a multiple of 16 (cube-unit friendly), at most BATCH_CAP.
    batch = max(16, min(BATCH_CAP, int(largest * SAFETY) // 16 * 16))
    need = (fixed + batch * per_image) / 1024
    return dict(row, params_m=round(params / 1e6, 2), fp16_mib_per_image=round(per_image, 1),
                fixed_gib=round(fixed / 1024, 2), largest_batch_fitting=largest, recipe_batch=batch,
                need_gib_at_recipe_batch=round(need, 1), global_batch=CARDS * batch,
                lr=round(BASE_LR * CARDS * batch / BASE_BATCH, 6))


def param_count(model):
    sys.path.insert(0, memory_probe.ROOT)
    import mindcv

    import mindcv_ext  # noqa: F401
    return int(sum(p.size for p in mindcv.create_model(model, num_classes=1000).trainable_params()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(VARIANTS))
    p.add_argument("--batch_sizes", default="2,4", help="two batch sizes for the slope")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--output", default="", help="write the measured rows (JSON lines) here")
    p.add_argument("--from_file", default="", help="plan from rows saved by an earlier --output")
    args = p.parse_args(argv)
    if args.from_file:
        with open(args.from_file) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        batches = [int(v) for v in args.batch_sizes.split(",")]
        rows = []
        for model in args.models.split(","):
            row = measure(model, batches, args.threads)
            row["params"] = param_count(model)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.output:
            with open(args.output, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"\nComputed for a {CARD_GIB:.0f} GB Ascend 910 card ({USABLE_GIB:.0f} GiB usable, {RESERVE_GIB:.0f} GiB "
          f"reserved), AMP O2, AdamW, {CARDS} cards; not measured on a device.\n")
    print("| model | params (M) | fp32 train MiB/image (measured, CPU) | fp16 MiB/image (computed) | "
          "params + optimizer (GiB) | largest batch per card | recipe batch | memory at it (GiB) | global | lr |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = plan(row, row["params"])
        print(f"| {r['model']} | {r['params_m']} | {r['fp32_train_mib_per_image']} | {r['fp16_mib_per_image']} | "
              f"{r['fixed_gib'] - RESERVE_GIB:.2f} | {r['largest_batch_fitting']} | {r['recipe_batch']} | "
              f"{r['need_gib_at_recipe_batch']} | {r['global_batch']} | {r['lr']:g} |")


if __name__ == "__main__":
    main()
