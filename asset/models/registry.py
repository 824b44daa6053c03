"""Registries of architectures and encoders (plain dicts, SMP style; torch-free).

Keys are lowercase strings; classes keep the papers' names. A wrong key raises an error that lists
every valid key. Encoders are SMP's own registry (`resnet34`, `mobilenet_v2`, ...) plus every timm
model as `tu-<timm name>` (e.g. `tu-efficientnet_lite0`).
"""

from __future__ import annotations

from dataclasses import dataclass

from asset.errors import AssetError


class ModelConfigError(AssetError, ValueError):
    """An unknown architecture or encoder, or a combination that cannot work; says why and what is valid."""


@dataclass(frozen=True)
class Architecture:
    name: str  # SMP class name
    divisor: int  # input H and W must be multiples of this (our size policy pads to it)
    dilated: bool = False  # needs an encoder that supports dilated convolutions (output stride 8/16)
    vit_only: bool = False  # needs a timm ViT encoder (tu-...)
    min_size: int = 32  # smallest H/W the network accepts (PAN's pyramid pooling needs 128)
    paper: str = ""


# Unet itself takes any size (it interpolates), but D=32 keeps skips aligned and exports static.
ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture("Unet", 32, paper="U-Net (Ronneberger et al. 2015)"),
    "unetplusplus": Architecture("UnetPlusPlus", 32, paper="UNet++ (Zhou et al. 2018)"),
    "manet": Architecture("MAnet", 32, paper="MA-Net (Fan et al. 2020)"),
    "linknet": Architecture("Linknet", 32, paper="LinkNet (Chaurasia & Culurciello 2017)"),
    "fpn": Architecture("FPN", 32, paper="FPN (Kirillov et al. 2019)"),
    "pspnet": Architecture("PSPNet", 32, paper="PSPNet (Zhao et al. 2017)"),
    "pan": Architecture("PAN", 16, dilated=True, min_size=128, paper="PAN (Li et al. 2018)"),
    "deeplabv3": Architecture("DeepLabV3", 8, dilated=True, paper="DeepLabV3 (Chen et al. 2017)"),
    "deeplabv3plus": Architecture("DeepLabV3Plus", 16, dilated=True, paper="DeepLabV3+ (Chen et al. 2018)"),
    "upernet": Architecture("UPerNet", 32, paper="UPerNet (Xiao et al. 2018)"),
    "segformer": Architecture("Segformer", 32, paper="SegFormer (Xie et al. 2021)"),
    "dpt": Architecture("DPT", 16, vit_only=True, paper="DPT (Ranftl et al. 2021)"),
}

# SMP encoders whose make_dilated raises (pooling for downsampling): no PAN / DeepLabV3 / DeepLabV3+.
NO_DILATION_PREFIXES = ("inceptionv4", "inceptionresnetv2", "vgg", "densenet", "xception")

WEIGHT_CHOICES = ("imagenet", "none")


def _close(name: str, valid) -> str:
    import difflib

    near = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def get_architecture(name: str) -> Architecture:
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in ARCHITECTURES:
        raise ModelConfigError(
            f"unknown architecture {name!r}{_close(key, ARCHITECTURES)}; valid: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[key]


def arch_key(name: str) -> str:
    get_architecture(name)
    return str(name).lower().replace("-", "").replace("_", "")


def smp_encoder_names() -> list[str]:
    from segmentation_models_pytorch.encoders import encoders

    return list(encoders)


def check_encoder(name: str) -> None:
    """Raise ModelConfigError unless `name` is an SMP encoder or `tu-<timm model>`."""
    if name.startswith("tu-"):
        import timm

        base = name[3:]
        if not timm.is_model(base):
            raise ModelConfigError(
                f"unknown timm encoder {name!r}{_close(base, timm.list_models())}: `tu-` must be followed by a "
                "timm model name (`python -c 'import timm; print(timm.list_models())'` lists them)"
            )
        return
    valid = smp_encoder_names()
    if name not in valid:
        raise ModelConfigError(
            f"unknown encoder {name!r}{_close(name, valid)}; valid: {', '.join(valid)}, or any timm model as "
            "tu-<name> (e.g. tu-efficientnet_lite0)"
        )


def check_combination(arch: str, encoder: str, in_channels: int = 3) -> Architecture:
    """Static checks before anything is built. Returns the architecture."""
    a = get_architecture(arch)
    check_encoder(encoder)
    if in_channels not in (1, 3):
        raise ModelConfigError(f"in_channels must be 1 or 3, got {in_channels}")
    if a.dilated and encoder.startswith(NO_DILATION_PREFIXES):
        raise ModelConfigError(
            f"{a.name} cannot use encoder {encoder!r}: {a.name} needs a dilated encoder (output stride "
            f"{'8' if a.name == 'DeepLabV3' else '16'}) and {encoder} downsamples with pooling, which has no "
            f"dilated mode. Use another architecture (unet, fpn, linknet, ...) or another encoder (resnet34, "
            f"mobilenet_v2, ...)"
        )
    if a.vit_only and not encoder.startswith("tu-"):
        raise ModelConfigError(
            f"{a.name} only works with timm ViT encoders (tu-vit_..., e.g. tu-vit_tiny_patch16_224), got {encoder!r}"
        )
    if encoder.startswith("mit_b") and in_channels != 3:
        raise ModelConfigError(f"encoder {encoder!r} (Mix Transformer) only takes 3 input channels, got {in_channels}")
    return a
