"""Exponential moving average of a network's parameters, updated inside the compiled train step.

Replaces mindcv 0.3.0's EMA path: its TrainStep keeps the averages, but StateMonitor's EMA evaluation fails
(TypeError mixing str and Tensor), so validation never sees them. Here the averages are ordinary Parameters
named `ema.<parameter name>` (they go into every training checkpoint), and `swapped_in()` puts them into the
network for evaluation and saving the best weights.
"""
import contextlib

import mindspore as ms
from mindspore import ParameterTuple, nn, ops

__all__ = ["EMA"]

_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _update_one(decay, average, value):
    return ops.assign(average, average * decay + value * (1.0 - decay))


class EMA(nn.Cell):
    """Averages every parameter of `network`, BatchNorm statistics included (they are what eval mode uses).

    The decay warms up as decay * (1 - exp(-updates / 2000)) like mindcv's, so early averages follow the
    weights instead of the random init. `updates` is the optimizer's global_step, which the checkpoints keep.
    """

    def __init__(self, network: nn.Cell, decay: float):
        super().__init__(auto_prefix=False)  # keep the `ema.<name>` names as created
        self.decay = float(decay)
        self.weights = ParameterTuple(list(network.get_parameters()))
        self.averages = self.weights.clone(prefix="ema", init="same")
        self.hyper_map = ops.HyperMap()

    def construct(self, updates):
        updates = ops.cast(updates, ms.float32).reshape(())
        decay = self.decay * (1.0 - ops.exp(-updates / 2000.0))
        return self.hyper_map(ops.partial(_update_one, decay), self.averages, self.weights)

    def reset_to_weights(self):
        """Start the averages from the current weights (e.g. resuming a run saved without EMA)."""
        for avg, w in zip(self.averages, self.weights):
            avg.set_data(w.value().copy())

    @contextlib.contextmanager
    def swapped_in(self):
        """Within the block the network holds the averaged values; its own values come back afterwards."""
        saved = [w.value().copy() for w in self.weights]
        for avg, w in zip(self.averages, self.weights):
            w.set_data(avg.value().copy())
        try:
            yield
        finally:
            for value, w in zip(saved, self.weights):
                w.set_data(value)
