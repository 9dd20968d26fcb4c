"""Crash-safe file output: every file robustreid writes appears whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from robustreid.errors import UserError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], mode: int = 0o644,
                 before_replace: Callable[[Path], object] | None = None) -> Path:
    """Write a file through ``write(handle)`` atomically.

    The data goes to a temporary file ``.NAME.*.tmp`` in the destination folder, which is
    flushed, fsynced and renamed over ``path``; an interruption leaves the previous file (or
    none) in place, and no temporary file behind unless the process is killed outright.
    Parent folders are created.

    Args:
        before_replace: called with the temporary file's path once it is complete and
            before the rename (to verify it, or to move the previous file aside); an
            exception there leaves ``path`` as it was.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        if before_replace is not None:
            before_replace(Path(tmp_name))
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Create the folder ``path`` if needed and check that files can be written in it, before
    any expensive work is done for it.

    The check creates and deletes a temporary file there (permission bits alone do not say
    it: root ignores them, a read-only mount or a full disk do not show in them).

    Args:
        path: the folder.
        what: how the user named it, for the message (``"output_dir"``, ``"--out"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UserError: the folder cannot be created or written (names it and why).
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{what} {folder}: cannot write there ({err.strerror or err}); "
                        "expected a writable folder") from err
    return folder


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _fsync_dir(folder: Path) -> None:
    """Persist the rename on POSIX; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
