"""Top-1 / top-5 / cross-entropy over a labelled eval loader, summed over all ranks when data-parallel."""
from typing import Dict, Optional

import mindspore as ms
import numpy as np
from mindspore import nn

__all__ = ["evaluate"]


def evaluate(network: nn.Cell, loader, all_reduce: Optional[nn.Cell] = None) -> Dict[str, float]:
    """Runs `network` in eval mode over one pass of `loader` (image, integer label). Percentages, plain CE loss
    (no label smoothing). With `all_reduce` (mindcv's AllReduceSum) each rank passes its shard and all ranks get
    the totals."""
    network.set_train(False)
    correct1 = correct5 = 0
    loss_sum = 0.0
    count = 0
    try:
        for images, labels in loader.create_tuple_iterator(num_epochs=1):
            logits = network(images).asnumpy().astype(np.float64)
            y = labels.asnumpy().astype(np.int64).reshape(-1)
            top5 = np.argsort(-logits, axis=1)[:, :5]
            correct1 += int((top5[:, 0] == y).sum())
            correct5 += int((top5 == y[:, None]).any(axis=1).sum())
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss_sum += float(-log_probs[np.arange(len(y)), y].sum())
            count += len(y)
    finally:
        network.set_train(True)
    totals = np.array([correct1, correct5, loss_sum, count], np.float64)
    if all_reduce is not None:
        totals = all_reduce(ms.Tensor(totals.astype(np.float32))).asnumpy().astype(np.float64)
    correct1, correct5, loss_sum, count = totals
    if count == 0:
        raise RuntimeError("The validation loader yielded no samples; check the val split of data_dir.")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
            "count": int(count)}
