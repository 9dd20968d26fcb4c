"""Feature extraction with a model over a list of samples."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from robustreid.data.base import Sample
from robustreid.data.dataset import ImageDataset
from robustreid.data.decoded import DecodedImages, normalize_uint8


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
    out: str | Path | None = None,
    out_dtype: type[np.floating] = np.float32,
) -> torch.Tensor:
    """Embed images decoded once (:class:`~robustreid.data.decoded.DecodedImages`).

    The same features as :func:`extract_features` with the test transform, without decoding
    the files again. A progress bar shows on a terminal (stderr) only.

    Args:
        out: a ``.npy`` path: each batch's features are written to this file (a memory map of
            ``out_dtype``) as soon as they are computed, instead of being collected in RAM;
            the file is replaced.
        out_dtype: ``np.float32`` or ``np.float16``, the file's dtype (with ``out`` only).

    Returns:
        (N, D) float32 tensor on the CPU, rows L2-normalised, in the order of ``images``; with
        ``out``, a tensor of ``out_dtype`` sharing the memory map of the file (its pages are
        read on use and may be dropped by the OS; do not write to it).
    """
    if out is not None:
        return _embed_to_file(model, images, batch_size=batch_size, device=device, flip=flip,
                              channels_last=channels_last, desc=desc, out=Path(out),
                              out_dtype=out_dtype)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc=desc, leave=False, disable=not sys.stderr.isatty()):
            batch = images.images[start:start + batch_size].to(device, non_blocking=True)
            batch = normalize_uint8(batch)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            chunks.append(embed_batch(model, batch, flip).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def _embed_to_file(model: nn.Module, images: DecodedImages, *, batch_size: int,
                   device: str | torch.device, flip: bool, channels_last: bool, desc: str,
                   out: Path, out_dtype: type[np.floating]) -> torch.Tensor:
    """:func:`embed_decoded` streaming the features into the ``.npy`` file ``out``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = len(images)
    out.parent.mkdir(parents=True, exist_ok=True)
    mm: np.memmap | None = None
    try:
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc=desc, leave=False, disable=not sys.stderr.isatty()):
            batch = images.images[start:start + batch_size].to(device, non_blocking=True)
            batch = normalize_uint8(batch)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            feats = embed_batch(model, batch, flip).cpu().numpy()
            if mm is None:  # the dimension is known after the first batch
                mm = np.lib.format.open_memmap(out, mode="w+", dtype=out_dtype,
                                               shape=(n, feats.shape[1]))
            mm[start:start + len(feats)] = feats
    finally:
        model.train(was_training)
    if mm is None:
        raise ValueError("embed_decoded: no images given")
    mm.flush()
    del mm
    return torch.from_numpy(np.load(out, mmap_mode="r+"))
