"""Images decoded once and the batch augmentation: same test images as the PIL transform,
the augmentation's distributions and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from robustreid.data.base import DatasetError, Sample
from robustreid.data.decoded import BatchAugment, DecodedImages, normalize_uint8
from robustreid.data.transforms import build_test_transform


@pytest.fixture()
def jpegs(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(5):
        h, w = rng.integers(40, 90), rng.integers(20, 50)
        path = tmp_path / f"{i:04d}_c1s1_000000_00.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(str(path), i, 0))
    return samples


def test_decoded_images_equal_the_test_transform_bit_for_bit(jpegs):
    decoded = DecodedImages(jpegs, 32, 16)
    assert decoded.images.shape == (5, 3, 32, 16) and decoded.images.dtype == torch.uint8
    transform = build_test_transform(32, 16)
    expected = torch.stack([transform(Image.open(s.path).convert("RGB")) for s in jpegs])
    assert torch.equal(normalize_uint8(decoded.batch([0, 1, 2, 3, 4])), expected)
    assert torch.equal(decoded.batch([3, 1]), decoded.images[[3, 1]])


def test_decoded_images_move_to_a_device_and_batch_there(jpegs):
    decoded = DecodedImages(jpegs, 32, 16)
    device = "meta"  # a device other than the CPU that every machine has (shapes only)
    assert decoded.to(device) is decoded
    assert decoded.images.device.type == device
    # CPU indices (a tensor or a list) are moved to the images' device
    for index in (torch.tensor([4, 0]), [4, 0]):
        batch = decoded.batch(index)
        assert batch.device.type == device and batch.shape == (2, 3, 32, 16)


def test_decoded_images_name_a_corrupt_file(jpegs, tmp_path):
    bad = tmp_path / "0099_c1s1_000000_00.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="0099_c1s1"):
        DecodedImages([*jpegs, Sample(str(bad), 99, 0)], 32, 16)


def _images(b=64, h=32, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def test_no_augmentation_is_normalisation():
    x = _images()
    out = BatchAugment(flip_p=0, padding=0, erasing_p=0)(x, torch.Generator())
    assert torch.equal(out, normalize_uint8(x))


def test_flip_mirrors_about_half_the_images():
    x = _images(b=400)
    out = BatchAugment(flip_p=0.5, padding=0, erasing_p=0)(x, torch.Generator().manual_seed(1))
    plain, mirrored = normalize_uint8(x), normalize_uint8(x.flip(3))
    same = (out == plain).flatten(1).all(1)
    flipped = (out == mirrored).flatten(1).all(1)
    assert bool((same ^ flipped).all())  # each image is one or the other
    assert 160 < int(flipped.sum()) < 240


def test_pad_and_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = _images(b=200)
    p = 4
    out = BatchAugment(flip_p=0, padding=p, erasing_p=0)(x, torch.Generator().manual_seed(2))
    padded = normalize_uint8(torch.nn.functional.pad(x, (p, p, p, p)))
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 16])]
        assert found, f"image {i} is no window of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 40  # most of the 81 offsets occur in 200 draws


def test_erasing_zeroes_one_rectangle_of_the_expected_size():
    x = _images(b=400)
    out = BatchAugment(flip_p=0, padding=0, erasing_p=0.5)(x, torch.Generator().manual_seed(3))
    zero = (out == 0).all(1)  # pixels zero in all channels: x is never the mean colour
    erased = zero.flatten(1).any(1)
    assert 160 < int(erased.sum()) < 240
    for i in torch.nonzero(erased).flatten().tolist():
        ys, xs = torch.nonzero(zero[i], as_tuple=True)
        box = zero[i, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert bool(box.all()), "the erased pixels form one rectangle"
        assert 0.015 <= box.numel() / (32 * 16) <= 0.34
    kept = ~erased
    assert torch.equal(out[kept], normalize_uint8(x[kept]))


def test_same_generator_state_same_batch():
    x = _images()
    aug = BatchAugment()
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="flip_p"):
        BatchAugment(flip_p=1.5)
    with pytest.raises(ValueError, match="padding"):
        BatchAugment(padding=-1)
