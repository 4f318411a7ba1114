"""Data side of the project: ImageFolder loaders over mindcv, the built-in demo set, and the image checker."""
from .demo import ensure_demo_dataset
from .imagecheck import check_images, find_bad_images
from .loaders import create_eval_loader, create_train_loader

__all__ = ["ensure_demo_dataset", "find_bad_images", "check_images", "create_train_loader", "create_eval_loader"]
