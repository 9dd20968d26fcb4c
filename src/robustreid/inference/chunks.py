"""The resumable chunk store of :func:`~robustreid.inference.embed.embed_images`.

An embedding run over N input files is cut into chunks of ``chunk_size`` files. Each finished
chunk is written atomically to ``OUT.partial/chunk_NNNNN.npz`` (:func:`partial_dir`) next to a
``manifest.json`` describing the run: its :func:`run_fingerprint` (all input paths with their sizes
and modification times, a hash of the model weights and the preprocessing), the chunk size and
the input paths. A rerun with the same fingerprint loads the finished chunks
(:func:`load_chunk`) and computes only the missing ones; a manifest of another run is refused
(:func:`open_manifest`) rather than mixed in, and a damaged or foreign chunk file is removed and
recomputed.

A chunk file holds ``features`` (k, D) float32 for the input positions ``index`` (k,) int64,
``skipped_index`` (s,) int64 and ``skipped_reason`` (s,) str for the files that could not be
read, and ``digest`` (a 0-d str, the run's :func:`run_digest`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustreid.errors import UserError
from robustreid.inference.embeddings_file import EmbeddingsFileError, read_npz_arrays
from robustreid.inference.extractor import FeatureExtractor
from robustreid.io import atomic_write, atomic_write_text

__all__ = [
    "CHUNK_KEYS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "PARTIAL_KIND",
    "Chunk",
    "chunk_path",
    "describe_difference",
    "discard_finished",
    "load_chunk",
    "open_manifest",
    "partial_dir",
    "run_digest",
    "run_fingerprint",
    "save_chunk",
]

logger = logging.getLogger(__name__)

PARTIAL_KIND = "robustreid-embed-partial"
MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.json"
CHUNK_KEYS = ("features", "index", "skipped_index", "skipped_reason", "digest")


def partial_dir(out_path: str | Path) -> Path:
    """The sidecar folder holding the finished chunks of an unfinished run: ``OUT.partial``."""
    return Path(f"{out_path}.partial")


@dataclass
class Chunk:
    """One chunk's results: ``features`` (k, D) float32 for the input positions ``index``
    (k,) int64, and (position, reason) for the files skipped."""

    features: np.ndarray
    index: np.ndarray
    skipped: list[tuple[int, str]]


# ------------------------------------------------------------------- fingerprint, manifest
def run_fingerprint(extractor: FeatureExtractor, items: Sequence[Path]) -> dict[str, Any]:
    """What the results depend on, JSON-normalised: the input files (absolute path, size,
    modification time), the model weights and the preprocessing."""
    inputs = hashlib.sha256()
    for path in items:
        try:
            stat = os.stat(path)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        inputs.update(f"{os.path.abspath(path)}\t{size}\t{mtime}\n".encode())
    weights = hashlib.sha256()
    for name, tensor in sorted(extractor.model.state_dict().items()):
        weights.update(name.encode())
        weights.update(str(tuple(tensor.shape)).encode())
        weights.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    pre = extractor.preprocess
    fingerprint = {
        "inputs_sha256": inputs.hexdigest(), "num_inputs": len(items),
        "model_sha256": weights.hexdigest(),
        "preprocess": {"input_size": [pre.height, pre.width], "mean": list(pre.mean),
                       "std": list(pre.std), "flip": bool(extractor.flip)},
    }
    return json.loads(json.dumps(fingerprint))


def run_digest(fingerprint: dict[str, Any]) -> str:
    """The run's identity in 64 hex digits: SHA-256 of the fingerprint's sorted JSON."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def describe_difference(stored: Any, current: dict[str, Any]) -> str:
    """What differs between a ``stored`` fingerprint and the ``current`` one, for messages
    (``"other model weights"``, ...; ``"an unknown run"`` when nothing recognisable)."""
    if not isinstance(stored, dict):
        return "an unknown run"
    parts = []
    if (stored.get("inputs_sha256"), stored.get("num_inputs")) != (current["inputs_sha256"],
                                                                     current["num_inputs"]):
        parts.append(f"other input files ({stored.get('num_inputs')} files, now "
                     f"{current['num_inputs']}; or the same names with changed contents)")
    if stored.get("model_sha256") != current["model_sha256"]:
        parts.append("other model weights")
    if stored.get("preprocess") != current["preprocess"]:
        parts.append(f"other preprocessing ({stored.get('preprocess')}, now "
                     f"{current['preprocess']})")
    return " and ".join(parts) or "an unknown run"


def open_manifest(sidecar: Path, fingerprint: dict[str, Any], digest: str,
                  items: Sequence[Path], chunk_size: int) -> int:
    """Start ``sidecar`` with a new manifest, or check that an existing one is this run's.
    Returns the chunk size to use (the stored one when resuming).

    Raises:
        UserError: ``sidecar`` holds chunks without a manifest, a manifest that is not ours,
            or another run's manifest (the message says what differs).
    """
    manifest_path = sidecar / MANIFEST_NAME
    if sidecar.exists() and not manifest_path.is_file():
        if any(sidecar.glob("chunk_*.npz")):
            raise UserError(f"{sidecar} holds chunk files but no {MANIFEST_NAME}, so it "
                            "cannot be resumed; pass overwrite=True (CLI: --overwrite) "
                            "to discard it")
        shutil.rmtree(sidecar)  # killed while writing the manifest: nothing to keep
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            stored_digest, stored_fp = manifest["digest"], manifest["fingerprint"]
            stored_chunk_size = int(manifest["chunk_size"])
            if manifest.get("kind") != PARTIAL_KIND or stored_chunk_size < 1:
                raise ValueError(f"kind {manifest.get('kind')!r}, chunk size "
                                 f"{stored_chunk_size}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{manifest_path} is not a robustreid embed manifest ({err}); "
                            "pass overwrite=True (CLI: --overwrite) to discard "
                            f"{sidecar}") from err
        if stored_digest != digest:
            raise UserError(
                f"{sidecar} holds partial results of another run, made from "
                f"{describe_difference(stored_fp, fingerprint)}; rerun with the original "
                "inputs and checkpoint to resume it, or pass overwrite=True (CLI: --overwrite) "
                "to discard it"
            )
        if stored_chunk_size != chunk_size:
            logger.info("%s: resuming with its chunk size %d (asked for %d)", sidecar,
                        stored_chunk_size, chunk_size)
        return stored_chunk_size
    manifest = {"kind": PARTIAL_KIND, "format": MANIFEST_FORMAT, "digest": digest,
                "fingerprint": fingerprint, "chunk_size": chunk_size,
                "paths": [os.path.abspath(p) for p in items]}
    atomic_write_text(manifest_path, json.dumps(manifest) + "\n")
    return chunk_size


def chunk_path(sidecar: Path, index: int) -> Path:
    """``sidecar/chunk_NNNNN.npz``, the file of chunk ``index``."""
    return sidecar / f"chunk_{index:05d}.npz"


def save_chunk(sidecar: Path, index: int, chunk: Chunk, digest: str) -> None:
    """Write ``chunk`` atomically as chunk ``index`` of the run ``digest``."""
    arrays = {
        "features": chunk.features, "index": chunk.index,
        "skipped_index": np.array([i for i, _ in chunk.skipped], np.int64),
        "skipped_reason": np.array([r for _, r in chunk.skipped], dtype=str),
        "digest": np.array(digest),
    }
    atomic_write(chunk_path(sidecar, index), lambda handle: np.savez(handle, **arrays))


def _chunk_problem(data: dict[str, np.ndarray], start: int, end: int, digest: str) -> str:
    """Why the arrays of a saved chunk are not this run's chunk for ``start:end`` ("" if
    they are)."""
    missing = [k for k in CHUNK_KEYS if k not in data]
    if missing:
        return f"missing {', '.join(missing)}"
    features, idx, skipped = data["features"], data["index"], data["skipped_index"]
    if (features.ndim != 2 or features.dtype.kind != "f" or idx.ndim != 1
            or idx.dtype.kind not in "iu" or skipped.ndim != 1 or skipped.dtype.kind not in "iu"
            or data["skipped_reason"].shape != skipped.shape
            or data["skipped_reason"].dtype.kind != "U" or data["digest"].dtype.kind != "U"
            or data["digest"].ndim != 0 or len(features) != len(idx)):
        return "arrays of unexpected shapes or dtypes"
    covered = sorted(idx.tolist() + skipped.tolist())
    if str(data["digest"]) != digest or covered != list(range(start, end)):
        return "it does not match this run's manifest"
    return ""


def load_chunk(sidecar: Path, index: int, start: int, end: int, digest: str) -> Chunk | None:
    """The saved chunk ``index`` (input positions ``start:end``), or None if it is not there
    or does not belong to this run (then it is removed and recomputed)."""
    path = chunk_path(sidecar, index)
    if not path.is_file():
        return None
    try:
        data = read_npz_arrays(path, CHUNK_KEYS)
        problem = _chunk_problem(data, start, end, digest)
    except EmbeddingsFileError as err:
        problem = str(err)
    if problem:
        logger.warning("%s: cannot be resumed (%s); recomputing it", path, problem)
        path.unlink()
        return None
    reasons = [str(r) for r in data["skipped_reason"].tolist()]
    return Chunk(data["features"].astype(np.float32, copy=False),
                 data["index"].astype(np.int64),
                 list(zip(data["skipped_index"].astype(np.int64).tolist(), reasons,
                          strict=True)))


def discard_finished(sidecar: Path, digest: str) -> None:
    """Remove ``sidecar`` if its manifest is the run ``digest``'s (a run killed between
    writing its output and cleaning up); leave any other run's partial results alone."""
    manifest_path = sidecar / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            same = json.loads(manifest_path.read_text(encoding="utf-8")).get("digest") == digest
        except (OSError, ValueError):
            same = False
        if same:
            shutil.rmtree(sidecar)
