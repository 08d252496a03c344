"""Errors a user can fix. Launchers print the one-line message and exit with status 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, on one line."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An unknown key, a wrong type or a value outside its choices."""


class DataError(UserError, ValueError):
    """A dataset that is missing, unreadable or damaged."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, damaged or from another run."""
