"""The exceptions `cme_reward` raises on purpose, under one base class [`CMEError`].

Each also subclasses the built-in exception that callers already catch for that kind of problem (`ValueError` for bad
input, `RuntimeError` for a refused request, `ConnectionError` for a server out of reach), so `except ValueError`
keeps working where it did. Bad arguments to a function raise plain `ValueError` / `TypeError`, as in the standard
library.
"""

from __future__ import annotations

__all__ = [
    "CMEError",
    "CheckpointError",
    "InputError",
    "RemoteError",
    "RequestError",
    "UnreachableError",
    "UsageError",
]


class CMEError(Exception):
    """Base class of the exceptions raised on purpose by `cme_reward`."""


class UsageError(CMEError):
    """A command-line problem the user can fix; `cme-reward` prints it as one line and exits with status 2."""


class InputError(CMEError, ValueError):
    """An input file or one of its rows cannot be used (the message names the file, row and column)."""


class CheckpointError(CMEError, ValueError):
    """A resumable output does not match this run (other input or options) or cannot be continued."""


class RequestError(CMEError):
    """The reward server refuses a request: `status` is the HTTP status it answers with, `message` the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class RemoteError(CMEError, RuntimeError):
    """A remote server (vLLM, the reward server, a judge) refused a request or answered something unusable.
    `status_code` is its HTTP status (`None` when the answer itself was malformed)."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class UnreachableError(CMEError, ConnectionError):
    """A remote server did not answer after every try (connection errors, timeouts, busy or restarting)."""
