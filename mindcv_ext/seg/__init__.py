"""Semantic segmentation with RepMLPNet encoders (issue 15): model, data, metrics, inference, the demo set.

See docs/segmentation.md. train_seg.py / validate_seg.py / scripts/predict_seg.py are the command-line tools.
"""
from .model import HEADS, SegModel, SegWithLoss, create_seg_model, load_seg_checkpoint, seg_architecture  # noqa: F401
