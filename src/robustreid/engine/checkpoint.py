"""Checkpoints: written atomically, read with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from robustreid import __version__
from robustreid.io import atomic_write


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a robustreid checkpoint."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` ``payload`` (plus the package version) to ``path`` atomically.

    The payload must hold only tensors and plain Python values (dicts, lists, tuples,
    numbers, strings), so it loads with ``torch.load(weights_only=True)``.
    """
    data = {"robustreid_version": __version__, **payload}
    return atomic_write(path, lambda handle: torch.save(data, handle))


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
    return data
