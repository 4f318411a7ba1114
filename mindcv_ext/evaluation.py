"""Evaluation: the network that validate.py and scripts/infer.py run, and the one top-1 / top-5 / loss evaluator
(also used by train.py for validation during training)."""
import time
from typing import Callable, Dict, Optional

import numpy as np

from .checkpoint import CheckpointError
from .cli import keep_sigint

__all__ = ["TopKMeter", "evaluate", "build_eval_model", "native_image_size", "set_eval_context"]


class TopKMeter:
    """Running top-1 / top-5 counts and summed cross entropy (float64, from the logits; no label smoothing)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.k = min(5, num_classes)
        self.n = self.top1 = self.top5 = 0
        self.loss = 0.0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        logits = np.asarray(logits, np.float64)
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise CheckpointError(f"label {int(labels.max())} from the dataset is outside the model's "
                                  f"{logits.shape[1]} classes: the split has more class folders than the head.")
        order = np.argsort(-logits, axis=1, kind="stable")[:, :self.k]
        self.top1 += int((order[:, 0] == labels).sum())
        self.top5 += int((order == labels[:, None]).any(axis=1).sum())
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self.loss -= float(log_prob[np.arange(len(labels)), labels].sum())
        self.n += len(labels)

    def totals(self) -> np.ndarray:
        return np.array([self.top1, self.top5, self.loss, self.n], np.float64)

    def result(self, totals: Optional[np.ndarray] = None) -> Dict[str, float]:
        top1, top5, loss, n = self.totals() if totals is None else totals
        if n == 0:
            raise RuntimeError("The evaluation loader yielded no samples; check the val split of data_dir.")
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "count": int(n)}


def evaluate(network, loader, all_reduce=None, log_interval: int = 0,
             log: Callable[[str], None] = print) -> Dict[str, float]:
    """Run `network` in eval mode over one pass of `loader` (image, integer label): percentages and the plain CE
    loss. With `all_reduce` (mindcv's AllReduceSum) each rank passes its shard and all ranks get the totals.
    The network's train/eval mode is restored afterwards."""
    import mindspore as ms

    was_training = network.training
    network.set_train(False)
    meter = None
    steps = loader.get_dataset_size()
    start = time.perf_counter()
    try:
        for i, (images, labels) in enumerate(loader.create_tuple_iterator(num_epochs=1), 1):
            logits = network(images)
            logits = logits.asnumpy() if hasattr(logits, "asnumpy") else logits  # ONNX Runtime returns NumPy
            keep_sigint()  # MindSpore's forward installs a SIGINT handler that turns Ctrl-C into SIGTERM
            meter = meter or TopKMeter(logits.shape[1])
            meter.update(logits, labels.asnumpy())
            if log_interval and (i % log_interval == 0 or i == steps):
                r = meter.result()
                log(f"[{i}/{steps}] top1 {r['top1']:.2f} top5 {r['top5']:.2f} loss {r['loss']:.4f} "
                    f"({meter.n / (time.perf_counter() - start):.1f} img/s)")
    finally:
        network.set_train(was_training)
    meter = meter or TopKMeter(1)
    totals = meter.totals()
    if all_reduce is not None:
        totals = all_reduce(ms.Tensor(totals.astype(np.float32))).asnumpy().astype(np.float64)
    result = meter.result(totals)
    result["top5_k"] = meter.k
    return result


def set_eval_context(cfg) -> None:
    from .training.runtime import set_runtime

    set_runtime(cfg, "Use --device_target CPU, or install the MindSpore build for that device.")


def native_image_size(model: str, net=None) -> int:
    from .models.repmlp import default_cfgs

    cfg = default_cfgs.get(model)
    if cfg:
        return cfg["input_size"][-1]
    return getattr(net, "image_size", 224)


def build_eval_model(cfg, log: Callable[[str], None] = print):
    """The network validate.py / infer.py evaluate, from their config: the checkpoint's form (an explicit
    `deploy` that contradicts it is an error), its class count, eval mode (a train-form file is re-parameterized
    after loading), and the checked input size.
    Returns (net, weights, image_size)."""
    from .reparameterize import reparameterize
    from .weights import build_model, read_weights

    from .onnx_runtime import build_onnx_model, is_onnx

    if is_onnx(cfg.ckpt_path):  # an exported / quantized file, run by ONNX Runtime
        return build_onnx_model(cfg, log)
    w = read_weights(cfg.ckpt_path, ema=cfg.ema)
    if cfg.deploy is not None and w.form is not None and cfg.deploy != (w.form == "deploy"):
        raise CheckpointError(
            f"deploy {cfg.deploy} contradicts {cfg.ckpt_path}, which is a {w.form}-form checkpoint "
            + ("(fc3_bn / repconv keys). Drop --deploy, or convert it first with scripts/reparameterize.py."
               if w.form == "train" else "(fc3 has a bias, no conv branches). Drop --deploy: the form is read "
                                         "from the file."))
    for note in w.notes:
        log(f"note: {note}")
    # The file's head decides; a recipe's num_classes (e.g. ImageNet's 1000 in a fine-tuned run's recipe) only
    # gets a note, while one given on the command line must agree with the file.
    num_classes = cfg.num_classes if "num_classes" in getattr(cfg, "_given", ()) else None
    if num_classes is None and cfg.num_classes and w.num_classes and cfg.num_classes != w.num_classes:
        log(f"note: the recipe says num_classes {cfg.num_classes}; {cfg.ckpt_path} has a {w.num_classes}-class head, "
            f"which is used")
    net, w = build_model(cfg.model, w, num_classes=num_classes, gelu_approximate=cfg.gelu_approximate,
                         in_channels=w.in_channels or cfg.in_channels)
    net.set_train(False)
    if w.form == "train":
        # Evaluation uses the BN moving statistics, so Locality Injection is exact here; the merged network is
        # faster and keeps less memory alive (t224 at batch 64: 3.4 instead of 4.7 GiB).
        reparameterize(net)
    image_size = cfg.image_resize or native_image_size(cfg.model, net)
    if hasattr(net, "check_input"):
        try:
            net.check_input((1, w.in_channels or cfg.in_channels, image_size, image_size))
        except ValueError as e:
            raise CheckpointError(f"image size {image_size}: {e}") from None
    return net, w, image_size
