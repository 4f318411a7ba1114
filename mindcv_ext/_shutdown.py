"""Silence MindSpore 2.10's Cell.__del__ at interpreter shutdown.

When a script ends with Cells still alive, Python tears down mindspore's module globals first and each
Cell.__del__ then fails (`'NoneType' object has no attribute 'total_instance_count'`), printing one traceback per
Cell, hundreds for a RepMLPNet. Only that case is silenced: during normal operation __del__ runs unchanged.
"""
import sys

from mindspore import nn

_original_del = nn.Cell.__del__


def _cell_del(self):
    try:
        _original_del(self)
    except (AttributeError, TypeError):
        if not sys.is_finalizing():
            raise


def install():
    if getattr(nn.Cell.__del__, "__name__", "") != "_cell_del":
        nn.Cell.__del__ = _cell_del
