"""Core types, the dataset registry and helpers shared by the dataset readers.

A dataset reader is a function ``(root, *, verify_images=False, **options) -> ReIDData``
registered with :func:`register_dataset`; :func:`build_dataset` looks it up by name::

    from robustreid.data import build_dataset

    data = build_dataset("market1501", "/datasets")
    print(data.summary())

All bad input (missing folders, empty splits, unparsable file names, corrupt images) raises
:class:`DatasetError`, whose message names the path involved and what was expected.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from robustreid.errors import UserError
from robustreid.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "UNKNOWN_PID",
    "DatasetError",
    "ReIDData",
    "Sample",
    "build_dataset",
    "find_dataset_dir",
    "list_datasets",
    "list_images",
    "parse_market_name",
    "read_image",
    "read_list_file",
    "register_dataset",
    "relabel_pids",
    "to_rgb",
    "verify_images",
    "with_test_split",
]

PathLike = str | Path

# The one list of image file suffixes (lower case) every lister and reader accepts.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# The person id of an image whose identity is unknown (unlabeled data, see the ``images``
# reader). Readers of labelled data drop junk images (Market's pid -1) while reading, so
# after loading -1 means "unknown", never "junk".
UNKNOWN_PID = -1


class Sample(NamedTuple):
    """One image: its path, person id (:data:`UNKNOWN_PID` when unknown) and 0-based
    camera id."""

    path: str
    pid: int
    camid: int


class DatasetError(UserError):
    """Bad dataset input; the message names the file or folder and what was expected."""


# ---------------------------------------------------------------------------------------
# The dataset container
# ---------------------------------------------------------------------------------------


def _split_stats(samples: Sequence[Sample]) -> tuple[int, int, int]:
    """(number of known ids, number of images, number of cameras) of a split."""
    pids = {s.pid for s in samples if s.pid != UNKNOWN_PID}
    cams = {s.camid for s in samples}
    return len(pids), len(samples), len(cams)


@dataclass
class ReIDData:
    """A re-id dataset: train, query and gallery lists of :class:`Sample`.

    Attributes:
        name: registered dataset name.
        root: the dataset directory the images were read from.
        train: training samples, pids relabelled to ``0..num_train_pids-1``, or all
            :data:`UNKNOWN_PID` for unlabeled data.
        query: query samples with their original pids (empty: no test split).
        gallery: gallery samples with their original pids (empty: no test split).
        extra: further named splits a reader may provide (e.g. ``"val"`` for MSMT17 with
            ``keep_val_apart=True``); empty for most datasets.
        test_source: where query and gallery come from when not from this data set
            (``"name (root)"``, see :func:`with_test_split`); empty otherwise.
    """

    name: str
    root: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    extra: dict[str, list[Sample]] = field(default_factory=dict)
    test_source: str = ""

    @property
    def splits(self) -> dict[str, list[Sample]]:
        """All splits by name: train, query, gallery, then any extra ones."""
        return {"train": self.train, "query": self.query, "gallery": self.gallery, **self.extra}

    @property
    def labelled(self) -> bool:
        """True when every training image has a known person id."""
        return bool(self.train) and all(s.pid != UNKNOWN_PID for s in self.train)

    @property
    def has_test_split(self) -> bool:
        """True when there are queries and gallery images to evaluate on."""
        return bool(self.query) and bool(self.gallery)

    @property
    def num_train_pids(self) -> int:
        """Number of known training identities (0 for unlabeled data)."""
        return _split_stats(self.train)[0]

    @property
    def num_train_imgs(self) -> int:
        return len(self.train)

    @property
    def num_train_cams(self) -> int:
        return _split_stats(self.train)[2]

    @property
    def num_query_pids(self) -> int:
        return _split_stats(self.query)[0]

    @property
    def num_gallery_pids(self) -> int:
        return _split_stats(self.gallery)[0]

    @property
    def num_cams(self) -> int:
        """Number of distinct cameras over all splits."""
        return len({s.camid for split in self.splits.values() for s in split})

    def summary(self) -> str:
        """An aligned text table with one row per split and columns ids, images, cameras."""
        header = ("split", "ids", "images", "cameras")
        rows = []
        for split, samples in self.splits.items():
            ids, imgs, cams = _split_stats(samples)
            unknown = bool(samples) and ids == 0
            rows.append((split, "unknown" if unknown else str(ids), str(imgs), str(cams)))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def fmt(row: Sequence[str]) -> str:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
            return "  " + " | ".join(cells)

        rule = "  " + "-+-".join("-" * w for w in widths)
        lines = [f"dataset {self.name!r} (root: {self.root})", fmt(header), rule]
        lines += [fmt(r) for r in rows]
        if self.test_source:
            lines.append(f"  query and gallery from {self.test_source}")
        elif not self.has_test_split:
            lines.append("  no query/gallery: training is not evaluated")
        return "\n".join(lines)


def with_test_split(data: ReIDData, test: ReIDData) -> ReIDData:
    """``data`` with the query and gallery of ``test`` (another data set), e.g. unlabeled
    training crops measured on a small labelled set.

    Raises:
        DatasetError: ``test`` has no query or no gallery images.
    """
    if not test.has_test_split:
        raise DatasetError(
            f"evaluation data set {test.name!r} (root: {test.root}) has "
            f"{len(test.query)} queries and {len(test.gallery)} gallery images: expected "
            "both, e.g. a Market-style folder with query/ and gallery/"
        )
    return dataclasses.replace(data, query=test.query, gallery=test.gallery,
                               test_source=f"{test.name!r} (root: {test.root})")


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

DATASETS: Registry[Callable[..., ReIDData]] = Registry("dataset")
register_dataset = DATASETS.register


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    return DATASETS.names()


def build_dataset(name: str, root: PathLike, **kwargs: object) -> ReIDData:
    """Load the dataset registered as ``name`` from ``root`` and log its summary.

    Args:
        name: registered dataset name (case-insensitive), see :func:`list_datasets`.
        root: folder the reader searches (see each reader for the layouts it accepts).
        **kwargs: passed on to the reader (e.g. ``verify_images=True``).

    Raises:
        KeyError: no dataset is registered as ``name`` (the message lists the known ones).
        DatasetError: the data on disk is missing or malformed.
    """
    loader = DATASETS.get(name)
    data = loader(root, **kwargs)
    if not isinstance(data, ReIDData):
        raise TypeError(
            f"dataset reader {name!r} returned {type(data).__name__}, expected ReIDData"
        )
    logger.info("loaded dataset %s\n%s", name, data.summary())
    return data


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------

# Errors PIL raises for unreadable or corrupt files (UnidentifiedImageError is an OSError).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# 16-bit integer modes: the full uint16 range maps to 0..255 (65535 / 257 = 255).
_UINT16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Modes with an alpha channel stored straight (not premultiplied).
_STRAIGHT_ALPHA = {"LA": "L", "RGBA": "RGB"}
# Premultiplied alpha: the stored colour already is the colour composited over black.
_PREMULTIPLIED_ALPHA = {"La": "L", "RGBa": "RGB"}


def _uint8_grey(values: np.ndarray) -> Image.Image:
    """A mode "L" image from a float array already scaled to 0..255 (rounded, clipped)."""
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _over_black(img: Image.Image, colour_mode: str) -> Image.Image:
    """Composite a straight-alpha image (``LA`` or ``RGBA``) over black."""
    array = np.asarray(img, dtype=np.float32)
    colour, alpha = array[..., :-1], array[..., -1:] / 255.0
    out = np.clip(np.rint(colour * alpha), 0, 255).astype(np.uint8)
    if colour_mode == "L":
        out = out[..., 0]
    return Image.fromarray(out, mode=colour_mode)


def to_rgb(img: Image.Image) -> Image.Image:
    """The one conversion of a decoded PIL image to the 8-bit RGB the model sees.

    The EXIF orientation tag is applied first (a phone photo tagged "rotate 90" comes out
    upright). Then, by mode:

    * ``RGB``: unchanged; ``1``, ``L``, ``CMYK``, ``YCbCr``, ``HSV``, ``LAB``, ``RGBX``:
      PIL's own conversion (``1`` is black/white, ``L`` is replicated to three channels).
    * 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): the full 0..65535 range is
      scaled to 0..255 (divided by 257, rounded), so 65535 -> 255 and 32768 -> 128. PIL's
      plain ``convert("RGB")`` clips instead, turning almost every pixel white.
    * 32-bit integer grey (``I``): values are taken as 8-bit (0..255) when the image's
      maximum is <= 255, otherwise as 16-bit (0..65535, divided by 257); values outside the
      assumed range are clipped (negative -> 0).
    * 32-bit float grey (``F``): values are taken as 0..1 (multiplied by 255) when the
      image's maximum is <= 1, otherwise as 0..255; values outside are clipped and NaN -> 0.
    * Alpha (``LA``, ``RGBA``, and palette ``P`` / ``PA`` through RGBA): composited over
      black, i.e. colour x alpha / 255, so fully transparent pixels are black whatever
      colour they store. Premultiplied ``La`` / ``RGBa`` store exactly that already, so
      their colour channels are used as they are.

    Args:
        img: a PIL image in any mode (it is not modified).

    Returns:
        A new, fully loaded mode ``RGB`` image of the same (EXIF-oriented) size.

    Raises:
        ValueError: a mode PIL cannot convert to RGB (names the mode).
    """
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _UINT16_MODES:
        img = _uint8_grey(np.asarray(img).astype(np.float64) / 257.0)
    elif mode == "I":
        values = np.asarray(img).astype(np.float64)
        if values.size and values.max() > 255:
            values = np.clip(values, 0, 65535) / 257.0
        img = _uint8_grey(values)
    elif mode == "F":
        values = np.nan_to_num(np.asarray(img).astype(np.float64), nan=0.0,
                               posinf=255.0, neginf=0.0)
        if not values.size or values.max() <= 1.0:
            values = values * 255.0
        img = _uint8_grey(values)
    elif mode in ("P", "PA"):
        rgba = img.convert("RGBA")
        img = _over_black(rgba, "RGB")
    elif mode in _STRAIGHT_ALPHA:
        img = _over_black(img, _STRAIGHT_ALPHA[mode])
    elif mode in _PREMULTIPLIED_ALPHA:
        colour = np.asarray(img)[..., :-1]
        colour_mode = _PREMULTIPLIED_ALPHA[mode]
        img = Image.fromarray(colour[..., 0] if colour_mode == "L" else colour,
                              mode=colour_mode)
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"cannot convert a PIL image of mode {mode!r} to RGB: {exc}") from exc


def read_image(path: PathLike) -> Image.Image:
    """Open ``path`` fully decoded, in 8-bit RGB (see :func:`to_rgb` for the conversion of
    every PIL mode and the EXIF orientation).

    Raises:
        DatasetError: the file is missing, unreadable or not a valid image (names the file).
    """
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except FileNotFoundError as exc:
        raise DatasetError(f"image file not found: {path}") from exc
    except _IMAGE_ERRORS as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def _image_problem(path: str) -> str | None:
    """None if ``path`` opens and decodes, else a short description of the problem."""
    try:
        with Image.open(path) as img:
            img.load()
    except _IMAGE_ERRORS as exc:
        return str(exc) or type(exc).__name__
    return None


# The bytes a complete file of these formats ends with (trailing padding after them is
# tolerated, see _TRAILER_WINDOW): a file cut short (a copy or download that stopped) lacks
# them even when its header reads fine.
_TRAILERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
_TRAILER_WINDOW = 64


def _header_problem(path: str) -> str | None:
    """None if ``path``'s header reads as an image with a size, and (JPEG, PNG) the file
    ends with its format's end marker; else a short description of the problem."""
    try:
        with Image.open(path) as img:
            fmt, (width, height) = img.format, img.size
        if width < 1 or height < 1:
            return f"image size {width} x {height}"
        trailer = _TRAILERS.get(fmt or "")
        if trailer is not None:
            with open(path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(path) - _TRAILER_WINDOW))
                if trailer not in handle.read():
                    return f"truncated {fmt} (no end marker)"
    except _IMAGE_ERRORS as exc:
        return str(exc) or type(exc).__name__
    return None


def check_image_headers(samples: Iterable[Sample], split_name: str, workers: int = 8) -> None:
    """The fast check of a split's images, in ``workers`` threads: each file opens as an
    image (header only) with a non-empty size, and a JPEG or PNG is not cut short (its end
    marker is there). Zero-byte, non-image, corrupt-header and truncated files are found
    in about a second per ten thousand files; an image damaged inside its data is found
    only by the full decode (:func:`verify_images`, ``data.check_images=full``).

    Raises:
        DatasetError: naming the first bad file, the split and how many files are bad.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = [s.path for s in samples]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = list(pool.map(_header_problem, paths, chunksize=256))
    _raise_bad_images(paths, problems, split_name)


def verify_images(samples: Iterable[Sample], split_name: str) -> None:
    """Check that every image of a split opens and decodes.

    This decodes each image fully (stricter than ``PIL.Image.verify``, which misses
    truncated JPEGs), so it takes a few seconds per ten thousand small crops.

    Raises:
        DatasetError: naming the first bad file, the split and how many files are bad.
    """
    paths = [s.path for s in samples]
    _raise_bad_images(paths, [_image_problem(p) for p in paths], split_name)


def _raise_bad_images(paths: Sequence[str], problems: Sequence[str | None],
                      split_name: str) -> None:
    bad = [(p, why) for p, why in zip(paths, problems, strict=True) if why is not None]
    total = len(paths)
    if bad:
        first, why = bad[0]
        more = ", ".join(p for p, _ in bad[1:4])
        others = f"; others: {more}{', ...' if len(bad) > 4 else ''}" if more else ""
        raise DatasetError(
            f"{len(bad)} of {total} images in split {split_name!r} cannot be read; "
            f"first bad file: {first} ({why}){others}"
        )


# ---------------------------------------------------------------------------------------
# Helpers shared by readers
# ---------------------------------------------------------------------------------------

MARKET_NAME_RE = re.compile(r"^(-?\d+)_c(\d+)")
MARKET_NAME_HELP = (
    "a Market-style name 'PID_cCAM...' (e.g. 0002_c1s1_000451_03.jpg, 0005_c2_f0046985.jpg, "
    "0000_c14_0001.jpg; regex ^(-?\\d+)_c(\\d+), camera numbers from 1)"
)


def parse_market_name(path: PathLike) -> tuple[int, int]:
    """(pid, 0-based camid) from a Market-style file name like ``0002_c1s1_000451_03.jpg``.

    The pid is the leading signed integer and the camera the number after ``_c``; file
    camera 1 becomes camid 0.

    Raises:
        DatasetError: the name does not match, or the camera number is 0.
    """
    match = MARKET_NAME_RE.match(Path(path).name)
    if match is None:
        raise DatasetError(f"cannot parse file name {path}: expected {MARKET_NAME_HELP}")
    pid, cam = int(match.group(1)), int(match.group(2))
    if cam < 1:
        raise DatasetError(f"camera number 0 in file name {path}: expected {MARKET_NAME_HELP}")
    return pid, cam - 1


def list_images(
    folder: PathLike,
    suffixes: Iterable[str] | None = IMAGE_SUFFIXES,
    *,
    recursive: bool = True,
) -> list[Path]:
    """The files under ``folder`` whose suffix (case-insensitive) is in ``suffixes``.

    The one file lister of the package (readers, ``robustreid.load`` and ``embed`` use it).
    It walks the tree with :func:`os.scandir`, which reads the file type from the directory
    entry, so it needs no ``stat`` per file: 100,000 files list in well under a second
    (``benchmarks/list_images.py``).

    * Sorted by path, component by component (the order of ``sorted(list_of_paths)``).
    * Names starting with ``.`` (hidden files and folders) are skipped.
    * Symbolic links to files are listed under their own path; links to folders are
      followed, each real folder once (no loops); broken links are skipped.

    Args:
        folder: the folder to search.
        suffixes: accepted suffixes with the dot (default :data:`IMAGE_SUFFIXES`); None
            lists every file.
        recursive: search sub-folders too (False: files directly in ``folder`` only).

    Raises:
        FileNotFoundError, NotADirectoryError, PermissionError: ``folder`` (or a sub-folder)
            cannot be listed.
    """
    wanted = None if suffixes is None else frozenset(s.lower() for s in suffixes)
    found: list[str] = []
    seen: set[tuple[int, int]] = set()

    def walk(directory: str, st: os.stat_result) -> None:
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_dir():
                if recursive:
                    sub = entry.stat()
                    if (sub.st_dev, sub.st_ino) not in seen:
                        walk(entry.path, sub)
            elif (wanted is None or os.path.splitext(name)[1].lower() in wanted) and (
                    entry.is_file()):
                found.append(entry.path)

    root = os.fspath(folder)
    walk(root, os.stat(root))
    return [Path(p) for p in found]


def read_list_file(
    list_file: PathLike,
    expand_folder: Callable[[Path], list[Path]] = list_images,
) -> list[Path]:
    """The files a list file names: one file or folder path per line, in order.

    Relative paths are resolved against the list file's folder; blank lines and lines
    starting with ``#`` are skipped; ``~`` and ``~user`` are expanded; a folder line becomes
    ``expand_folder(folder)`` (default: its images, :func:`list_images`).

    Raises:
        DatasetError: the list file cannot be read or is not UTF-8 text, it names no files,
            or a line names a missing file or folder, a path the system cannot use (too
            long, an unknown ``~user``) or a folder that cannot be listed; the message gives
            the list file and the line number.
    """
    list_file = Path(list_file)
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"list file {list_file} is not UTF-8 text (expected one image path "
                           f"per line): {err}") from err
    except OSError as err:
        raise DatasetError(f"cannot read list file {list_file}: {err.strerror or err}") from err
    out: list[Path] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"list file {list_file}, line {lineno}"
        try:
            path = Path(line).expanduser()
        except RuntimeError as err:  # ~user of an unknown user, or no home directory
            raise DatasetError(f"{where}: cannot expand {line!r}: {err}") from err
        if not path.is_absolute():
            path = list_file.parent / path
        try:
            if path.is_dir():
                out.extend(expand_folder(path))
                continue
            is_file = path.is_file()
        except OSError as err:  # a name too long, a folder that cannot be listed, ...
            raise DatasetError(f"{where}: cannot use {line!r}: {err.strerror or err}") from err
        if not is_file:
            raise DatasetError(f"{where}: no such file or folder: {line!r} (relative paths "
                               f"are resolved against {list_file.parent})")
        out.append(path)
    if not out:
        raise DatasetError(f"list file {list_file} names no files (expected one image path per "
                           "line; blank lines and lines starting with # are skipped)")
    return out


def relabel_pids(samples: Iterable[Sample]) -> list[Sample]:
    """Map pids to ``0..P-1`` in sorted order of the original pids; order of samples kept."""
    samples = list(samples)
    mapping = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    return [s._replace(pid=mapping[s.pid]) for s in samples]


def format_layout(folders: Mapping[str, Sequence[str]], exts: Sequence[str]) -> str:
    """An indented tree of the expected split folders, for error messages."""
    pattern = "|".join(f"*{e}" for e in exts)
    lines = []
    for names in folders.values():
        alts = f"  (or {', '.join(n + '/' for n in names[1:])})" if len(names) > 1 else ""
        lines.append(f"    {names[0]}/{pattern}{alts}")
    return "\n".join(lines)


def missing_folders(candidate: Path, folders: Mapping[str, Sequence[str]]) -> list[str]:
    """Names of the split folders (first alternative) that ``candidate`` lacks."""
    return [
        names[0] for names in folders.values() if not any((candidate / n).is_dir() for n in names)
    ]


def describe_candidate(candidate: Path, folders: Mapping[str, Sequence[str]]) -> str:
    """One line saying whether ``candidate`` exists and which split folders it lacks."""
    if not candidate.is_dir():
        return f"  {candidate}  (not found)"
    lacking = missing_folders(candidate, folders)
    return f"  {candidate}  (exists but lacks {', '.join(n + '/' for n in lacking)})"


def find_dataset_dir(
    dataset: str,
    candidates: Sequence[Path],
    folders: Mapping[str, Sequence[str]],
    exts: Sequence[str],
) -> tuple[Path, dict[str, Path]]:
    """The first candidate directory holding a folder for every split.

    Args:
        dataset: dataset name, for messages.
        candidates: directories to try, in order.
        folders: split name -> accepted folder names (first one preferred).
        exts: image extensions, for the expected layout in messages.

    Returns:
        The chosen directory and the split name -> folder path mapping.

    Raises:
        DatasetError: no candidate fits; lists every path searched and the expected layout.
    """
    for cand in candidates:
        if cand.is_dir() and not missing_folders(cand, folders):
            found = {
                split: next(cand / n for n in names if (cand / n).is_dir())
                for split, names in folders.items()
            }
            return cand, found
    searched = "\n".join(describe_candidate(c, folders) for c in candidates)
    raise DatasetError(
        f"cannot find dataset {dataset!r}; searched:\n{searched}\n"
        f"expected one of these directories to hold:\n{format_layout(folders, exts)}"
    )


def read_folder_split(
    folder: Path,
    exts: Sequence[str],
    parse: Callable[[Path], tuple[int, int]],
    drop_pids: Iterable[int] = (),
) -> list[Sample]:
    """Samples for every image in ``folder`` (sorted), skipping pids in ``drop_pids``.

    Raises:
        DatasetError: the folder holds no usable image, or a name cannot be parsed.
    """
    files = list_images(folder, exts, recursive=False)
    if not files:
        raise DatasetError(
            f"no images in {folder}: expected files matching {', '.join('*' + e for e in exts)}"
        )
    drop = set(drop_pids)
    samples = []
    for path in files:
        pid, camid = parse(path)
        if pid not in drop:
            samples.append(Sample(str(path), pid, camid))
    if not samples:
        raise DatasetError(
            f"no usable images in {folder}: all {len(files)} files have dropped person ids "
            f"{sorted(drop)} (junk/distractors)"
        )
    return samples


def check_option_types(dataset: str,
                       values: Mapping[str, tuple[object, tuple[type, ...], str]]) -> None:
    """Raise DatasetError for a reader option of the wrong type (options come from
    ``data.options`` in YAML, so any type may arrive).

    Args:
        dataset: the reader's name, for the message.
        values: option name -> (value, accepted types, what is expected in words); ``bool``
            is not accepted where ``int`` is unless listed.
    """
    for name, (value, kinds, expected) in values.items():
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise DatasetError(f"dataset {dataset!r}, option {name}: got {value!r:.60}, "
                               f"expected {expected}")


def check_options(dataset: str, options: Mapping[str, object], accepted: Iterable[str]) -> None:
    """Raise DatasetError for reader options the reader does not know (catches typos in
    ``data.options``)."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = ", ".join(["verify_images", *sorted(accepted)])
        raise DatasetError(
            f"dataset {dataset!r} got unknown option(s) {', '.join(unknown)}; "
            f"accepted options: {known}"
        )
