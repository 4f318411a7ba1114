"""On paper: memory per 32 GB Ascend 910 card for each RepMLPNet recipe, from activation bytes counted here.

    python bench/ascend_memory_plan.py --output bench/ascend_memory_plan.jsonl      # counts, then plans
    python bench/ascend_memory_plan.py --from_file bench/ascend_memory_plan.jsonl   # plans from saved figures

Counted (needs torch, the optional extra; a few seconds per variant): the activation bytes a training step keeps
from the forward for the backward, per image. torch.autograd.graph.saved_tensors_hooks sees every tensor autodiff
saves while the PyTorch reference (tests/torch_repmlp_ref.py, the official formulation of the train form) runs
its forward at batch 1 and at batch 2; the difference is one image's worth, weights excluded, shared storages
counted once. Our MindSpore graph keeps the same op inputs for its backward, or fewer (its conv branches share
fc3's input; fc3's weight matrices are recomputed).
Why not the peak RSS of our MindSpore CPU step over two batch sizes (this script's basis until 2026-11-26): the
CPU allocator grows in steps, so that slope depended on the batch range (t224: 27 to 231 MiB per image), and it
includes copies only the CPU backend makes (Transposes, Reshapes).

Computed, NOT measured on a device: under AMP O2 the BatchNorms run in fp32, so the inputs they save stay 4 bytes
per value and every other saved tensor is halved; x1.25 for the backward's transient gradients and allocator
fragmentation; plus 18 bytes per parameter (fp32 master weights 4, fp16 copies 2, fp32 gradients 4, AdamW moments
8) and a fixed reserve for the runtime, HCCL buffers and workspaces, against the memory one card gives a process.
The recipe's batch: the largest multiple of 16 within 90% of the computed fit, at most 128 (mindcv's T224 batch
per card); lr by the linear rule 0.005 x global batch / 1024.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("repmlp_t224", "repmlp_t256", "repmlp_b224", "repmlp_b256", "repmlp_d256", "repmlp_l256")
CARD_GIB = 32.0          # Ascend 910 (32 GB HBM)
USABLE_GIB = 30.0        # what MindSpore can allocate of it, roughly (the driver and runtime keep the rest)
RESERVE_GIB = 3.0        # runtime, HCCL buffers, operator workspaces, graph
TRANSIENT = 1.25         # the backward's gradient buffers in flight, allocator fragmentation
BYTES_PER_PARAM = 18     # fp32 master 4 + fp16 copy 2 + fp32 grad 4 + AdamW m, v 8
SAFETY = 0.9
BATCH_CAP = 128          # mindcv's T224 recipe batch per card; larger would change the recipe, not just fit
BASE_LR, BASE_BATCH = 0.005, 1024  # linear rule of the T224 recipe
CARDS = 8
MIB = 2 ** 20


def saved_bytes(model, x):
    """(all, BatchNorm inputs) bytes of the non-parameter tensors autodiff saves during model(x)."""
    import torch

    bn_inputs, saved = set(), {}
    hooks = [m.register_forward_pre_hook(lambda m, inp: bn_inputs.add(inp[0].untyped_storage().data_ptr()))
             for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        storage = t.untyped_storage()  # views of one tensor share it: counted once
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    kept = {ptr: n for ptr, n in saved.items() if ptr not in params}
    return sum(kept.values()), sum(n for ptr, n in kept.items() if ptr in bn_inputs)


def count(model_name):
    try:
        import torch
    except ImportError:
        sys.exit("error: counting activations needs torch (pip install torch); "
                 "or plan from saved figures with --from_file bench/ascend_memory_plan.jsonl")
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch_repmlp_ref as ref

    net = ref.build(model_name).train()
    size = ref.VARIANTS[model_name][3]
    one, two = (saved_bytes(net, torch.randn(bs, 3, size, size)) for bs in (1, 2))
    fp32, bn = (two[0] - one[0]) / MIB, (two[1] - one[1]) / MIB
    return dict(model=model_name, saved_fp32_mib_per_image=round(fp32, 1), bn_inputs_mib_per_image=round(bn, 1),
                params=sum(p.numel() for p in net.parameters() if p.requires_grad))


def plan(row):
    o2 = row["bn_inputs_mib_per_image"] + (row["saved_fp32_mib_per_image"] - row["bn_inputs_mib_per_image"]) / 2
    per_image = o2 * TRANSIENT
    fixed = row["params"] * BYTES_PER_PARAM / MIB + RESERVE_GIB * 1024
    room = USABLE_GIB * 1024 - fixed
    largest = int(room // per_image)
    # 10% under the computed fit (it is an estimate), a multiple of 16 (cube-unit friendly), at most BATCH_CAP.
    batch = max(16, min(BATCH_CAP, int(largest * SAFETY) // 16 * 16))
    need = (fixed + batch * per_image) / 1024
    return dict(row, params_m=round(row["params"] / 1e6, 2), o2_mib_per_image=round(o2, 1),
                planned_mib_per_image=round(per_image, 1), fixed_gib=round(fixed / 1024, 2),
                largest_batch_fitting=largest, recipe_batch=batch, need_gib_at_recipe_batch=round(need, 1),
                global_batch=CARDS * batch, lr=round(BASE_LR * CARDS * batch / BASE_BATCH, 6))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(VARIANTS))
    p.add_argument("--output", default="", help="write the counted rows (JSON lines) here")
    p.add_argument("--from_file", default="", help="plan from rows saved by an earlier --output")
    args = p.parse_args(argv)
    if args.from_file:
        with open(args.from_file) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        models = args.models.split(",")
        unknown = [m for m in models if m not in VARIANTS]
        if unknown:
            p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        rows = [count(m) for m in models]
        if args.output:
            with open(args.output, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"Computed for a {CARD_GIB:.0f} GB Ascend 910 card ({USABLE_GIB:.0f} GiB usable, {RESERVE_GIB:.0f} GiB "
          f"reserved), AMP O2, AdamW, {CARDS} cards; not measured on a device.\n")
    print("| model | params (M) | saved for backward, fp32 MiB/image (counted) | of which BN inputs | "
          "AMP O2 MiB/image | x1.25 planned | params + optimizer (GiB) | images that fit | recipe batch per card | "
          "memory at it (GiB) | lr (8 cards) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = plan(row)
        print(f"| {r['model']} | {r['params_m']} | {r['saved_fp32_mib_per_image']} | {r['bn_inputs_mib_per_image']} | "
              f"{r['o2_mib_per_image']} | {r['planned_mib_per_image']} | {r['fixed_gib'] - RESERVE_GIB:.2f} | "
              f"~{r['largest_batch_fitting']} | {r['recipe_batch']} | ~{r['need_gib_at_recipe_batch']} | {r['lr']:g} |")


if __name__ == "__main__":
    main()
