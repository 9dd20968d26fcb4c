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

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from robustreid.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DatasetError",
    "ReIDData",
    "Sample",
    "build_dataset",
    "find_dataset_dir",
    "list_datasets",
    "list_images",
    "parse_market_name",
    "read_image",
    "register_dataset",
    "relabel_pids",
    "verify_images",
]

PathLike = str | Path


class Sample(NamedTuple):
    """One image: its path, person id and 0-based camera id."""

    path: str
    pid: int
    camid: int


class DatasetError(ValueError):
    """Bad dataset input; the message names the file or folder and what was expected."""


# ---------------------------------------------------------------------------------------
# The dataset container
# ---------------------------------------------------------------------------------------


def _split_stats(samples: Sequence[Sample]) -> tuple[int, int, int]:
    """(number of ids, number of images, number of cameras) of a split."""
    pids = {s.pid for s in samples}
    cams = {s.camid for s in samples}
    return len(pids), len(samples), len(cams)


@dataclass
class ReIDData:
    """A re-id dataset: train, query and gallery lists of :class:`Sample`.

    Attributes:
        name: registered dataset name.
        root: the dataset directory the images were read from.
        train: training samples, pids relabelled to ``0..num_train_pids-1``.
        query: query samples with their original pids.
        gallery: gallery samples with their original pids.
        extra: further named splits a reader may provide (e.g. ``"val"`` for MSMT17 with
            ``keep_val_apart=True``); empty for most datasets.
    """

    name: str
    root: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    extra: dict[str, list[Sample]] = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, list[Sample]]:
        """All splits by name: train, query, gallery, then any extra ones."""
        return {"train": self.train, "query": self.query, "gallery": self.gallery, **self.extra}

    @property
    def num_train_pids(self) -> int:
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
        rows = [
            (split, *(str(v) for v in _split_stats(samples)))
            for split, samples in self.splits.items()
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def fmt(row: Sequence[str]) -> str:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
            return "  " + " | ".join(cells)

        rule = "  " + "-+-".join("-" * w for w in widths)
        lines = [f"dataset {self.name!r} (root: {self.root})", fmt(header), rule]
        lines += [fmt(r) for r in rows]
        return "\n".join(lines)


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


def read_image(path: PathLike) -> Image.Image:
    """Open ``path`` fully decoded, in RGB.

    Raises:
        DatasetError: the file is missing, unreadable or not a valid image (names the file).
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
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


def verify_images(samples: Iterable[Sample], split_name: str) -> None:
    """Check that every image of a split opens and decodes.

    This decodes each image fully (stricter than ``PIL.Image.verify``, which misses
    truncated JPEGs), so it takes a few seconds per ten thousand small crops.

    Raises:
        DatasetError: naming the first bad file, the split and how many files are bad.
    """
    bad: list[tuple[str, str]] = []
    total = 0
    for sample in samples:
        total += 1
        problem = _image_problem(sample.path)
        if problem is not None:
            bad.append((sample.path, problem))
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


def list_images(folder: PathLike, exts: Iterable[str]) -> list[Path]:
    """Files directly in ``folder`` whose suffix (case-insensitive) is in ``exts``, sorted."""
    wanted = {e.lower() for e in exts}
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in wanted)


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
    files = list_images(folder, exts)
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
