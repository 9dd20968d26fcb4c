"""A torch Dataset over (path, pid, camid) samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from robustreid.data.base import Sample, read_image


class ImageDataset(Dataset):
    """Reads the images of ``samples`` and applies ``transform``.

    Item ``i`` is ``(image, pid, camid, i)``: the transformed image (normally a float tensor
    (3, H, W)), the person id (or pseudo-label) and the camera id as given in ``samples``, and
    the index, so a loader can map a batch back to its samples. A missing or corrupt image
    raises :class:`~robustreid.data.DatasetError` naming the file.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        path, pid, camid = self.samples[index]
        image = read_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, pid, camid, index
