"""The mistakes a user can make, as exception types whose message is one sentence naming what and where.

The CLI prints such a message as ``error: <sentence>`` and exits 1, without a traceback.
"""


class DataError(ValueError):
    """The data cannot be used as given; the message says what is wrong and where."""


class ConfigError(ValueError):
    """An argument value the template cannot run with; the message names the argument and the valid values."""


class WriteError(RuntimeError):
    """A file could not be written (a full disk, a read-only directory); earlier files are left intact."""
