"""The output folder of a training run: owned by one run at a time, never silently reused.

A run folder holds ``config.yaml``, ``train.log``, ``metrics.jsonl``, ``tensorboard/``,
``last.pth`` (with ``last.prev.pth``, the checkpoint before it) and ``best.pth``.
:class:`RunDirectory` is what a run holds while it writes there:

* **a lock** (``.lock``, an exclusive ``flock`` held for the whole run, with the holder's
  pid, host and start time written inside): a second run into the same folder is refused
  with a message naming the holder. The kernel releases a ``flock`` when its process ends,
  however it ends (``kill -9`` included), so a crashed run never leaves a stale lock;
* **no silent reuse**: a folder that already holds a run is refused unless the caller says
  ``resume`` (continue it) or ``overwrite`` (delete its run files and start afresh);
* **resume checks before any work**: the checkpoint to resume from is found (``last.pth``,
  else the previous one when ``last.pth`` is damaged: :func:`find_resume_checkpoint`) and
  the configuration is compared with the one it was trained with
  (:func:`resume_changes`): settings that define the run (model, data, seed, optimiser,
  method) are refused, the ones read afresh every epoch are applied and logged.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from robustreid.checkpoint import (
    CheckpointError,
    load_checkpoint,
    previous_checkpoint_path,
)
from robustreid.errors import ConfigError, UserError
from robustreid.io import ensure_writable_dir

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# The results of a run: a folder holding any of these holds a run (a start that failed
# before its first epoch leaves at most a log, and may be retried as it is).
RESULT_FILES = ("last.pth", "last.prev.pth", "best.pth", "metrics.jsonl")
# What ``--overwrite`` deletes: what a run writes into its folder, but for its log
# (``train.log``, ``demo.log``), which is appended to and so keeps the folder's history.
RUN_FILES = (*RESULT_FILES, "config.yaml", "curves.png", "train_features.npy")
RUN_DIRS = ("tensorboard",)

# Settings a resumed run may change. Each is read afresh every epoch (or only by evaluation
# and logging), so the new value is applied from the resumed epoch on. Entries ending in "."
# are whole sections or prefixes. Every other setting defines the run (the model and its
# weights' shapes, the data and image size, the seed, the optimiser and schedule whose
# state the checkpoint carries, the method and its modules' shapes) and is refused.
#: brings a saved configuration dict to the current layout (renamed keys, new defaults)
ConfigUpgrade = Callable[[Mapping[str, Any]], Mapping[str, Any]]

RESUME_APPLIES = (
    "train.epochs", "train.eval_every", "train.log_every", "train.iters", "train.batch_size",
    "train.num_instances", "train.prefer_cross_camera", "train.flip_p", "train.padding",
    "train.erasing_p", "train.channels_last", "train.sync_bn", "train.dist_timeout", "eval.",
    "cluster.", "memory.temperature", "memory.momentum", "data.num_workers",
    "data.test_batch_size", "data.images_on_device", "data.check_images", "data.eval_dataset",
    "data.eval_root", "data.eval_options", "device", "output_dir",
)


class RunLockedError(UserError):
    """Another process holds the run folder's lock."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not name.endswith("options"):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def resume_changes(saved: Mapping[str, Any], current: Mapping[str, Any]
                   ) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """The settings that differ between a checkpoint's configuration and the current one.

    Args:
        saved: the configuration a checkpoint was trained with (``config_to_dict`` form).
        current: the configuration of the run that resumes it.

    Returns:
        ``(applied, refused)``: lists of ``(dotted key, saved value, current value)``;
        ``applied`` are in :data:`RESUME_APPLIES`, ``refused`` are all the others.
    """
    old, new = dict(_flatten(saved)), dict(_flatten(current))
    applied, refused = [], []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, "<not set>"), new.get(key, "<not set>")
        if a == b:
            continue
        allowed = any(key == p or (p.endswith(".") and key.startswith(p))
                      for p in RESUME_APPLIES)
        (applied if allowed else refused).append((key, a, b))
    return applied, refused


def find_resume_checkpoint(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a resumed run continues from, loaded: ``last.pth``, or the previous
    full checkpoint (``last.prev.pth``) when ``last.pth`` is missing or damaged (logged as a
    warning naming both). None when the folder holds neither.

    Raises:
        CheckpointError: every checkpoint there is damaged (names each and why).
    """
    folder = Path(folder)
    last = folder / "last.pth"
    problems = []
    for path in (last, previous_checkpoint_path(last)):
        if not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err).splitlines()[0])  # torch's own messages run on
            continue
        if path != last:
            why = problems[0] if problems else f"{last} is missing"
            logger.warning("%s; resuming from the previous checkpoint %s (epoch %d)", why,
                           path, ckpt["epoch"])
        return path, ckpt
    if problems:
        raise CheckpointError("cannot resume: " + "; ".join(problems))
    return None


def run_files(folder: str | Path, names: tuple[str, ...] = (*RUN_FILES, *RUN_DIRS)
              ) -> list[str]:
    """Which of ``names`` (default: everything a run writes) exist in ``folder``."""
    folder = Path(folder)
    return [name for name in names if (folder / name).exists()]


class RunDirectory:
    """Ownership of a run's output folder (see the module docstring).

    Opening it checks that the folder can be written and takes the lock; :meth:`start`
    then decides between a fresh start, a resume and an overwrite. Use it as a context
    manager, or call :meth:`close`: the lock is released on exit.

    Args:
        path: the output folder (created if missing).

    Attributes:
        resume_path, checkpoint: the checkpoint to resume from and its payload (None for a
            fresh start), set by :meth:`start`.
        applied: the settings changed since the checkpoint and applied on resume
            (``(key, saved, current)``).

    Raises:
        UserError: the folder cannot be written; another run holds it
            (:class:`RunLockedError`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = ensure_writable_dir(path, "output_dir")
        self.path.mkdir(parents=True, exist_ok=True)
        self.resume_path: Path | None = None
        self.checkpoint: dict[str, Any] | None = None
        self.applied: list[tuple[str, Any, Any]] = []
        self._lock_fd: int | None = None
        self._acquire()
        self._clean_partial_writes()

    @classmethod
    def open(cls, path: str | Path, config: Mapping[str, Any], *, resume: bool = False,
             overwrite: bool = False, upgrade: ConfigUpgrade | None = None) -> RunDirectory:
        """:class:`RunDirectory` ``(path)`` then :meth:`start`; the lock is released if the
        start is refused."""
        run = cls(path)
        try:
            run.start(config, resume=resume, overwrite=overwrite, upgrade=upgrade)
        except BaseException:
            run.close()
            raise
        return run

    def start(self, config: Mapping[str, Any], *, resume: bool = False,
              overwrite: bool = False, upgrade: ConfigUpgrade | None = None) -> None:
        """Decide how the run starts in the (held) folder.

        Args:
            config: the current configuration (``config_to_dict`` form), checked against
                the checkpoint's when resuming.
            upgrade: brings the checkpoint's configuration (perhaps saved by an older
                version, with keys since renamed) to the current layout before the check
                (:func:`robustreid.config.upgrade_config_dict`).
            resume: continue the run in the folder (a fresh start when it holds none).
            overwrite: delete the run files in the folder and start afresh.

        Raises:
            UserError: the folder holds a run and neither ``resume`` nor ``overwrite`` was
                given; both were given.
            CheckpointError: resuming, and every checkpoint in the folder is damaged.
            ConfigError: resuming with a changed setting that defines the run.
        """
        if resume and overwrite:
            raise UserError("resume and overwrite exclude each other: resume continues the "
                            "run in the folder, overwrite deletes it")
        if resume:
            self._prepare_resume(config, upgrade)
        elif overwrite:
            self._delete(run_files(self.path))
        elif results := run_files(self.path, RESULT_FILES):
            raise UserError(
                f"output_dir {self.path} already holds a run ({', '.join(results)}): "
                "pass --resume to continue it, or --overwrite to delete it and start "
                "afresh (or choose another output_dir)")

    # ----------------------------------------------------------------- lock
    def _acquire(self) -> None:
        import fcntl

        lock_path = self.path / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(lock_path)
            raise RunLockedError(
                f"output_dir {self.path} is in use by another run ({holder}); wait for it "
                "to finish or choose another output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- state
    def _clean_partial_writes(self) -> None:
        """Remove the temporary files of writes a killed run left unfinished (every file
        of ours is written to ``.NAME.*.tmp`` and renamed, so these are never whole)."""
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def _prepare_resume(self, config: Mapping[str, Any], upgrade: ConfigUpgrade | None
                        ) -> None:
        found = find_resume_checkpoint(self.path)
        if found is None:
            logger.info("--resume: %s holds no checkpoint; starting afresh", self.path)
            return
        self.resume_path, self.checkpoint = found
        saved = self.checkpoint.get("config") or {}
        if upgrade is not None:
            saved = upgrade(saved)
        self.applied, refused = resume_changes(saved, config)
        if refused:
            shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now"
                              for k, a, b in refused[:5])
            more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
            raise ConfigError(
                f"cannot resume {self.resume_path}: these settings define the run and "
                f"differ from the ones it was trained with: {shown}{more}. Resume with the "
                f"run's settings ({self.path / 'config.yaml'}), or start a new run "
                "(another output_dir, or --overwrite)")
        for key, a, b in self.applied:
            logger.info("resume: %s changed from %r to %r, applied from epoch %d on", key,
                        a, b, int(self.checkpoint["epoch"]) + 1)

    def _delete(self, present: list[str]) -> None:
        if present:
            logger.warning("--overwrite: deleting the previous run in %s (%s)", self.path,
                           ", ".join(present))
        for name in present:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()


def _read_holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
