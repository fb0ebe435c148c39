"""Errors meant for users: the CLI prints them as one line and exits non-zero."""


class DenseMTLError(Exception):
    """A user's mistake (bad flag, bad file, bad value). The message is one self-contained line."""


class DataError(DenseMTLError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file."""


class ConfigError(DenseMTLError):
    """A configuration key or value is invalid; the message names the key."""
