"""RepMLPNet for MindSpore + mindcv. `import mindcv_ext` registers the models in mindcv's registry."""
from . import models  # noqa: F401  (registers repmlp_* with mindcv)
from .models import RepMLPNet, checkpoint_form  # noqa: F401
from .reparameterize import reparameterize  # noqa: F401
