"""Feature extraction with a model over a list of samples."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from robustreid.data.base import Sample
from robustreid.data.dataset import ImageDataset
from robustreid.data.decoded import DecodedImages, normalize_uint8
from robustreid.io import atomic_write


def embed_batch(model: nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, D) L2-normalised float32 features, on the images' device.

    With ``flip``, the features of the image and of its horizontal mirror are summed before
    normalising (flip averaging). The model's train/eval mode and autograd are the caller's.
    """
    feats = model(images).float()
    if flip:
        feats = feats + model(torch.flip(images, dims=[3])).float()
    return F.normalize(feats, dim=1)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    samples: Sequence[Sample],
    transform: Callable,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    flip: bool = False,
    progress: bool = False,
    desc: str = "extract",
) -> torch.Tensor:
    """Embed every sample with ``model`` in eval mode.

    Args:
        model: maps a batch (B, 3, H, W) to features (B, D); it is moved to ``device``
            and left in eval mode with its previous train/eval state restored afterwards.
        samples: the images, in order.
        transform: PIL image -> tensor (3, H, W) (normally the test transform).
        flip: also embed the horizontally flipped image and average the two.

    Returns:
        (N, D) float32 tensor on the CPU, rows L2-normalised, in the order of ``samples``.
    """
    device = torch.device(device)
    loader = DataLoader(
        ImageDataset(samples, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for images, _, _, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
            images = images.to(device, non_blocking=True)
            chunks.append(embed_batch(model, images, flip).cpu())
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("extract_features: no samples given")
    return torch.cat(chunks)


@torch.no_grad()
def embed_decoded(
    model: nn.Module,
    images: DecodedImages,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    flip: bool = False,
    channels_last: bool = False,
    desc: str = "extract",
    shard: tuple[int, int] = (0, 1),
    progress: bool | None = None,
    out: str | Path | None = None,
    out_dtype: type[np.floating] = np.float32,
) -> torch.Tensor:
    """Embed images decoded once (:class:`~robustreid.data.decoded.DecodedImages`).

    The same features as :func:`extract_features` with the test transform, without decoding
    the files again. A progress bar shows when ``progress`` (default: stderr is a terminal).

    Args:
        shard: ``(rank, world)``: embed only the batches ``rank, rank + world, ...`` of
            ``batch_size`` images (:func:`robustreid.distributed.round_robin_blocks`), each
            exactly as the whole run embeds it; ``(0, 1)`` = every image.
        out: a ``.npy`` path: each batch's features are written to this file (a memory map of
            ``out_dtype``) as soon as they are computed, instead of being collected in RAM;
            the file is replaced.
        out_dtype: ``np.float32`` or ``np.float16``, the file's dtype (with ``out`` only).

    Returns:
        (N, D) float32 tensor on the CPU, rows L2-normalised, in the order of ``images``
        (with a shard: the shard's rows, in order); with ``out``, a tensor of ``out_dtype``
        sharing the memory map of the file (its pages are read on use and may be dropped by
        the OS; do not write to it).
    """
    if out is not None and shard != (0, 1):
        raise ValueError(f"embed_decoded: out= needs the whole data set, got shard={shard}")
    device = torch.device(device)
    rank, world = shard
    if progress is None:
        progress = sys.stderr.isatty()

    def batches() -> Iterator[torch.Tensor]:
        """(B, D) features of the shard's batches, in order, on the CPU."""
        was_training = model.training
        model.eval()
        try:
            starts = range(rank * batch_size, len(images), world * batch_size)
            for start in tqdm(starts, desc=desc, leave=False, disable=not progress):
                batch = images.images[start:start + batch_size].to(device, non_blocking=True)
                batch = normalize_uint8(batch)
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                yield embed_batch(model, batch, flip).cpu()
        finally:
            model.train(was_training)

    if out is not None:
        if len(images) == 0:
            raise ValueError("embed_decoded: no images given")

        def stream(handle: IO[bytes]) -> None:
            for i, feats in enumerate(batches()):
                if i == 0:  # the dimension is known after the first batch
                    np.lib.format.write_array_header_1_0(handle, {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(out_dtype)),
                        "fortran_order": False, "shape": (len(images), feats.shape[1])})
                handle.write(feats.numpy().astype(out_dtype).tobytes())

        # a new file replaces the old one: a previous memory map of ``out`` stays valid
        atomic_write(out, stream)
        return torch.from_numpy(np.load(out, mmap_mode="r+"))
    chunks = list(batches())
    if not chunks:  # a shard with no batch (more processes than batches)
        dim = getattr(model, "feature_dim", 0)
        return torch.zeros(0, dim)
    return torch.cat(chunks)
