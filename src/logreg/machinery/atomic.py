"""Atomic file writes: a file appears under its name complete, or not at all.

Checkpoints and prediction files are written under a hidden temporary name in their destination directory,
flushed and fsync'ed, then renamed. A rename within one directory is atomic on any POSIX filesystem, so a
killed process, a full disk or a power cut leaves the earlier file (or no file) rather than a truncated one.
A temporary file elsewhere (``/tmp``) would not do: moving it across filesystems is a copy, which can fail
half-way. Lightning's own ``TorchCheckpointIO`` goes through fsspec, whose local transaction does exactly that.

A failed write raises :class:`WriteError`, one sentence naming the file, and removes the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from logreg.machinery.errors import WriteError


def write_error(path: Path, err: OSError, what: str = "file") -> WriteError:
    """The one-sentence error for an OSError met while writing ``path``."""
    reason = err.strerror or str(err) or type(err).__name__
    return WriteError(f"{path}: cannot write this {what} ({reason}); nothing was replaced, earlier files are intact.")


class AtomicFile:
    """A file written under a temporary name next to ``path``, and given its name only once complete.

    Use it as a context manager (commit on success, discard on an exception), or call :meth:`commit` and
    :meth:`discard` yourself when the writing spans several calls.

    Args:
        path: The final file name.
        replace: Whether an existing ``path`` is replaced (checkpoints: ``last.ckpt`` is rewritten) or is an
            error (predictions: two runs writing the same output never replace each other's file).
        text: Open the temporary file in text mode (UTF-8) rather than binary.
        what: What the file is, for error messages ("checkpoint", "predictions file").

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "scores.csv"
        >>> with AtomicFile(out, text=True) as f:
        ...     _ = f.write("row,probability\\n")
        >>> out.read_text()
        'row,probability\\n'
    """

    def __init__(self, path: str | Path, replace: bool = False, text: bool = False, what: str = "file") -> None:
        self.path = Path(path)
        self.replace = replace
        self.what = what
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.temp = _create_temporary(self.path)
        except OSError as err:
            raise write_error(self.path, err, what) from None
        self.file: IO[Any] = os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb")

    def __enter__(self) -> IO[Any]:
        return self.file

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def write(self, data: Any) -> None:
        """Write to the temporary file; an OSError (a full disk) becomes a WriteError, the file is removed."""
        try:
            self.file.write(data)
        except OSError as err:
            self.discard()
            raise write_error(self.path, err, self.what) from None

    def commit(self) -> None:
        """Flush and fsync the data, then give it its final name (and fsync the directory, so the name stays)."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if self.replace:
                os.replace(self.temp, self.path)
            else:
                _link_new(self.temp, self.path)
        except FileExistsError:
            self.file.close()
            raise WriteError(
                f"{self.path}: appeared while writing and is left as it was; this run's {self.what} is in {self.temp}."
            ) from None
        except OSError as err:
            self.discard()
            raise write_error(self.path, err, self.what) from None
        _fsync_directory(self.path.parent)

    def discard(self) -> None:
        """Close and remove the temporary file; the final name is not touched."""
        with contextlib.suppress(OSError):  # already closed after a failed flush, or already gone
            self.file.close()
        self.temp.unlink(missing_ok=True)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new hidden file ``.NAME.XXXXXXXX.partial`` beside ``path``, opened for writing, and its path.

    Created with mode 0o666 less the umask, as ``open()`` creates files: ``tempfile.mkstemp`` makes them 0o600,
    which the rename would carry over, leaving checkpoints and predictions readable by their owner only.
    """
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            return os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), temp
        except FileExistsError:  # another writer's temporary file: draw another name
            continue


def _link_new(temp: Path, path: Path) -> None:
    """Give ``temp``'s data the name ``path`` only if no file has it (FileExistsError otherwise), atomically."""
    try:
        os.link(temp, path)  # fails with EEXIST rather than replacing: of two concurrent writers, one wins
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        # No hard links here (some network or FAT filesystems): claim the name exclusively, then fill it.
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.replace(temp, path)
        return
    temp.unlink()


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # no directory handles on this platform: the rename is still atomic, only less durable
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, writing each local checkpoint atomically with :class:`AtomicFile`.

    Pass it as a Trainer plugin (``Trainer(plugins=[AtomicCheckpointIO()])``); every checkpoint the Trainer
    writes (``ModelCheckpoint``, ``trainer.save_checkpoint``) then either replaces the earlier file whole or
    leaves it untouched. A full disk or a read-only directory raises :class:`WriteError` naming the file.
    Remote paths (``s3://...``) go to Lightning's fsspec writer unchanged.

    What Lightning's own does not give: its local writer fills a temporary file in the system's temporary
    directory and moves it, a copy when that is another filesystem, with no fsync, so a crash or a full disk
    can leave a truncated file under the checkpoint's name; and a failed write ends in a traceback.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "checkpoints" / "last.ckpt"
        >>> AtomicCheckpointIO().save_checkpoint({"epoch": 3}, path)
        >>> torch.load(path, weights_only=True)
        {'epoch': 3}
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or ("://" in str(path) and not str(path).startswith("file://")):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(str(path).removeprefix("file://"))
        # Serialised in memory first: torch.save turns a failed write into an opaque RuntimeError, and the
        # file then only sees plain writes, whose OSError (a full disk) names the problem.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        target = AtomicFile(path, replace=True, what="checkpoint")
        try:
            target.write(buffer.getbuffer())
        except BaseException:  # Ctrl+C while writing: the earlier checkpoint stays, no temporary file is left
            target.discard()
            raise
        target.commit()
