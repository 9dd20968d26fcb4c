"""The one collector of image paths for every command and function that takes images.

``robustreid embed`` (its inputs), ``robustreid search`` (``--query``, and ``--gallery`` when
it is a folder) and the extractor (:func:`robustreid.load`, for each path it is given) all turn
user inputs into image files with :func:`collect_images`:

    >>> from robustreid.inference.collect import collect_images
    >>> paths = collect_images(["data/query", "data/gallery/*.jpg", "extra.txt"])

The rules (shared with the ``images`` data set, which lists a folder and reads a list file with
the same :func:`~robustreid.data.base.list_images` and
:func:`~robustreid.data.base.read_list_file`):

* **a folder** gives its images: files whose suffix is one of
  :data:`~robustreid.data.base.IMAGE_SUFFIXES` in any case (``.jpg .jpeg .png .bmp .webp``,
  so ``a.JPG`` counts), searched recursively, sorted by path, names starting with ``.``
  (hidden files and folders) skipped. Other files (``Thumbs.db``, ``readme.txt``, the list
  files next to a data set) are left out without a word. A folder without images is an
  error that counts the other files it holds.
* **a list file** (``.txt``) gives the paths it names, in its order: one file or folder per
  line, relative paths resolved against the list file's folder (not the working folder),
  blank lines and ``#`` comments skipped; a folder line follows the folder rule. A missing
  path is an error naming the list file and the line.
* **a glob pattern** (``data/query/*.jpg``, ``**`` recurses) gives its matches, sorted;
  matched folders follow the folder rule. A pattern that matches nothing is an error.
* **a file** named directly (an argument, a list-file line or a glob match) is used as given,
  whatever its suffix: it is the caller's choice. If it does not decode, ``embed`` skips and
  reports it (or stops with ``--strict``) and the extractor raises a ``DatasetError`` naming
  it.
* Several inputs are collected in order; a file reached twice (same absolute path) is kept at
  its first position only. (The extractor collects each path it is given on its own, so that
  it returns one row per input it was given: a file passed twice gives two rows.)

Where the callers used to differ, the rule a re-ID user expects was chosen: a folder means
"the images in it" for everyone (``embed`` used to take every file of a folder and report the
non-images as skipped, so a folder holding a ``Thumbs.db`` or a readme warned about it); list
files and glob patterns, which only ``embed`` read, are accepted by ``search --query`` and the
extractor too (a ``.txt`` path given to the extractor used to be read as an image). The
``images`` data set is stricter about training data on two points: its root must be a folder
or a list file, and a list file naming a file without an image suffix is refused there.

All bad input raises :class:`~robustreid.errors.UserError` naming the input and what was
expected (a :class:`~robustreid.data.base.DatasetError` for list-file problems).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from glob import glob
from pathlib import Path
from typing import Any

from robustreid.data.base import IMAGE_SUFFIXES, list_images, read_list_file
from robustreid.errors import UserError

__all__ = ["GLOB_CHARS", "LIST_FILE_SUFFIX", "collect_images"]

LIST_FILE_SUFFIX = ".txt"
GLOB_CHARS = frozenset("*?[")


def collect_images(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files of one input or a list of inputs, in order, without duplicates.

    Each input is a folder, a list file (``.txt``), a glob pattern or a single file; see the
    module docstring for the rules.

    Returns:
        The files, as :class:`~pathlib.Path` objects spelled as the inputs spell them
        (relative inputs stay relative; list-file lines are joined to the list file's folder).

    Raises:
        UserError: no inputs, a missing folder or file, a glob that matches nothing, a folder
            without images or one that cannot be listed, or a list file that is unreadable,
            not UTF-8 text, names no files or names a missing one (the message gives the list
            file and line number).
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
            return read_list_file(path, expand_folder=_collect_folder)
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
    """The images under ``folder`` (:func:`~robustreid.data.base.list_images`); at least
    one."""
    try:
        files = list_images(folder)
        others = 0 if files else len(list_images(folder, suffixes=None))
    except OSError as err:  # a sub-folder that cannot be listed
        raise UserError(f"cannot list folder {folder}: {err}") from err
    if not files:
        raise UserError(f"folder {folder} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}"
                        f" recursively; found {others} other files)")
    return files
