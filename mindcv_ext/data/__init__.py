"""Data side of the project: ImageFolder loaders over mindcv, the built-in demo set, and the image checker."""
from .demo import ensure_demo_dataset
from .imagecheck import check_images, find_bad_images


def __getattr__(name):  # the loaders import MindSpore and mindcv: only when asked for (pixels.py needs neither)
    if name in ("create_eval_loader", "create_train_loader"):
        from . import loaders
        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ensure_demo_dataset", "find_bad_images", "check_images", "create_train_loader", "create_eval_loader"]
