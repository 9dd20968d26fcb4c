"""Load a trained model in one call and embed images of any common kind.

    >>> import robustreid
    >>> extractor = robustreid.load("runs/synthperson/best.pth", device="cpu")
    >>> feats = extractor(["a.jpg", "gallery_folder/", pil_image, numpy_hwc, tensor_chw])
    >>> feats.shape  # (N, D), rows L2-normalised, float32 on the CPU

A checkpoint written by the trainer describes itself (``"meta"``: architecture, input size,
normalisation, feature dimension, package version, plus the training config), so nothing else
is needed to load it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from tqdm import tqdm

from robustreid.checkpoint import CheckpointError, load_checkpoint
from robustreid.data.base import read_image, to_rgb
from robustreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform
from robustreid.evaluation.features import embed_batch
from robustreid.inference.collect import collect_images
from robustreid.utils import resolve_device

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


def expand_inputs(inputs: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """Flatten ``inputs`` into a list of single images.

    Each path is collected on its own by
    :func:`~robustreid.inference.collect.collect_images`, the rules every command shares: a
    folder becomes its images (recursive, sorted, hidden names skipped), a ``.txt`` list file
    the paths it names, a glob pattern its matches, a file itself (a path given twice stays
    twice: one row per input). A 4-D array or tensor (a batch) becomes its items; lists and
    tuples are expanded element by element.

    Raises:
        UserError: a path that does not exist, a folder without images, a glob that matches
            nothing, or a bad list file.
        TypeError: an input of another kind.
    """
    out: list[ImageInput] = []
    for item in _iter_inputs(inputs):
        if isinstance(item, str | Path):
            out.extend(collect_images(item))
        elif isinstance(item, np.ndarray | torch.Tensor) and item.ndim == 4:
            out.extend(item)
        else:
            out.append(item)
    return out


def _iter_inputs(inputs: Any) -> Iterator[Any]:
    if isinstance(inputs, list | tuple):
        for item in inputs:
            yield from _iter_inputs(item)
    elif isinstance(inputs, str | Path | Image.Image | np.ndarray | torch.Tensor):
        yield inputs
    else:
        raise TypeError(
            f"cannot embed an input of type {type(inputs).__name__}: expected a path (file or "
            "folder), a PIL image, a numpy array (H x W x 3 uint8 RGB), a tensor (3 x H x W, "
            "values in [0, 1]) or a list of these"
        )


@dataclass
class Preprocess:
    """Single image -> normalised float tensor (3, height, width), the test transform.

    Paths and PIL images go through PIL (bicubic resize), exactly as in training and
    evaluation. Numpy arrays must be H x W x 3 (or H x W, grey) ``uint8`` RGB, or floats in
    [0, 1]; tensors must be 3 x H x W floats in [0, 1] (or ``uint8``). Arrays and tensors are
    resized as tensors (bicubic, antialiased), which matches PIL to about 1/255 per pixel.
    """

    height: int
    width: int
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        self._pil_transform = build_test_transform(self.height, self.width, self.mean, self.std)

    def __call__(self, item: ImageInput) -> torch.Tensor:
        if isinstance(item, str | Path):
            return self._pil_transform(read_image(item))
        if isinstance(item, Image.Image):
            return self._pil_transform(to_rgb(item))
        tensor = self._as_chw_float(item)
        tensor = TF.resize(tensor, [self.height, self.width],
                           interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return TF.normalize(tensor.clamp(0.0, 1.0), self.mean, self.std)

    @staticmethod
    def _as_chw_float(item: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(item, np.ndarray):
            array = item[..., None].repeat(3, axis=-1) if item.ndim == 2 else item
            if array.ndim != 3 or array.shape[-1] != 3:
                raise ValueError(f"numpy image must be H x W x 3 (RGB) or H x W, got shape "
                                 f"{item.shape}")
            tensor = torch.from_numpy(np.require(array, requirements=["C", "W"])).permute(2, 0, 1)
        elif isinstance(item, torch.Tensor):
            tensor = item.detach().cpu()
            if tensor.ndim != 3 or tensor.shape[0] != 3:
                raise ValueError(f"tensor image must be 3 x H x W, got shape "
                                 f"{tuple(item.shape)}")
        else:
            raise TypeError(f"cannot embed an input of type {type(item).__name__}")
        if tensor.dtype == torch.uint8:
            return tensor.float() / 255.0
        if not tensor.is_floating_point():
            raise ValueError(f"image values must be uint8 or floats in [0, 1], got {tensor.dtype}")
        return tensor.float()


class FeatureExtractor:
    """A trained re-ID model with its preprocessing: images in, L2-normalised features out.

    Args:
        model: maps (B, 3, H, W) to (B, D).
        height, width: model input size in pixels.
        mean, std: per-channel normalisation of the [0, 1] RGB input.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:1"``, ...
        batch_size: images per forward pass.
        flip: average the features of each image and its mirror image (then normalise).
        meta: the checkpoint's self-description, kept for reference.
    """

    def __init__(self, model: nn.Module, height: int, width: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 device: str | torch.device = "cpu", batch_size: int = 64,
                 flip: bool = False, meta: dict[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = Preprocess(height, width, tuple(mean), tuple(std))
        self.batch_size = batch_size
        self.flip = flip
        self.meta = meta or {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        **kwargs: Any) -> FeatureExtractor:
        """Rebuild the model a robustreid checkpoint describes and load its weights.

        ``kwargs`` go to the constructor (``batch_size``, ``flip``).

        Raises:
            CheckpointError: see :func:`model_from_checkpoint`.
        """
        model, meta = model_from_checkpoint(path)
        height, width = meta["input_size"]
        return cls(model, height, width, meta["mean"], meta["std"], device=device,
                   meta=meta, **kwargs)

    @property
    def feature_dim(self) -> int:
        return int(self.meta.get("feature_dim") or getattr(self.model, "feature_dim", 0))

    @torch.no_grad()
    def __call__(self, inputs: ImageInput | Iterable[ImageInput],
                 progress: bool = False) -> torch.Tensor:
        """Embed ``inputs`` (see :func:`expand_inputs`): (N, D) float32 on the CPU, rows
        L2-normalised, in input order (folders in sorted path order)."""
        items = expand_inputs(inputs)
        if not items:
            raise ValueError("no images given")
        chunks = []
        starts = range(0, len(items), self.batch_size)
        for start in tqdm(starts, desc="embed", disable=not progress, leave=False):
            batch = torch.stack([self.preprocess(x) for x in items[start:start + self.batch_size]])
            chunks.append(self.embed_batch(batch))
        return torch.cat(chunks)

    @torch.no_grad()
    def embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) L2-normalised features on the CPU."""
        return embed_batch(self.model, batch.to(self.device), self.flip).cpu()


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model a robustreid checkpoint describes, with its trained weights (on the CPU, in
    training mode as built), and the checkpoint's self-description (:func:`checkpoint_meta`:
    architecture, input size, normalisation).

    Raises:
        CheckpointError: missing, unreadable, foreign or newer-format file, or weights
            that do not fit the described architecture.
    """
    from robustreid.models import build_model_from_spec

    ckpt = load_checkpoint(path)
    meta = checkpoint_meta(ckpt, path)
    model_cfg = meta["model"]
    try:
        model = build_model_from_spec(model_cfg, pretrained="none")
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the model it describes "
            f"({model_cfg.get('arch')!r}): {err}"
        ) from err
    return model, meta


def checkpoint_meta(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> dict[str, Any]:
    """The self-description of a loaded checkpoint; for files written before ``"meta"``
    existed, rebuilt from their training config.

    Raises:
        CheckpointError: no model weights, or neither ``meta`` nor a config to describe them.
    """
    if "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no model weights (key 'model')")
    if "meta" in ckpt:
        return ckpt["meta"]
    config = ckpt.get("config")
    if not config:
        raise CheckpointError(
            f"checkpoint {path} does not describe its model (no 'meta' and no 'config'); "
            "was it written by robustreid's trainer?"
        )
    return {
        "format": 1, "model": config["model"],
        "input_size": [config["data"]["height"], config["data"]["width"]],
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "feature_dim": None,
        "robustreid_version": ckpt.get("robustreid_version"),
    }


def load(path: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> FeatureExtractor:
    """Load a robustreid checkpoint as a :class:`FeatureExtractor` (see
    :meth:`FeatureExtractor.from_checkpoint`)."""
    return FeatureExtractor.from_checkpoint(path, device=device, **kwargs)
