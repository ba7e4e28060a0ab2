"""Errors that reach the user as a one-line message (no traceback) and exit status 2."""


class UsageError(Exception):
    """Bad input from the user: a bad file, flag or config value. The message says what and where."""


class DataError(UsageError):
    """A data file breaks the record contract. The message starts with `file:line:` and names the rule."""
