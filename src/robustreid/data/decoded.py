"""Images decoded once per run, and the training augmentation applied to whole batches.

The classic re-ID input pipeline decodes and resizes every JPEG again at every step, in
DataLoader workers, and augments one PIL image at a time. On a small CPU that costs as much
as the network. Here a split is decoded and resized once (:class:`DecodedImages`, uint8
``N x 3 x H x W``, 24.6 kB an image at 128 x 64) and a batch is augmented as one tensor
(:class:`BatchAugment`) on whatever device the model runs on.

Test-time images come out bit-identical to ``build_test_transform`` (bicubic PIL resize,
``/255``, ImageNet normalisation). The training augmentation draws the same distributions
as ``build_train_transform`` (flip, zero padding + random crop, random erasing with
torchvision's scale and ratio ranges), each image from its own random key
(:func:`sample_keys`), so an image's augmentation does not depend on the batch it is in.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader
from tqdm import tqdm

from robustreid.data.base import DatasetError, Sample
from robustreid.data.dataset import ImageDataset
from robustreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def resize_to_uint8(height: int, width: int) -> T.Compose:
    """PIL image -> uint8 tensor (3, height, width), resized as by the test transform."""
    return T.Compose([T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
                      T.PILToTensor()])


class DecodedImages:
    """Every image of ``samples`` decoded and resized once, kept as one uint8 tensor.

    Args:
        samples: the images, in order.
        height, width: output size in pixels.
        num_workers: DataLoader workers for the one decoding pass.
        desc: label of the progress bar (shown only when stderr is a terminal).

    Attributes:
        images: ``N x 3 x height x width`` uint8 (on the CPU, or where :meth:`to` put it).

    A missing or corrupt image raises :class:`~robustreid.data.DatasetError` naming it (and
    how many others are bad), after the pass, without a worker process's traceback.
    """

    def __init__(self, samples: Sequence[Sample], height: int, width: int, *,
                 num_workers: int = 0, desc: str = "decode") -> None:
        if not samples:
            raise ValueError(f"{desc}: no samples to decode")
        loader = DataLoader(_DecodeOrReport(samples, height, width),
                            batch_size=256, shuffle=False, num_workers=num_workers)
        self.images = torch.empty((len(samples), 3, height, width), dtype=torch.uint8)
        start = 0
        problems: list[str] = []
        for batch, errors in tqdm(loader, desc=desc, leave=False,
                                  disable=not sys.stderr.isatty()):
            self.images[start:start + len(batch)] = batch
            start += len(batch)
            problems += [e for e in errors if e]
        if problems:
            raise DatasetError(f"{desc}: {len(problems)} of {len(samples)} images cannot be "
                               f"decoded; first: {problems[0]}")

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> DecodedImages:
        """Keep the images on ``device`` (e.g. a GPU: batches are then gathered there, with
        no host-to-device copy per batch); returns ``self``."""
        self.images = self.images.to(device)
        return self

    def batch(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """``B`` row indices -> ``B x 3 x H x W`` uint8 images, on the images' device."""
        index = torch.as_tensor(indices, dtype=torch.long).to(self.images.device)
        return self.images[index]


class _DecodeOrReport(ImageDataset):
    """Item ``i``: (uint8 image (3, H, W), "") or, for an unreadable file, (zeros, the
    error's message): a worker reports a bad image instead of raising through the
    DataLoader (whose message would carry the worker's traceback)."""

    def __init__(self, samples: Sequence[Sample], height: int, width: int) -> None:
        super().__init__(samples, resize_to_uint8(height, width))
        self.shape = (3, height, width)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:  # type: ignore[override]
        try:
            return super().__getitem__(index)[0], ""
        except DatasetError as err:
            return torch.zeros(self.shape, dtype=torch.uint8), str(err)


def normalize_uint8(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """``B x 3 x H x W`` uint8 -> float32 ``(x / 255 - mean) / std`` on the same device."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.float().div(255).sub(m).div(s)


_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, the SplitMix64 increment
_MASK64 = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (a bijection that scrambles every bit)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_keys(*path: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """One 64-bit random key per sample from integer coordinates, e.g. ``(seed, epoch, step,
    positions)``: ``(B,)`` uint64, a hash of the whole path (every coordinate a scalar or a
    ``(B,)`` vector, non-negative). Equal paths give equal keys on any machine; distinct
    paths give unrelated ones."""
    key = np.zeros(1, dtype=np.uint64)
    for part in path:
        if isinstance(part, int | np.integer):
            values = np.array([int(part) & _MASK64], dtype=np.uint64)
        else:
            values = np.asarray(part, dtype=np.int64).astype(np.uint64)
        with np.errstate(over="ignore"):
            key = _mix64((key ^ values) + np.uint64(_GOLDEN))
    return np.atleast_1d(key)


def key_uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """``(B, count)`` float64 uniforms in [0, 1) drawn from each sample's key alone (a
    counter-based generator: draw ``j`` of key ``k`` is ``SplitMix64(k + (j + 1) golden)``)."""
    counters = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
    with np.errstate(over="ignore"):
        bits = _mix64(keys.astype(np.uint64)[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class BatchAugment:
    """The re-ID training augmentation on a whole uint8 batch.

    Per image, independently: horizontal flip with probability ``flip_p``; zero padding of
    ``padding`` pixels and a random ``H x W`` crop (every offset in ``[0, 2 padding]``
    equally likely); ImageNet normalisation; with probability ``erasing_p`` a rectangle of
    area ``U(0.02, 0.33)`` of the image and aspect ratio ``exp U(log 0.3, log 3.3)`` set to
    0 (the normalised mean), as torchvision's ``RandomErasing`` (10 tries, else nothing).

    Calling it maps ``B x 3 x H x W`` uint8 (any device) to float32 on that device. Each
    image's random draws come from its own key (``keys``: ``(B,)`` uint64, see
    :func:`sample_keys`; the trainer uses (seed, epoch, step, position in the whole
    batch)), so an image is augmented the same whichever batch, process or device it is
    in. A ``torch.Generator`` may be passed instead: it draws the keys.
    """

    ERASE_SCALE = (0.02, 0.33)
    ERASE_RATIO = (0.3, 3.3)
    ERASE_TRIES = 10
    # uniforms per image: flip, 2 crop offsets, erasing (2 x tries, 2 position, 1 apply)
    DRAWS = 3 + 2 * ERASE_TRIES + 3

    def __init__(self, flip_p: float = 0.5, padding: int = 10, erasing_p: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if not 0.0 <= flip_p <= 1.0 or not 0.0 <= erasing_p <= 1.0:
            raise ValueError(f"flip_p and erasing_p must be in [0, 1], got {flip_p}, "
                             f"{erasing_p}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.flip_p, self.padding, self.erasing_p = flip_p, padding, erasing_p
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, images: torch.Tensor,
                 keys: np.ndarray | torch.Generator) -> torch.Tensor:
        b, _, h, w = images.shape
        dev = images.device
        if isinstance(keys, torch.Generator):
            keys = torch.randint(-(1 << 63), (1 << 63) - 1, (b,), generator=keys,
                                 dtype=torch.int64).numpy().view(np.uint64)
        if len(keys) != b:
            raise ValueError(f"keys must hold one key per image ({b}), got {len(keys)}")
        u = key_uniforms(keys, self.DRAWS)
        if self.flip_p > 0:
            flip = torch.from_numpy(u[:, 0] < self.flip_p).to(dev)
            images = torch.where(flip.view(b, 1, 1, 1), images.flip(3), images)
        if self.padding > 0:
            p = self.padding
            padded = torch.nn.functional.pad(images, (p, p, p, p))
            offsets = torch.from_numpy(np.floor(u[:, 1:3] * (2 * p + 1)).astype(np.int64))
            oy, ox = offsets.to(dev).unbind(1)
            rows = (oy[:, None] + torch.arange(h, device=dev)).view(b, 1, h, 1)
            cols = (ox[:, None] + torch.arange(w, device=dev)).view(b, 1, 1, w)
            rows = rows.expand(b, 3, h, padded.shape[3])
            images = padded.gather(2, rows).gather(3, cols.expand(b, 3, h, w))
        out = normalize_uint8(images, self.mean, self.std)
        if self.erasing_p > 0:
            out = out * ~self._erase_mask(h, w, u[:, 3:], dev).unsqueeze(1)
        return out

    def _erase_mask(self, h: int, w: int, u: np.ndarray,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """``B x H x W`` bool on ``device``, True inside each image's erased rectangle (if
        any), from ``u``: ``(B, 2 tries + 3)`` uniforms."""
        b, n = u.shape[0], self.ERASE_TRIES
        lo, hi = self.ERASE_SCALE
        area = h * w * (lo + (hi - lo) * u[:, :n])
        log_lo, log_hi = math.log(self.ERASE_RATIO[0]), math.log(self.ERASE_RATIO[1])
        ratio = np.exp(log_lo + (log_hi - log_lo) * u[:, n:2 * n])
        eh = np.rint(np.sqrt(area * ratio)).astype(np.int64)
        ew = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        fits = (eh < h) & (ew < w)
        first = np.where(fits.any(1), fits.argmax(1), -1)
        apply = (u[:, 2 * n + 2] < self.erasing_p) & (first >= 0)
        idx = np.clip(first, 0, None)[:, None]
        eh = np.take_along_axis(eh, idx, 1)[:, 0]
        ew = np.take_along_axis(ew, idx, 1)[:, 0]
        top = (u[:, 2 * n] * (h - eh + 1)).astype(np.int64)
        left = (u[:, 2 * n + 1] * (w - ew + 1)).astype(np.int64)
        # an image without erasing gets an empty box; the mask itself is built on the device
        bottom, right = np.where(apply, top + eh, top), left + ew
        box = torch.from_numpy(np.stack([top, bottom, left, right], 1)).to(device)
        ys = torch.arange(h, device=device).view(1, h, 1)
        xs = torch.arange(w, device=device).view(1, 1, w)
        top_t, bottom_t, left_t, right_t = (v.view(b, 1, 1) for v in box.unbind(1))
        return (ys >= top_t) & (ys < bottom_t) & (xs >= left_t) & (xs < right_t)
