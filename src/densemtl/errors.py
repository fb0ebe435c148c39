"""Errors meant for users: the CLI prints them as one line and exits non-zero.

Exit statuses (``densemtl.cli.main``): 2 for a user's mistake (:class:`DenseMTLError`,
:class:`ConfigError`, :class:`DataError`), 1 for a fault at run time (:class:`RuntimeFault`: a
full disk, an unwritable place, non-finite training), 130 / 143 for a run stopped by SIGINT /
SIGTERM after it saved a checkpoint (:class:`Interrupted`).
"""

import re


class DenseMTLError(Exception):
    """A user's mistake (bad flag, bad file, bad value). The message is one self-contained line."""

    exit_code: int = 2

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_PREFIX.match(args[0]):
            args = (_worker_message(args[0]),)
        super().__init__(*args)


#: How torch's DataLoader re-raises an error of a worker process: its traceback in the message.
_WORKER_PREFIX = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def _worker_message(text: str) -> str:
    """The one line a DataLoader worker's error was raised with, from the traceback torch wraps it in
    (a bad file found by a ``--workers N`` loader is still one line naming it)."""
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.partition(": ")[2] or last


class DataError(DenseMTLError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file."""


class ConfigError(DenseMTLError):
    """A configuration key or value is invalid; the message names the key."""


class RuntimeFault(DenseMTLError):
    """A fault while running (ENOSPC, EACCES, EROFS on a write; NaN or inf in training): the message
    names the path or the task, epoch and step, and what was kept. Exit status 1."""

    exit_code = 1


class Interrupted(DenseMTLError):
    """A run stopped by a signal after saving a checkpoint; the message says how to resume.
    Exit status 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
