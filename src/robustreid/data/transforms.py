"""Image transforms as used in person re-ID training and testing."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision.transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_test_transform(
    height: int,
    width: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """PIL image -> normalised float tensor (3, height, width): bicubic resize, normalise."""
    return T.Compose(
        [
            T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def build_train_transform(
    height: int,
    width: int,
    *,
    flip_p: float = 0.5,
    padding: int = 10,
    erasing_p: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """The field's training augmentation, PIL image -> tensor (3, height, width).

    Bicubic resize, horizontal flip (probability ``flip_p``), zero padding of ``padding``
    pixels then a random crop back to (height, width), normalisation, and random erasing of a
    rectangle (probability ``erasing_p``; the erased pixels get 0, the normalised mean).
    """
    steps: list[object] = [T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC)]
    if flip_p > 0:
        steps.append(T.RandomHorizontalFlip(p=flip_p))
    if padding > 0:
        steps += [T.Pad(padding), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if erasing_p > 0:
        steps.append(T.RandomErasing(p=erasing_p, value=0))
    return T.Compose(steps)
