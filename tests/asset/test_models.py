"""Model factory: every architecture builds, runs forward and backward; bad names and combinations are refused."""

import time

import pytest
import torch

from asset.models.factory import EncoderWeightsError, build_model, load_encoder_weights, required_divisor, set_head_prior
from asset.models.registry import ARCHITECTURES, ModelConfigError

# A small encoder per architecture (DPT needs a timm ViT).
ENCODER = {"dpt": "tu-vit_tiny_patch16_224"}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_forward_backward(arch):
    torch.manual_seed(0)
    encoder = ENCODER.get(arch, "mobilenet_v2")
    model = build_model(arch, encoder, in_channels=1, encoder_weights="none")
    d = required_divisor(model, arch)
    size = max(64, ARCHITECTURES[arch].min_size)
    assert size % d == 0
    x = torch.randn(2, 1, size, size)
    out = model(x)
    assert out.shape == (2, 1, size, size)
    out.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # model.head_prior: the bias it sets is the network's last word (no layer after it shifts the logits)
    set_head_prior(model, 0.01)
    head = [m for m in model.segmentation_head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.zero_()
        prob = torch.sigmoid(model.eval()(x))
    assert torch.allclose(prob, torch.full_like(prob, 0.01), atol=1e-6)


def test_rgb_and_timm_encoder():
    model = build_model("fpn", "tu-efficientnet_lite0", in_channels=3, encoder_weights="none")
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("arch,encoder", [("pan", "inceptionv4"), ("deeplabv3", "inceptionv4"),
                                          ("deeplabv3plus", "vgg11"), ("dpt", "resnet34")])
def test_invalid_combinations_say_why(arch, encoder):
    with pytest.raises(ModelConfigError, match="cannot use|only works"):
        build_model(arch, encoder, 3)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ModelConfigError, match="valid: unet, unetplusplus"):
        build_model("unet3d", "resnet34")
    with pytest.raises(ModelConfigError, match="mobilenet_v2"):
        build_model("unet", "resnet35")
    with pytest.raises(ModelConfigError, match="timm"):
        build_model("unet", "tu-not_a_model")


def test_offline_imagenet_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(EncoderWeightsError, match="local weights file"):
        build_model("unet", "resnet18", 3, "imagenet")
    assert time.time() - t < 5


def test_bundled_efficientnet_lite0_weights_load_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = build_model("unet", "tu-efficientnet_lite0", 1, "imagenet")
    b = build_model("unet", "tu-efficientnet_lite0", 1, "none")
    wa, wb = a.encoder.model.blocks[2][0].conv_pw.weight, b.encoder.model.blocks[2][0].conv_pw.weight
    assert not torch.equal(wa, wb)


def test_local_weights_file(tmp_path):
    src = build_model("linknet", "resnet18", 3, "none")
    path = tmp_path / "enc.pth"
    torch.save(src.encoder.state_dict(), path)
    dst = build_model("unet", "resnet18", 1, path)  # 3 -> 1 channel first conv is adapted
    assert torch.equal(dst.encoder.layer1[0].conv1.weight, src.encoder.layer1[0].conv1.weight)
    assert torch.allclose(dst.encoder.conv1.weight, src.encoder.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(EncoderWeightsError, match="no such file"):
        build_model("unet", "resnet18", 1, tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(3)}, bad)
    with pytest.raises(EncoderWeightsError, match="does not fit"):
        load_encoder_weights(build_model("unet", "resnet18", 3).encoder, bad, 3)
