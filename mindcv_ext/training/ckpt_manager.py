"""Training checkpoints: `latest.ckpt` after every epoch, periodic `<model>-<epoch>_<steps>.ckpt` (mindcv's
naming) pruned to keep_checkpoint_max, `best.ckpt` by val top-1, and resuming from any of the full ones.

Every file is written through mindcv_ext.checkpoint.save_checkpoint (temp file + rename), so a kill at any moment
leaves the previous version intact.

- latest / periodic: the full training state: model weights under their own names (what validate.py and the
  re-parameterization load), optimizer state (adam_m.*, global_step, ...), `ema.*` averages, `scale_sense`, and the
  scalars `epoch` (epochs finished), `steps_per_epoch` and `best_acc`. The lr schedule itself is not stored: it
  is rebuilt from the config and indexed by global_step. A resume with another number of steps per epoch (another
  batch_size, dataset size or device count) moves global_step to the same point of the schedule, counted in
  epochs (restore_training_state).
- best: only the evaluated weights (the EMA averages when EMA is on), so evaluating or re-parameterizing it gives
  the logged top-1.
"""
import os
import re
from typing import Dict, Optional

import numpy as np
from mindspore import Parameter, Tensor, nn

from ..checkpoint import CheckpointError, save_checkpoint
from ..weights import CLASS_NAMES_KEY, encode_class_names, load_into, read_weights

__all__ = ["CheckpointManager", "training_state", "restore_training_state", "load_weights", "scalar"]

LATEST, BEST = "latest.ckpt", "best.ckpt"
_NOT_SAVED = ("learning_rate",)  # the per-step lr table: rebuilt from the config on resume


def scalar(value) -> float:
    return float(np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value).reshape(-1)[0])


def training_state(train_step: nn.Cell) -> Dict[str, Parameter]:
    """Every Parameter of the train step (network, optimizer, EMA, loss scale) by name."""
    return {p.name: p for p in train_step.get_parameters() if p.name not in _NOT_SAVED}


class CheckpointManager:
    def __init__(self, save_dir: str, model_name: str, steps_per_epoch: int, keep_max: int,
                 policy: str = "latest_k", enabled: bool = True, class_names=None, metadata=None):
        self.save_dir = save_dir
        self.class_names = class_names  # recorded in every file, so predictions and validation can name classes
        self.metadata = dict(metadata or {})  # more scalars for every file (train_seg.py: GELU flavour, crop)
        self.model_name = model_name
        self.steps_per_epoch = steps_per_epoch
        self.keep_max = keep_max
        self.policy = policy
        self.enabled = enabled  # False on ranks other than 0
        self.latest_path = os.path.join(save_dir, LATEST)
        self.best_path = os.path.join(save_dir, BEST)
        self.val_top1: Dict[int, float] = {}  # epoch -> top-1, for top_k

    def periodic_path(self, epoch: int) -> str:
        return os.path.join(self.save_dir, f"{self.model_name}-{epoch}_{self.steps_per_epoch}.ckpt")

    def save_epoch(self, train_step: nn.Cell, epoch: int, best_acc: float, periodic: bool) -> None:
        """After epoch `epoch` (1-based) finished: overwrite latest.ckpt; add a periodic checkpoint if due."""
        if not self.enabled:
            return
        save_checkpoint(training_state(train_step), self.latest_path, append_dict=self._scalars(epoch, best_acc))
        if periodic:
            _link_or_copy(self.latest_path, self.periodic_path(epoch), train_step, self._scalars(epoch, best_acc))
            self._prune()

    def _scalars(self, epoch: int, best_acc: float) -> dict:
        entries = {"epoch": int(epoch), "best_acc": float(best_acc), "steps_per_epoch": int(self.steps_per_epoch),
                   **self.metadata}
        if self.class_names:
            entries[CLASS_NAMES_KEY] = encode_class_names(self.class_names)
        return entries

    def save_best(self, network: nn.Cell, epoch: int, acc: float) -> None:
        if self.enabled:
            entries = {"epoch": int(epoch), "best_acc": float(acc), **self.metadata}
            if self.class_names:
                entries[CLASS_NAMES_KEY] = encode_class_names(self.class_names)
            save_checkpoint(network, self.best_path, append_dict=entries)

    def _periodic_files(self) -> Dict[int, str]:
        pattern = re.compile(re.escape(self.model_name) + r"-(\d+)_\d+\.ckpt$")
        found = {}
        for name in os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else []:
            m = pattern.match(name)
            if m:
                found[int(m.group(1))] = os.path.join(self.save_dir, name)
        return found

    def _prune(self) -> None:
        files = self._periodic_files()
        if len(files) <= self.keep_max:
            return
        if self.policy == "top_k":  # lowest top-1 goes first; among equals, the older
            order = sorted(files, key=lambda e: (self.val_top1.get(e, -1.0), e))
        else:
            order = sorted(files)
        for epoch in order[:len(files) - self.keep_max]:
            os.remove(files[epoch])


def _link_or_copy(src: str, dst: str, train_step, scalars: dict) -> None:
    # A hard link shares the finished file (no second multi-GB write); it becomes visible under `dst` atomically.
    tmp = dst + ".link.tmp"
    try:
        if os.path.exists(tmp):
            os.remove(tmp)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:  # filesystems without hard links
        save_checkpoint(training_state(train_step), dst, append_dict=scalars)


def load_weights(path: str, network: nn.Cell) -> Dict[str, Tensor]:
    """Load the model weights of one of our checkpoints strictly (mindcv_ext.weights) and return every entry of
    the file, weights and training state, as Tensors by name."""
    w = read_weights(path)
    load_into(network, w)
    return {k: Tensor(np.asarray(v)) for k, v in {**w.params, **w.state}.items() if hasattr(v, "dtype")}


def restore_training_state(path: str, train_step: nn.Cell, network: nn.Cell, ema=None,
                           restore_loss_scale: bool = True, steps_per_epoch: Optional[int] = None) -> Dict:
    """Resume: weights, optimizer state (incl. global_step = lr position), EMA averages and the loss scale.
    Returns {'epoch': epochs finished, 'best_acc': ..., 'ema_restarted': ..., 'moved_step': None or
    (old global_step, old steps per epoch or None, new global_step), 'scalars': the file's other scalars by
    name}. Raises CheckpointError naming what is missing.

    With `steps_per_epoch` (this run's), a checkpoint written with another number of steps per epoch has its
    global_step moved to the same point of the lr schedule in epochs: the optimizer indexes the rebuilt per-step
    lr table with it, so an unmoved step would train at another lr and run past the table's end."""
    params = load_weights(path, network)
    if "epoch" not in params or "global_step" not in params:
        raise CheckpointError(f"{path} holds weights only (no optimizer state), so there is nothing to "
                              f"resume. Start from these weights with --resume_opt False, or resume from a "
                              f"training checkpoint (<ckpt_save_dir>/latest.ckpt).")
    net_names = {p.name for p in network.get_parameters()}
    wanted = {k: p for k, p in training_state(train_step).items() if k not in net_names}
    if not restore_loss_scale:
        wanted.pop("scale_sense", None)
    ema_names = {k for k in wanted if k.startswith("ema.")}
    missing = [k for k in wanted if k not in params]
    missing_ema = [k for k in missing if k in ema_names]
    missing_other = [k for k in missing if k not in ema_names]
    if missing_other:
        raise CheckpointError(
            f"{path} lacks training state this run needs: {', '.join(sorted(missing_other)[:8])}"
            f"{' ...' if len(missing_other) > 8 else ''}. Was it written with another optimizer (opt) or "
            f"loss-scale setting? Resume with the same recipe, or load only its weights with --resume_opt False.")
    for k, p in wanted.items():
        if k in missing_ema:
            continue
        value = params[k]
        if tuple(value.shape) != tuple(p.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(value.shape)}, this run has {tuple(p.shape)}.")
        p.set_data(value.astype(p.dtype) if value.dtype != p.dtype else value)
    if ema is not None and missing_ema:
        ema.reset_to_weights()  # the checkpoint was trained without EMA: start the averages here
    epoch = int(scalar(params["epoch"]))
    moved = None
    if steps_per_epoch:
        saved_spe = int(scalar(params["steps_per_epoch"])) if "steps_per_epoch" in params else None
        moved = _move_global_step(train_step, epoch, saved_spe, int(steps_per_epoch))
    scalars = {k: scalar(v) for k, v in params.items() if k not in net_names and k not in wanted and v.size == 1}
    return {"epoch": epoch,
            "best_acc": scalar(params["best_acc"]) if "best_acc" in params else -1.0,
            "ema_restarted": bool(ema is not None and missing_ema), "moved_step": moved, "scalars": scalars}


def _move_global_step(train_step: nn.Cell, epoch: int, saved_spe: Optional[int], spe: int):
    """Put global_step where `epoch` finished epochs end at `spe` steps per epoch. Returns (old step, old steps per
    epoch or None if unknown, new step), or None when nothing changes."""
    step_param = training_state(train_step).get("global_step")
    if step_param is None:
        return None
    old = int(scalar(step_param))
    if saved_spe:
        if saved_spe == spe:
            return None  # unchanged (global_step may trail epoch x spe by steps skipped on overflow: keep that)
        new = int(round(old * spe / saved_spe))  # the same fraction of the schedule, skipped steps included
    else:  # older checkpoints do not store steps_per_epoch: the epochs they finished are what is known
        if old == epoch * spe:
            return None
        new = epoch * spe
    value = step_param.asnumpy()
    step_param.set_data(Tensor(np.full(value.shape, new, value.dtype)))
    return old, saved_spe, new
