"""`asset train`: train a segmenter on a standard dataset into a self-describing model directory."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Configuration: the defaults below, then --config FILE (same keys), then --set KEY=VALUE (repeatable, YAML
values), then the flags above. Every key:

{defaults}
Multi-GPU / multi-node: --accelerator gpu --devices 4 [--strategy ddp] [--num-nodes 2] uses Lightning's DDP;
launch one process per node (torchrun or SLURM), Lightning picks the environment up. Only rank 0 writes the model.

Resume: `asset train --resume MODEL_DIR` continues a run killed at any point from its last finished epoch
(checkpoints/last.ckpt) with the configuration it started with (--epochs may raise the epoch count).

Output: MODEL_DIR/model.json (card), weights.pt, SHA256SUMS, config.yaml, checkpoints/{{best,last}}.ckpt,
logs/csv/metrics.csv, logs/tensorboard/ (tensorboard --logdir MODEL_DIR/logs), logs/train.log.
"""


def register(sub) -> None:
    from asset.config import default_config_text

    p = sub.add_parser(
        "train", help="train a model on a dataset",
        description="Train an SMP segmenter on a dataset version (ROOT/NAME/VERSION) and write a model directory.",
        epilog=EPILOG.format(defaults=default_config_text()), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", metavar="DATASET_DIR", help="dataset version directory (data.path)")
    p.add_argument("--out", metavar="MODEL_DIR", type=Path, help="model directory to create")
    p.add_argument("--resume", metavar="MODEL_DIR", type=Path, help="continue an interrupted run in MODEL_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--config", metavar="FILE", help="YAML config file (keys as in the defaults below)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override any config key, e.g. --set optimizer.name=sgd (repeatable)")
    p.add_argument("--arch", help="architecture (model.arch), e.g. unet, fpn, linknet, deeplabv3plus")
    p.add_argument("--encoder", help="encoder (model.encoder), e.g. mobilenet_v2, resnet34, tu-efficientnet_lite0")
    p.add_argument("--encoder-weights", help="imagenet | none | /path/to/weights.pth (model.encoder_weights)")
    p.add_argument("--epochs", type=int, help="number of epochs (trainer.max_epochs)")
    p.add_argument("--batch-size", type=int, help="training batch size (data.batch_size)")
    p.add_argument("--lr", type=float, help="learning rate (optimizer.lr)")
    p.add_argument("--loss", help="jaccard | dice | bce | bce_jaccard | bce_dice | focal_dice (loss.name; "
                                  "see also loss.bce_weight, loss.pos_weight)")
    p.add_argument("--seed", type=int, help="random seed (seed)")
    p.add_argument("--pixel-threshold", type=float, help="pixel probability threshold in [0, 1] (thresholds.pixel)")
    p.add_argument("--image-threshold", type=float,
                   help="fix the image threshold (defect fraction in [0, 1]) instead of calibrating it on val")
    p.add_argument("--accelerator", help="cpu | gpu | auto (trainer.accelerator)")
    p.add_argument("--devices", help="devices per node, e.g. 1, 4 or auto (trainer.devices)")
    p.add_argument("--num-nodes", type=int, help="nodes for multi-node DDP (trainer.num_nodes)")
    p.add_argument("--strategy", help="auto | ddp | ddp_spawn | ... (trainer.strategy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (trainer.enable_progress_bar=false)")
    p.set_defaults(func=run)


def _devices(text):
    if text is None:
        return None
    return int(text) if str(text).isdigit() else text


def run(args: argparse.Namespace) -> int:
    from asset.config import ConfigError, load_config

    flags = {
        "data.path": args.data, "model.arch": args.arch, "model.encoder": args.encoder,
        "model.encoder_weights": args.encoder_weights, "trainer.max_epochs": args.epochs,
        "data.batch_size": args.batch_size, "optimizer.lr": args.lr, "loss.name": args.loss, "seed": args.seed,
        "thresholds.pixel": args.pixel_threshold, "thresholds.image": args.image_threshold,
        "trainer.accelerator": args.accelerator, "trainer.devices": _devices(args.devices),
        "trainer.num_nodes": args.num_nodes, "trainer.strategy": args.strategy,
        "trainer.enable_progress_bar": False if args.no_progress else None,
    }
    if args.resume:
        from asset.config import deep_merge, load_default, validate_config
        from asset.training.train import load_run_config, train

        cfg = deep_merge(load_default(), load_run_config(args.resume))
        allowed = {"trainer.max_epochs", "trainer.enable_progress_bar", "trainer.accelerator", "trainer.devices",
                   "trainer.num_nodes", "trainer.strategy"}
        bad = [k for k, v in flags.items() if v is not None and k not in allowed] + (["--config"] if args.config else [])
        if bad or args.overrides:
            raise ConfigError(f"--resume continues the run with its own config.yaml; it only takes --epochs, "
                              f"--no-progress and device options (got {', '.join(bad + args.overrides)})")
        from asset.config import set_key

        for k, v in flags.items():
            if v is not None:
                set_key(cfg, k, v)
        validate_config(cfg)
        train(cfg, args.resume, resume=True)
        print(args.resume)
        return 0
    if args.out is None:
        raise ConfigError("give --out MODEL_DIR (or --resume MODEL_DIR)")
    cfg = load_config(args.config, args.overrides, flags)
    from asset.training.train import train

    train(cfg, args.out, overwrite=args.overwrite)
    print(args.out)
    return 0
