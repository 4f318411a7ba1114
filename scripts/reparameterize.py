"""Turn a train-form RepMLPNet checkpoint into a deploy-form one (Locality Injection).

    python scripts/reparameterize.py --model repmlp_t224 --ckpt_path train.ckpt --output deploy.ckpt

The deploy checkpoint loads with mindcv.create_model(name, deploy=True, checkpoint_path=...). Before writing, the
script checks on a random batch that both forms give the same logits.
"""
import argparse

import _common  # noqa: F401  (import path + helpers)
import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered model name, e.g. repmlp_t224")
    p.add_argument("--ckpt_path", required=True, help="train-form checkpoint (.ckpt or .safetensors)")
    p.add_argument("--output", required=True, help="deploy checkpoint to write (.ckpt, or .safetensors)")
    p.add_argument("--num_classes", type=int, default=None, help="default: read from the checkpoint's head")
    p.add_argument("--ema", type=_common.str2bool, default=False, help="convert the EMA weights (ema.* keys)")
    p.add_argument("--check", type=_common.str2bool, default=True,
                   help="compare train/deploy logits on a random batch before writing (default True)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import mindcv
    import mindspore as ms

    import mindcv_ext
    from mindcv_ext.models.repmlp import checkpoint_model_kwargs
    from mindcv_ext.strict_loading import load_weights, read_weights
    from mindcv_ext.verify import reparam_error

    if not mindcv.is_model(args.model):
        raise SystemExit(f"Unknown model {args.model!r}; registered RepMLPNets: {mindcv.list_models('*repmlp*')}")
    params = read_weights(args.ckpt_path, ema=args.ema)  # read once: inspected here, loaded below
    form = mindcv_ext.checkpoint_form(params)
    if form == "deploy":
        raise SystemExit(f"{args.ckpt_path} is already a deploy-form checkpoint: nothing to convert. Load it with "
                         f"mindcv.create_model('{args.model}', deploy=True, checkpoint_path=...).")
    if form is None:
        raise SystemExit(f"{args.ckpt_path} holds no RepMLPNet blocks; is it a {args.model} checkpoint?")
    kwargs = checkpoint_model_kwargs(params)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    net = mindcv.create_model(args.model, **kwargs)
    load_weights(net, params, source=args.ckpt_path)
    del params
    net.set_train(False)

    if args.check:
        size = net.image_size
        x = ms.Tensor(np.random.default_rng(0).standard_normal((2, kwargs.get("in_channels", 3), size, size)),
                      ms.float32)
        err = reparam_error(net, x)
        print(f"train vs deploy logits on a random batch: max |diff| / max |logit| = {err:.2e}")
        if not err <= 1e-4:
            raise SystemExit(f"Deploy form does not reproduce the train form (relative error {err:.2e}); "
                             f"nothing written.")
    else:
        mindcv_ext.reparameterize(net)
    mindcv_ext.save_checkpoint(net, args.output)
    n = sum(p.size for p in net.get_parameters())
    print(f"wrote deploy checkpoint {args.output} ({n:,} values) for {args.model}; load it with "
          f"mindcv.create_model('{args.model}', deploy=True, checkpoint_path='{args.output}')")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}")
        _common.quiet_exit(2)
    _common.quiet_exit(0)
