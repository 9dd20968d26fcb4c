"""Embed a set of image files into one ``.npz`` file, surviving interruptions.

    >>> import robustreid
    >>> from robustreid.inference.collect import collect_images
    >>> from robustreid.inference.embed import embed_images, load_embeddings
    >>> extractor = robustreid.load("runs/synthperson/best.pth", device="auto")
    >>> paths = collect_images(["data/query", "data/gallery/*.jpg", "extra.txt"])
    >>> result = embed_images(extractor, paths, "features.npz", progress=True)
    >>> data = load_embeddings("features.npz")
    >>> data["features"].shape  # (N, D) float32, rows L2-normalised

The inputs are collected by :func:`robustreid.inference.collect.collect_images` (the rules
every command shares). The output holds ``features`` (N x D float32), ``paths`` (N strings,
as collected), ``pids`` and ``camids`` (N int64, parsed from Market-1501 style names, -1 when
a name does not follow that pattern) and ``meta`` (a JSON string: the checkpoint's
self-description, the creation date, the skipped files with their reasons, and a fingerprint
of inputs and model).

Files that cannot be decoded as images are skipped and reported in one
:class:`SkippedImagesWarning` (a Python warning, see :mod:`warnings`); ``strict=True`` turns
the first one into a :class:`~robustreid.data.base.DatasetError` instead.

Interruption safety: the inputs are embedded in chunks of ``chunk_size`` files, each saved in
``OUT.partial/`` as soon as it is finished (:mod:`robustreid.inference.chunks`). Rerunning with
the same inputs, model and output loads the finished chunks and computes only the missing
ones; a different input list or model is refused rather than mixed in. The final file is
written atomically and the ``.partial`` folder removed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import UnidentifiedImageError
from tqdm import tqdm

from robustreid.data.base import DatasetError
from robustreid.errors import UserError
from robustreid.inference.chunks import (
    Chunk,
    describe_difference,
    discard_finished,
    load_chunk,
    open_manifest,
    partial_dir,
    run_digest,
    run_fingerprint,
    save_chunk,
)
from robustreid.inference.embeddings_file import (
    EMBEDDINGS_KIND,
    EmbeddingsFileError,
    parse_pid_camid,
    read_embeddings,
)
from robustreid.inference.extractor import FeatureExtractor
from robustreid.io import atomic_write, ensure_writable_dir
from robustreid.version import __version__

__all__ = [
    "EmbedResult",
    "SkippedFile",
    "SkippedImagesWarning",
    "embed_images",
    "format_skipped",
    "load_embeddings",
]

logger = logging.getLogger(__name__)

FORMAT = 1
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


# ------------------------------------------------------------------------------- embedding
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
        paths: the input files (e.g. from
            :func:`~robustreid.inference.collect.collect_images`), in output order.
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
    fingerprint = run_fingerprint(extractor, items)
    digest = run_digest(fingerprint)

    if out_path.exists() and not overwrite:
        return _reuse_final(out_path, fingerprint, digest, sidecar, strict)
    ensure_writable_dir(out_path.parent, f"the folder of {out_path.name}")
    if overwrite and sidecar.exists():
        shutil.rmtree(sidecar)
    chunk_size = open_manifest(sidecar, fingerprint, digest, items, chunk_size)

    num_chunks = math.ceil(len(items) / chunk_size)
    bounds = [(i * chunk_size, min((i + 1) * chunk_size, len(items))) for i in range(num_chunks)]
    chunks: list[Chunk | None] = [load_chunk(sidecar, i, start, end, digest)
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
            save_chunk(sidecar, i, chunk, digest)
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


def _compute_chunk(extractor: FeatureExtractor, items: Sequence[Path], start: int, end: int,
                   strict: bool, bar: tqdm) -> Chunk:
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
    return Chunk(features.astype(np.float32, copy=False), np.array(index, np.int64), skipped)


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
                        f"{describe_difference(stored, fingerprint)}; pass "
                        "overwrite=True (CLI: --overwrite) to replace it")
    skipped = [SkippedFile(str(s["path"]), str(s["reason"])) for s in meta.get("skipped", [])]
    if strict and skipped:
        raise _strict_error(Path(skipped[0].path), skipped[0].reason)
    if skipped:
        warnings.warn(format_skipped(skipped, int(meta.get("num_inputs", 0)), out_path),
                      SkippedImagesWarning, stacklevel=3)
    discard_finished(sidecar, digest)  # killed between writing the output and cleaning up
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
