"""Semantic segmentation with RepMLPNet encoders (issue 15): model, data, metrics, inference, the demo set.

See docs/segmentation.md. train_seg.py / validate_seg.py / scripts/predict_seg.py are the command-line tools;
from Python, mmseg's way:

    from mindcv_ext.seg import init_segmentor, inference_segmentor
    model = init_segmentor("best.ckpt", reparameterize=True)
    mask = inference_segmentor(model, "photo.png")   # (H, W) class indices; model.dataset_meta["classes"]
"""
from .inference import inference_segmentor, init_segmentor  # noqa: F401

_FROM_MODEL = ("HEADS", "SegModel", "SegWithLoss", "create_seg_model", "load_seg_checkpoint", "seg_architecture")


def __getattr__(name):  # the model imports MindSpore: only when asked for (predict_seg on an .onnx file needs none)
    if name in _FROM_MODEL:
        from . import model
        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
