"""The LightningModule: a plain SMP network handed in, plus loss, optimiser and schedule (no model code here)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from asset.algorithm import SCORE_TIEBREAK


def build_loss(name: str, bce_weight: float = 0.5, pos_weight: float | None = None) -> nn.Module:
    """jaccard (IoU loss, as in the paper) | dice | bce | bce_jaccard | bce_dice | focal_dice, from SMP's losses.
    `bce_weight` weighs the pixel term (BCE or focal) of the combined losses; `pos_weight` multiplies the BCE of
    defect pixels, which are ~0.1% of the pixels on thin cracks (README: 10 did not shorten the recipe's slow start)."""
    from segmentation_models_pytorch import losses

    name = name.lower()
    jaccard = losses.JaccardLoss(mode="binary", from_logits=True)
    dice = losses.DiceLoss(mode="binary", from_logits=True)
    bce = losses.SoftBCEWithLogitsLoss(pos_weight=None if pos_weight is None else torch.tensor(float(pos_weight)))
    if name == "jaccard":
        return jaccard
    if name == "dice":
        return dice
    if name == "bce":
        return bce
    if name == "focal_dice":
        return CombinedLoss(losses.FocalLoss(mode="binary"), dice, bce_weight)
    region = {"bce_jaccard": jaccard, "bce_dice": dice}.get(name)
    if region is None:
        raise ValueError(f"unknown loss {name!r}; valid: jaccard, dice, bce, bce_jaccard, bce_dice, focal_dice")
    return CombinedLoss(bce, region, bce_weight)


class CombinedLoss(nn.Module):
    def __init__(self, bce: nn.Module, region: nn.Module, bce_weight: float) -> None:
        super().__init__()
        self.bce, self.region, self.w = bce, region, float(bce_weight)

    def forward(self, logits, target):
        return self.w * self.bce(logits, target) + (1 - self.w) * self.region(logits, target)


def build_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    name, lr, wd = cfg["name"].lower(), float(cfg["lr"]), float(cfg.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(cfg.get("momentum", 0.9)), nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; valid: adam, adamw, sgd")


def build_scheduler(optimizer, cfg: dict, total_steps, lr: float):
    """-> Lightning lr_scheduler config dict, or None. For cosine, `total_steps` may be a callable read at every
    step: the length the schedule runs to can then change during training (TimeBudgetSchedule)."""
    name = cfg["name"].lower()
    steps_now = total_steps if callable(total_steps) else (lambda: total_steps)
    total_steps = max(1, int(steps_now()))
    if name == "none":
        return None
    if name == "cosine":
        warm = max(0, int(cfg.get("warmup_steps", 0)))

        def factor(step: int) -> float:
            import math

            if step < warm:
                return (step + 1) / warm
            total = max(1, int(steps_now()))
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1 + math.cos(math.pi * progress))

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
    if name == "step":
        return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, int(cfg.get("step_size", 10)),
                                                             float(cfg.get("gamma", 0.1))), "interval": "epoch"}
    if name == "onecycle":
        return {"scheduler": torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps),
                "interval": "step"}
    raise ValueError(f"unknown scheduler {name!r}; valid: none, cosine, step, onecycle")


MONITORS = ("val/iou", "val/ap", "val/ap_iou")


class SegmentationModule(L.LightningModule):
    """Trains `net` (images -> logits N x 1 x H x W). Logs train/loss, val/loss, val/iou (dataset-level pixel IoU
    at pixel threshold `pixel_threshold`; 1 when neither prediction nor truth has a defect pixel), val/ap (average
    precision of the image score, the predicted defect fraction as in asset/algorithm.py; NaN when val lacks OK or
    defective images) and val/ap_iou (their mean, val/iou alone when AP is NaN): the checkpoint monitors
    (MONITORS). The definitions are asset/scoring.py's; the validation metrics are torchmetrics objects, which
    accumulate per process and sync across processes (DDP) when computed."""

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: dict, scheduler: dict,
                 pixel_threshold: float = 0.5, decision_weight: float | None = None,
                 decision_ramp_epochs: int = 0) -> None:
        """`decision_weight` set: `net` is a DecisionNet (N x 2 x H x W out, asset/models/decision.py); its image
        logit is trained with BCE against the image label at this weight (ramped in over `decision_ramp_epochs`),
        and val/ap ranks by the head's score, as the model will decide."""
        super().__init__()
        from torchmetrics.aggregation import SumMetric
        from torchmetrics.classification import BinaryAveragePrecision, BinaryJaccardIndex

        self.net = net
        self.loss = loss
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.pixel_threshold = float(pixel_threshold)
        self.decision_weight = None if decision_weight is None else float(decision_weight)
        self.decision_ramp_epochs = int(decision_ramp_epochs)
        # states are not persistent: checkpoints hold the same keys as before
        self.val_iou = BinaryJaccardIndex(zero_division=1.0, validate_args=False)
        self.val_ap = BinaryAveragePrecision(thresholds=None, normalization=None, validate_args=False)
        self.val_images = SumMetric()
        self.val_defective = SumMetric()

    def _val_metrics(self) -> tuple:
        return self.val_iou, self.val_ap, self.val_images, self.val_defective

    def forward(self, x):
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Network output -> (pixel logits N x 1 x H x W, image logits N or None without a decision head)."""
        if self.decision_weight is None:
            return out, None
        return out[:, :1], out[:, 1].flatten(1).amax(1)

    def _decision_weight(self) -> float:
        ramp = self.decision_ramp_epochs
        return self.decision_weight * (min(1.0, (self.current_epoch + 1) / ramp) if ramp > 0 else 1.0)

    @staticmethod
    def _labels(batch, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image labels N float, has-mask N bool) of a batch: the dataset's (asset/training/data.py yields them), or
        for a batch of (x, y, index) alone, derived from the masks, all of which then count."""
        if len(batch) >= 5:
            return batch[3].float(), batch[4].bool()
        return (y.flatten(1).amax(1) > 0.5).float(), torch.ones(y.shape[0], dtype=torch.bool, device=y.device)

    def _pixel_loss(self, logits: torch.Tensor, y: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """The segmentation loss over the images that have a mask only: an image-level label's all-zero mask says
        nothing about its pixels. A batch without any mask gives 0 (kept in the graph)."""
        if bool(masked.all()):
            return self.loss(logits, y)
        if not bool(masked.any()):
            return logits.sum() * 0.0
        return self.loss(logits[masked], y[masked])

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        label, masked = self._labels(batch, y)
        logits, image_logits = self._split(self.net(x))
        loss = self._pixel_loss(logits, y, masked)
        if image_logits is not None:  # every image's label, masked or not
            decision_loss = nn.functional.binary_cross_entropy_with_logits(image_logits, label)
            self.log("train/decision_loss", decision_loss, on_step=True, on_epoch=True, batch_size=x.shape[0])
            loss = loss + self._decision_weight() * decision_loss
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        for m in self._val_metrics():
            m.reset()

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        label, masked = self._labels(batch, y)
        label = label > 0.5
        logits, image_logits = self._split(self.net(x))
        loss = self._pixel_loss(logits, y, masked)
        prob = torch.sigmoid(logits)
        pred = prob >= self.pixel_threshold
        gt = y > 0.5
        if bool(masked.any()):  # pixel figures over the images with a mask only
            self.val_iou.update(pred[masked].long(), gt[masked].long())
        if image_logits is not None:  # the head's score, as asset/algorithm.py decides with it
            score = torch.sigmoid(image_logits)
            loss = loss + self.decision_weight * nn.functional.binary_cross_entropy_with_logits(image_logits,
                                                                                                 label.float())
        else:  # the image score of asset/algorithm.py: defect fraction, ties broken by the maximum probability
            score = pred.flatten(1).float().mean(1) + SCORE_TIEBREAK * prob.flatten(1).amax(1)
        self.val_ap.update(score.double(), label.long())
        self.val_images.update(torch.tensor(float(label.numel()), device=self.device))
        self.val_defective.update(label.sum().float())
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=x.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        iou = self.val_iou.compute().float()
        images, defective = int(self.val_images.compute()), int(self.val_defective.compute())
        ap = torch.tensor(float("nan"), device=self.device)
        if 0 < defective < images:
            ap = self.val_ap.compute().float()
        self.log("val/iou", iou, prog_bar=True)
        self.log("val/ap", ap, prog_bar=True)
        self.log("val/ap_iou", iou if torch.isnan(ap) else (ap + iou) / 2)
        for m in self._val_metrics():
            m.reset()

    def configure_optimizers(self):
        opt = build_optimizer(self.net.parameters(), self.optimizer_cfg)
        # the steps the cosine runs to: max_epochs' steps, shortened by TimeBudgetSchedule under trainer.max_time
        self.schedule_steps = int(self.trainer.estimated_stepping_batches)
        sched = build_scheduler(opt, self.scheduler_cfg, lambda: self.schedule_steps, float(self.optimizer_cfg["lr"]))
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}


def time_budget_schedule():
    """A callback that sizes the cosine schedule to trainer.max_time: after each epoch the steps that still fit
    (at the pace so far, validation included) set the schedule's length, so the learning rate reaches its end when
    the time cap stops training, not at max_epochs far beyond it (the cap otherwise stopped the KolektorSDD recipe
    with the learning rate at 9-22% of its peak). Without a time cap it does nothing."""
    from lightning.pytorch.callbacks import Callback, Timer

    class TimeBudgetSchedule(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
            remaining = timer.time_remaining() if timer is not None else None
            steps = int(trainer.global_step)
            if remaining is None or steps < 1:
                return
            pace = timer.time_elapsed() / steps
            fits = steps + int(max(0.0, remaining) / pace)
            planned = int(trainer.estimated_stepping_batches)
            pl_module.schedule_steps = max(steps + 1, min(planned, fits))

    return TimeBudgetSchedule()
