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

__all__ = ["UserError", "UnknownNameError"]


class UserError(ValueError):
    """Bad user input; the message names the key, file or value and what was expected."""


class UnknownNameError(UserError, KeyError):
    """A name (data set, backbone, ...) that no registry holds."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
