"""File output: every file robustreid writes appears whole or not at all
(:func:`atomic_write`), and an output folder is checked before the work whose results go
there (:func:`ensure_writable_dir`)."""

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


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Check that files can be created in the folder ``path`` before any work whose results
    go there; the check leaves nothing behind.

    The folder and any missing parents are created, a temporary file is created in it
    (:func:`tempfile.mkstemp`) and removed, then the folders this call created are removed
    again, so a command that fails later for another reason leaves no empty folders.

    Args:
        path: the output folder (for an output file: its parent folder).
        what: what the folder is in the message, e.g. ``"--out"`` or ``"output_dir"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UserError: naming ``what`` and the folder: a part of the path is a file, the folder
            cannot be created, or no file can be written in it (read-only file system,
            permissions, a name the system refuses).
    """
    folder = Path(path)
    created: list[Path] = []
    try:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for parent in reversed(missing):
            parent.mkdir()
            created.append(parent)
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file")
        handle, probe = tempfile.mkstemp(prefix=".robustreid-write-check-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        if isinstance(err, NotADirectoryError):
            reason = "it or a folder above it is a file, not a folder"
        else:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(f"{what} {folder}: cannot write files in this folder ({reason}); "
                        "choose another folder") from err
    finally:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:  # something else wrote into it meanwhile: keep it
                pass
    return folder
