"""Semantic segmentation with RepMLPNet encoders (issue 15): model, data, metrics, inference, the demo set.

See docs/segmentation.md. train_seg.py / validate_seg.py / scripts/predict_seg.py are the command-line tools;
from Python, mmseg's way:

    from mindcv_ext.seg import init_segmentor, inference_segmentor
    model = init_segmentor("best.ckpt", reparameterize=True)
    mask = inference_segmentor(model, "photo.png")   # (H, W) class indices; model.dataset_meta["classes"]
"""
from .model import HEADS, SegModel, SegWithLoss, create_seg_model, load_seg_checkpoint, seg_architecture  # noqa: F401
from .inference import inference_segmentor, init_segmentor  # noqa: F401
