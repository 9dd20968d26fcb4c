"""The one reader of embeddings ``.npz`` files, for ``robustreid embed`` and ``search``.

An embeddings file is a zip archive of ``.npy`` arrays (what :func:`numpy.savez` writes):

* ``features``: N x D floats, rows L2-normalised (within 1e-2);
* ``paths``: N strings, the image of each row;
* ``pids``, ``camids``: N integers, -1 for unknown;
* ``meta``: a JSON object as a string; ``robustreid embed`` writes
  ``{"kind": "robustreid-embeddings", ...}``.

:func:`read_embeddings` checks all of it, whatever the file holds: random bytes, a truncated
or corrupted archive, arrays of the wrong dtype or shape, NaN rows, pickled Python objects (never
loaded) or a header declaring more data than the file has. Every problem is an
:class:`EmbeddingsFileError` (a :class:`~robustreid.errors.UserError`) whose one-line message
names the file and what was expected. :func:`read_npz_arrays` is the archive layer alone.
"""

from __future__ import annotations

import json
import lzma
import math
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from robustreid.data.base import DatasetError, parse_market_name
from robustreid.errors import UserError

__all__ = [
    "ARRAY_KEYS",
    "EMBEDDINGS_KIND",
    "Embeddings",
    "EmbeddingsFileError",
    "parse_pid_camid",
    "read_embeddings",
    "read_npz_arrays",
]

EMBEDDINGS_KIND = "robustreid-embeddings"
ARRAY_KEYS = ("features", "paths", "pids", "camids", "meta")
#: tolerance on ``| ||row|| - 1 |`` of stored features (float16 files round to ~1e-3)
FILE_NORM_TOLERANCE = 1e-2
EXPECTED = ("expected the .npz written by `robustreid embed`: a zip archive of the arrays "
            "features (N x D floats, rows L2-normalised), paths (N strings), pids and camids "
            "(N integers) and meta (a JSON object)")
# What reading a damaged zip archive raises: BadZipFile for a bad structure or CRC, zlib.error
# and lzma.LZMAError for a corrupt compressed stream (OSError for bz2), EOFError for a stream
# cut short, NotImplementedError for a compression method zipfile lacks, ValueError for
# impossible offsets or sizes in the directory.
ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError,
                  NotImplementedError, ValueError)
INT64_MAX = np.iinfo(np.int64).max


class EmbeddingsFileError(UserError):
    """A file is not (or no longer) a valid robustreid embeddings file; names the file."""


@dataclass
class Embeddings:
    """Embeddings read from an ``.npz`` file (the ``robustreid embed`` layout).

    Attributes:
        features: ``(N, D)`` float32, rows L2-normalised (within 1e-2 as stored; exactly after
            :func:`robustreid.inference.search.load_gallery`).
        paths: ``N`` image paths as stored (relative paths are relative to the working
            directory of the process that wrote them).
        pids, camids: ``(N,)`` int64, -1 for unknown (parsed from the names when the file
            has no such array).
        meta: the file's ``meta`` JSON object (``{}`` when absent).
        source: the file read.
    """

    features: np.ndarray
    paths: list[str]
    pids: np.ndarray
    camids: np.ndarray
    meta: dict[str, Any]
    source: Path

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def parse_pid_camid(path: str | Path) -> tuple[int, int]:
    """(pid, 0-based camid) from a Market-1501 style name (``0002_c1s1_000451_03.jpg`` gives
    (2, 0)); (-1, -1) for a name that does not follow that pattern."""
    try:
        return parse_market_name(path)
    except DatasetError:
        return -1, -1


# ------------------------------------------------------------------------------- archive
def _not_readable(path: Path, reason: object) -> EmbeddingsFileError:
    text = " ".join(str(reason).split()) or type(reason).__name__
    return EmbeddingsFileError(f"{path} is not a robustreid embeddings file: not a readable "
                               f".npz archive ({text}); {EXPECTED}")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path,
                 key: str) -> np.ndarray:
    """The ``.npy`` array stored as ``info``, read only after its header's shape and dtype
    were checked against the member's size (a corrupt header cannot ask for terabytes)."""
    where = f"{path}: array '{key}'"
    if info.flag_bits & 0x1:  # zipfile would raise RuntimeError: password required
        raise EmbeddingsFileError(f"{where} is encrypted; numpy.savez never encrypts")
    with archive.open(info) as handle:
        try:
            version = npy_format.read_magic(handle)
        except ValueError as err:
            raise EmbeddingsFileError(f"{where} is not a .npy array ({err})") from err
        if version == (1, 0):
            header = npy_format.read_array_header_1_0(handle)
        elif version == (2, 0):
            header = npy_format.read_array_header_2_0(handle)
        else:
            raise EmbeddingsFileError(f"{where} has .npy format version {version}; "
                                      "expected 1.0 or 2.0 (what numpy.savez writes)")
        shape, fortran_order, dtype = header
        if any(side < 0 for side in shape):
            raise EmbeddingsFileError(f"{where} declares the impossible shape {shape}")
        if dtype.hasobject:
            raise EmbeddingsFileError(f"{where} holds pickled Python objects (dtype {dtype}), "
                                      "which are never loaded; expected numbers or strings")
        count = math.prod(shape)
        size = count * dtype.itemsize
        stored = info.file_size - handle.tell()
        if size != stored:
            raise EmbeddingsFileError(f"{where} declares shape {shape} of {dtype} ({size} "
                                      f"bytes) but the archive holds {stored} bytes for it")
        data = handle.read(size)  # reading to the end checks the member's CRC
    if len(data) != size:
        raise EmbeddingsFileError(f"{where} is cut short: {len(data)} of {size} bytes")
    if dtype.itemsize == 0:
        return np.zeros(shape, dtype)
    array = np.frombuffer(data, dtype=dtype, count=count).copy()
    return array.reshape(shape, order="F" if fortran_order else "C")


def read_npz_arrays(path: str | Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` archive ``path`` that it holds (absent keys are
    left out). Arrays of Python objects are refused, never unpickled.

    Raises:
        EmbeddingsFileError: no such file, not a zip archive, a damaged archive or member, a
            member that is not a ``.npy`` array or whose header does not match its size.
    """
    path = Path(path)
    try:
        is_file = path.is_file()
    except (OSError, ValueError) as err:  # a name too long, a NUL byte
        raise _not_readable(path, err) from err
    if not is_file:
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise EmbeddingsFileError(f"embeddings file {path} {what}")
    try:
        with path.open("rb") as handle:
            start = handle.read(len(npy_format.MAGIC_PREFIX))
        if start == npy_format.MAGIC_PREFIX:
            raise EmbeddingsFileError(f"{path} is not a robustreid embeddings file: it holds "
                                      f"a single .npy array, not an .npz archive; {EXPECTED}")
        with zipfile.ZipFile(path) as archive:
            members = {}
            for info in archive.infolist():  # numpy names an array "key.npy" in the archive
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                members.setdefault(name, info)
            return {key: _read_member(archive, members[key], path, key)
                    for key in keys if key in members}
    except EmbeddingsFileError:
        raise
    except ARCHIVE_ERRORS as err:
        raise _not_readable(path, err) from err


# --------------------------------------------------------------------------- embeddings
def _check_unit_rows(features: np.ndarray, path: Path) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", features, features, dtype=np.float64))
    bad = ~(np.abs(norms - 1.0) <= FILE_NORM_TOLERANCE)  # NaN and inf count as bad
    if bad.any():
        row = int(np.argmax(bad))
        raise EmbeddingsFileError(
            f"{path}: 'features' rows must be finite and L2-normalised (norm 1 +- "
            f"{FILE_NORM_TOLERANCE}); row {row} has norm {norms[row]:.6g} (expected the "
            "L2-normalised output of robustreid)")


def _text(array: np.ndarray, path: Path, key: str) -> list[str]:
    """The strings of a 'U' or 'S' (UTF-8) array."""
    if array.dtype.kind == "U":
        return [str(item) for item in array.reshape(-1).tolist()]
    try:
        return [item.decode("utf-8") for item in array.reshape(-1).tolist()]
    except UnicodeDecodeError as err:
        raise EmbeddingsFileError(f"{path}: '{key}' holds bytes that are not UTF-8 text "
                                  f"({err})") from err


def _meta(array: np.ndarray, path: Path) -> dict[str, Any]:
    if array.ndim != 0 or array.dtype.kind not in "US":
        raise EmbeddingsFileError(f"{path}: 'meta' must be one string (a JSON object), got "
                                  f"shape {array.shape} dtype {array.dtype}")
    text = _text(array, path, "meta")[0]
    try:
        meta = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer with too many digits
        raise EmbeddingsFileError(f"{path}: 'meta' is not a JSON string: "
                                  f"{str(err).split(';')[0]}") from err
    except RecursionError as err:  # [[[[... nested beyond the parser's stack
        raise EmbeddingsFileError(f"{path}: 'meta' is JSON nested too deeply") from err
    if not isinstance(meta, dict):
        raise EmbeddingsFileError(f"{path}: 'meta' must be a JSON object, got "
                                  f"{type(meta).__name__}")
    return meta


def _ids(array: np.ndarray, num: int, path: Path, key: str) -> np.ndarray:
    if array.shape != (num,) or array.dtype.kind not in "iu":
        raise EmbeddingsFileError(f"{path}: '{key}' must be {num} integers (one per row of "
                                  f"'features', -1 unknown), got shape {array.shape} dtype "
                                  f"{array.dtype}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > INT64_MAX:
        raise EmbeddingsFileError(f"{path}: '{key}' holds {int(array.max())}, more than a "
                                  "64-bit integer")
    return array.astype(np.int64)


def read_embeddings(path: str | Path, *, written_by_embed: bool = False,
                    require_paths: bool = True) -> Embeddings:
    """Read and check an embeddings ``.npz`` (see the module docstring for the layout).

    Args:
        path: the file.
        written_by_embed: require the file ``robustreid embed`` writes: every array of
            :data:`ARRAY_KEYS` and ``meta["kind"] == "robustreid-embeddings"``. Without it only
            ``features`` is required; ``pids`` and ``camids`` default to the ids parsed from
            Market-style names and ``meta`` to ``{}``.
        require_paths: without ``written_by_embed``, require ``paths`` too (otherwise rows are
            named ``FILE#i``).

    Returns:
        The arrays, with ``features`` as float32 as stored (not re-normalised).

    Raises:
        EmbeddingsFileError: the file is missing, unreadable, lacks a required array, or an
            array has the wrong dtype or shape, non-finite or non-normalised rows, or ``meta``
            is not a JSON object (of the right kind); the message names the file.
    """
    path = Path(path)
    arrays = read_npz_arrays(path, ARRAY_KEYS)
    required = (ARRAY_KEYS if written_by_embed
                else ("features", "paths") if require_paths else ("features",))
    missing = [key for key in required if key not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "none of them"
        raise EmbeddingsFileError(
            f"{path}: missing array{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(k) for k in missing)} (found {found}); {EXPECTED}")
    meta = _meta(arrays["meta"], path) if "meta" in arrays else {}
    if written_by_embed and meta.get("kind") != EMBEDDINGS_KIND:
        raise EmbeddingsFileError(f"{path}: 'meta' does not describe robustreid embeddings "
                                  f"(expected kind {EMBEDDINGS_KIND!r}, got "
                                  f"{str(meta.get('kind'))[:40]!r})")

    features = arrays["features"]
    if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1 or (
            features.dtype.kind != "f"):
        raise EmbeddingsFileError(f"{path}: 'features' must be N x D floats with N, D >= 1, "
                                  f"got shape {features.shape} dtype {features.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused
        features = np.ascontiguousarray(features, dtype=np.float32)
    _check_unit_rows(features, path)
    num = features.shape[0]

    if "paths" in arrays:
        raw = arrays["paths"]
        if raw.shape != (num,) or raw.dtype.kind not in "US":
            raise EmbeddingsFileError(f"{path}: 'paths' must be {num} strings (one per row of "
                                      f"'features'), got shape {raw.shape} dtype {raw.dtype}")
        paths = _text(raw, path, "paths")
    else:
        paths = [f"{path.name}#{i}" for i in range(num)]
    ids = []
    for pos, key in enumerate(("pids", "camids")):
        if key in arrays:
            ids.append(_ids(arrays[key], num, path, key))
        else:
            parsed = np.array([parse_pid_camid(p) for p in paths], np.int64).reshape(-1, 2)
            ids.append(parsed[:, pos].copy())
    return Embeddings(features, paths, ids[0], ids[1], meta, path)
