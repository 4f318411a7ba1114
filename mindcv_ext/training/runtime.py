"""MindSpore context, devices and data-parallel setup from the config."""
import os
import tempfile
from typing import List, Tuple

import numpy as np

from ..config import ConfigError

# MindSpore is imported in each function: LAUNCHER_VARS and keep_compile_dumps_out_of_cwd also serve the tools'
# .onnx paths on a machine without it.

__all__ = ["set_runtime", "init_context", "average_across_ranks", "sum_across_ranks",
           "keep_compile_dumps_out_of_cwd", "LAUNCHER_VARS"]

# Variables a MindSpore launcher sets in every worker: msrun / the dynamic cluster (MS_ROLE, MS_WORKER_NUM) or an
# Ascend rank table.
LAUNCHER_VARS = ("MS_ROLE", "MS_WORKER_NUM", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH")


def set_runtime(cfg, fix: str) -> None:
    """Mode, device and compile level (train.py, validate.py, infer.py). The device is set only when it changes:
    the runtime refuses a second set_device once it ran a kernel (tests call the tools' main() in one process).
    `fix` completes the one-line error for a device this MindSpore build does not have."""
    import mindspore as ms

    keep_compile_dumps_out_of_cwd()
    ms.set_context(mode=cfg.mode)
    if ms.get_context("device_target") != cfg.device_target:
        try:
            if hasattr(ms, "set_device"):  # MindSpore >= 2.5; set_context(device_target=...) is deprecated in 2.10
                ms.set_device(cfg.device_target)
            else:
                ms.set_context(device_target=cfg.device_target)
        except (RuntimeError, ValueError) as e:  # e.g. Ascend asked of a CPU-only MindSpore build
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"device_target {cfg.device_target} is not available here ({reason}). {fix}") from e
    if cfg.jit_level and cfg.mode == 0:
        # Deprecated in 2.10 in favour of per-function ms.jit(jit_level=...), which has no O2; the global setting
        # still works on 2.7-2.10 and is what mindcv uses for its Ascend recipes.
        ms.set_context(jit_config={"jit_level": cfg.jit_level})


def keep_compile_dumps_out_of_cwd() -> None:
    """MindSpore writes rank_<id>/om/analyze_fail.ir into the working directory when a graph fails to compile
    (and on device task errors); its message names the file. MS_OM_PATH (documented, read when the file is
    written; set_context's save_graphs_path does not apply to it) moves it under this process's temporary
    directory, created only if MindSpore writes there. A value the user set is kept."""
    os.environ.setdefault("MS_OM_PATH", os.path.join(tempfile.gettempdir(), f"mindspore_dumps_{os.getpid()}"))


def init_context(cfg) -> Tuple[int, int]:
    """Apply mode, device, jit level, data parallelism and seeds. Returns (rank, number of ranks)."""
    import mindspore as ms

    set_runtime(cfg, "Install the MindSpore build for that device, or try the recipe on CPU with --device_target "
                     "CPU --jit_level O0 --amp_level O0 --distribute False.")

    rank, group_size = 0, 1
    if cfg.distribute:
        if not any(v in os.environ for v in LAUNCHER_VARS):
            raise ConfigError("distribute: True needs a launcher that starts one process per device: "
                              "msrun --worker_num 8 --local_worker_num 8 python train.py --config ... "
                              "(see scripts/run_distribute_8p.sh), or set distribute: False.")
        from mindspore.communication import get_group_size, get_rank, init

        init()  # HCCL on Ascend, NCCL on GPU, MCCL on CPU
        rank, group_size = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=group_size)

    # The same seed on every rank: identical initial weights, which data parallelism needs (MindSpore does not
    # broadcast them). Each rank still reads a different shard of the data.
    from mindcv.utils import set_seed

    set_seed(cfg.seed)
    ms.dataset.config.set_seed(cfg.seed)
    return rank, group_size


def sum_across_ranks(flag: int) -> int:
    """An integer summed over all ranks (every rank must call it): how ranks agree on stopping together."""
    import mindspore as ms
    from mindcv.utils import AllReduceSum

    return int(round(float(AllReduceSum()(ms.Tensor(np.array([flag], np.float32))).asnumpy()[0])))


def average_across_ranks(params: list, all_reduce, group_size: int) -> None:
    """Set each parameter to its mean over all ranks, with one collective for the whole list.

    Data parallelism keeps the trained weights identical on every rank, but BatchNorm's moving statistics are
    computed from each rank's own batches and drift apart. Averaging them (and their EMA copies) at the end of
    every epoch makes validation and the saved checkpoints describe one model on all ranks.
    """
    import mindspore as ms

    if group_size <= 1 or not params:
        return
    values = [p.asnumpy() for p in params]
    flat = np.concatenate([v.astype(np.float32).ravel() for v in values])
    mean = all_reduce(ms.Tensor(flat)).asnumpy() / group_size
    offset = 0
    for p, v in zip(params, values):
        p.set_data(ms.Tensor(mean[offset:offset + v.size].reshape(v.shape).astype(v.dtype)))
        offset += v.size
