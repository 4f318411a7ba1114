"""One structural re-parameterization pass for any Cell tree.

A Cell opts in by defining `switch_to_deploy()`, which turns it into its inference form in place (and sets
`deploy = True`). RepMLPBlock does; other re-parameterizable blocks (RepVGG-style convs, ...) join the same way.
"""
import time

from mindspore import nn

__all__ = ["reparameterize"]


def reparameterize(net: nn.Cell) -> nn.Cell:
    """Convert every opted-in sub-Cell of `net` (and `net` itself) to its deploy form, in place; returns `net`.

    Use the result in eval mode (`net.set_train(False)`): the fusion uses the BN moving statistics.
    """
    # Snapshot first: conversions delete child Cells while we walk.
    cells = [cell for _, cell in net.cells_and_names()]
    for cell in reversed(cells):  # children before parents, so a parent sees converted children
        convert = getattr(cell, "switch_to_deploy", None)
        if callable(convert) and not getattr(cell, "deploy", False):
            convert()
    _invalidate_compiled_graphs(net)
    return net


def _invalidate_compiled_graphs(net: nn.Cell):
    # GRAPH_MODE caches a compiled graph per Cell keyed by (phase, create_time, id, input signature); it does not
    # notice that sub-Cells were deleted or that a Python flag changed, and would keep running the train form.
    # A new create_time makes the next call compile the converted structure.
    stamp = time.time_ns()
    for _, cell in net.cells_and_names():
        if hasattr(cell, "_create_time"):
            object.__setattr__(cell, "_create_time", stamp)
