"""Feature matrices of any size: in-memory arrays, tensors, memory-mapped ``.npy`` files.

The pseudo-labelling reads features only through these helpers, chunk by chunk, so an
``(N, D)`` float16 file of a million rows is never copied whole into RAM (a float32 copy of
1,000,000 x 2048 features would be 8 GB).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustreid.errors import UserError

__all__ = ["open_features", "validate_features", "rows_float32", "num_rows", "CHUNK_ROWS"]

# Rows converted at once by the chunked passes (16384 x 2048 float32 = 128 MiB).
CHUNK_ROWS = 16384


def open_features(features: Any) -> Any:
    """``features`` ready to be read in chunks.

    Args:
        features: an ``(N, D)`` numpy array (a ``np.memmap`` included), a torch tensor on any
            device, or the path (``str`` / ``os.PathLike``) of a ``.npy`` file, which is
            opened as a read-only memory map (nothing is read yet).

    Returns:
        The array or tensor itself, or the ``np.memmap`` of the file.

    Raises:
        UserError: a path that is not a readable ``.npy`` file.
    """
    if isinstance(features, (str, os.PathLike)):
        path = Path(features)
        if path.suffix != ".npy" or not path.is_file():
            raise UserError(f"features file {str(path)!r}: expected an existing .npy file "
                            f"holding an (N, D) float array")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise UserError(f"features file {str(path)!r} is not a readable .npy array: "
                            f"{err}") from None
    return features


def num_rows(features: Any) -> int:
    """``N`` of an ``(N, D)`` array or tensor."""
    return int(features.shape[0])


def rows_float32(features: Any, rows: slice | np.ndarray,
                 out: np.ndarray | None = None) -> np.ndarray:
    """The selected rows of ``features`` as a C-contiguous float32 ``(m, D)`` numpy array.

    Args:
        features: ``(N, D)`` numpy array, memory map or tensor (any device).
        rows: a slice or an int array of row indices (sorted indices read a memory map
            fastest).
        out: optional float32 buffer with at least ``m`` rows to fill (no new allocation).
    """
    if isinstance(features, torch.Tensor):
        index = rows if isinstance(rows, slice) else torch.as_tensor(rows, device=features.device)
        block = features[index].detach().to("cpu", torch.float32).numpy()
    elif (out is not None and not isinstance(rows, slice) and features.dtype == np.float32
          and len(rows) and 0 <= np.min(rows) and np.max(rows) < len(features)):
        # float32 rows gathered straight into the buffer, no temporary block ("clip" is not
        # buffered; the indices were checked above)
        view = out[: len(rows)]
        np.take(features, np.asarray(rows, dtype=np.intp), axis=0, out=view, mode="clip")
        return view
    else:
        block = features[rows]
    if out is None:
        out = np.empty(block.shape, dtype=np.float32)
    view = out[: block.shape[0]]
    if block.dtype == np.float16:
        # torch converts float16 about 10x faster than numpy; the source is only read
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memory map
            torch.from_numpy(view).copy_(torch.from_numpy(np.ascontiguousarray(block)))
    else:
        view[...] = block
    return view


def validate_features(features: Any) -> None:
    """Raise ``ValueError`` unless ``features`` is a finite, non-empty, numeric 2-D array.

    Checked in chunks of :data:`CHUNK_ROWS` rows, so a memory-mapped file is read once
    without a full-size temporary.

    Args:
        features: ``(N, D)`` numpy array / memory map or torch tensor.
    """
    shape = tuple(features.shape) if hasattr(features, "shape") else None
    if shape is None:
        raise ValueError("features must be a numpy array or a torch tensor of shape (N, D)")
    if len(shape) != 2:
        raise ValueError(f"features must be 2-D of shape (N, D), got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"features must have N >= 1 rows and D >= 1 columns, got {shape}")
    if isinstance(features, torch.Tensor):
        finite = True
        if torch.is_floating_point(features):  # integers are always finite
            step = max(1, CHUNK_ROWS * 256 // max(1, shape[1]))
            for start in range(0, shape[0], step):  # no full-size boolean temporary
                if not bool(torch.isfinite(features[start:start + step]).all()):
                    finite = False
                    break
    else:
        if not np.issubdtype(features.dtype, np.number):
            raise ValueError(f"features must be numeric, got dtype {features.dtype}")
        finite = True
        if np.issubdtype(features.dtype, np.floating):
            step = max(1, CHUNK_ROWS * 256 // max(1, shape[1]))
            for start in range(0, shape[0], step):
                block = features[start:start + step]
                # the sum of a chunk is finite iff every entry is (the sum of float16 rows
                # could overflow, so it is taken in float32)
                if not np.isfinite(block.sum(dtype=np.float64)):
                    finite = bool(np.isfinite(block).all())
                    if not finite:
                        break
    if not finite:
        raise ValueError("features contain NaN or infinite values")
