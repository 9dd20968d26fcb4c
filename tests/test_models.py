"""Tests for robustreid.models: backbone registry, IBN-a layout, GeM, BN neck, weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from robustreid.errors import UserError
from robustreid.models import (
    BACKBONES,
    GeneralizedMeanPooling,
    PretrainedWeightsNotCachedError,
    ReIDModel,
    WeightsMismatchError,
    build_model,
    build_model_from_spec,
    build_pooling,
    register_backbone,
)
from robustreid.models.resnet_ibn import resnet50_ibn_a

BUILTIN = {"resnet18": 512, "resnet50": 2048, "resnet50_ibn_a": 2048, "mobilenet_v2": 1280}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def images() -> torch.Tensor:
    """2 x 3 x 64 x 32 images: the final map is 4 x 2 (last stride 1) or 2 x 1 (stride 2)."""
    return torch.randn(2, 3, 64, 32)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; returns its hub checkpoint folder (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return Path(torch.hub.get_dir()) / "checkpoints"


# ----------------------------------------------------------------------------- registry / model


def test_builtin_backbones_registered() -> None:
    assert set(BUILTIN) <= set(BACKBONES.names())


@pytest.mark.parametrize("arch", sorted(BUILTIN))
def test_output_shape_and_unit_norm(arch: str, images: torch.Tensor) -> None:
    model = build_model(arch, pretrained="none")
    assert model.feature_dim == BUILTIN[arch]
    assert model.arch == arch
    for train in (True, False):
        model.train(train)
        with torch.set_grad_enabled(train):
            out = model(images)
        assert out.shape == (2, BUILTIN[arch])
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    fmap = model.forward_features(images)
    assert fmap.shape == (2, BUILTIN[arch], 4, 2)


@pytest.mark.parametrize("arch", sorted(BUILTIN))
def test_last_stride_one_doubles_map(arch: str, images: torch.Tensor) -> None:
    sizes = {}
    for stride in (1, 2):
        trunk, channels = BACKBONES.get(arch)("none", stride)
        with torch.no_grad():
            fmap = trunk.eval()(images)
        assert fmap.shape[:2] == (2, channels)
        sizes[stride] = fmap.shape[-2:]
    assert sizes[2] == (2, 1)
    assert sizes[1] == (2 * sizes[2][0], 2 * sizes[2][1])


def test_build_model_from_spec_matches_build_model() -> None:
    spec = {"arch": "resnet18", "pretrained": "none", "last_stride": 2, "pooling": "avg",
            "gem_p": 3.0, "neck": "none", "unrelated": 1}
    torch.manual_seed(0)
    a = build_model_from_spec(spec)
    torch.manual_seed(0)
    b = build_model("resnet18", last_stride=2, pooling="avg", neck="none")
    assert a.arch == "resnet18" and type(a.pool) is type(b.pool)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(KeyError, match="arch"):
        build_model_from_spec({"last_stride": 1})


def test_bad_last_stride_rejected() -> None:
    with pytest.raises(ValueError, match="last_stride"):
        build_model("resnet18", last_stride=3)


def test_unknown_arch_lists_known() -> None:
    with pytest.raises(KeyError) as info:
        build_model("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    for name in BUILTIN:
        assert name in message


def test_user_registered_backbone(images: torch.Tensor) -> None:
    name = "test_tiny_backbone"

    @register_backbone(name, overwrite=True)
    def tiny(pretrained: str, last_stride: int) -> tuple[nn.Module, int]:
        trunk = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.ReLU())
        return trunk, 16

    try:
        model = build_model(name, pooling="avg", neck="none")
        out = model(images)
        assert model.feature_dim == 16
        assert out.shape == (2, 16)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    finally:
        BACKBONES._entries.pop(name, None)


def test_bn_neck_bias_frozen_and_gradients_flow(images: torch.Tensor) -> None:
    model = build_model("resnet18", neck="bn")
    assert isinstance(model.neck, nn.BatchNorm1d)
    assert not model.neck.bias.requires_grad
    assert model.neck.weight.requires_grad
    model.train()
    model(images).sum().backward()
    assert model.pool.p.grad is not None
    assert model.backbone.conv1.weight.grad is not None
    assert model.neck.bias.grad is None


def test_neck_none_and_bad_neck(images: torch.Tensor) -> None:
    model = build_model("resnet18", neck="none", pooling="max")
    assert isinstance(model.neck, nn.Identity)
    raw = model.embed(images, normalize=False)
    torch.testing.assert_close(model(images), torch.nn.functional.normalize(raw, dim=1))
    with pytest.raises(ValueError, match="neck"):
        ReIDModel(nn.Identity(), 3, build_pooling("avg"), neck="linear")


def test_no_cuda_calls_in_models() -> None:
    import robustreid.models as pkg

    folder = Path(pkg.__file__).parent
    for source in folder.glob("*.py"):
        assert ".cuda(" not in source.read_text(), source.name


# ----------------------------------------------------------------------------- pooling


def test_gem_parameter_initialised_at_3() -> None:
    gem = build_pooling("gem", 3.0)
    assert isinstance(gem, GeneralizedMeanPooling)
    assert isinstance(gem.p, nn.Parameter) and gem.p.requires_grad
    assert gem.p.item() == pytest.approx(3.0)
    assert "p" in dict(gem.named_parameters())
    assert build_model("resnet18", gem_p=4.5).pool.p.item() == pytest.approx(4.5)


def test_gem_p1_equals_avg() -> None:
    x = torch.rand(2, 5, 4, 3) + 0.1
    out = GeneralizedMeanPooling(p=1.0)(x)
    torch.testing.assert_close(out, build_pooling("avg")(x))
    torch.testing.assert_close(out, x.mean(dim=(2, 3)))
    assert out.shape == (2, 5)


def test_gem_tends_to_max_for_large_p() -> None:
    x = torch.rand(2, 5, 4, 3, dtype=torch.float64) + 0.1
    x_max = build_pooling("max")(x)
    torch.testing.assert_close(x_max, x.amax(dim=(2, 3)))
    errors = []
    for p in (1.0, 10.0, 100.0, 300.0):
        gem = GeneralizedMeanPooling(p=p).double()
        errors.append((x_max - gem(x)).abs().max().item())
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.02 * x_max.min().item()


def test_gem_handles_non_positive_inputs() -> None:
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0] = -1.0
    out = GeneralizedMeanPooling()(x)
    assert torch.isfinite(out).all()


def test_unknown_pooling() -> None:
    with pytest.raises(ValueError, match="gem"):
        build_pooling("median")


# ----------------------------------------------------------------------------- IBN-a layout


def test_ibn_a_key_names() -> None:
    net = resnet50_ibn_a()
    keys = set(net.state_dict())
    for key in (
        "conv1.weight",
        "bn1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.IN.weight",
        "layer1.0.bn1.IN.bias",
        "layer1.0.bn1.BN.weight",
        "layer1.0.bn1.BN.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer3.5.bn1.IN.weight",
        "layer4.0.bn1.weight",
        "layer4.2.bn3.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys, key
    assert not [k for k in keys if k.startswith("layer4") and ".IN." in k]
    assert "layer1.0.bn1.weight" not in keys
    # InstanceNorm2d(affine=True) keeps no running statistics.
    assert not [k for k in keys if ".IN.running" in k]
    # every bottleneck of layer1-3 has IBN, none has it elsewhere
    in_blocks = {k.rsplit(".bn1.IN.", 1)[0] for k in keys if ".bn1.IN." in k}
    assert len(in_blocks) == 3 + 4 + 6
    # same parameter count as a plain ResNet-50 (IN + BN affine = one BN)
    assert sum(p.numel() for p in net.parameters()) == 25_557_032


def test_ibn_a_halves_and_trunk_has_no_fc() -> None:
    trunk, channels = BACKBONES.get("resnet50_ibn_a")("none", 1)
    assert channels == 2048
    for layer, planes in (("layer1", 64), ("layer2", 128), ("layer3", 256)):
        norm = trunk.get_submodule(f"{layer}.0.bn1")
        assert isinstance(norm.IN, nn.InstanceNorm2d) and norm.IN.affine
        assert norm.IN.num_features == planes // 2
        assert norm.BN.num_features == planes - planes // 2
    assert isinstance(trunk.get_submodule("layer4.0.bn1"), nn.BatchNorm2d)
    assert not [k for k in trunk.state_dict() if k.startswith("fc.")]


# ----------------------------------------------------------------------------- weights


def _cache_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


@pytest.mark.parametrize(
    ("arch", "filename", "how"),
    [
        ("resnet18", _cache_name(ResNet18_Weights.IMAGENET1K_V1.url),
         ResNet18_Weights.IMAGENET1K_V1.url),
        ("resnet50_ibn_a", "resnet50_ibn_a-d9d0bb7b.pth", "https://github.com/XingangPan"),
        # no URL serves these in torchvision's layout: the message names the set-up command
        ("mobilenet_v2", "mobilenet_v2-deepsort-imagenet.pth",
         "`robustreid weights --arch mobilenet_v2`"),
    ],
)
def test_imagenet_not_cached_error(arch: str, filename: str, how: str, torch_home: Path) -> None:
    with pytest.raises(PretrainedWeightsNotCachedError) as info:
        build_model(arch, pretrained="imagenet")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert filename in message
    assert str(torch_home) in message
    assert how in message
    assert ("https://" in message) == how.startswith("https://")
    assert not torch_home.exists() or not any(torch_home.iterdir())  # nothing downloaded


def test_imagenet_loads_cached_torchvision_file(torch_home: Path) -> None:
    reference = resnet18(weights=None).state_dict()
    torch_home.mkdir(parents=True)
    torch.save(reference, torch_home / _cache_name(ResNet18_Weights.IMAGENET1K_V1.url))
    model = build_model("resnet18", pretrained="imagenet")
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in reference if not k.startswith("fc.")}
    for key, value in loaded.items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)


def test_imagenet_loads_cached_ibn_file_without_warnings(
    torch_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Older checkpoints lack num_batches_tracked: that must not count as a missing key.
    reference = {k: v for k, v in resnet50_ibn_a().state_dict().items() if "num_batches" not in k}
    torch_home.mkdir(parents=True)
    torch.save(reference, torch_home / "resnet50_ibn_a-d9d0bb7b.pth")
    with caplog.at_level(logging.WARNING, logger="robustreid.models.weights"):
        model = build_model("resnet50_ibn_a", pretrained="imagenet")
    assert not caplog.records
    loaded = model.backbone.state_dict()
    for key, value in reference.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


@pytest.fixture
def saved_resnet18() -> dict[str, torch.Tensor]:
    return resnet18(weights=None).state_dict()


@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_load_file_with_module_prefix(
    wrapper: str | None, saved_resnet18: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    prefixed = {f"module.{k}": v for k, v in saved_resnet18.items()}
    payload = prefixed if wrapper is None else {wrapper: prefixed, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    model = build_model("resnet18", pretrained=str(path))
    loaded = model.backbone.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved_resnet18[key], rtol=0, atol=0, msg=key)


def test_load_reid_checkpoint_strips_backbone_prefix(tmp_path: Path) -> None:
    source = build_model("resnet18")
    with torch.no_grad():
        source.backbone.conv1.weight.add_(1.0)
    path = tmp_path / "reid.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = build_model("resnet18", pretrained=str(path))
    torch.testing.assert_close(model.backbone.conv1.weight, source.backbone.conv1.weight)


def test_partial_file_warns_missing(
    saved_resnet18: dict[str, torch.Tensor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    partial = {k: v for k, v in saved_resnet18.items() if not k.startswith("layer4")}
    partial["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with caplog.at_level(logging.WARNING, logger="robustreid.models.weights"):
        model = build_model("resnet18", pretrained=str(path))
    text = caplog.text
    assert "missing" in text and "layer4" in text
    assert "unexpected" in text and "extra.weight" in text
    torch.testing.assert_close(model.backbone.conv1.weight, saved_resnet18["conv1.weight"])


def test_bad_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsMismatchError, match="could not read"):
        build_model("resnet18", pretrained=str(garbage))

    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(3), "fc.weight": torch.zeros(2, 2)}, unrelated)
    with pytest.raises(WeightsMismatchError, match="match"):
        build_model("resnet18", pretrained=str(unrelated))

    with pytest.raises(UserError):
        build_model("resnet18", pretrained=str(tmp_path / "missing.pth"))
