"""A learned image decision beside the segmentation: a small classifier on the decoder's features and the
segmentation logits, trained jointly (the segmentation-based decision network of Tabernik et al. 2020 and the
mixed-supervision network of Božič et al. 2021, reduced to what 2 CPU cores train in minutes).

    net = DecisionNet(build_model(...), channels=32, detach=True)
    out = net(x)          # N x 2 x H x W: channel 0 the pixel logits, channel 1 the image logit at every pixel

One output tensor, not two: every engine (ONNX Runtime, OpenVINO, TensorRT), exporter, verification, batcher and
tiler already carries an N x C x H x W output, so the image logit reaches them all unchanged; asset/algorithm.py
reads it back (the maximum of channel 1 over the image content). Expanding one number per image to H x W costs
one extra output channel, nothing in compute.

`detach=True` stops the decision loss at the segmentation network (Božič et al.'s gradient-flow adjustment): the
head cannot pull the segmentation towards what is easy to classify, and a head model's pixel output matches what
the same run without a head would learn.
"""

from __future__ import annotations

import torch
from torch import nn

from asset.models.registry import ModelConfigError


def decoder_channels(seg: nn.Module) -> int:
    """Channels of the decoder output the segmentation head reads (its first convolution's input)."""
    head = getattr(seg, "segmentation_head", None)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)] if head is not None else []
    if not convs:
        raise ModelConfigError(f"{type(seg).__name__} has no segmentation head with a convolution: it cannot carry "
                               "a decision head (model.decision: fraction)")
    return int(convs[0].in_channels)


class DecisionNet(nn.Module):
    """An SMP segmentation model plus an image classifier (module doc). `seg` keeps its own attribute names, so
    `set_head_prior` and the encoder-weight loading work on `net.seg` as on a plain model."""

    def __init__(self, seg: nn.Module, channels: int = 32, detach: bool = True) -> None:
        super().__init__()
        if int(channels) < 1:
            raise ModelConfigError(f"model.decision_channels must be >= 1, got {channels!r}")
        self.seg = seg
        self.detach = bool(detach)
        c = decoder_channels(seg)
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        # pooled features (mean, max) and pooled segmentation logits (mean, max) -> one image logit
        self.classifier = nn.Linear(2 * channels + 2, 1)

    @property
    def encoder(self) -> nn.Module:
        return self.seg.encoder

    @property
    def requires_divisible_input_shape(self) -> bool:
        return bool(getattr(self.seg, "requires_divisible_input_shape", True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg = self.seg
        if hasattr(seg, "check_input_shape") and not (torch.jit.is_scripting() or torch.jit.is_tracing()
                                                      or torch.compiler.is_compiling()):
            seg.check_input_shape(x)  # as SMP's own forward does
        decoded = seg.decoder(seg.encoder(x))
        masks = seg.segmentation_head(decoded)
        feats, logits = (decoded.detach(), masks.detach()) if self.detach else (decoded, masks)
        f = self.features(feats)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3)),
                            logits.mean(dim=(2, 3)), logits.amax(dim=(2, 3))], dim=1)
        image_logit = self.classifier(pooled)  # N x 1
        return torch.cat([masks, image_logit[:, :, None, None].expand_as(masks)], dim=1)


def build_decision_net(seg: nn.Module, channels: int = 32, detach: bool = True) -> DecisionNet:
    net = DecisionNet(seg, channels, detach)
    net.arch_key = getattr(seg, "arch_key", None)  # type: ignore[attr-defined]
    return net
