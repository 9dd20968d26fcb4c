"""The ``images`` reader: plain, unlabeled images, with no naming convention.

``ROOT`` is a folder, searched recursively (:func:`~robustreid.data.base.list_images`), or
a list file (``.txt``, one image or folder path per line, relative to the list file's
folder; see :func:`~robustreid.data.base.read_list_file`). Every image goes to ``train``
with person id :data:`~robustreid.data.base.UNKNOWN_PID`; query and gallery are empty
(evaluate on another data set with ``data.eval_dataset``). Camera ids come from
``cameras``:

* ``one``: camera 0 for every image;
* ``subfolder``: the name of the folder at ``camera_depth`` below the base folder (depth 0:
  ``ROOT/cam3/2024-05-01/x.jpg`` is camera ``cam3``; depth 1: ``2024-05-01``);
* ``regex``: the one group of ``camera_regex``, searched (:func:`re.search`) in the path
  relative to the base folder, with ``/`` separators (``(cam\\d+)`` on
  ``day1/cam3_0001.jpg`` gives ``cam3``).

The base folder is ``ROOT`` for a folder and the list file's folder for a list file (a
listed path outside it is matched whole). The distinct camera names are numbered
``0..C-1`` in natural order (``cam2`` before ``cam10``) and the mapping is logged.

Every option is checked before any file is listed; an image the camera rule does not fit
raises :class:`~robustreid.data.base.DatasetError` naming the file and the rule.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from robustreid.data.base import (
    IMAGE_SUFFIXES,
    UNKNOWN_PID,
    DatasetError,
    PathLike,
    ReIDData,
    Sample,
    check_option_types,
    check_options,
    list_images,
    read_list_file,
    register_dataset,
)
from robustreid.data.base import verify_images as _verify_split

__all__ = ["CAMERA_MODES", "camera_rule", "images", "natural_key"]

logger = logging.getLogger(__name__)

CAMERA_MODES = ("one", "subfolder", "regex")
LIST_FILE_SUFFIX = ".txt"


def natural_key(text: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Sort key ordering runs of ASCII digits by value: ``cam2`` < ``cam10``.

    A digit run is compared by its length without leading zeros, then its digits, which is
    its numeric order without converting it (no limit on the number of digits). Names equal
    in that order (``cam01``, ``cam1``) are then ordered as plain strings, so the order of
    distinct names is always the same."""
    key = []
    for pos, tok in enumerate(re.split(r"([0-9]+)", text)):
        if pos % 2:  # the split's odd positions are the digit runs
            digits = tok.lstrip("0")
            key.append((0, len(digits), digits))
        elif tok:
            key.append((1, 0, tok))
    return tuple(key), text


def camera_rule(cameras: object, camera_depth: object = None,
                camera_regex: object = None) -> Callable[[str], str]:
    """The function ``relative posix path -> camera name`` the options describe.

    Raises:
        DatasetError: an unknown ``cameras`` mode, an option of another mode given, a
            ``camera_depth`` that is not an int >= 0, or a ``camera_regex`` that does not
            compile or has not exactly one group.
    """
    if cameras not in CAMERA_MODES:
        raise DatasetError(f"dataset 'images', option cameras: got {cameras!r}, expected one of "
                           f"{', '.join(CAMERA_MODES)}")
    for key, value, mode in (("camera_depth", camera_depth, "subfolder"),
                             ("camera_regex", camera_regex, "regex")):
        if value is not None and cameras != mode:
            raise DatasetError(f"dataset 'images', option {key}={value!r} is only used with "
                               f"cameras={mode}, but cameras={cameras}")
    if cameras == "one":
        return lambda rel: ""
    if cameras == "subfolder":
        camera_depth = 0 if camera_depth is None else camera_depth
        if not isinstance(camera_depth, int) or isinstance(camera_depth, bool) or (
                camera_depth < 0):
            raise DatasetError(f"dataset 'images', option camera_depth: got {camera_depth!r}, "
                               "expected an int >= 0 (0: the first folder below the root)")
        depth = camera_depth

        def by_folder(rel: str) -> str:
            parts = rel.split("/")
            if len(parts) < depth + 2:
                raise DatasetError(
                    f"path {rel} has no folder at camera_depth={depth}: cameras=subfolder "
                    f"expects ROOT/{'F/' * depth}CAMERA/.../image (use cameras=one for "
                    "images without camera folders)")
            return parts[depth]

        return by_folder
    if not isinstance(camera_regex, str) or not camera_regex:
        raise DatasetError("dataset 'images', option camera_regex: cameras=regex needs a "
                           "regular expression with one group, e.g. '(cam\\d+)'")
    try:
        pattern = re.compile(camera_regex)
    except (re.error, OverflowError, RecursionError) as exc:
        # re.error for bad syntax; OverflowError for a repeat count such as a{99999999999};
        # RecursionError for parentheses nested hundreds deep.
        raise DatasetError(f"dataset 'images', option camera_regex {camera_regex!r} is not "
                           f"a valid regular expression: {exc}") from exc
    if pattern.groups != 1:
        raise DatasetError(f"dataset 'images', option camera_regex {camera_regex!r} has "
                           f"{pattern.groups} groups: expected exactly one, the camera name")

    def by_regex(rel: str) -> str:
        match = pattern.search(rel)
        if match is None or not match.group(1):
            raise DatasetError(f"camera_regex {camera_regex!r} does not match {rel} "
                               "(searched in the path relative to the root, '/' separators)")
        return match.group(1)

    return by_regex


def _relative(paths: list[Path], base: Path) -> list[str]:
    """Each path relative to ``base`` with ``/`` separators (the whole path if outside)."""
    prefix = os.path.join(os.fspath(base), "")
    out = []
    for path in paths:
        text = os.fspath(path)
        rel = text[len(prefix):] if text.startswith(prefix) else text
        out.append(rel.replace(os.sep, "/"))
    return out


def _list(root: Path) -> tuple[list[Path], Path]:
    """(image paths, base folder) of a folder or list file ``root``."""
    if root.is_dir():
        try:
            files = list_images(root)
        except OSError as exc:
            raise DatasetError(f"cannot list images under {root}: {exc}") from exc
        if not files:
            raise DatasetError(f"no images under {root}: expected files ending in "
                               f"{', '.join(IMAGE_SUFFIXES)} (searched recursively)")
        return files, root
    if root.is_file():
        if root.suffix.lower() != LIST_FILE_SUFFIX:
            raise DatasetError(f"dataset 'images': root {root} is a file but not a list file "
                               f"({LIST_FILE_SUFFIX}); expected a folder of images or a list "
                               "file with one image path per line")
        files = read_list_file(root)
        wrong = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if wrong:
            raise DatasetError(f"list file {root} names {len(wrong)} file(s) that are not "
                               f"images, first {wrong[0]}: expected files ending in "
                               f"{', '.join(IMAGE_SUFFIXES)}")
        return files, root.parent
    raise DatasetError(f"dataset 'images': root {root} not found: expected a folder of images "
                       f"or a list file ({LIST_FILE_SUFFIX})")


@register_dataset("images")
def images(
    root: PathLike,
    *,
    verify_images: bool = False,
    cameras: str = "one",
    camera_depth: int | None = None,
    camera_regex: str | None = None,
    **options: object,
) -> ReIDData:
    """Unlabeled images in a folder (recursive) or a list file; see the module docstring.

    Args:
        root: folder of images, or a ``.txt`` list file.
        cameras: ``one``, ``subfolder`` or ``regex``, how camera ids are found.
        camera_depth: for ``subfolder``: which folder level below the base names the
            camera (default 0: the first).
        camera_regex: for ``regex``: a regular expression with one group, the camera name.

    Returns:
        ReIDData with ``train`` = every image (sorted by path for a folder, in list order
        for a list file), pid :data:`UNKNOWN_PID`; ``query`` and ``gallery`` empty.

    Raises:
        DatasetError: bad options, a missing or empty root, a list file naming missing or
            non-image files, an image the camera rule does not fit, or (with
            ``verify_images``) an unreadable image.
    """
    check_options("images", options, ("cameras", "camera_depth", "camera_regex"))
    check_option_types("images", {"verify_images": (verify_images, (bool,), "true or false")})
    camera_of = camera_rule(cameras, camera_depth, camera_regex)
    root_path = Path(root).expanduser()
    files, base = _list(root_path)
    if cameras == "one":
        camids = [0] * len(files)
    else:
        names = []
        for path, rel in zip(files, _relative(files, base), strict=True):
            try:
                names.append(camera_of(rel))
            except DatasetError as exc:
                raise DatasetError(f"image {path}: {exc}") from None
        ordered = sorted(set(names), key=natural_key)
        index = {name: i for i, name in enumerate(ordered)}
        camids = [index[n] for n in names]
        logger.info("images: %d cameras from %s: %s", len(ordered), cameras,
                    ", ".join(f"{n} -> {i}" for i, n in enumerate(ordered[:20]))
                    + (", ..." if len(ordered) > 20 else ""))
    train = [Sample(os.fspath(p), UNKNOWN_PID, c) for p, c in zip(files, camids, strict=True)]
    if verify_images:
        _verify_split(train, "train")
    return ReIDData(name="images", root=str(root_path), train=train, query=[], gallery=[])
