"""RepMLPNet for MindSpore + mindcv.

`import mindcv_ext` registers repmlp_t224/t256/b224/b256/d256/l256 (and the small demo_repmlp) in mindcv's model
registry, replacing mindcv 0.3.0's entries, and makes `mindcv.create_model(checkpoint_path=...)` strict and able to
read every weight file `mindcv_ext.weights` reads.
"""
# A machine that serves an .onnx file needs ONNX Runtime, not MindSpore: without MindSpore (or mindcv) the package
# still imports, for the modules infer.py's .onnx path uses (onnx_runtime, data.pixels, config, cli, outputs);
# the models and everything that trains or loads checkpoints need MindSpore.
try:
    import mindcv as _mindcv  # noqa: F401
    import mindspore as _mindspore  # noqa: F401
    HAS_MINDSPORE = True
except ImportError:
    HAS_MINDSPORE = False

if HAS_MINDSPORE:
    from . import models  # noqa: F401  (registers the models with mindcv)
    from . import _shutdown
    from . import weights as _weights
    from .checkpoint import CheckpointError, save_checkpoint  # noqa: F401
    from .models import RepMLPBlock, RepMLPNet, checkpoint_form  # noqa: F401
    from .reparameterize import reparameterize  # noqa: F401
    from .weights import Weights, build_model, load_into, read_weights  # noqa: F401

    _weights.install()
    _shutdown.install()

__version__ = "0.1.0"
