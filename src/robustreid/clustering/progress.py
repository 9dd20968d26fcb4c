"""Progress and timing messages of the pseudo-labelling steps (``logging``, never ``print``).

Every step of a long input (``N >= LONG_INPUT`` rows) logs at ``INFO`` when it starts, how far
it is (at every 10 % and at least every ``interval`` seconds, once it has run ``quiet``
seconds), and how long it took with the process' resident memory then and its high-water mark
(Linux; a step during which the high-water mark rose set the peak);
short inputs log the same at ``DEBUG``, so a small test or a Market-sized epoch stays quiet.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType

try:  # the resident high-water mark (Unix)
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

__all__ = ["LONG_INPUT", "QUIET_SECONDS", "Step", "rss_mb", "peak_rss_mb"]

# Inputs with at least this many rows log their steps at INFO level.
LONG_INPUT = 50_000
# A step logs no progress in its first seconds (a short step's timing says enough).
QUIET_SECONDS = 5.0


class Step:
    """A timed step: ``with Step(log, "kNN search", n, total=n) as step: step.advance(rows)``.

    Args:
        log: the logger to write to.
        name: what the step does (e.g. ``"kNN search (ivf, 256-d)"``).
        n: number of rows of the input (selects ``INFO`` or ``DEBUG``).
        total: units of work for the progress messages (``None``: no progress, only timing).
        interval: seconds between two progress messages at most (also one per 10 %).
        quiet: no progress message in the first ``quiet`` seconds of the step (default
            :data:`QUIET_SECONDS`).
    """

    def __init__(self, log: logging.Logger, name: str, n: int, total: int | None = None,
                 interval: float = 30.0, quiet: float | None = None) -> None:
        self.log, self.name, self.total, self.interval = log, name, total, interval
        self.quiet = QUIET_SECONDS if quiet is None else quiet
        self.level = logging.INFO if n >= LONG_INPUT else logging.DEBUG
        self.done = 0
        self.start = self.last = 0.0
        self.next_fraction = 0.1
        self.seconds = 0.0

    def __enter__(self) -> Step:
        self.start = self.last = time.perf_counter()
        self.log.log(self.level, "%s ...", self.name)
        return self

    def advance(self, units: int) -> None:
        """Record ``units`` more units of work done; log progress when due."""
        self.done += int(units)
        if not self.total:
            return
        now = time.perf_counter()
        fraction = self.done / self.total
        if now - self.start < self.quiet:  # a short step: its timing says enough
            while self.next_fraction <= fraction:
                self.next_fraction += 0.1
            return
        if now - self.last >= self.interval or (fraction >= self.next_fraction
                                                 and fraction < 1.0):
            elapsed = now - self.start
            eta = elapsed * (1.0 - fraction) / fraction if fraction > 0 else float("nan")
            self.log.log(self.level, "%s: %d / %d (%.0f %%), %.1f s elapsed, ~%.0f s left",
                         self.name, self.done, self.total, 100.0 * fraction, elapsed, eta)
            self.last = now
            while self.next_fraction <= fraction:
                self.next_fraction += 0.1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self.start
        if exc_type is None and self.log.isEnabledFor(self.level):
            now, peak = rss_mb(), peak_rss_mb()
            if now is None or peak is None:
                self.log.log(self.level, "%s done in %.1f s", self.name, self.seconds)
            else:
                self.log.log(self.level, "%s done in %.1f s (resident %.0f MiB, peak %.0f MiB)",
                             self.name, self.seconds, now, peak)


def rss_mb() -> float | None:
    """Resident size of this process now, MiB (``/proc/self/statm``; ``None`` elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float | None:
    """Resident high-water mark of this process, MiB (``ru_maxrss``: kB on Linux)."""
    if resource is None or not sys.platform.startswith("linux"):
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
