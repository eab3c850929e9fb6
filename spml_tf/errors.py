"""The two kinds of error a user can act on, and the exit code each maps to."""


class UsageError(Exception):
    """A flag, a config value or a path the user gave is wrong (exit code 2)."""

    exit_code = 2


class DataError(Exception):
    """The data on disk is missing, corrupt or inconsistent (exit code 1)."""

    exit_code = 1


class TrainingError(Exception):
    """Training itself failed (the loss diverged); what was saved before stays (exit code 1)."""

    exit_code = 1
