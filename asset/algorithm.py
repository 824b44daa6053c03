"""The one pre/post-processing of the asset, shared by every backend (numpy + OpenCV, no torch).

Training, evaluation, export checks, benchmarks and the server all go through `Algorithm`, so a
PyTorch, ONNX Runtime, OpenVINO or TensorRT model sees the same input tensor and its output is
turned into the same decision.

Pipeline
--------
    bytes --decode--> HxW or HxWxC uint8 --preprocess--> float32 NCHW batch (+ one meta per image)
    model(batch) -> logits N x 1 x H' x W'  (N x 2 x H' x W' with a decision head, below)
    logits --postprocess--> [Prediction(mask at original size, defect_fraction, score, defective)]

Channels
--------
`channels` (1 or 3) is what the network takes. Grayscale images given to a 3-channel model are
replicated to 3 channels; colour images given to a 1-channel model are converted to luminance
(ITU-R 601, as OpenCV/Pillow do). Colour order is RGB everywhere (`decode` returns RGB).

Size policy (`size_policy` in the model card)
---------------------------------------------
    {"mode": "pad", "divisor": D, "size": null}
        Pad each image at the bottom/right (edge mode: replicate the border pixels) up to the next
        multiple of D. Predictions are cropped back to the original size: the mask is pixel-exact
        in the original frame, nothing is resampled. The default: lossless and any image size
        works. Images in one batch must pad to the same shape.
    {"mode": "pad", "divisor": D, "size": [H, W]}
        Pad every image to the fixed canvas H x W (multiples of D). An image larger than the
        canvas is first shrunk (aspect kept, INTER_AREA) to fit it; its prediction is cropped and
        resized back to the original size. Used to batch datasets with images of varying size.
    {"mode": "resize", "divisor": D, "size": [H, W]}
        Resize every image to H x W (INTER_AREA when shrinking, INTER_LINEAR when growing);
        the probability map is resized back to the original size (INTER_LINEAR) before the
        pixel threshold is applied.
D is what the architecture needs (`asset.models.registry.ARCHITECTURES[arch].divisor`, e.g. 32 for
Linknet/Unet++/MAnet, 16 for PAN, 8 for DeepLabV3; Unet takes any size but D=32 keeps its skip
connections aligned without interpolation).

Normalisation
-------------
x = (pixel / 255 - mean[c]) / std[c], with `mean`/`std` lists of length `channels` (ImageNet
statistics for ImageNet-pretrained encoders; their average for 1-channel models).

Decision (`decision` in the model card: "fraction" when absent)
--------
prob = sigmoid(logit); mask = prob >= pixel_threshold; defect_fraction = mask.mean().
- "fraction" (the paper's rule): defective = defect_fraction >= image_threshold. `score` (used for
  AP/AUROC) is the defect fraction, with ties broken by the maximum probability:
  score = fraction + 1e-6 * max_prob, so images without any defective pixel still rank by how close
  they came.
- "head" (a learned decision, asset/models/decision.py): the network output has a second channel
  holding the image logit at every pixel (one output tensor, so every engine, exporter, batcher and
  tiler carries it unchanged); score = sigmoid(max of that channel over the image content, the
  largest over tiles) and defective = score >= image_threshold. The mask is channel 0 either way.
`Prediction.value` is what the image threshold is compared with (the fraction or the head's score).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from asset.errors import AssetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE_MODES = ("pad", "resize")
SCORE_TIEBREAK = 1e-6
DECISION_RULES = ("fraction", "head")


class AlgorithmError(AssetError, ValueError):
    """A model card or an input the algorithm cannot handle; the message says what and how to fix it."""


def default_normalisation(channels: int, pretrained: bool = True) -> dict:
    """ImageNet statistics (averaged for 1 channel) for pretrained encoders; 0.5/0.5 otherwise."""
    if not pretrained:
        return {"mean": [0.5] * channels, "std": [0.5] * channels}
    if channels == 1:
        return {"mean": [round(sum(IMAGENET_MEAN) / 3, 4)], "std": [round(sum(IMAGENET_STD) / 3, 4)]}
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


@dataclass(frozen=True)
class SizePolicy:
    mode: str = "pad"
    divisor: int = 32
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in SIZE_MODES:
            raise AlgorithmError(f"size policy mode {self.mode!r} is not one of {list(SIZE_MODES)}")
        if int(self.divisor) < 1:
            raise AlgorithmError(f"size policy divisor must be >= 1, got {self.divisor}")
        if self.size is not None:
            h, w = self.size
            if h < 1 or w < 1 or h % self.divisor or w % self.divisor:
                raise AlgorithmError(
                    f"size policy size {list(self.size)} must be positive multiples of the divisor {self.divisor}"
                )
        elif self.mode == "resize":
            raise AlgorithmError("size policy mode 'resize' needs a size [H, W]")

    @classmethod
    def from_dict(cls, d: dict) -> SizePolicy:
        size = d.get("size")
        return cls(mode=d.get("mode", "pad"), divisor=int(d.get("divisor", 32)),
                   size=(int(size[0]), int(size[1])) if size else None)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "divisor": self.divisor, "size": list(self.size) if self.size else None}

    def network_shape(self, height: int, width: int) -> tuple[int, int]:
        """The H x W the network sees for an image of `height` x `width`."""
        if self.size is not None:
            return self.size
        d = self.divisor
        return -(-height // d) * d, -(-width // d) * d


@dataclass
class Meta:
    """What postprocess needs to map a network output back to one original image."""

    original: tuple[int, int]  # H, W of the image as given
    content: tuple[int, int]  # H, W the image occupies in the network input (top-left corner)


@dataclass
class Prediction:
    """One image's result. `mask` is HxW uint8 (0/1) at the original size."""

    mask: np.ndarray
    defect_fraction: float
    score: float
    defective: bool
    threshold: float  # the image threshold that made the decision
    max_prob: float = 0.0
    prob: np.ndarray | None = field(default=None, repr=False)  # HxW float32, when keep_prob=True
    value: float | None = None  # what the image threshold was compared with (module doc, Decision)

    def __post_init__(self) -> None:
        if self.value is None:
            self.value = self.defect_fraction

    def to_dict(self) -> dict:
        return {"defective": self.defective, "defect_fraction": self.defect_fraction, "score": self.score,
                "threshold": self.threshold, "max_prob": self.max_prob}


class Algorithm:
    """Preprocessing and postprocessing of one model, built from its model card (model.json)."""

    def __init__(self, channels: int, size_policy: SizePolicy, mean, std,
                 pixel_threshold: float = 0.5, image_threshold: float = 0.0, decision: str = "fraction") -> None:
        if decision not in DECISION_RULES:
            raise AlgorithmError(f"decision rule {decision!r} is not one of {list(DECISION_RULES)}")
        if channels not in (1, 3):
            raise AlgorithmError(f"channels must be 1 or 3, got {channels}")
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise AlgorithmError(f"normalisation needs {channels} mean and {channels} positive std values")
        for name, value in (("pixel_threshold", pixel_threshold), ("image_threshold", image_threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise AlgorithmError(f"{name} must be in [0, 1], got {value}")
        self.channels = channels
        self.size_policy = size_policy
        self.mean = np.asarray(mean, dtype=np.float32).reshape(channels, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(channels, 1, 1)
        self.pixel_threshold = float(pixel_threshold)
        self.image_threshold = float(image_threshold)
        self.decision = decision
        # preprocessing as x * scale + offset, and the pixel threshold on the logits (see postprocess)
        self._scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self._offset = (-self.mean / self.std).astype(np.float32)
        t = self.pixel_threshold
        self._logit_threshold = -np.inf if t <= 0.0 else np.inf if t >= 1.0 else float(np.log(t / (1.0 - t)))

    @property
    def logit_threshold(self) -> float:
        """The pixel threshold on the logits: logit >= this  <=>  probability >= pixel_threshold."""
        return self._logit_threshold

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_card(cls, card: dict) -> Algorithm:
        """From a model card (model.json) or any dict with the same keys:
        input.channels, input.size_policy, input.normalisation{mean,std}, thresholds{pixel,image}."""
        try:
            inp = card["input"]
            norm = inp["normalisation"]
            thresholds = card.get("thresholds", {})
            return cls(
                channels=int(inp["channels"]),
                size_policy=SizePolicy.from_dict(inp["size_policy"]),
                mean=norm["mean"], std=norm["std"],
                pixel_threshold=float(thresholds.get("pixel", 0.5)),
                image_threshold=float(thresholds.get("image", 0.0)),
                decision=decision_rule(card),
            )
        except KeyError as exc:
            raise AlgorithmError(f"model card lacks {exc.args[0]!r} (needs input.channels, input.size_policy, "
                                 "input.normalisation)") from None

    def to_card(self) -> dict:
        """The `input` and `thresholds` sections of a model card."""
        return {
            "input": {"channels": self.channels, "size_policy": self.size_policy.to_dict(), "color_order": "RGB",
                      "normalisation": {"mean": self.mean.ravel().tolist(), "std": self.std.ravel().tolist(),
                                        "scale": 255.0}},
            "thresholds": {"pixel": self.pixel_threshold, "image": self.image_threshold},
            "decision": {"rule": self.decision},
        }

    def with_decision(self, rule: str) -> Algorithm:
        """The same algorithm deciding by another rule ("fraction" also works on a head model's output: channel 0)."""
        import copy

        if rule not in DECISION_RULES:
            raise AlgorithmError(f"decision rule {rule!r} is not one of {list(DECISION_RULES)}")
        other = copy.copy(self)
        other.decision = rule
        return other

    def decide(self, fraction: float, max_prob: float, image_logit: float | None, threshold: float
               ) -> tuple[float, float, bool]:
        """(score, value, defective) of one image by this algorithm's rule (module doc, Decision)."""
        if self.decision == "head":
            if image_logit is None:
                raise AlgorithmError("this model decides with a decision head, but the network output has no image "
                                     "logit channel (N x 2 x H x W expected): the export or weights do not match "
                                     "model.json")
            value = float(sigmoid(np.float32(image_logit)))
            return value, value, value >= threshold
        return fraction + SCORE_TIEBREAK * max_prob, fraction, fraction >= threshold

    # ------------------------------------------------------------------ input
    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        """Image file bytes (PNG, JPEG, BMP, TIFF, ...) -> HxW (gray) or HxWx3 (RGB) uint8."""
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as exc:
            raise AlgorithmError(f"image does not decode ({exc})") from None
        return pil_to_array(img)

    def to_channels(self, image: np.ndarray) -> np.ndarray:
        """HxW / HxWx1 / HxWx3 / HxWx4 uint8 -> HxWxC uint8 with C = self.channels."""
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise AlgorithmError(f"images must be uint8, got {image.dtype}")
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise AlgorithmError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
        if image.shape[2] == 4:
            image = image[:, :, :3]
        have = image.shape[2]
        if have == self.channels:
            return image
        if self.channels == 3:
            return np.repeat(image, 3, axis=2)
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[:, :, None]

    def _fit(self, image: np.ndarray) -> tuple[np.ndarray, Meta]:
        """One HxWxC image -> network-size HxWxC image and its meta."""
        h, w = image.shape[:2]
        policy = self.size_policy
        if policy.mode == "resize":
            th, tw = policy.size
            interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR
            out = cv2.resize(image, (tw, th), interpolation=interp)
            return out.reshape(th, tw, -1), Meta(original=(h, w), content=(th, tw))
        th, tw = policy.network_shape(h, w)
        ch, cw = h, w
        if h > th or w > tw:  # fixed canvas smaller than the image: shrink, keep the aspect ratio
            scale = min(th / h, tw / w)
            ch, cw = max(1, int(h * scale)), max(1, int(w * scale))
            image = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_AREA).reshape(ch, cw, -1)
        out = np.pad(image, ((0, th - ch), (0, tw - cw), (0, 0)), mode="edge")
        return out, Meta(original=(h, w), content=(ch, cw))

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Meta]]:
        """uint8 images -> (float32 N x C x H x W batch, metas). All images must reach the same network size."""
        if len(images) == 0:
            raise AlgorithmError("preprocess needs at least one image")
        fitted, metas = [], []
        for image in images:
            out, meta = self._fit(self.to_channels(image))
            fitted.append(out)
            metas.append(meta)
        shapes = {f.shape for f in fitted}
        if len(shapes) > 1:
            raise AlgorithmError(
                f"images in one batch reach different network sizes {sorted(s[:2] for s in shapes)}: send them one "
                "at a time, or use a size policy with a fixed size"
            )
        # (x / 255 - mean) / std as one multiply-add per pixel, written straight into the N x C x H x W layout
        stacked = np.stack(fitted).transpose(0, 3, 1, 2)
        batch = np.empty(stacked.shape, dtype=np.float32)
        np.multiply(stacked, self._scale, out=batch, casting="unsafe")
        batch += self._offset
        return batch, metas

    def preprocess_mask(self, mask: np.ndarray, meta: Meta) -> np.ndarray:
        """A ground-truth HxW mask -> the network frame (same geometry as the image). Pixels outside the image
        content (padding) are 0.

        Shrinking uses area coverage (`shrink_mask`), so a defect thinner than one network pixel stays a
        continuous line, as it does (fainter) in the INTER_AREA image. Nearest neighbour, used before, kept one
        source pixel in ~1/scale: a 1-px crack at 0.5x vanished or broke into dots while the image still showed
        it, a label that contradicts its image.
        Growing stays nearest neighbour."""
        th, tw = self.size_policy.network_shape(*meta.original) if self.size_policy.mode == "pad" \
            else self.size_policy.size
        ch, cw = meta.content
        m = mask.astype(np.uint8)
        if (ch, cw) != m.shape:
            m = shrink_mask(m, (ch, cw)) if ch * cw < m.size else \
                cv2.resize(m, (cw, ch), interpolation=cv2.INTER_NEAREST)
        out = np.zeros((th, tw), dtype=np.uint8)
        out[:ch, :cw] = m
        return out

    # ------------------------------------------------------------------ output
    def original_logits(self, logits: np.ndarray, meta: Meta) -> np.ndarray:
        """One image's logits (1xHxW or HxW) -> HxW float32 logits at the original size (padding cut off)."""
        lg = np.asarray(logits, dtype=np.float32)
        if lg.ndim == 3:
            lg = lg[0]
        ch, cw = meta.content
        lg = lg[:ch, :cw]
        if (ch, cw) != meta.original:
            h, w = meta.original
            lg = cv2.resize(np.ascontiguousarray(lg), (w, h), interpolation=cv2.INTER_LINEAR)
        return lg

    def probabilities(self, logits: np.ndarray, meta: Meta) -> np.ndarray:
        """One image's logits (1xHxW or HxW) -> HxW float32 probabilities at the original size."""
        return sigmoid(self.original_logits(logits, meta))

    def postprocess(self, logits: np.ndarray, metas: list[Meta], image_threshold: float | None = None,
                    keep_prob: bool = False) -> list[Prediction]:
        """N x 1 x H x W (or N x H x W) logits -> one Prediction per meta. `image_threshold` overrides the card's."""
        t = self.image_threshold if image_threshold is None else float(image_threshold)
        if not 0.0 <= t <= 1.0:
            raise AlgorithmError(f"image threshold must be in [0, 1], got {t}")
        logits = np.asarray(logits)
        if logits.ndim not in (3, 4) or logits.shape[0] != len(metas):
            raise AlgorithmError(f"logits of shape {logits.shape} do not match {len(metas)} images (N x 1 x H x W)")
        out = []
        for lg, meta in zip(logits, metas):
            image_logit = self.image_logit(lg, meta)
            lg = self.original_logits(lg, meta)
            # sigmoid is monotonic: prob >= pixel_threshold  <=>  logit >= logit(pixel_threshold), so the mask and
            # the maximum need no per-pixel exp (the costliest step of post-processing on CPU)
            mask = (lg >= self._logit_threshold).view(np.uint8)
            fraction = float(np.count_nonzero(mask)) / mask.size
            max_prob = float(sigmoid(lg.max()))
            score, value, defective = self.decide(fraction, max_prob, image_logit, t)
            out.append(Prediction(
                mask=mask, defect_fraction=fraction, score=score, defective=defective, threshold=t,
                max_prob=max_prob, prob=sigmoid(lg) if keep_prob else None, value=value,
            ))
        return out

    @staticmethod
    def image_logit(logits: np.ndarray, meta: Meta) -> float | None:
        """The decision head's image logit of one image's output (C x H x W), or None without a second channel."""
        lg = np.asarray(logits)
        if lg.ndim != 3 or lg.shape[0] < 2:
            return None
        ch, cw = meta.content
        return float(lg[1, :ch, :cw].max())


def decision_rule(card: dict) -> str:
    """The image decision rule of a model card ("fraction" for cards written before decision heads)."""
    rule = (card.get("decision") or {}).get("rule", "fraction")
    if rule not in DECISION_RULES:
        raise AlgorithmError(f"model card decision rule {rule!r} is not one of {list(DECISION_RULES)}: a newer "
                             "version of the asset wrote it")
    return rule


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float32)."""
    x = np.asarray(x, dtype=np.float32)
    ex = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + ex), ex / (1.0 + ex)).astype(np.float32)


WIDE_BAND_PIXELS = 1 << 20  # pixels per band when a 16/32-bit image is scaled to 8 bits (a few MB at a time)


def _wide_to_uint8(img: Image.Image) -> np.ndarray:
    """A 16-bit (I;16*) or 32-bit integer (I) grayscale image -> HxW uint8, scaled by 255/65535 (x // 257) when
    any value is above 255, else kept as it is (an 8-bit range stored wide); values outside clip to 0..255.

    Band by band, in integers: the only full-size array is the uint8 result (1 byte a pixel besides Pillow's own
    copy), where float64 copies of the whole image cost ~25 bytes a pixel (1 GB for a 40 MP PNG of 80 KB)."""
    width, height = img.size
    out = np.empty((height, width), dtype=np.uint8)
    if width == 0 or height == 0:
        return out
    low, top = img.getextrema()
    divisor = 257 if top > 255 else 1
    rows = max(1, WIDE_BAND_PIXELS // width)
    for y in range(0, height, rows):
        band = np.asarray(img.crop((0, y, width, min(height, y + rows))))
        if band.dtype.kind == "u" and band.dtype.itemsize <= 2:  # uint16 (either byte order): x // 257 <= 255
            scaled = band // divisor if divisor > 1 else np.minimum(band, 255)
        else:  # int32 ("I"): negative values and values past 16 bits clip
            scaled = np.clip(band, 0, 65535) // divisor if divisor > 1 else np.clip(band, 0, 255)
        out[y:y + band.shape[0]] = scaled
    return out


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A Pillow image -> HxW uint8 (grayscale modes) or HxWx3 uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _wide_to_uint8(img)
    if img.mode in ("1", "L", "LA", "F"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path) -> np.ndarray:
    """An image file -> HxW or HxWx3 uint8 (as pil_to_array)."""
    with Image.open(path) as img:
        img.load()
        return pil_to_array(img)


def load_mask(rle: dict) -> np.ndarray:
    """A dataset's COCO RLE mask -> HxW uint8 0/1."""
    from datatools.masks import decode_mask

    return decode_mask(rle)


def shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 0/1 mask shrunk to `shape` (H, W) by area coverage: a pixel is defective when defects cover at least half
    of what a 1-source-pixel line across it covers (s/2, s = the linear scale), capped at half the pixel. A 1-px
    crack covers s of the pixels it crosses, so its larger share (>= s/2) always stays: it never vanishes and
    is mostly one pixel wide; large defects keep the majority rule (coverage >= 0.5)."""
    h, w = shape
    scale = min(h / mask.shape[0], w / mask.shape[1])
    coverage = cv2.resize((mask > 0).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return (coverage >= min(0.5, scale / 2) - 1e-6).astype(np.uint8)


def calibrate_image_threshold(scores, labels, min_fraction: float | None = None) -> tuple[float, float]:
    """The image threshold (on the defect fraction) with the best accuracy on (scores, labels).

    Decision: defective when fraction >= t. Candidates are the distinct fractions (plus "above all");
    ties in accuracy go to the larger threshold (fewer false alarms). The chosen t is then moved into
    the gap below it, so that it separates the calibration images by a margin rather than sitting on
    one of them: half-way (linear) by default, or - given `min_fraction`, the share of one pixel - at
    the geometric mean of the gap's ends (the lower end raised to one pixel). Why geometric: defect
    fractions span decades (a 2-px crack is 0.01% of a part, a blob 5%), and a threshold calibrated
    on a handful of defects sat too close to the smallest of them with the linear rule, so smaller
    defects on new images were missed. Returns (threshold, accuracy)."""
    fractions = np.asarray([float(s) for s in scores], dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if fractions.size == 0:
        raise AlgorithmError("cannot calibrate the image threshold on an empty split")
    values = np.unique(np.clip(fractions, 0.0, 1.0))
    candidates = list(values) + [min(1.0, values[-1] + 1e-9) if values[-1] < 1.0 else 1.0]
    best_t, best_acc, best_i = 1.0, -1.0, 0
    for i, t in enumerate(candidates):
        acc = float(((fractions >= t) == y).mean())
        if acc >= best_acc:
            best_t, best_acc, best_i = float(t), acc, i
    if 0 < best_i < len(values):
        low, high = float(values[best_i - 1]), float(values[best_i])
        if min_fraction is not None and high > max(low, min_fraction) > 0:
            best_t = float(np.sqrt(max(low, min_fraction) * high))
        else:
            best_t = (low + high) / 2
    return min(max(best_t, 0.0), 1.0), best_acc
