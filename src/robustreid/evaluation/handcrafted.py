"""Hand-crafted baselines: raw pixels and striped colour histograms.

These need no training and serve as sanity baselines (e.g. to calibrate SynthPerson): rank
a gallery by the Euclidean distance between these L2-normalised vectors. On Market-1501,
colour histograms of this kind reach roughly 8-15 % mAP.

Example::

    q = color_histogram_features(load_images(query_paths))
    g = color_histogram_features(load_images(gallery_paths))
    dist = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)  # or pairwise_euclidean(q, g)
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import numpy as np
from PIL import Image

from robustreid.data.base import read_image

__all__ = [
    "color_histogram_features",
    "load_images",
    "pairwise_euclidean",
    "raw_pixel_features",
    "rgb_to_hsv",
]


def load_images(paths: Sequence[str | PathLike[str]],
                size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """Read images as RGB (:func:`robustreid.data.base.read_image`) and resize them.

    Args:
        paths: image files.
        size: output ``(height, width)`` in pixels.

    Returns:
        ``uint8 (N, height, width, 3)``.

    Raises:
        DatasetError: an image is missing or unreadable (names the file).
    """
    h, w = size
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        im = read_image(p)
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        out[i] = np.asarray(im)
    return out


def _check_images(images: np.ndarray) -> np.ndarray:
    """Validate an (N, H, W, 3) uint8 batch."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    return images


def _l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32)


def raw_pixel_features(images: np.ndarray, size: tuple[int, int] = (32, 16)) -> np.ndarray:
    """Down-sampled, mean-centred RGB pixels.

    Args:
        images: ``uint8 (N, H, W, 3)`` RGB.
        size: ``(height, width)`` each image is resized to (box filter).

    Returns:
        ``float32 (N, height * width * 3)``, each row L2-normalised.
    """
    images = _check_images(images)
    h, w = size
    feats = np.empty((len(images), h * w * 3), dtype=np.float32)
    for i, img in enumerate(images):
        small = Image.fromarray(img).resize((w, h), Image.Resampling.BOX)
        v = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
        feats[i] = v - v.mean()
    return _l2_normalize(feats)


def rgb_to_hsv(images: np.ndarray) -> np.ndarray:
    """Vectorised RGB -> HSV.

    Args:
        images: ``uint8`` (or float in [0, 255]) array ``(..., 3)``.

    Returns:
        ``float32 (..., 3)``: hue in [0, 1) (cyclic), saturation and value in [0, 1].
    """
    rgb = np.asarray(images, dtype=np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    delta = mx - mn
    safe = np.where(delta > 0, delta, 1.0)
    hr = ((g - b) / safe) % 6.0
    hg = (b - r) / safe + 2.0
    hb = (r - g) / safe + 4.0
    hue = np.where(mx == r, hr, np.where(mx == g, hg, hb)) / 6.0
    hue = np.where(delta > 0, hue, 0.0) % 1.0
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    return np.stack([hue, sat, mx], axis=-1).astype(np.float32)


def color_histogram_features(images: np.ndarray, bins: tuple[int, int, int] = (8, 3, 3),
                             stripes: int = 6, space: str = "hsv", grey_bins: int = 4,
                             grey_saturation: float = 0.2) -> np.ndarray:
    """Joint colour histograms of horizontal stripes.

    Each image is cut into ``stripes`` equal horizontal bands; each band gets a joint
    histogram over the colour space with ``bins`` bins per channel, L1-normalised and then
    square-rooted (Hellinger mapping); the concatenation is L2-normalised. In HSV, pixels
    with saturation below ``grey_saturation`` (or value below 0.12), whose hue is
    meaningless, go to ``grey_bins`` extra value-only bins instead (``grey_bins=0``: off).

    Args:
        images: ``uint8 (N, H, W, 3)`` RGB, ``H >= stripes``.
        bins: bins per channel (H, S, V for ``"hsv"``; R, G, B for ``"rgb"``).
        stripes: horizontal bands.
        space: ``"hsv"`` or ``"rgb"``.
        grey_bins: extra bins for achromatic pixels (HSV only).
        grey_saturation: saturation below which a pixel counts as achromatic (HSV only).

    Returns:
        ``float32 (N, stripes * (prod(bins) + grey_bins))`` (``grey_bins`` only for HSV),
        each row L2-normalised.
    """
    images = _check_images(images)
    n, h, w, _ = images.shape
    if not 1 <= stripes <= h:
        raise ValueError(f"stripes must be in [1, {h}], got {stripes}")
    if space == "hsv":
        chans = rgb_to_hsv(images)
    elif space == "rgb":
        chans = images.astype(np.float32) / 256.0
    else:
        raise ValueError(f"space must be 'hsv' or 'rgb', got {space!r}")
    nb = np.asarray(bins, dtype=np.int64)
    if nb.shape != (3,) or (nb < 1).any():
        raise ValueError(f"bins must be three positive integers, got {bins}")
    idx = np.minimum((chans * nb).astype(np.int64), nb - 1)
    joint = (idx[..., 0] * nb[1] + idx[..., 1]) * nb[2] + idx[..., 2]  # (N, H, W)
    per = int(nb.prod())
    if space == "hsv" and grey_bins > 0:
        # hue is noise for (near-)grey pixels: give them their own value-only bins
        grey = (chans[..., 1] < grey_saturation) | (chans[..., 2] < 0.12)
        level = np.minimum((chans[..., 2] * grey_bins).astype(np.int64), grey_bins - 1)
        joint = np.where(grey, per + level, joint)
        per += grey_bins
    stripe_of_row = np.minimum(np.arange(h) * stripes // h, stripes - 1)
    cell = (np.arange(n)[:, None, None] * stripes + stripe_of_row[None, :, None]) * per + joint
    hist = np.bincount(cell.reshape(-1), minlength=n * stripes * per).astype(np.float64)
    hist = hist.reshape(n, stripes, per)
    hist /= np.maximum(hist.sum(axis=2, keepdims=True), 1.0)
    return _l2_normalize(np.sqrt(hist).reshape(n, stripes * per))


def pairwise_euclidean(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Euclidean distances ``float32 (Nq, Ng)`` between rows of two feature matrices."""
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    d2 = (q**2).sum(1)[:, None] + (g**2).sum(1)[None, :] - 2.0 * q @ g.T
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32)
