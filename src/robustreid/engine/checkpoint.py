"""Checkpoints: written atomically, read with clear errors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robustreid import __version__
from robustreid.errors import UserError
from robustreid.io import atomic_write

# Version of the checkpoint layout. Readers accept this format and older ones; a file from a
# newer robustreid (a higher format) is refused with a message saying which version wrote it.
CHECKPOINT_FORMAT = 1


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable or not a robustreid checkpoint."""


def model_meta(model_cfg: dict[str, Any], height: int, width: int, feature_dim: int,
               mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """What it takes to rebuild and feed a saved model, stored under ``"meta"``.

    Args:
        model_cfg: the ``model`` section of the training config (``arch``, ``last_stride``,
            ``pooling``, ``gem_p``, ``neck``, ...).
        height, width: input size in pixels.
        feature_dim: D, the embedding size.
        mean, std: per-channel normalisation of the [0, 1] RGB input.
    """
    return {
        "format": CHECKPOINT_FORMAT, "model": dict(model_cfg), "input_size": [height, width],
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "feature_dim": int(feature_dim), "robustreid_version": __version__,
    }


def previous_checkpoint_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint ``path`` held before the last
    write (``last.pth`` -> ``last.prev.pth``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | Path, payload: dict[str, Any], keep_previous: bool = False
                    ) -> Path:
    """``torch.save`` ``payload`` (plus the package version) to ``path`` atomically.

    The payload must hold only tensors and plain Python values (dicts, lists, tuples,
    numbers, strings), so it loads with ``torch.load(weights_only=True)``.

    With ``keep_previous``, the new file is read back and checked (it loads, with the
    payload's keys and epoch) before anything is replaced, and the file ``path`` held is
    then kept as :func:`previous_checkpoint_path` (one generation), so a damaged or lost
    ``path`` still leaves a full checkpoint to resume from.
    """
    path = Path(path)
    data = {"robustreid_version": __version__, **payload}

    def verify_and_keep_previous(tmp: Path) -> None:
        written = load_checkpoint(tmp)
        if set(written) != set(data) or written.get("epoch") != data.get("epoch"):
            raise CheckpointError(f"checkpoint {path} did not read back as written "
                                  f"(keys {sorted(written)}, epoch {written.get('epoch')})")
        if path.is_file():
            os.replace(path, previous_checkpoint_path(path))

    return atomic_write(path, lambda handle: torch.save(data, handle),
                        before_replace=verify_and_keep_previous if keep_previous else None)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safe loading: no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} could not be read: {err}") from err
    if not isinstance(data, dict) or "robustreid_version" not in data:
        raise CheckpointError(f"{path} is not a robustreid checkpoint (no robustreid_version)")
    fmt = data.get("meta", {}).get("format", data.get("format", 1))
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {fmt!r}, written by robustreid "
            f"{data['robustreid_version']}; this robustreid {__version__} reads formats up to "
            f"{CHECKPOINT_FORMAT}. Upgrade robustreid to load it."
        )
    return data
