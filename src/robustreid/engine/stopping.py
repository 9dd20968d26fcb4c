"""Stopping a run cleanly: SIGINT/SIGTERM set a flag that the loop checks after every step
and stage, so ``last.pth`` always holds a finished epoch."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from robustreid.distributed import all_reduce_max, get_world_size
from robustreid.errors import RunInterrupted

logger = logging.getLogger(__name__)


class StopFlag:
    """The stop request of a run: :meth:`watch` installs the signal handlers for the
    duration of the run; :meth:`check` raises :class:`RunInterrupted` at the next safe point.

    ``signum`` may also be set directly (a test stops one process this way).
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextmanager
    def watch(self) -> Iterator[None]:
        """SIGINT/SIGTERM set the flag; a second signal stops at once (KeyboardInterrupt).
        Only from the main thread (where Python delivers signals); elsewhere the process's
        handlers stay as they are."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: object) -> None:
            if self.signum is not None:
                raise KeyboardInterrupt
            self.signum = signum
            logger.warning("%s received: stopping after the current step (send it again to "
                           "stop at once)", signal.Signals(signum).name)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def check(self, epoch: int, where: str, finished: int, last: Path) -> None:
        """Raise :class:`RunInterrupted` if a stop signal arrived (on any process: every
        process stops at the same point, or none does). ``finished``: completed epochs,
        ``last``: the checkpoint that holds them."""
        signum = self.signum
        if get_world_size() > 1:
            signum = all_reduce_max(signum or 0, "agreeing on a stop signal") or None
        if signum is None:
            return
        kept = (f"{last} holds epoch {finished}" if finished else
                "no epoch had finished, so there is no checkpoint yet")
        raise RunInterrupted(
            f"stopped by {signal.Signals(signum).name} in epoch {epoch} ({where}); {kept}. "
            "Rerun with --resume to continue: the interrupted epoch is repeated exactly",
            signum)
