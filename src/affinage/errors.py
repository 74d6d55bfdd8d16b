"""User-facing errors.

Every error a user can cause (a missing file, a malformed row, a wrong config key, a model that
cannot be found) is raised as an :class:`AffinageError` subclass whose message names the place and
the fix. The CLI prints these without a stack trace; anything else is a bug and keeps its trace.
"""


class AffinageError(Exception):
    """Base class for errors caused by the user's input, printed without a traceback."""


class ConfigError(AffinageError):
    """A config key is unknown, has the wrong type, or the combination of options is impossible."""


class DataError(AffinageError):
    """A data file is missing, unreadable, or a row is malformed."""


class ModelError(AffinageError):
    """A model or tokenizer cannot be found or loaded."""
