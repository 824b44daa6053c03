"""`train(cfg, out_dir)`: a plain function (tests call it directly); the CLI only builds `cfg`.

MODEL_DIR while training: config.yaml (resolved), checkpoints/{last,best}.ckpt, logs/{csv,tensorboard}/.
At the end: weights.pt (best checkpoint by `checkpoint.monitor`, default the mean of val AP and val IoU), the
image threshold calibrated on `thresholds.image_calibration` (default train+val, so that more than the handful of
defective val images sets it; their count goes into the card, with a warning when too few), model.json
and SHA256SUMS (see asset/modeldir.py). `resume_dir` continues an interrupted run from last.ckpt.
Checkpoints are checksummed when written and verified, then loaded as data only (weights_only=True), when
read (asset/training/checkpoints.py): a foreign or altered checkpoint is refused before it can run anything.

Multi-GPU / multi-node: set trainer.devices / trainer.num_nodes / trainer.strategy (e.g.
`--devices 4 --strategy ddp`, and `--num-nodes 2` with one launch per node via torchrun or SLURM, which
Lightning detects). Only rank 0 calibrates and writes the model card.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from pathlib import Path

import yaml

from asset import files, modeldir
from asset.algorithm import Algorithm, SizePolicy, calibrate_image_threshold, default_normalisation
from asset.config import ConfigError, validate_config
from asset.errors import AssetError
from asset.models.registry import check_combination, get_architecture

log = logging.getLogger("asset.train")
CONFIG_FILE = "config.yaml"
LAST = "last.ckpt"
BEST = "best.ckpt"


class TrainError(AssetError, RuntimeError):
    """A run that cannot start or resume; says why and what to do."""


def global_rank() -> int:
    """This process's rank when a launcher started several (torchrun: RANK, srun: SLURM_PROCID), else 0.
    Only rank 0 writes into the model directory; the others train and leave."""
    import os

    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def _say(out_dir: Path, msg: str) -> None:
    if global_rank() != 0:
        return
    print(msg, file=sys.stderr, flush=True)
    try:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        with open(out_dir / "logs" / "train.log", "a") as fh:
            fh.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + msg + "\n")
    except OSError:
        pass


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("defect-asset", "defect-datatools", "torch", "torchvision", "segmentation-models-pytorch", "timm",
                 "lightning", "torchmetrics", "numpy", "opencv-python-headless", "pillow", "pycocotools"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def size_policy_for(cfg: dict, doc: dict, divisor: int) -> SizePolicy:
    from asset.training.data import dataset_shape, max_shape

    d = cfg["data"]
    size = tuple(d["size"]) if d["size"] else None
    if size is not None and (size[0] % divisor or size[1] % divisor):
        raise ConfigError(f"data.size {list(size)} must be multiples of {divisor} for {cfg['model']['arch']} "
                          f"(e.g. {[-(-v // divisor) * divisor for v in size]})")
    if d["size_mode"] == "pad" and size is None and dataset_shape(doc) is None:
        h, w = max_shape(doc)  # sizes vary: one canvas for all, so that batches stack
        size = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
    return SizePolicy(mode=d["size_mode"], divisor=divisor, size=size)


CALIBRATION_SPLITS = {"val": ("val",), "train+val": ("train", "val")}
IMAGE_MARGINS = ("geometric", "linear")


def check_training_keys(cfg: dict) -> None:
    """The keys for rare, thin defects (oversampling, checkpoint monitor, calibration splits), checked before any work."""
    from asset.training.module import MONITORS

    over = cfg["data"].get("oversample")
    if over is not None and (isinstance(over, bool) or not isinstance(over, int | float) or not 0 < over < 1):
        raise ConfigError(f"data.oversample must be null or a share in (0, 1), e.g. 0.5; got {over!r}")
    monitor = cfg["checkpoint"]["monitor"]
    if monitor not in MONITORS:
        raise ConfigError(f"checkpoint.monitor must be one of {list(MONITORS)}, got {monitor!r}")
    t = cfg["thresholds"]
    if t["image_calibration"] not in CALIBRATION_SPLITS:
        raise ConfigError(f"thresholds.image_calibration must be one of {list(CALIBRATION_SPLITS)}, "
                          f"got {t['image_calibration']!r}")
    if t["image_margin"] not in IMAGE_MARGINS:
        raise ConfigError(f"thresholds.image_margin must be one of {list(IMAGE_MARGINS)}, got {t['image_margin']!r}")
    n = t["min_calibration_defects"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"thresholds.min_calibration_defects must be an integer >= 0, got {n!r}")


def calibrate(records_by_split: dict, min_defects: int, margin: str = "linear", pixels: int | None = None) -> dict:
    """The image threshold from the records of the calibration splits, with how many images set it and a warning
    when fewer than `min_defects` of them are defective (a threshold set by a handful of defects does not carry
    over to new images). margin "geometric" places it at the geometric mean of the gap between OK and
    defective fractions (lower end at least one pixel of the largest image, `pixels` = its pixel count)."""
    records = [r for recs in records_by_split.values() for r in recs]
    min_fraction = 1.0 / pixels if margin == "geometric" and pixels else None
    value, accuracy = calibrate_image_threshold([r.value for r in records], [r.defective for r in records],
                                                min_fraction=min_fraction)
    defective = sum(r.defective for r in records)
    warning = None
    if defective < min_defects:
        warning = (f"image threshold calibrated on only {defective} defective image(s) (fewer than {min_defects}): "
                   "it may not hold on new images; add defective images or check it on more data "
                   "(asset evaluate --image-threshold)")
    return {"split": "+".join(records_by_split), "objective": "accuracy",
            "margin": "geometric" if min_fraction else "linear", "value": value, "accuracy": accuracy,
            "images": len(records), "defective_images": defective, "ok_images": len(records) - defective,
            "per_split": {k: {"images": len(v), "defective_images": sum(r.defective for r in v)}
                          for k, v in records_by_split.items()},
            "warning": warning}


def prepare(cfg: dict, out_dir: Path, resume: bool = False, check_out: bool = True) -> dict:
    """Every check that can fail before training: config, dataset, model combination, weights, output dir.
    Returns the objects train() needs."""
    validate_config(cfg)
    check_training_keys(cfg)
    out_dir = Path(out_dir)
    if not resume and check_out:
        if (out_dir / modeldir.CARD).exists() or (out_dir / "checkpoints").exists():
            raise TrainError(f"{out_dir}: already holds a model or a run; use --resume {out_dir} to continue it, "
                             "--overwrite to replace it, or another --out")
    if not cfg["data"]["path"]:
        raise ConfigError("no dataset: give --data ROOT/NAME/VERSION (or data.path in the config file)")
    from asset.scoring import dataset_items
    from asset.training.data import DataError, dataset_channels, open_dataset
    version_dir, doc = open_dataset(cfg["data"]["path"], check=bool(cfg["data"]["validate"]))
    for split in ("train", "val"):
        if not dataset_items(version_dir, doc, split):
            raise DataError(f"{version_dir}: the {split!r} split is empty; training needs train and val images "
                            "(convert with --val-fraction > 0)")
    masks = mask_usage(cfg, version_dir, doc)
    channels = dataset_channels(doc)
    m = cfg["model"]
    check_combination(m["arch"], m["encoder"], channels)

    from asset.models.factory import build_model, dry_run, required_divisor, set_head_prior

    net = build_model(m["arch"], m["encoder"], channels, m["encoder_weights"], weights_cache=m["weights_cache"])
    if m.get("head_prior") is not None:
        set_head_prior(net, float(m["head_prior"]))
    if m["decision"] == "head":
        from asset.models.decision import build_decision_net

        net = build_decision_net(net, m["decision_channels"], m["decision_detach"])
    divisor = required_divisor(net, m["arch"])
    policy = size_policy_for(cfg, doc, divisor)
    norm = m["normalisation"]
    if norm in (None, "auto"):
        pretrained = str(m["encoder_weights"]).lower() not in ("none", "null", "")
        norm = default_normalisation(channels, pretrained)
    algorithm = Algorithm(channels, policy, norm["mean"], norm["std"], cfg["thresholds"]["pixel"], 0.0,
                          decision=m["decision"])
    first = dataset_items(version_dir, doc, "train")[0]
    shape = policy.network_shape(first.height, first.width)
    min_size = get_architecture(m["arch"]).min_size
    if min(shape) < min_size:
        raise ConfigError(f"{m['arch']} needs inputs of at least {min_size}x{min_size}, the images reach "
                          f"{shape[0]}x{shape[1]}: set data.size (e.g. --set data.size=[{max(min_size, shape[0])}, "
                          f"{max(min_size, shape[1])}]) or pick another architecture")
    dry_run(net, m["arch"], m["encoder"], channels, policy.network_shape(first.height, first.width))
    return {"net": net, "algorithm": algorithm, "version_dir": version_dir, "doc": doc, "channels": channels,
            "train_size": list(shape), "masks": masks}


def mask_usage(cfg: dict, version_dir: Path, doc: dict) -> dict:
    """What train and val give training after data.mask_fraction (asset/training/data.py keep_masks): per split
    images, OK, defective with a mask, defective image-level only. Image-level defective images teach only the
    image decision, so they need model.decision head: with the fraction rule they are refused here."""
    from asset.scoring import dataset_items
    from asset.training.data import MASK_FRACTION_SPLITS, keep_masks, mask_counts
    fraction = float(cfg["data"].get("mask_fraction", 1.0))
    counts = {split: mask_counts(keep_masks(dataset_items(version_dir, doc, split), fraction, cfg["seed"], split))
              for split in MASK_FRACTION_SPLITS}
    unmasked = sum(c["defective_image_level"] for c in counts.values())
    if unmasked and cfg["model"]["decision"] != "head":
        why = (f"data.mask_fraction {fraction:g} leaves" if fraction < 1 else f"the dataset {version_dir} has")
        raise ConfigError(f"{why} {unmasked} defective train/val image(s) without a mask (image-level labels); with "
                          f"model.decision {cfg['model']['decision']!r} the image decision is the defect-pixel "
                          "fraction, which only masks teach. Train a decision head on the image labels: --set "
                          "model.decision=head (or use data.mask_fraction=1 with a fully masked dataset)")
    return {"mask_fraction": fraction, "seed": cfg["seed"], **counts}


def train(cfg: dict, out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Train (or resume) into out_dir; returns the model card. The steps, each below: the run to resume is
    checked, the data and network prepared, Lightning fits, the best weights are kept, the image threshold is
    calibrated and the card written (rank 0 only in multi-process training)."""
    out_dir = Path(out_dir)
    rank = global_rank()
    last = out_dir / "checkpoints" / LAST
    _clear_or_check_resume(out_dir, last, resume, overwrite, rank)
    cfg = copy.deepcopy(cfg)
    cfg["data"]["path"] = str(Path(cfg["data"]["path"]).resolve()) if cfg["data"]["path"] else None
    import lightning as L

    L.seed_everything(cfg["seed"], workers=True, verbose=False)  # before the network's random init
    # other ranks with --overwrite: rank 0 may not have removed the old run yet
    parts = prepare(cfg, out_dir, resume=resume, check_out=rank == 0 or not overwrite)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    if not resume and rank == 0:
        files.write_text_atomic(out_dir / CONFIG_FILE, yaml.safe_dump(cfg, sort_keys=False))
    dm, module = _data_and_module(cfg, parts)
    trainer, ckpt, history = _trainer(cfg, out_dir)
    _say(out_dir, f"{'resuming' if resume else 'training'} {cfg['model']['arch']}/{cfg['model']['encoder']} on "
                  f"{parts['version_dir']} ({parts['channels']} channel(s), size policy "
                  f"{parts['algorithm'].size_policy.to_dict()}) -> {out_dir}")
    _say(out_dir, describe_masks(parts["masks"]))
    start = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True)
    elapsed = time.time() - start
    if not trainer.is_global_zero:
        return {}
    if trainer.interrupted:
        raise TrainError(f"training was interrupted; continue with `asset train --resume {out_dir}`")
    best = _keep_best_weights(trainer, ckpt, history, parts["net"], last, out_dir)
    calibration, val_metrics = _calibrate_threshold(cfg, parts, dm, out_dir)
    card = _model_card(cfg, parts, trainer, ckpt, history, best, calibration, val_metrics, elapsed, resume)
    _say(out_dir, f"model written to {out_dir}")  # before the checksums: train.log is covered by them
    modeldir.write_card(out_dir, card)
    return card


def _clear_or_check_resume(out_dir: Path, last: Path, resume: bool, overwrite: bool, rank: int) -> None:
    """--overwrite removes the old run (rank 0); --resume needs a last checkpoint that verifies and loads as data
    only, and a finished run's files still as it wrote them, before Lightning touches anything."""
    if overwrite and not resume and out_dir.exists() and rank == 0:
        import shutil

        shutil.rmtree(out_dir)
    if not resume:
        return
    if not last.is_file():
        raise TrainError(f"{out_dir}: no checkpoints/{LAST} to resume from (the run never finished an epoch); "
                         "start it again without --resume")
    from asset.training.checkpoints import CheckpointError, load_checkpoint

    try:
        if (out_dir / modeldir.CHECKSUMS).exists():  # a finished run: its files must still be what it wrote
            modeldir.verify(out_dir)
        load_checkpoint(last)
    except CheckpointError as exc:
        raise TrainError(str(exc)) from None


def _data_and_module(cfg: dict, parts: dict):
    """The Lightning data module and training module of this run."""
    from asset.training.data import DefectDataModule
    from asset.training.module import SegmentationModule, build_loss

    d = cfg["data"]
    dm = DefectDataModule(parts["version_dir"], parts["algorithm"], d["batch_size"], d["num_workers"], d["augment"],
                          cfg["seed"], d["eval_batch_size"], oversample=d["oversample"],
                          mask_fraction=d.get("mask_fraction", 1.0))
    loss = build_loss(cfg["loss"]["name"], cfg["loss"]["bce_weight"], cfg["loss"].get("pos_weight"))
    head = cfg["model"]["decision"] == "head"
    module = SegmentationModule(parts["net"], loss, cfg["optimizer"], cfg["scheduler"], cfg["thresholds"]["pixel"],
                                decision_weight=cfg["loss"]["decision_weight"] if head else None,
                                decision_ramp_epochs=cfg["loss"]["decision_ramp_epochs"])
    return dm, module


def _trainer(cfg: dict, out_dir: Path):
    """(Lightning Trainer, best checkpoint callback, validation history callback): checkpoints, EMA, the time-budget
    schedule, batch norm over the global batch, CSV + TensorBoard logs."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from asset.training.checkpoints import checkpoint_io

    ckpt = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor=cfg["checkpoint"]["monitor"],
                           mode="max", save_top_k=1, enable_version_counter=False)
    # last.ckpt, written after every epoch for --resume. Not ckpt's save_last: in Lightning 2.6 that is only
    # written when a new best is, so a run killed after some epochs without a new best resumed from the best one.
    latest = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename=Path(LAST).stem, monitor=None, save_top_k=1,
                             enable_version_counter=False)
    history = _val_history_callback()
    callbacks = [ckpt, history, latest]
    if cfg["trainer"].get("max_time") and cfg["scheduler"]["name"].lower() == "cosine":
        from asset.training.module import time_budget_schedule

        callbacks.append(time_budget_schedule())
    if cfg["optimizer"].get("ema_decay") is not None:
        # Lightning's EMA: validation runs on the averaged weights and checkpoints hold them as state_dict (the
        # raw ones as current_model_state, for --resume), so best.ckpt and weights.pt are what val measured.
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.insert(0, EMAWeightAveraging(decay=float(cfg["optimizer"]["ema_decay"])))
    t = dict(cfg["trainer"])
    plugins = [checkpoint_io()]
    if t.pop("sync_batchnorm", False):
        import torch

        if t.get("accelerator") == "cpu" or not torch.cuda.is_available():
            from asset.training.sync_batchnorm import GlobalSyncBatchNorm

            plugins.append(GlobalSyncBatchNorm())  # torch's SyncBatchNorm refuses CPU tensors
        else:
            t["sync_batchnorm"] = True  # GPUs: Lightning's own, torch's SyncBatchNorm and its fused kernels
    if t.get("deterministic"):
        t["deterministic"] = "warn" if t.get("accelerator") not in ("cpu",) else True
    trainer = L.Trainer(
        default_root_dir=out_dir, callbacks=callbacks, plugins=plugins,
        logger=[_appending_csv_logger(CSVLogger, out_dir),
                TensorBoardLogger(out_dir, name="logs", version="tensorboard")],
        **t,
    )
    return trainer, ckpt, history


def _keep_best_weights(trainer, ckpt, history, net, last: Path, out_dir: Path) -> dict:
    """The best checkpoint's weights (by the monitored metric; the last ones if no best was kept) into the network
    and weights.pt, as float32; returns {"path", "epoch", "row"} of that checkpoint."""
    from asset.training.checkpoints import CheckpointError, load_checkpoint

    # Taken by name from this run's checkpoints/: a resumed checkpoint records the absolute path of its best one,
    # which is elsewhere when the directory was moved (and could name any file in a foreign checkpoint).
    best_path = last.parent / Path(ckpt.best_model_path).name if ckpt.best_model_path else last
    if not best_path.is_file():
        best_path = last
    try:
        best_ckpt = load_checkpoint(best_path)
    except CheckpointError as exc:
        raise TrainError(str(exc)) from None
    state = best_ckpt["state_dict"]
    best_epoch = int(best_ckpt.get("epoch", trainer.current_epoch))
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    net.float().eval()  # the model is float32 whatever trainer.precision trained it in (64-true converts in place)
    files.write_bytes_atomic(out_dir / modeldir.WEIGHTS, _torch_bytes(net.state_dict()))
    return {"path": best_path, "epoch": best_epoch, "row": history.rows.get(best_epoch, {})}


def _calibrate_threshold(cfg: dict, parts: dict, dm, out_dir: Path) -> tuple[dict, dict]:
    """The image threshold (calibrated on the splits thresholds.image_calibration names, unless thresholds.image
    fixes it), set on the algorithm; returns (calibration record, val metrics at that threshold)."""
    from asset.evaluation import compute_metrics, evaluate_samples, torch_runner

    algorithm, head = parts["algorithm"], cfg["model"]["decision"] == "head"
    runner = torch_runner(parts["net"])
    by_split = {split: evaluate_samples(runner, algorithm, dm.samples(split), cfg["data"]["eval_batch_size"])
                for split in CALIBRATION_SPLITS[cfg["thresholds"]["image_calibration"]]}
    largest = max(s.height * s.width for split in by_split for s in dm.samples(split))
    # the geometric margin is for defect fractions (decades apart); a head's score is a probability: linear
    calibration = calibrate(by_split, cfg["thresholds"]["min_calibration_defects"],
                            "linear" if head else cfg["thresholds"]["image_margin"], largest)
    if calibration["warning"]:
        _say(out_dir, f"warning: {calibration['warning']}")
    fixed = cfg["thresholds"]["image"]
    image_threshold = float(fixed) if fixed is not None else calibration["value"]
    algorithm.image_threshold = image_threshold
    val_metrics = compute_metrics(by_split["val"], image_threshold)
    source = ("fixed" if fixed is not None else
              f"calibrated on {calibration['split']}: {calibration['images']} images, "
              f"{calibration['defective_images']} defective")
    _say(out_dir, f"image threshold {image_threshold:.6f} ({source}; "
                  f"val accuracy {val_metrics['accuracy']:.4f}, val pixel IoU {val_metrics['pixel_iou']:.4f})")
    return {**calibration, "overridden": fixed is not None}, val_metrics


def _model_card(cfg: dict, parts: dict, trainer, ckpt, history, best: dict, calibration: dict, val_metrics: dict,
                elapsed: float, resume: bool) -> dict:
    """model.json of the trained model (asset/modeldir.py describes its keys)."""
    doc, monitor = parts["doc"], cfg["checkpoint"]["monitor"]
    card = {
        "format": modeldir.FORMAT,
        "created": modeldir.now_iso(),
        "arch": cfg["model"]["arch"],
        "encoder": cfg["model"]["encoder"],
        "encoder_weights": str(cfg["model"]["encoder_weights"]),
        "classes": 1,
        "weights": modeldir.WEIGHTS,
        **parts["algorithm"].to_card(),
        "decision": decision_card(cfg),
        "dataset": {"name": doc["name"], "version": doc["version"], "path": str(parts["version_dir"]),
                    "splits": doc["splits"], "schema": doc["schema"]},
        "training": {
            "epochs": trainer.current_epoch, "max_epochs": cfg["trainer"]["max_epochs"],
            "global_steps": trainer.global_step, "seconds_this_session": round(elapsed, 1), "resumed": resume,
            "best_checkpoint": Path(best["path"]).name,
            "best_val_iou": _best_iou(best["row"], ckpt, monitor),
            "monitor": monitor, "best_epoch": best["epoch"],
            "best_score": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
            "oversample": cfg["data"]["oversample"],
            "masks": parts["masks"],
            "val_history": [{"epoch": e, **r} for e, r in sorted(history.rows.items())],
            "loss": cfg["loss"]["name"], "optimizer": cfg["optimizer"], "scheduler": cfg["scheduler"],
            "seed": cfg["seed"], "config": CONFIG_FILE,
        },
        "metrics": {"val": val_metrics},
        "versions": library_versions(),
        "exports": {},
    }
    # the network input size of training: the server bounds what one image may cost by it (asset/tiling.py)
    card["input"]["train_size"] = parts["train_size"]
    card["thresholds"]["image_calibration"] = calibration
    return card


def describe_masks(masks: dict) -> str:
    """One log line: what training saw of masks (mask_usage)."""
    parts = [f"{split} {c['images']} ({c['ok']} OK, {c['defective_masked']} defective with a mask, "
             f"{c['defective_image_level']} defective image-level only)"
             for split, c in masks.items() if isinstance(c, dict)]
    return f"masks (data.mask_fraction {masks['mask_fraction']:g}, seed {masks['seed']}): " + "; ".join(parts)


def decision_card(cfg: dict) -> dict:
    """The card's `decision` section: which rule decides (asset/algorithm.py) and, for a head, how to rebuild it."""
    m, loss = cfg["model"], cfg["loss"]
    if m["decision"] != "head":
        return {"rule": "fraction", "score": "defect fraction (+1e-6 x max probability)"}
    return {"rule": "head", "score": "sigmoid of the decision head's image logit", "channels": m["decision_channels"],
            "detach": m["decision_detach"], "loss_weight": loss["decision_weight"],
            "ramp_epochs": loss["decision_ramp_epochs"]}


def _best_iou(row: dict, ckpt, monitor: str) -> float | None:
    """val/iou of the kept epoch (the monitor itself when it is val/iou)."""
    if row.get("iou") is not None:
        return row["iou"]
    if monitor == "val/iou" and ckpt.best_model_score is not None:
        return float(ckpt.best_model_score)
    return None


def _val_history_callback():
    from lightning.pytorch.callbacks import Callback

    class ValHistory(Callback):
        """val/iou, val/ap per epoch, kept in the checkpoints (a resumed run keeps the earlier epochs): the card
        shows whether an epoch collapsed (IoU ~0) and the IoU of the epoch the monitor kept."""

        def __init__(self) -> None:
            self.rows: dict[int, dict] = {}

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics

            def value(key):
                v = m.get(key)
                return None if v is None or not bool(v.isfinite()) else round(float(v), 6)

            self.rows[int(trainer.current_epoch)] = {"iou": value("val/iou"), "ap": value("val/ap")}

        def state_dict(self) -> dict:
            return {"rows": {str(k): v for k, v in self.rows.items()}}

        def load_state_dict(self, state: dict) -> None:
            self.rows = {int(k): v for k, v in state.get("rows", {}).items()}

    return ValHistory()


def _appending_csv_logger(CSVLogger, out_dir: Path):
    """A CSVLogger that keeps the rows of earlier sessions (Lightning's deletes metrics.csv when a run resumes)
    and writes every row at once (a SIGKILL loses nothing already logged)."""
    import csv

    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as fh:
                    self.metrics_keys = sorted(next(csv.reader(fh), []))

    class AppendingCSVLogger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self._root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return AppendingCSVLogger(out_dir, name="logs", version="csv", flush_logs_every_n_steps=1)


def _torch_bytes(obj) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_run_config(out_dir: Path) -> dict:
    path = Path(out_dir) / CONFIG_FILE
    try:
        return yaml.safe_load(path.read_text())
    except OSError:
        raise TrainError(f"{out_dir}: no {CONFIG_FILE}: not a directory made by `asset train`") from None
