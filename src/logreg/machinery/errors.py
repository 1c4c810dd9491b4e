"""The mistakes a user can make, as exception types whose message is one sentence naming what and where, and
the one place that turns an exception into that sentence for every command (``fit``, ``prepare``, ``sweep``...).

A command prints such a message as ``error: <sentence>`` and exits 1 (2 for a malformed command line or a
Trainer flag Lightning refuses), without a traceback. Anything else is a bug, and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


class DataError(ValueError):
    """The data cannot be used as given; the message says what is wrong and where."""


class ConfigError(ValueError):
    """An argument value the template cannot run with; the message names the argument and the valid values."""


class WriteError(RuntimeError):
    """A file could not be written (a full disk, a read-only directory); earlier files are left intact."""


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite, or as good as infinite; the message names the epoch (and step)."""


USER_ERRORS = (DataError, ConfigError, WriteError, NonFiniteLossError)


def one_line(err: BaseException) -> str:
    """An exception's message on one line: jsonargparse and Lightning spread theirs over indented lines.

    >>> one_line(ValueError("Parser key 'data':\\n    not a number"))
    "Parser key 'data': not a number"
    """
    return " ".join(str(err).split()) or type(err).__name__


def causes(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or during (jsonargparse wraps what an ``__init__`` raises)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def raised_in(err: BaseException, package: str) -> bool:
    """Whether ``err`` was raised by code of ``package`` itself (its traceback's innermost frame is there)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith(package + ".")


def raised_through(err: BaseException, package: str) -> bool:
    """Whether any frame of ``err``'s traceback runs code of ``package`` (it passed through it on its way)."""
    tb = err.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(package + "."):
            return True
        tb = tb.tb_next
    return False


# A write that failed for want of room or permission: the disk or the quota is full, the filesystem read-only.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def user_message(
    err: BaseException, is_usage: Callable[[BaseException], bool] = lambda e: False, where: str | None = None
) -> tuple[str, int] | None:
    """The one-line message and exit code for an exception the user's input caused; None for anything else.

    Args:
        err: The exception.
        is_usage: Whether an exception (of ``err``'s chain) is a mistake in the command line or the flags
            (exit code 2); each command knows its parser's and framework's types.
        where: The directory the command writes into, named when a write fails without saying which file.
    """
    chain = list(causes(err))
    full = next((e for e in chain if isinstance(e, OSError) and e.errno in WRITE_ERRNOS), None)
    for e in chain:
        if is_usage(e) and full is None:  # Lightning's loggers wrap a failed write in a ValueError about the value
            return one_line(e), 2
        if isinstance(e, USER_ERRORS):
            return str(e), 1
    io_error = next((e for e in chain if isinstance(e, OSError) and e.filename), None)
    if io_error is not None:  # a directory that cannot be written (read-only, full), met outside the atomic writers
        return f"{io_error.filename}: {io_error.strerror or io_error}.", 1
    if full is not None:  # Lightning's own files (hparams.yaml, logs) are closed through fsspec, which names none
        return f"{where or 'the output directory'}: cannot write the run's files ({full.strerror or full}).", 1
    overflow = next((e for e in chain if type(e) is RuntimeError and raised_in(e, "torch.optim")), None)
    if overflow is not None and "overflow" in str(overflow):
        # torch.optim raises on a step beyond float32's range (Adam's first steps are lr / (1 - beta1)), where a
        # smaller one makes the weights infinite, which StopOnNonFiniteLoss reports: the same mistake, one line.
        return (
            f"training stopped: an optimizer step overflowed float32 ({one_line(overflow)}); the learning rate is "
            "far too large for the optimizer, which a smaller one prevents.",
            1,
        )
    return None


MAX_WORD, MAX_MESSAGE = 200, 2_000  # characters of one quoted value, and of a whole message


def shorten(message: str) -> str:
    """``message`` with each word (a run without spaces: a quoted value, a path) of more than ``MAX_WORD``
    characters cut, saying how long it was, and the whole cut at ``MAX_MESSAGE``: a message quotes the value
    it refuses, which may be a megabyte long.

    >>> shorten("lr: expected a float, got " + "x" * 5000 + " in a.yaml.")
    'lr: expected a float, got xxxxxxxxxxxxxxxxxxxx... (5,000 characters) in a.yaml.'
    """

    def cut(word: str) -> str:
        return word if len(word) <= MAX_WORD else f"{word[:20]}... ({len(word):,} characters)"

    text = " ".join(cut(word) for word in message.split(" "))
    return (
        text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE]}... ({len(text) - MAX_MESSAGE:,} more characters)."
    )


def exit_with(message: str, code: int) -> NoReturn:
    """Exit with ``code`` after ``error: <message>`` on stderr (for code 1, as ``SystemExit``'s own message), its
    long values cut (see :func:`shorten`)."""
    message = shorten(message)
    if code == 1:
        raise SystemExit(f"error: {message}") from None
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code) from None


def reporting(
    run: Callable[..., T],
    *args: Any,
    is_usage: Callable[[BaseException], bool] = lambda e: False,
    where: Callable[[], str | None] = lambda: None,
    **kwargs: Any,
) -> T:
    """``run(*args, **kwargs)``, with a mistake of the user's ending in one line and its exit code (see
    :func:`user_message`; ``where`` says which directory the command writes into)."""
    try:
        return run(*args, **kwargs)
    except Exception as err:
        found = user_message(err, is_usage, where())
        if found is None:
            raise
        exit_with(*found)
