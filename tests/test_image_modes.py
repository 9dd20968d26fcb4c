"""Every PIL mode reaches the model as the right 8-bit RGB, through every reading path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustreid.data.base import Sample, read_image, to_rgb
from robustreid.data.decoded import DecodedImages
from robustreid.evaluation.handcrafted import load_images
from robustreid.inference.extractor import Preprocess

H, W = 8, 6


def _grey_values(values: list[float], dtype: type) -> np.ndarray:
    """An H x W array of ``dtype`` whose rows cycle through ``values`` (one value a row)."""
    rows = np.array([values[i % len(values)] for i in range(H)], dtype=dtype)
    return np.repeat(rows[:, None], W, axis=1)


def _rgb(values: np.ndarray) -> np.ndarray:
    """H x W grey uint8 -> H x W x 3."""
    return np.repeat(values[..., None], 3, axis=-1).astype(np.uint8)


def _all_paths(path: Path) -> list[np.ndarray]:
    """The decoded H x W x 3 uint8 array of ``path`` through each reading path: read_image,
    the one-pass decoder (ImageDataset), the handcrafted loader."""
    img = read_image(path)
    h, w = img.height, img.width
    decoded = DecodedImages([Sample(str(path), 0, 0)], h, w).images[0].permute(1, 2, 0).numpy()
    handcrafted = load_images([path], size=(h, w))[0]
    return [np.asarray(img), decoded, handcrafted]


def _assert_reads_as(path: Path, expected: np.ndarray, atol: int = 0) -> None:
    for got in _all_paths(path):
        assert got.shape == expected.shape
        diff = np.abs(got.astype(int) - expected.astype(int))
        assert diff.max() <= atol, f"max difference {diff.max()} in {path.name}"


def test_uint16_png_scaled_not_white(tmp_path: Path) -> None:
    values = _grey_values([0, 257, 32768, 65535], np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    expected = _rgb(_grey_values([0, 1, 128, 255], np.uint8))
    _assert_reads_as(path, expected)
    got = np.asarray(read_image(path))
    assert got[2, 0, 0] == 128 and got[3, 0, 0] == 255 and got[0, 0, 0] == 0


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_uint16_byte_orders(mode: str) -> None:
    dtype = ">u2" if mode == "I;16B" else "<u2"
    values = _grey_values([0, 32768, 65535], np.uint16).astype(dtype)
    img = Image.frombytes(mode, (W, H), values.tobytes())
    assert img.mode == mode
    np.testing.assert_array_equal(np.asarray(to_rgb(img)),
                                  _rgb(_grey_values([0, 128, 255], np.uint8)))


def test_int32_tiff_16bit_range(tmp_path: Path) -> None:
    values = _grey_values([0, 32768, 65535, 70000, -5], np.int32)
    path = tmp_path / "int32.tif"
    Image.fromarray(values, mode="I").save(path)
    with Image.open(path) as im:
        assert im.mode == "I"
    # max > 255: taken as 0..65535, values beyond clipped.
    _assert_reads_as(path, _rgb(_grey_values([0, 128, 255, 255, 0], np.uint8)))


def test_int32_tiff_8bit_range(tmp_path: Path) -> None:
    values = _grey_values([0, 100, 255], np.int32)
    path = tmp_path / "int32_8bit.tif"
    Image.fromarray(values, mode="I").save(path)
    # max <= 255: taken as 8-bit values as they are.
    _assert_reads_as(path, _rgb(_grey_values([0, 100, 255], np.uint8)))


def test_float_tiff_unit_range(tmp_path: Path) -> None:
    values = _grey_values([0.0, 0.5, 1.0], np.float32)
    path = tmp_path / "float01.tif"
    Image.fromarray(values, mode="F").save(path)
    with Image.open(path) as im:
        assert im.mode == "F"
    _assert_reads_as(path, _rgb(_grey_values([0, 128, 255], np.uint8)))


def test_float_tiff_255_range_clipped(tmp_path: Path) -> None:
    values = _grey_values([0.0, 100.4, 255.0, 300.0, -3.0, np.nan], np.float32)
    path = tmp_path / "float255.tif"
    Image.fromarray(values, mode="F").save(path)
    _assert_reads_as(path, _rgb(_grey_values([0, 100, 255, 255, 0, 0], np.uint8)))


def test_grey_l_png(tmp_path: Path) -> None:
    values = _grey_values([0, 77, 200], np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(values, mode="L").save(path)
    _assert_reads_as(path, _rgb(values))


def test_bilevel_png(tmp_path: Path) -> None:
    values = _grey_values([0, 255], np.uint8)
    path = tmp_path / "bw.png"
    Image.fromarray(values, mode="L").convert("1").save(path)
    with Image.open(path) as im:
        assert im.mode == "1"
    _assert_reads_as(path, _rgb(values))


def test_la_png_composited_over_black(tmp_path: Path) -> None:
    grey = _grey_values([200, 200, 200], np.uint8)
    alpha = _grey_values([255, 0, 128], np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA").save(path)
    with Image.open(path) as im:
        assert im.mode == "LA"
    _assert_reads_as(path, _rgb(_grey_values([200, 0, 100], np.uint8)))


def test_rgba_png_composited_over_black(tmp_path: Path) -> None:
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 200, 250)
    rgba[: H // 2, :, 3] = 255
    rgba[H // 2:, :, 3] = 0  # transparent: black, not the stored colour
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    expected = np.zeros((H, W, 3), dtype=np.uint8)
    expected[: H // 2] = (10, 200, 250)
    _assert_reads_as(path, expected)


def test_palette_png(tmp_path: Path) -> None:
    indices = _grey_values([0, 1, 2], np.uint8)
    img = Image.fromarray(indices, mode="L").convert("P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata(indices.ravel().tolist())
    path = tmp_path / "palette.png"
    img.save(path)
    with Image.open(path) as im:
        assert im.mode == "P"
    colours = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)], dtype=np.uint8)
    _assert_reads_as(path, colours[indices])


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    indices = _grey_values([0, 1], np.uint8)
    img = Image.fromarray(indices, mode="L").convert("P")
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putdata(indices.ravel().tolist())
    path = tmp_path / "palette_t.png"
    img.save(path, transparency=1)  # index 1 fully transparent
    expected = np.zeros((H, W, 3), dtype=np.uint8)
    expected[indices == 0] = (255, 0, 0)
    _assert_reads_as(path, expected)


def test_cmyk_tiff(tmp_path: Path) -> None:
    cmyk = np.zeros((H, W, 4), dtype=np.uint8)
    cmyk[: H // 2] = (255, 0, 0, 0)  # cyan
    cmyk[H // 2:] = (0, 0, 0, 255)  # black
    path = tmp_path / "cmyk.tif"
    Image.fromarray(cmyk, mode="CMYK").save(path)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    expected = np.zeros((H, W, 3), dtype=np.uint8)
    expected[: H // 2] = (0, 255, 255)
    _assert_reads_as(path, expected)


def test_ycbcr_and_premultiplied_modes() -> None:
    rgb = Image.new("RGB", (W, H), (30, 140, 220))
    ycc = rgb.convert("YCbCr")
    assert ycc.mode == "YCbCr"
    np.testing.assert_allclose(np.asarray(to_rgb(ycc)).astype(int),
                               np.asarray(rgb).astype(int), atol=2)
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[...] = (100, 50, 20, 128)
    pre = Image.fromarray(rgba, mode="RGBA").convert("RGBa")
    assert pre.mode == "RGBa"
    np.testing.assert_allclose(np.asarray(to_rgb(pre)).astype(int),
                               np.full((H, W, 3), (50, 25, 10)), atol=1)
    la = Image.fromarray(np.stack([np.full((H, W), 200, np.uint8),
                                   np.full((H, W), 128, np.uint8)], -1), mode="LA")
    np.testing.assert_allclose(np.asarray(to_rgb(la.convert("La"))).astype(int),
                               np.full((H, W, 3), 100), atol=1)


def _quadrant_image() -> np.ndarray:
    """16 x 8 RGB with a distinct colour block in the top-left corner only."""
    a = np.full((16, 8, 3), 40, dtype=np.uint8)
    a[:8, :4] = (250, 250, 250)
    return a


@pytest.mark.parametrize("orientation", [3, 6])
def test_exif_orientation_applied(tmp_path: Path, orientation: int) -> None:
    array = _quadrant_image()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"oriented{orientation}.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    # 3: rotate 180; 6: the camera was turned, the upright image is rotated 90 clockwise.
    expected = np.rot90(array, 2) if orientation == 3 else np.rot90(array, -1)
    for got in _all_paths(path):
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected.astype(int)).mean() < 6
        # The bright block is where the orientation puts it.
        bright = got.mean(axis=-1) > 150
        assert bright[expected.mean(axis=-1) > 150].mean() > 0.9
        assert bright[expected.mean(axis=-1) < 150].mean() < 0.1


def test_preprocess_pil_and_path_agree_with_expected(tmp_path: Path) -> None:
    values = _grey_values([0, 32768, 65535], np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    expected = Image.fromarray(_rgb(_grey_values([0, 128, 255], np.uint8)))
    pre = Preprocess(16, 8)
    want = pre(expected)
    with Image.open(path) as img:
        from_pil = pre(img)
    torch.testing.assert_close(from_pil, want)
    torch.testing.assert_close(pre(path), want)
    assert from_pil.std() > 0.1  # not a constant (all-white) image


def test_preprocess_applies_exif_to_pil_image(tmp_path: Path) -> None:
    array = _quadrant_image()
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "oriented.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    pre = Preprocess(8, 16)  # the upright image is 8 x 16
    with Image.open(path) as img:
        from_pil = pre(img)
    torch.testing.assert_close(from_pil, pre(path))
    torch.testing.assert_close(from_pil, pre(Image.fromarray(np.rot90(array, -1).copy())),
                               atol=0.15, rtol=0)

