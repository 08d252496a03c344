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


class NonFiniteError(UserError):
    """A non-finite loss, gradient or weight: the run stopped without saving it (exit status 3).
    ``quiet``: another rank prints the same line (every rank raises it at the same step)."""

    exit_code = 3

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet
