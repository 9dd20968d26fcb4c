"""Images decoded once per run, and the training augmentation applied to whole batches.

The classic re-ID input pipeline decodes and resizes every JPEG again at every step, in
DataLoader workers, and augments one PIL image at a time. On a small CPU that costs as much
as the network. Here a split is decoded and resized once (:class:`DecodedImages`, uint8
``N x 3 x H x W``, 24.6 kB an image at 128 x 64) and a batch is augmented as one tensor
(:class:`BatchAugment`) on whatever device the model runs on.

Test-time images come out bit-identical to ``build_test_transform`` (bicubic PIL resize,
``/255``, ImageNet normalisation). The training augmentation draws the same distributions
as ``build_train_transform`` (flip, zero padding + random crop, random erasing with
torchvision's scale and ratio ranges) from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

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


class BatchAugment:
    """The re-ID training augmentation on a whole uint8 batch.

    Per image, independently: horizontal flip with probability ``flip_p``; zero padding of
    ``padding`` pixels and a random ``H x W`` crop (every offset in ``[0, 2 padding]``
    equally likely); ImageNet normalisation; with probability ``erasing_p`` a rectangle of
    area ``U(0.02, 0.33)`` of the image and aspect ratio ``exp U(log 0.3, log 3.3)`` set to
    0 (the normalised mean), as torchvision's ``RandomErasing`` (10 tries, else nothing).

    Calling it maps ``B x 3 x H x W`` uint8 (any device) to float32 on that device. Random
    draws come from ``generator`` (a CPU generator), so a batch depends on the generator's
    state only, not on the device.
    """

    ERASE_SCALE = (0.02, 0.33)
    ERASE_RATIO = (0.3, 3.3)
    ERASE_TRIES = 10

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

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = images.shape
        dev = images.device
        if self.flip_p > 0:
            flip = (torch.rand(b, generator=generator) < self.flip_p).to(dev)
            images = torch.where(flip.view(b, 1, 1, 1), images.flip(3), images)
        if self.padding > 0:
            p = self.padding
            padded = torch.nn.functional.pad(images, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
            rows = (oy[:, None] + torch.arange(h, device=dev)).view(b, 1, h, 1)
            cols = (ox[:, None] + torch.arange(w, device=dev)).view(b, 1, 1, w)
            rows = rows.expand(b, 3, h, padded.shape[3])
            images = padded.gather(2, rows).gather(3, cols.expand(b, 3, h, w))
        out = normalize_uint8(images, self.mean, self.std)
        if self.erasing_p > 0:
            out = out * ~self._erase_mask(b, h, w, generator).to(dev).unsqueeze(1)
        return out

    def _erase_mask(self, b: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """``B x H x W`` bool, True inside each image's erased rectangle (if any)."""
        n = self.ERASE_TRIES
        lo, hi = self.ERASE_SCALE
        area = h * w * (lo + (hi - lo) * torch.rand(b, n, generator=generator))
        log_lo, log_hi = math.log(self.ERASE_RATIO[0]), math.log(self.ERASE_RATIO[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, n, generator=generator))
        eh = torch.sqrt(area * ratio).round().long()
        ew = torch.sqrt(area / ratio).round().long()
        fits = (eh < h) & (ew < w)
        first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((b,), -1))
        u = torch.rand(b, 2, generator=generator)
        apply = (torch.rand(b, generator=generator) < self.erasing_p) & (first >= 0)
        idx = first.clamp(min=0).unsqueeze(1)
        eh, ew = eh.gather(1, idx).squeeze(1), ew.gather(1, idx).squeeze(1)
        top = (u[:, 0] * (h - eh + 1).float()).long()
        left = (u[:, 1] * (w - ew + 1).float()).long()
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        inside = ((ys >= top.view(b, 1, 1)) & (ys < (top + eh).view(b, 1, 1))
                  & (xs >= left.view(b, 1, 1)) & (xs < (left + ew).view(b, 1, 1)))
        return inside & apply.view(b, 1, 1)
