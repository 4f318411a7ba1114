"""Model definitions; importing this module registers them in mindcv's registry (replacing mindcv's own)."""
from .repmlp import *  # noqa: F401,F403
from .repmlp import ARCHS, RepMLPBlock, RepMLPNet, checkpoint_form, default_cfgs  # noqa: F401
