"""Embed a set of image files into one ``.npz`` file, surviving interruptions.

    >>> import robustreid
    >>> from robustreid.inference.embed import collect_images, embed_images, load_embeddings
    >>> extractor = robustreid.load("runs/synthperson/best.pth", device="auto")
    >>> paths = collect_images(["data/query", "data/gallery/*.jpg", "extra.txt"])
    >>> result = embed_images(extractor, paths, "features.npz", progress=True)
    >>> data = load_embeddings("features.npz")
    >>> data["features"].shape  # (N, D) float32, rows L2-normalised

The output holds ``features`` (N x D float32), ``paths`` (N strings, as collected),
``pids`` and ``camids`` (N int64, parsed from Market-1501 style names, -1 when a name does
not follow that pattern) and ``meta`` (a JSON string: the checkpoint's self-description, the
creation date, the skipped files with their reasons, and a fingerprint of inputs and model).

Files that cannot be decoded as images are skipped and reported in one
:class:`SkippedImagesWarning` (a Python warning, see :mod:`warnings`); ``strict=True`` turns
the first one into a :class:`~robustreid.data.base.DatasetError` instead.

Interruption safety: the inputs are embedded in chunks of ``chunk_size`` files. Each finished
chunk is written atomically to ``OUT.partial/chunk_NNNNN.npz`` next to a ``manifest.json``
describing the run (all input paths, their sizes and modification times, a hash of the model
weights and the preprocessing). Rerunning with the same inputs, model and output loads the
finished chunks and computes only the missing ones; a different input list or model is refused
rather than mixed in. The final file is written atomically and the ``.partial`` folder removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from glob import glob
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import UnidentifiedImageError
from tqdm import tqdm

from robustreid.data.base import IMAGE_SUFFIXES, DatasetError, list_images, read_list_file
from robustreid.errors import UserError
from robustreid.inference.embeddings_file import (
    EMBEDDINGS_KIND,
    EmbeddingsFileError,
    parse_pid_camid,
    read_embeddings,
    read_npz_arrays,
)
from robustreid.inference.extractor import FeatureExtractor
from robustreid.io import atomic_write, atomic_write_text, ensure_writable_dir
from robustreid.version import __version__

__all__ = [
    "EmbedResult",
    "EmbeddingsFileError",
    "SkippedFile",
    "SkippedImagesWarning",
    "collect_images",
    "embed_images",
    "format_skipped",
    "load_embeddings",
    "parse_pid_camid",
    "partial_dir",
]

logger = logging.getLogger(__name__)

PARTIAL_KIND = "robustreid-embed-partial"
FORMAT = 1
LIST_FILE_SUFFIX = ".txt"
GLOB_CHARS = frozenset("*?[")
MANIFEST_NAME = "manifest.json"
# At most this many skipped files are listed one per line in the warning; all of them are in
# EmbedResult.skipped and in the output's meta["skipped"].
MAX_LISTED_SKIPS = 50


class SkippedImagesWarning(UserWarning):
    """Some input files could not be read as images and were left out of the output."""


class SkippedFile(NamedTuple):
    """An input file that was not embedded, and why (e.g. ``"not an image ..."``)."""

    path: str
    reason: str


@dataclass
class EmbedResult:
    """What :func:`embed_images` wrote to ``out_path`` (the same arrays), plus run facts.

    Attributes:
        out_path: the ``.npz`` written (or found up to date).
        features: (N, D) float32, rows L2-normalised, in input order minus skipped files.
        paths: N paths, as strings, in the same order.
        pids: (N,) int64 person ids from Market-style names, -1 when unknown.
        camids: (N,) int64 0-based camera ids from Market-style names, -1 when unknown.
        skipped: the input files left out, with the reason for each.
        meta: the output's metadata (see the module docstring).
        computed_chunks: chunks embedded by this call.
        loaded_chunks: chunks resumed from an earlier, interrupted call.
        reused: True when ``out_path`` already held these results and nothing was done.
    """

    out_path: Path
    features: np.ndarray
    paths: list[str]
    pids: np.ndarray
    camids: np.ndarray
    skipped: list[SkippedFile] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    computed_chunks: int = 0
    loaded_chunks: int = 0
    reused: bool = False

    @property
    def num_embedded(self) -> int:
        """N, the number of rows of ``features``."""
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        """D, the embedding size."""
        return int(self.features.shape[1])


# ------------------------------------------------------------------------ collecting inputs
def collect_images(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files to embed, from one input or a list of inputs, in order, without duplicates.

    Each input is one of:

    * a folder: every file under it, recursively, sorted by path (names starting with ``.``
      excluded). Files that are not images are kept so that :func:`embed_images` reports them
      as skipped instead of ignoring them silently; the folder must hold at least one file
      with an image suffix (.jpg .jpeg .png .bmp .webp);
    * a list file (``.txt``): one file or folder path per line; relative paths are resolved
      against the list file's folder; blank lines and lines starting with ``#`` are skipped;
    * a glob pattern such as ``data/query/*.jpg`` (``**`` recurses); matched folders are
      expanded as above;
    * a single file, taken as an image.

    A file reached twice (same absolute path) is kept at its first position only.

    Raises:
        UserError: no inputs, a missing folder or file, a glob that matches nothing, a folder
            without images, or a list file that is unreadable, not UTF-8 text, names no files
            or names a missing one (the message gives the list file and line number).
        TypeError: an input that is not a path or string.
    """
    specs: list[Any] = [spec] if isinstance(spec, str | Path) else list(spec)
    if not specs:
        raise UserError("no inputs given: expected folders, glob patterns or list files")
    found: list[Path] = []
    for item in specs:
        if not isinstance(item, str | Path):
            raise TypeError(f"input {item!r} has type {type(item).__name__}: expected a path "
                            "to a folder, a list file (.txt) or an image, or a glob pattern")
        found.extend(_collect_one(item))
    seen: set[str] = set()
    unique: list[Path] = []
    for path in found:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _collect_one(item: str | Path) -> list[Path]:
    try:
        path = Path(item).expanduser()
        is_dir = path.is_dir()
        is_file = not is_dir and path.is_file()
    except RuntimeError as err:  # ~user of an unknown user
        raise UserError(f"input {str(item)[:200]!r}: cannot expand '~': {err}") from err
    except OSError as err:  # a name too long for the file system, ...
        raise UserError(f"input {str(item)[:200]!r}: {err.strerror or err}") from err
    if is_dir:
        return _collect_folder(path)
    if is_file:
        if path.suffix.lower() == LIST_FILE_SUFFIX:
            return _collect_list_file(path)
        return [path]
    text = str(item)
    if GLOB_CHARS.intersection(text):
        matches = sorted(glob(os.path.expanduser(text), recursive=True))
        if not matches:
            raise UserError(f"glob pattern {text!r} matched no files")
        out: list[Path] = []
        for match in map(Path, matches):
            out.extend(_collect_folder(match) if match.is_dir() else [match])
        return out
    raise UserError(f"no such folder, list file (.txt) or image: {text}")


def _collect_folder(folder: Path) -> list[Path]:
    try:
        files = list_images(folder, suffixes=None)
    except OSError as err:  # a sub-folder that cannot be listed
        raise UserError(f"cannot list folder {folder}: {err}") from err
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        raise UserError(f"folder {folder} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}"
                         f" recursively; found {len(files)} other files)")
    return files


def _collect_list_file(list_file: Path) -> list[Path]:
    return read_list_file(list_file, expand_folder=_collect_folder)


# ------------------------------------------------------------------------------- embedding
def partial_dir(out_path: str | Path) -> Path:
    """The sidecar folder holding the finished chunks of an unfinished run: ``OUT.partial``."""
    return Path(f"{out_path}.partial")


def embed_images(
    extractor: FeatureExtractor,
    paths: Sequence[str | Path],
    out_path: str | Path,
    *,
    strict: bool = False,
    chunk_size: int = 1024,
    progress: bool = False,
    on_chunk: Callable[[int], object] | None = None,
    overwrite: bool = False,
) -> EmbedResult:
    """Embed the image files ``paths`` with ``extractor`` and write ``out_path`` (``.npz``).

    Args:
        extractor: the model and its preprocessing (:func:`robustreid.load`); its
            ``batch_size`` images go through the model at a time.
        paths: the input files (e.g. from :func:`collect_images`), in output order.
        out_path: the ``.npz`` file to write; ``OUT.partial/`` holds unfinished work.
        strict: raise on the first file that cannot be read as an image instead of skipping
            it (also for files skipped by an earlier, resumed run).
        chunk_size: files per chunk, the unit of work saved against interruption. A resumed
            run keeps the chunk size it started with.
        progress: show a tqdm progress bar (images) on stderr.
        on_chunk: called with the chunk index after each chunk this call computes has been
            saved (not for chunks loaded from an earlier run).
        overwrite: recompute everything, discarding a finished ``out_path`` and any partial
            results; without it an up-to-date ``out_path`` is returned as is.

    Returns:
        The arrays written and the facts of the run (:class:`EmbedResult`).

    Raises:
        UserError: ``out_path`` without the ``.npz`` suffix or a folder, its folder cannot be
            written (checked before any embedding), no paths, no file could be embedded, or
            ``out_path`` or ``OUT.partial`` exists but belongs to other inputs or another
            model (or is not robustreid's) and ``overwrite`` is False.
        DatasetError: with ``strict``, the first unreadable file (named in the message).
        ValueError: ``chunk_size`` < 1.
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".npz":
        raise UserError(f"output file {out_path}: expected a name ending in .npz")
    if out_path.is_dir():
        raise UserError(f"output file {out_path} is a folder: expected a file name ending in "
                        ".npz")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    sidecar = partial_dir(out_path)
    items = _drop_own_files([Path(p) for p in paths], out_path, sidecar)
    if not items:
        raise UserError("no input files given to embed")
    fingerprint = _fingerprint(extractor, items)
    digest = _digest(fingerprint)

    if out_path.exists() and not overwrite:
        return _reuse_final(out_path, fingerprint, digest, sidecar, strict)
    ensure_writable_dir(out_path.parent, f"the folder of {out_path.name}")
    if overwrite and sidecar.exists():
        shutil.rmtree(sidecar)
    chunk_size = _open_manifest(sidecar, fingerprint, digest, items, chunk_size)

    num_chunks = math.ceil(len(items) / chunk_size)
    bounds = [(i * chunk_size, min((i + 1) * chunk_size, len(items))) for i in range(num_chunks)]
    chunks: list[_Chunk | None] = [_load_chunk(sidecar, i, start, end, digest)
                                   for i, (start, end) in enumerate(bounds)]
    loaded = sum(c is not None for c in chunks)
    if loaded:
        logger.info("%s: resuming, %d of %d chunks already done", out_path, loaded, num_chunks)
    if strict:
        for chunk in chunks:
            if chunk is not None and chunk.skipped:
                index, reason = chunk.skipped[0]
                raise _strict_error(items[index], reason)

    done = sum(end - start for c, (start, end) in zip(chunks, bounds, strict=True) if c)
    computed = 0
    with tqdm(total=len(items), initial=done, desc="embed", unit="img", disable=not progress,
              leave=False) as bar:
        for i, (start, end) in enumerate(bounds):
            if chunks[i] is not None:
                continue
            chunk = _compute_chunk(extractor, items, start, end, strict, bar)
            _save_chunk(sidecar, i, chunk, digest)
            chunks[i] = chunk
            computed += 1
            if on_chunk is not None:
                on_chunk(i)

    finished = [c for c in chunks if c is not None]
    index = np.concatenate([c.index for c in finished])
    skipped = [SkippedFile(str(items[i]), reason) for c in finished for i, reason in c.skipped]
    if skipped:
        warnings.warn(format_skipped(skipped, len(items), out_path), SkippedImagesWarning,
                      stacklevel=2)
    if index.size == 0:
        shutil.rmtree(sidecar)  # nothing worth resuming
        raise UserError(f"none of the {len(items)} input files could be read as an image "
                         f"(first: {skipped[0].path}: {skipped[0].reason})")
    features = np.concatenate([c.features for c in finished if len(c.index)])
    out_paths = [str(items[i]) for i in index]
    ids = np.array([parse_pid_camid(p) for p in out_paths], dtype=np.int64).reshape(-1, 2)
    meta = {
        "kind": EMBEDDINGS_KIND, "format": FORMAT, "robustreid_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": extractor.meta, "flip": bool(extractor.flip),
        "feature_dim": int(features.shape[1]), "num_inputs": len(items),
        "num_embedded": len(out_paths), "num_skipped": len(skipped),
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "fingerprint": fingerprint,
    }
    result = EmbedResult(out_path, features.astype(np.float32, copy=False), out_paths,
                         np.ascontiguousarray(ids[:, 0]), np.ascontiguousarray(ids[:, 1]),
                         skipped, meta, computed_chunks=computed, loaded_chunks=loaded)
    _write_final(result)
    shutil.rmtree(sidecar)
    return result


def format_skipped(skipped: Sequence[SkippedFile], num_inputs: int,
                   out_path: str | Path | None = None, limit: int = MAX_LISTED_SKIPS) -> str:
    """The text of the skipped-files warning: a count, then ``path: reason`` per line (the
    first ``limit`` of them, then how many more)."""
    lines = [f"skipped {len(skipped)} of {num_inputs} input files that could not be read as "
             "images:"]
    lines += [f"  {s.path}: {s.reason}" for s in skipped[:limit]]
    if len(skipped) > limit:
        where = f" in meta['skipped'] of {out_path}" if out_path is not None else ""
        lines.append(f"  ... and {len(skipped) - limit} more (all are listed{where})")
    return "\n".join(lines)


@dataclass
class _Chunk:
    """One chunk's results: ``features`` (k, D) for the input positions ``index`` (k,), and
    (position, reason) for the files skipped."""

    features: np.ndarray
    index: np.ndarray
    skipped: list[tuple[int, str]]


def _compute_chunk(extractor: FeatureExtractor, items: Sequence[Path], start: int, end: int,
                   strict: bool, bar: tqdm) -> _Chunk:
    feats: list[np.ndarray] = []
    index: list[int] = []
    skipped: list[tuple[int, str]] = []
    batch: list[torch.Tensor] = []
    batch_index: list[int] = []

    def flush() -> None:
        if batch:
            feats.append(extractor.embed_batch(torch.stack(batch)).numpy())
            index.extend(batch_index)
            bar.update(len(batch))
            batch.clear()
            batch_index.clear()

    for i in range(start, end):
        try:
            image = extractor.preprocess(items[i])
        except DatasetError as err:
            reason = _skip_reason(err)
            if strict:
                raise _strict_error(items[i], reason) from err
            skipped.append((i, reason))
            bar.update(1)
            continue
        batch.append(image)
        batch_index.append(i)
        if len(batch) >= extractor.batch_size:
            flush()
    flush()
    dim = feats[0].shape[1] if feats else extractor.feature_dim
    features = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
    return _Chunk(features.astype(np.float32, copy=False), np.array(index, np.int64), skipped)


def _skip_reason(err: DatasetError) -> str:
    cause = err.__cause__
    if isinstance(cause, UnidentifiedImageError):
        return "not an image (format not recognised)"
    if isinstance(cause, FileNotFoundError):
        return "file not found"
    if cause is not None:
        return f"corrupt or unreadable image ({type(cause).__name__}: {cause})"
    return str(err)


def _strict_error(path: Path, reason: str) -> DatasetError:
    return DatasetError(f"cannot embed {path}: {reason} (strict mode stops at the first bad "
                        "file; without it such files are skipped and reported)")


def _drop_own_files(items: list[Path], out_path: Path, sidecar: Path) -> list[Path]:
    """``items`` without the output file and the sidecar's files (an output written inside
    an input folder must not become an input of the rerun)."""
    out_key = os.path.abspath(out_path)
    side_key = os.path.abspath(sidecar) + os.sep
    kept = [p for p in items
            if os.path.abspath(p) != out_key and not os.path.abspath(p).startswith(side_key)]
    if len(kept) < len(items):
        logger.debug("left %d of robustreid's own output files out of the inputs",
                     len(items) - len(kept))
    return kept


# ------------------------------------------------------------------- fingerprint, manifest
def _fingerprint(extractor: FeatureExtractor, items: Sequence[Path]) -> dict[str, Any]:
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


def _digest(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _describe_difference(stored: Any, current: dict[str, Any]) -> str:
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


def _open_manifest(sidecar: Path, fingerprint: dict[str, Any], digest: str,
                   items: Sequence[Path], chunk_size: int) -> int:
    """Start ``sidecar`` with a new manifest, or check that an existing one is this run's.
    Returns the chunk size to use (the stored one when resuming)."""
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
                f"{_describe_difference(stored_fp, fingerprint)}; rerun with the original "
                "inputs and checkpoint to resume it, or pass overwrite=True (CLI: --overwrite) "
                "to discard it"
            )
        if stored_chunk_size != chunk_size:
            logger.info("%s: resuming with its chunk size %d (asked for %d)", sidecar,
                        stored_chunk_size, chunk_size)
        return stored_chunk_size
    manifest = {"kind": PARTIAL_KIND, "format": FORMAT, "digest": digest,
                "fingerprint": fingerprint, "chunk_size": chunk_size,
                "paths": [os.path.abspath(p) for p in items]}
    atomic_write_text(manifest_path, json.dumps(manifest) + "\n")
    return chunk_size


def _chunk_path(sidecar: Path, index: int) -> Path:
    return sidecar / f"chunk_{index:05d}.npz"


def _save_chunk(sidecar: Path, index: int, chunk: _Chunk, digest: str) -> None:
    arrays = {
        "features": chunk.features, "index": chunk.index,
        "skipped_index": np.array([i for i, _ in chunk.skipped], np.int64),
        "skipped_reason": np.array([r for _, r in chunk.skipped], dtype=str),
        "digest": np.array(digest),
    }
    atomic_write(_chunk_path(sidecar, index), lambda handle: np.savez(handle, **arrays))


CHUNK_KEYS = ("features", "index", "skipped_index", "skipped_reason", "digest")


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


def _load_chunk(sidecar: Path, index: int, start: int, end: int, digest: str) -> _Chunk | None:
    """The saved chunk ``index`` (input positions ``start:end``), or None if it is not there
    or does not belong to this run (then it is removed and recomputed)."""
    path = _chunk_path(sidecar, index)
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
    return _Chunk(data["features"].astype(np.float32, copy=False),
                  data["index"].astype(np.int64),
                  list(zip(data["skipped_index"].astype(np.int64).tolist(), reasons,
                           strict=True)))


# ---------------------------------------------------------------------- final file, reading
def _write_final(result: EmbedResult) -> None:
    arrays = {
        "features": result.features, "paths": np.array(result.paths, dtype=str),
        "pids": result.pids, "camids": result.camids,
        "meta": np.array(json.dumps(result.meta, default=str)),
    }
    atomic_write(result.out_path, lambda handle: np.savez(handle, **arrays))


def _reuse_final(out_path: Path, fingerprint: dict[str, Any], digest: str, sidecar: Path,
                 strict: bool) -> EmbedResult:
    """The existing ``out_path`` as a result, if it was made from these inputs and model."""
    try:
        data = load_embeddings(out_path)
    except EmbeddingsFileError as err:
        raise UserError(f"{out_path} exists and is not a robustreid embeddings file "
                              f"({err}); pass overwrite=True (CLI: --overwrite) to replace "
                              "it") from err
    meta = data["meta"]
    stored = meta.get("fingerprint")
    if stored != fingerprint:
        raise UserError(f"{out_path} exists and was made from "
                              f"{_describe_difference(stored, fingerprint)}; pass "
                              "overwrite=True (CLI: --overwrite) to replace it")
    skipped = [SkippedFile(str(s["path"]), str(s["reason"])) for s in meta.get("skipped", [])]
    if strict and skipped:
        raise _strict_error(Path(skipped[0].path), skipped[0].reason)
    if skipped:
        warnings.warn(format_skipped(skipped, int(meta.get("num_inputs", 0)), out_path),
                      SkippedImagesWarning, stacklevel=3)
    manifest_path = sidecar / MANIFEST_NAME
    if manifest_path.is_file():  # killed between writing the output and cleaning up
        try:
            same = json.loads(manifest_path.read_text(encoding="utf-8")).get("digest") == digest
        except (OSError, ValueError):
            same = False
        if same:
            shutil.rmtree(sidecar)
    logger.info("%s is up to date; nothing to do (overwrite=True recomputes it)", out_path)
    return EmbedResult(out_path, data["features"], data["paths"], data["pids"], data["camids"],
                       skipped, meta, reused=True)


def load_embeddings(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`embed_images` / ``robustreid embed`` (every array and
    ``meta["kind"]`` required; the checks are those of
    :func:`~robustreid.inference.embeddings_file.read_embeddings`).

    Returns:
        ``{"features": (N, D) float32, "paths": list of N str, "pids": (N,) int64,
        "camids": (N,) int64, "meta": dict}``.

    Raises:
        EmbeddingsFileError: no such file, not a readable ``.npz``, missing arrays, bad
            ``meta``, or arrays of the wrong dtype or shape; the message names the file and
            what was expected.
    """
    emb = read_embeddings(path, written_by_embed=True)
    return {"features": emb.features, "paths": emb.paths, "pids": emb.pids,
            "camids": emb.camids, "meta": emb.meta}
