"""Strict replacement for mindcv 0.3.0's `load_model_checkpoint`.

mindcv's version (used by `mindcv.create_model(checkpoint_path=...)`) silently does nothing when the path does
not exist and only warns about missing keys, so a typo evaluates or fine-tunes random weights. `import mindcv_ext`
installs this function in its place (see `install`); it keeps mindcv's signature and `ema` / `auto_mapping`.
"""
import os
from typing import Dict

from mindspore import nn

from .checkpoint import CheckpointError, load_checkpoint, load_params_strict
from .models.repmlp import MINDCV_EXTRA_KEYS, RepMLPNet, checkpoint_form, checkpoint_variant

__all__ = ["load_model_checkpoint", "load_weights", "read_weights", "check_repmlp_form", "install"]


def _ema_params(params: Dict, path: str) -> Dict:
    ema = {k[len("ema."):]: v for k, v in params.items() if k.startswith("ema.")}
    if not ema:
        raise CheckpointError(f"{path} has no EMA weights (no 'ema.*' keys); load it with ema=False.")
    for k, v in ema.items():
        v.name = k
    return ema


def read_weights(path: str, ema: bool = False) -> Dict:
    """The checkpoint's parameters; with ema=True its EMA weights under their model names (raises if none)."""
    params = load_checkpoint(path)
    return _ema_params(params, path) if ema else params


def check_repmlp_form(net: RepMLPNet, params: Dict, source: str) -> None:
    """Raise a CheckpointError naming the form and the fix when a train/deploy checkpoint meets the other net."""
    form = checkpoint_form(params)
    want = "deploy" if net.deploy else "train"
    if form is None or form == want:
        return
    if form == "train":
        stem = os.path.splitext(os.path.basename(source))[0] or "model"
        raise CheckpointError(
            f"{source} is a train-form RepMLPNet checkpoint (it has fc3_bn and repconv branches) but the network "
            f"was built with deploy=True. Build it with deploy=False, or convert the checkpoint once: "
            f"python scripts/reparameterize.py --model {net.name} --ckpt_path {source} --output {stem}_deploy.ckpt")
    raise CheckpointError(
        f"{source} is a deploy-form (re-parameterized) RepMLPNet checkpoint (fc3 has a bias, there are no conv "
        f"branches) but the network was built with deploy=False. Build it with deploy=True "
        f"(mindcv.create_model('{net.name}', deploy=True, ...); validate.py picks the form by itself). A deploy "
        f"checkpoint cannot be turned back into the train form, so it cannot be trained further as RepMLPNet.")


def load_weights(net: nn.Cell, params: Dict, source: str = "checkpoint") -> None:
    """Strictly load a name -> Parameter dict into `net`, with RepMLPNet's form check and known extras."""
    ignore, hint = (lambda k: False), ""
    if isinstance(net, RepMLPNet):
        check_repmlp_form(net, params, source)
        dropped = ("head.", "head_norm.") if net.features_only else ()
        ignore = lambda k: k in MINDCV_EXTRA_KEYS or k.startswith(dropped)  # noqa: E731
        variant = checkpoint_variant(params)
        if variant and variant != net.name:
            hint = f"Its shapes are those of {variant}: build that model instead of {net.name}."
    load_params_strict(net, params, source=source, ignore=ignore, hint=hint)


def load_model_checkpoint(model: nn.Cell, checkpoint_path: str = "", ema: bool = False,
                          auto_mapping: bool = False) -> None:
    """Same call as mindcv.models.helpers.load_model_checkpoint, but every problem raises."""
    params = read_weights(checkpoint_path, ema)
    if auto_mapping:
        from mindcv.models.helpers import auto_map
        params = auto_map(model, params)
    load_weights(model, params, source=checkpoint_path)


def install() -> None:
    """Point mindcv.create_model at the strict loader (create_model resolves the name in its module at call time)."""
    import mindcv.models.model_factory as factory
    factory.load_model_checkpoint = load_model_checkpoint
