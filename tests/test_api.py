"""The Python API for a trained model: robustreid.load / FeatureExtractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import robustreid
from robustreid.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint
from robustreid.checkpoint import save_checkpoint as save
from robustreid.data.base import DatasetError
from robustreid.errors import UserError
from robustreid.inference import FeatureExtractor, expand_inputs, list_images
from robustreid.inference.extractor import model_from_checkpoint
from tests.conftest import TINY_ARCH, TINY_HEIGHT, TINY_WIDTH


@pytest.fixture
def extractor(tiny_checkpoint):
    return robustreid.load(tiny_checkpoint, device="cpu")


def _reference(extractor, paths, flip=False):
    """Features computed by hand: PIL bicubic resize, normalise, model, L2-normalise."""
    import torchvision.transforms as T

    tf = T.Compose([T.Resize((TINY_HEIGHT, TINY_WIDTH), T.InterpolationMode.BICUBIC),
                    T.ToTensor(), T.Normalize(extractor.meta["mean"], extractor.meta["std"])])
    batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        out = extractor.model(batch)
        if flip:
            out = out + extractor.model(torch.flip(batch, dims=[3]))
    return torch.nn.functional.normalize(out, dim=1)


def test_load_describes_the_model(extractor):
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.meta["model"]["arch"] == TINY_ARCH
    assert extractor.meta["input_size"] == [TINY_HEIGHT, TINY_WIDTH]
    assert extractor.feature_dim == 32 and not extractor.model.training


def test_paths_folder_and_order(extractor, market_images):
    paths = list_images(market_images)
    assert len(paths) == 12 and paths == sorted(paths)
    feats = extractor([str(p) for p in paths])
    assert feats.shape == (12, 32) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(12))
    torch.testing.assert_close(feats, _reference(extractor, paths), atol=1e-5, rtol=0)
    torch.testing.assert_close(extractor(market_images), feats)  # a folder: sorted paths
    mixed = extractor([paths[3], market_images, paths[0]])  # folders expand in place
    torch.testing.assert_close(mixed, torch.cat([feats[3:4], feats, feats[0:1]]))


def test_pil_numpy_and_tensor_inputs(extractor, market_images):
    paths = list_images(market_images)[:5]
    ref = extractor(paths)
    pil = [Image.open(p) for p in paths]
    torch.testing.assert_close(extractor(pil), ref, atol=1e-6, rtol=0)
    arrays = [np.array(img.convert("RGB")) for img in pil]
    # arrays and tensors are resized as tensors: close to the PIL path, not bit-identical
    from_arrays = extractor(arrays)
    assert float((from_arrays * ref).sum(1).min()) > 0.999
    torch.testing.assert_close(extractor(np.stack(arrays)), from_arrays)  # a 4-D batch
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays]
    torch.testing.assert_close(extractor(tensors), from_arrays, atol=1e-5, rtol=0)
    torch.testing.assert_close(extractor(torch.stack(tensors)), from_arrays, atol=1e-5, rtol=0)
    uint8 = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
    torch.testing.assert_close(extractor(uint8), from_arrays, atol=1e-5, rtol=0)
    grey = extractor(arrays[0][..., 0])  # H x W grey array -> 3 equal channels
    assert grey.shape == (1, 32)


def test_batching_and_flip(tiny_checkpoint, market_images):
    paths = list_images(market_images)
    one = robustreid.load(tiny_checkpoint, batch_size=1)(paths)
    many = robustreid.load(tiny_checkpoint, batch_size=5)(paths)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)
    flipped = robustreid.load(tiny_checkpoint, flip=True)
    feats = flipped(paths)
    torch.testing.assert_close(feats, _reference(flipped, paths, flip=True), atol=1e-5, rtol=0)
    assert float((feats - many).abs().max()) > 1e-3  # flip averaging changes the features


def test_bad_inputs_are_clear_errors(extractor, tmp_path):
    with pytest.raises(UserError, match="nope.jpg"):
        extractor(tmp_path / "nope.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        extractor(empty)
    with pytest.raises(TypeError, match="cannot embed an input of type int"):
        extractor([1, 2])
    with pytest.raises(ValueError, match="H x W x 3"):
        extractor(np.zeros((10, 10, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="3 x H x W"):
        extractor(torch.zeros(4, 10, 10))
    with pytest.raises(ValueError, match="uint8 or floats"):
        extractor(torch.zeros(3, 10, 10, dtype=torch.int32))
    with pytest.raises(ValueError, match="no images given"):
        extractor([])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="bad.jpg"):
        extractor(bad)


def test_newer_checkpoint_format_is_refused(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["meta"]["format"] = CHECKPOINT_FORMAT + 1
    ckpt["robustreid_version"] = "9.0.0"
    path = save(tmp_path / "future.pth", ckpt)
    with pytest.raises(CheckpointError, match=r"written by robustreid 9\.0\.0.*Upgrade"):
        robustreid.load(path)


def test_checkpoint_without_meta_uses_its_config(tiny_checkpoint, tmp_path, market_images):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.pop("meta")
    path = save(tmp_path / "old.pth", ckpt)
    old = robustreid.load(path)
    assert old.meta["input_size"] == [TINY_HEIGHT, TINY_WIDTH] and old.feature_dim == 32
    torch.testing.assert_close(old(market_images), robustreid.load(tiny_checkpoint)(market_images))
    ckpt.pop("config")
    with pytest.raises(CheckpointError, match="does not describe its model"):
        robustreid.load(save(tmp_path / "bare.pth", ckpt))


def test_weights_that_do_not_fit_are_a_clear_error(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["meta"]["model"]["arch"] = "resnet18"
    with pytest.raises(CheckpointError, match="do not fit the model it describes .'resnet18'"):
        robustreid.load(save(tmp_path / "wrong.pth", ckpt))
    with pytest.raises(CheckpointError, match="not found"):
        robustreid.load(tmp_path / "missing.pth")


def test_model_from_checkpoint_holds_the_trained_weights(tiny_checkpoint):
    model, meta = model_from_checkpoint(tiny_checkpoint)
    ckpt = load_checkpoint(tiny_checkpoint)
    assert meta == ckpt["meta"]
    state = model.state_dict()
    assert state.keys() == ckpt["model"].keys()
    assert all(torch.equal(state[k], v) for k, v in ckpt["model"].items())


def test_expand_inputs_keeps_order(market_images):
    paths = list_images(market_images)
    arr = np.zeros((2, 8, 4, 3), dtype=np.uint8)
    items = expand_inputs([paths[0], (arr, paths[1])])
    assert items[0] == paths[0] and items[3] == paths[1] and len(items) == 4
    assert items[1].shape == (8, 4, 3)
