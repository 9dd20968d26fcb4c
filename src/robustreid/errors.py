"""The one error type of robustreid's user errors.

A :class:`UserError` (or a subclass) says that the input is wrong: a configuration key, a
file, a folder, a command-line value. Its message names the key, file or value and what was
expected; the command line prints it on one line and exits with status 2. Any other
exception is a bug of robustreid (or of a library under it): the command line lets it
through, with its traceback and exit status 1.

It derives from :class:`ValueError` so that code written against the older error types
(``except ValueError``) keeps working.
"""

from __future__ import annotations

__all__ = ["ConfigError", "RunInterrupted", "TrainingDiverged", "UnknownNameError", "UserError"]


class UserError(ValueError):
    """Bad user input; the message names the key, file or value and what was expected."""


class UnknownNameError(UserError, KeyError):
    """A name (data set, backbone, ...) that no registry holds."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunInterrupted(Exception):
    """Training stopped on a signal (SIGINT, SIGTERM) after finishing its current step.

    Not a user error and not a bug: the command line prints the message and exits with
    ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), as a process ended by that signal.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class ConfigError(UserError):
    """An invalid configuration file, override or value (:mod:`robustreid.config`).

    Attributes:
        key: the full dotted key concerned, or None when the problem is not about one key.
        source: the file the value came from, ``"command line"``, or None.
    """

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        super().__init__(message)
        self.key = key
        self.source = source
