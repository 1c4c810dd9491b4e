"""Stopping a run with a signal: Ctrl+C (SIGINT) or SIGTERM (what SLURM, Kubernetes and ``kill`` send).

During training the first signal does not stop the process where it happens to be (half-way through an
update, the weights and the step count would disagree): :class:`StopOnSignal` stops it at the end of the
current training batch, saves ``last.ckpt`` at that step, prints one line naming it and how to resume, and
exits with the shell's code for the signal (130 for SIGINT, 143 for SIGTERM), so a scheduler never reads a
stopped run as a success. A second Ctrl+C stops at once, without saving. Outside training (start-up,
validation, prediction) a signal stops at once, and the CLI ends in one line with the same exit code.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # signals received by this process, in order
_graceful = False  # whether a training loop with StopOnSignal is running, to stop at its next batch end


class Interrupted(SystemExit):
    """A run stopped by a signal; its code is the shell's 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(exit_code(signum))
        self.signum = signum


def exit_code(signum: int) -> int:
    """128 + the signal's number, as a shell reports a process a signal stopped: 130 (SIGINT), 143 (SIGTERM)."""
    return 128 + signum


def signal_name(signum: int) -> str:
    """``SIGINT (Ctrl+C)`` or the signal's plain name."""
    name = signal.Signals(signum).name
    return f"{name} (Ctrl+C)" if signum == signal.SIGINT else name


def received() -> int | None:
    """The first signal this process received since :func:`install_handlers`, if any."""
    return _received[0] if _received else None


def install_handlers() -> None:
    """Catch SIGINT and SIGTERM from now on: they stop training at a batch end (see module doc) or, outside
    training, raise KeyboardInterrupt where the process is, for the CLI to end in one line."""
    global _graceful
    _received.clear()
    _graceful = False
    for signum in SIGNALS:
        signal.signal(signum, _handle)


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    """:func:`install_handlers` for the duration of a ``with`` block, then the earlier handlers again (the CLI
    may run inside a larger program, a test session say, whose own handling of Ctrl+C must come back)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    earlier = {signum: signal.getsignal(signum) for signum in SIGNALS}
    install_handlers()
    try:
        yield
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler)


def _handle(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    if _graceful and len(_received) == 1:
        return  # StopOnSignal saves and stops at the end of the current training batch
    raise KeyboardInterrupt  # Lightning turns it into its shutdown; the CLI maps it to the signal's exit code


class StopOnSignal(Callback):
    """On SIGINT or SIGTERM during training, save ``last.ckpt`` at the end of the current batch and exit.

    The checkpoint goes where the Trainer's ``last`` checkpoint callback writes it (``LastCheckpoint``), or
    else to ``<log_dir>/checkpoints/last.ckpt``; resuming from it with ``--ckpt_path last`` continues at the
    next batch. The signal handlers are :func:`install_handlers`'s (the CLI installs them); without them
    (a Trainer used from Python) this callback does nothing, and Ctrl+C behaves as Lightning makes it.

    Example:
        >>> StopOnSignal().saved is None
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.saved: Path | None = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        global _graceful
        _graceful = True

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        global _graceful
        _graceful = False

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        global _graceful
        _graceful = False  # a failed run may skip teardown; a later signal must not wait for a batch end

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        signum = received()
        if trainer.world_size > 1:  # every rank stops at the same batch, even if only one got the signal
            stop = trainer.strategy.reduce_boolean_decision(signum is not None, all=False)
            signum = signum or (signal.SIGTERM if stop else None)
        if signum is None:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # with the optimizer's state, to resume from
        self.saved = Path(path)
        if trainer.is_global_zero:
            print(
                f"Stopped by {signal_name(signum)} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                f"saved {path}. Resume with --ckpt_path last (or --ckpt_path {path}).",
                file=sys.stderr,
                flush=True,
            )
        raise Interrupted(signum)

    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> str:
        """Where ``last.ckpt`` goes: the path of the Trainer's checkpoint callback named ``last``."""
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.filename == "last" and callback.dirpath:
                return callback.format_checkpoint_name({})
        return str(Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / "last.ckpt")
