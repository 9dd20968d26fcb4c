"""Readers for the public re-id datasets and for custom data, registered by name.

Every reader has the signature ``(root, *, verify_images=False, **options) -> ReIDData`` and
searches a few directories under ``root`` (listed in its docstring; the first one holding
all split folders wins). Conventions common to all readers:

* camera ids are 0-based (camera 1 in a file name becomes camid 0);
* train pids are relabelled to ``0..P-1`` in sorted order of the original pids, while
  query and gallery keep their original pids;
* person id -1 (junk) is dropped from every split; where the dataset has distractors
  (pid 0 in Market-1501 and the datasets sharing its conventions) they are kept in the
  gallery only;
* file lists are sorted, so results are deterministic;
* ``verify_images=True`` decodes every image and raises :class:`DatasetError` on the
  first bad split;
* unknown options raise ``TypeError`` rather than being silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from robustreid.data.base import (
    IMAGE_SUFFIXES,
    DatasetError,
    PathLike,
    ReIDData,
    Sample,
    check_option_types,
    check_options,
    describe_candidate,
    find_dataset_dir,
    format_layout,
    missing_folders,
    parse_market_name,
    read_folder_split,
    register_dataset,
    relabel_pids,
)
from robustreid.data.base import verify_images as _verify_split

__all__ = [
    "dukemtmc",
    "folder",
    "load_market_like",
    "market1501",
    "msmt17",
    "personx",
    "synthperson",
]

MARKET_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("bounding_box_train",),
    "query": ("query",),
    "gallery": ("bounding_box_test",),
}
FOLDER_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("bounding_box_train", "train"),
    "query": ("query",),
    "gallery": ("bounding_box_test", "gallery"),
}
JPG: tuple[str, ...] = (".jpg",)
BOOL: tuple[tuple[type, ...], str] = ((bool,), "true or false")
JUNK_PID = -1
# An MSMT17 list file's person id and a file name's camera field: ASCII digits only (str.isdigit
# also accepts "²", which int() rejects), at most 18 so that any value fits in 64 bits.
_MSMT_PID = re.compile(r"-?[0-9]{1,18}")
_MSMT_CAMERA = re.compile(r"[0-9]{1,18}")


def _root(root: PathLike) -> Path:
    return Path(root).expanduser()


def _finish(
    name: str,
    dataset_dir: Path,
    train: list[Sample],
    query: list[Sample],
    gallery: list[Sample],
    *,
    verify: bool,
    extra: dict[str, list[Sample]] | None = None,
) -> ReIDData:
    """Relabel train pids, build the ReIDData and optionally verify every image."""
    data = ReIDData(
        name=name,
        root=str(dataset_dir),
        train=relabel_pids(train),
        query=query,
        gallery=gallery,
        extra=extra or {},
    )
    if verify:
        for split, samples in data.splits.items():
            _verify_split(samples, split)
    return data


def _read_market_dirs(
    name: str,
    dataset_dir: Path,
    split_dirs: Mapping[str, Path],
    exts: Sequence[str],
    distractor_pid: int | None,
    verify: bool,
) -> ReIDData:
    """Read train/query/gallery folders of Market-style file names."""
    not_in_gallery = {JUNK_PID} if distractor_pid is None else {JUNK_PID, distractor_pid}
    train = read_folder_split(split_dirs["train"], exts, parse_market_name, not_in_gallery)
    query = read_folder_split(split_dirs["query"], exts, parse_market_name, not_in_gallery)
    gallery = read_folder_split(split_dirs["gallery"], exts, parse_market_name, {JUNK_PID})
    return _finish(name, dataset_dir, train, query, gallery, verify=verify)


def load_market_like(
    name: str,
    candidates: Sequence[Path],
    *,
    folders: Mapping[str, Sequence[str]] = MARKET_FOLDERS,
    exts: Sequence[str] = JPG,
    distractor_pid: int | None = 0,
    verify: bool = False,
) -> ReIDData:
    """Shared reader for every dataset in Market-1501 layout.

    Args:
        name: dataset name (stored in the result and used in messages).
        candidates: directories to search, in order, for the split folders.
        folders: split name -> accepted folder names.
        exts: image file extensions to read.
        distractor_pid: pid kept in the gallery only (dropped from train and query);
            None when the dataset has no distractor id.
        verify: decode every image and raise DatasetError on a bad one.
    """
    dataset_dir, split_dirs = find_dataset_dir(name, candidates, folders, exts)
    return _read_market_dirs(name, dataset_dir, split_dirs, exts, distractor_pid, verify)


@register_dataset("market1501")
def market1501(root: PathLike, *, verify_images: bool = False, **options: object) -> ReIDData:
    """Market-1501.

    Searched, in order: ``ROOT/market1501/Market-1501-v15.09.15``,
    ``ROOT/Market-1501-v15.09.15`` and ``ROOT``; each must hold ``bounding_box_train/``,
    ``query/`` and ``bounding_box_test/`` with ``*.jpg`` files such as
    ``0002_c1s1_000451_03.jpg``. Junk (pid -1) is dropped; distractors (pid 0) are kept
    in the gallery only.
    """
    check_options("market1501", options, ())
    check_option_types("market1501", {"verify_images": (verify_images, *BOOL)})
    root = _root(root)
    candidates = [
        root / "market1501" / "Market-1501-v15.09.15",
        root / "Market-1501-v15.09.15",
        root,
    ]
    return load_market_like("market1501", candidates, verify=verify_images)


@register_dataset("dukemtmc")
def dukemtmc(root: PathLike, *, verify_images: bool = False, **options: object) -> ReIDData:
    """DukeMTMC-reID, in Market layout.

    Searched, in order: ``ROOT/dukemtmc/DukeMTMC-reID``, ``ROOT/DukeMTMC-reID`` and
    ``ROOT``; folders and conventions as for :func:`market1501`.
    """
    check_options("dukemtmc", options, ())
    check_option_types("dukemtmc", {"verify_images": (verify_images, *BOOL)})
    root = _root(root)
    candidates = [root / "dukemtmc" / "DukeMTMC-reID", root / "DukeMTMC-reID", root]
    return load_market_like("dukemtmc", candidates, verify=verify_images)


@register_dataset("personx")
def personx(root: PathLike, *, verify_images: bool = False, **options: object) -> ReIDData:
    """PersonX (synthetic), in Market layout.

    Searched, in order: ``ROOT/personx/PersonX``, ``ROOT/PersonX`` and ``ROOT``; folders
    and conventions as for :func:`market1501`.
    """
    check_options("personx", options, ())
    check_option_types("personx", {"verify_images": (verify_images, *BOOL)})
    root = _root(root)
    candidates = [root / "personx" / "PersonX", root / "PersonX", root]
    return load_market_like("personx", candidates, verify=verify_images)


@register_dataset("synthperson")
def synthperson(
    root: PathLike,
    *,
    verify_images: bool = False,
    folder: str = "synthperson",
    **options: object,
) -> ReIDData:
    """The built-in synthetic set, written in Market layout.

    Searched, in order: ``ROOT/FOLDER`` and ``ROOT``. Accepts every suffix of
    :data:`~robustreid.data.base.IMAGE_SUFFIXES`. Pid 0 is an ordinary identity here (no
    distractors); pid -1 is still dropped.

    Args:
        folder: the set's folder under ``ROOT``, e.g. ``synthperson_market`` for the
            Market-sized set (``robustreid synth --preset market``). Cameras 10-15 of the
            MSMT17-like presets are named ``c10``-``c15`` and read as camids 9-14.
    """
    check_options("synthperson", options, ())
    check_option_types("synthperson", {"verify_images": (verify_images, *BOOL),
                                       "folder": (folder, (str,), "a folder name")})
    root = _root(root)
    return load_market_like(
        "synthperson",
        [root / folder, root],
        exts=IMAGE_SUFFIXES,
        distractor_pid=None,
        verify=verify_images,
    )


@register_dataset("folder")
def folder(
    root: PathLike,
    *,
    verify_images: bool = False,
    distractor_pid: int | None = None,
    eval_only: bool = False,
    **options: object,
) -> ReIDData:
    """Custom data: ``ROOT`` holding train, query and gallery folders.

    The folders may be named ``bounding_box_train`` or ``train``, ``query``, and
    ``bounding_box_test`` or ``gallery``; files are images
    (:data:`~robustreid.data.base.IMAGE_SUFFIXES`) with Market-style names ``PID_cCAM...``
    (camera numbers from 1). Pid -1 is dropped everywhere. For images without names or
    identities use the ``images`` reader (:mod:`robustreid.data.images`).

    Args:
        distractor_pid: a pid to keep in the gallery only (e.g. 0 for Market conventions);
            by default every pid is an ordinary identity.
        eval_only: read only ``query/`` and ``gallery/`` (no train folder needed; train is
            empty), for a small labelled evaluation set (``data.eval_dataset: folder``).
    """
    check_options("folder", options, ())
    check_option_types("folder", {
        "verify_images": (verify_images, *BOOL), "eval_only": (eval_only, *BOOL),
        "distractor_pid": (distractor_pid, (int, type(None)), "a person id or null")})
    if not eval_only:
        return load_market_like(
            "folder",
            [_root(root)],
            folders=FOLDER_FOLDERS,
            exts=IMAGE_SUFFIXES,
            distractor_pid=distractor_pid,
            verify=verify_images,
        )
    folders = {k: v for k, v in FOLDER_FOLDERS.items() if k != "train"}
    dataset_dir, split_dirs = find_dataset_dir("folder", [_root(root)], folders, IMAGE_SUFFIXES)
    drop = {JUNK_PID} if distractor_pid is None else {JUNK_PID, distractor_pid}
    query = read_folder_split(split_dirs["query"], IMAGE_SUFFIXES, parse_market_name, drop)
    gallery = read_folder_split(split_dirs["gallery"], IMAGE_SUFFIXES, parse_market_name,
                                {JUNK_PID})
    return _finish("folder", dataset_dir, [], query, gallery, verify=verify_images)


# ---------------------------------------------------------------------------------------
# MSMT17
# ---------------------------------------------------------------------------------------

MSMT_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
MSMT_TRAIN_DIRS = ("train", "mask_train_v2")
MSMT_TEST_DIRS = ("test", "mask_test_v2")
MSMT_ORIGINAL_LAYOUT = (
    "    train/ (or mask_train_v2/)   images named in list_train.txt and list_val.txt\n"
    "    test/ (or mask_test_v2/)     images named in list_query.txt and list_gallery.txt\n"
    "    list_train.txt, list_val.txt, list_query.txt, list_gallery.txt\n"
    "        (one 'relative/path.jpg PID' per line)"
)


def _first_dir(base: Path, names: Sequence[str]) -> Path | None:
    return next((base / n for n in names if (base / n).is_dir()), None)


def _msmt_original_lacks(cand: Path) -> list[str]:
    """What ``cand`` lacks for the original MSMT17 layout (empty when complete)."""
    lacking = [n for n in MSMT_LISTS if not (cand / n).is_file()]
    if _first_dir(cand, MSMT_TRAIN_DIRS) is None:
        lacking.append("train/")
    if _first_dir(cand, MSMT_TEST_DIRS) is None:
        lacking.append("test/")
    return lacking


def _parse_msmt_camera(path: Path) -> int:
    """0-based camid from an original MSMT17 name ``PID_IDX_CAM_DATE..._N.jpg``."""
    parts = path.name.split("_")
    if len(parts) < 3 or not _MSMT_CAMERA.fullmatch(parts[2]) or int(parts[2]) < 1:
        raise DatasetError(
            f"cannot parse camera from file name {path}: expected an MSMT17 name "
            "'PID_INDEX_CAM_...' with camera 1..15 in the third field "
            "(e.g. 0000_011_01_0303morning_0015_0.jpg)"
        )
    return int(parts[2]) - 1


def _read_msmt_list(list_file: Path, image_dir: Path) -> list[Sample]:
    """Samples from an MSMT17 list file (``relative/path.jpg PID`` per line)."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read list file {list_file}: {exc}") from exc
    samples = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not _MSMT_PID.fullmatch(parts[1]):
            raise DatasetError(
                f"{list_file}, line {lineno}: expected 'relative/path.jpg PID' (PID an "
                f"integer), got {line[:200]!r}"
            )
        path = image_dir / parts[0]
        try:
            is_file = path.is_file()
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise DatasetError(f"{list_file}, line {lineno}: cannot use image path "
                               f"{parts[0][:200]!r}: {exc.strerror or exc}") from exc
        if not is_file:
            raise DatasetError(
                f"{list_file}, line {lineno}: names image {path}, which does not exist"
            )
        samples.append(Sample(str(path), int(parts[1]), _parse_msmt_camera(path)))
    if not samples:
        raise DatasetError(f"list file {list_file} names no images")
    return samples


@register_dataset("msmt17")
def msmt17(
    root: PathLike,
    *,
    verify_images: bool = False,
    keep_val_apart: bool = False,
    **options: object,
) -> ReIDData:
    """MSMT17 (V1 or V2), original list-file layout or the re-organised Market layout.

    Searched, in order: ``ROOT/msmt17/MSMT17_V1``, ``ROOT/msmt17/MSMT17_V2``,
    ``ROOT/MSMT17_V1``, ``ROOT/MSMT17_V2``, ``ROOT/msmt17`` and ``ROOT``. A directory is
    used if it holds either

    * the original layout: ``train/`` and ``test/`` (V2: ``mask_train_v2/`` and
      ``mask_test_v2/``) and ``list_{train,val,query,gallery}.txt``, each line
      ``relative/path.jpg PID`` relative to the train folder (train/val lists) or the test
      folder (query/gallery lists); the camera is the third field of the file name; or
    * the re-organised layout: ``bounding_box_train/``, ``query/``, ``bounding_box_test/``
      with Market-style names ``0000_c1_0000.jpg`` (pid 0 is a real identity here).

    Args:
        keep_val_apart: by default train is ``list_train`` + ``list_val`` relabelled
            together. With True, train is ``list_train`` only and the validation samples
            are returned in ``data.extra["val"]`` with their original pids (like query and
            gallery). Ignored for the re-organised layout, which has no val list.
    """
    check_options("msmt17", options, ())
    check_option_types("msmt17", {"verify_images": (verify_images, *BOOL),
                                  "keep_val_apart": (keep_val_apart, *BOOL)})
    root = _root(root)
    candidates = [
        root / "msmt17" / "MSMT17_V1",
        root / "msmt17" / "MSMT17_V2",
        root / "MSMT17_V1",
        root / "MSMT17_V2",
        root / "msmt17",
        root,
    ]
    for cand in candidates:
        if not cand.is_dir():
            continue
        if not _msmt_original_lacks(cand):
            return _read_msmt_original(cand, keep_val_apart, verify_images)
        if not missing_folders(cand, MARKET_FOLDERS):
            split_dirs = {split: cand / names[0] for split, names in MARKET_FOLDERS.items()}
            return _read_market_dirs("msmt17", cand, split_dirs, JPG, None, verify_images)

    def describe(cand: Path) -> str:
        if not cand.is_dir():
            return describe_candidate(cand, MARKET_FOLDERS)
        return (
            f"  {cand}  (exists but lacks {', '.join(_msmt_original_lacks(cand))} "
            f"for the original layout, "
            f"{', '.join(n + '/' for n in missing_folders(cand, MARKET_FOLDERS))} "
            "for the re-organised one)"
        )

    searched = "\n".join(describe(c) for c in candidates)
    raise DatasetError(
        f"cannot find dataset 'msmt17'; searched:\n{searched}\n"
        f"expected one of these directories to hold either the original layout:\n"
        f"{MSMT_ORIGINAL_LAYOUT}\n"
        f"or the re-organised layout:\n{format_layout(MARKET_FOLDERS, JPG)}"
    )


def _read_msmt_original(dataset_dir: Path, keep_val_apart: bool, verify: bool) -> ReIDData:
    train_dir = _first_dir(dataset_dir, MSMT_TRAIN_DIRS)
    test_dir = _first_dir(dataset_dir, MSMT_TEST_DIRS)
    assert train_dir is not None and test_dir is not None  # checked by the caller
    train = _read_msmt_list(dataset_dir / "list_train.txt", train_dir)
    val = _read_msmt_list(dataset_dir / "list_val.txt", train_dir)
    query = _read_msmt_list(dataset_dir / "list_query.txt", test_dir)
    gallery = _read_msmt_list(dataset_dir / "list_gallery.txt", test_dir)
    if keep_val_apart:
        return _finish(
            "msmt17", dataset_dir, train, query, gallery, verify=verify, extra={"val": val}
        )
    return _finish("msmt17", dataset_dir, train + val, query, gallery, verify=verify)
