"""Checkpoints: written atomically, read with clear errors."""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robustreid.errors import UserError
from robustreid.io import atomic_write
from robustreid.version import __version__

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


# What torch.load (2.x, weights_only=True) raises for a file that is damaged or not a
# checkpoint, measured on random bytes, truncated and byte-flipped checkpoints (zip and legacy
# format) and pickles of other objects: UnpicklingError (a foreign pickle, or bytes the safe
# unpickler refuses), RuntimeError (a damaged zip archive, from torch's own zip reader),
# EOFError (a stream cut short), UnicodeDecodeError and other ValueErrors, KeyError and
# IndexError (pickle opcodes referring to missing entries), struct.error (a record cut short),
# TypeError and AssertionError (torch's rebuild functions given wrong arguments), OSError
# (reading the file). MemoryError is not caught.
TORCH_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError,
    struct.error, TypeError, AssertionError, OSError,
)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80  # first byte of a pickle of protocol 2 or later (legacy torch.save)
_EXPECTED = "expected a checkpoint written by robustreid (e.g. runs/NAME/best.pth)"


def _torch_reason(err: BaseException) -> str:
    """One line for what torch.load raised (its weights-only messages run to paragraphs)."""
    text = str(err)
    detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    if detail:
        text = detail.group(1)
    lines = text.strip().splitlines()
    first = lines[0].strip() if lines else ""
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safe loading: no pickled code).

    Raises:
        CheckpointError: naming the file: it is missing or empty, not a PyTorch file (neither
            a zip archive nor a pickle, e.g. a text file), a damaged zip archive (a truncated
            copy), otherwise unreadable by torch.load or holding other Python
            objects (what torch.load raised, on one line), not robustreid's (no
            ``robustreid_version``), or of a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_ZIP_MAGIC))
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read: {err.strerror or err}") from err
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty; {_EXPECTED}")
    if head != _ZIP_MAGIC and head[0] != _PICKLE_PROTOCOL:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is neither a zip archive "
                              f"(what torch.save writes) nor a pickle; {_EXPECTED}")
    if head == _ZIP_MAGIC:
        try:  # reads the zip's directory only; torch's own reader gives "Invalid argument"
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as err:
            # NotImplementedError: a directory entry claims a zip version zipfile lacks
            raise CheckpointError(f"{path} is a damaged checkpoint: its zip archive cannot be "
                                  f"read ({err}; a copy cut short?); {_EXPECTED}") from err
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except TORCH_LOAD_ERRORS as err:
        raise CheckpointError(f"{path} is not a robustreid checkpoint (torch.load could not "
                              f"read it: {_torch_reason(err)}); {_EXPECTED}") from err
    if not isinstance(data, dict) or "robustreid_version" not in data:
        raise CheckpointError(f"{path} is not a robustreid checkpoint (no robustreid_version)")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not a robustreid checkpoint: its 'meta' is a "
                              f"{type(meta).__name__}, expected a dict")
    fmt = meta.get("format", data.get("format", 1))
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {fmt!r:.40}, written by robustreid "
            f"{str(data['robustreid_version'])[:40]}; this robustreid {__version__} reads "
            f"formats up to {CHECKPOINT_FORMAT}. Upgrade robustreid to load it."
        )
    return data
