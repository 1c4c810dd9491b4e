"""``last.ckpt``, the state ``--ckpt_path last`` resumes from, saved on a clock and when a signal stops training.

The template's other default callbacks are Lightning's own: ``ModelCheckpoint`` for the best checkpoint by
``val/loss`` and ``TQDMProgressBar(refresh_rate=50)``.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from logreg.machinery import interrupt
from logreg.machinery.errors import ConfigError


class LastCheckpoint(Checkpoint):
    """``last.ckpt``, the state ``--ckpt_path last`` resumes from: written every ``every_seconds`` of training,
    at the end of fit (at the batch that reaches ``max_steps``, when that cuts an epoch short, so that a run
    resumed with a larger ``max_steps`` goes on with the epoch's next batch), and at the batch where a signal
    stops the run.

    On SIGINT (Ctrl+C), SIGTERM or SIGHUP during training it saves at the end of the current batch, prints one
    line naming the file and how to resume, and raises :class:`~logreg.machinery.interrupt.Interrupted` (exit code
    130, 143 or 129). That needs the handlers of :func:`logreg.machinery.interrupt.install_handlers`, which the CLI installs; without
    them (a Trainer used from Python) Ctrl+C behaves as Lightning makes it.

    What Lightning's own pieces do not give: ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only
    when it saves another checkpoint, and ``OnExceptionCheckpoint`` saves where the exception lands (Ctrl+C can
    land mid-update, between the change of the weights and of the step count), says nothing of how to resume,
    and the run ends with exit code 1. This is a ``Checkpoint`` (Lightning runs those after the other
    callbacks, so the file holds their state of the step) that reads the clock once per step.

    Args:
        every_seconds: Training time between two saves; a crash loses at most this much work.

    Example:
        >>> LastCheckpoint(every_seconds=60).every_seconds
        60
    """

    def __init__(self, every_seconds: float = 30.0) -> None:
        if not every_seconds >= 0:
            raise ConfigError(f"every_seconds must be zero or positive; got {every_seconds}.")
        self.every_seconds = every_seconds
        self.dirpath: str | None = None  # default <log_dir>/checkpoints, beside the best checkpoint
        self._due = math.inf  # the clock's time of the next timed save
        self._final_step: int | None = None  # the step saved where max_steps ended training mid-epoch

    @property
    def path(self) -> str:
        """Where ``last.ckpt`` goes (known once the Trainer's ``setup`` ran)."""
        return os.path.join(self.dirpath or "checkpoints", "last.ckpt")

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.dirpath is None:  # here, on every rank: trainer.log_dir is collective under DDP
            self.dirpath = os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        interrupt.stop_at_batch_end(True)
        self._due = time.monotonic() + self.every_seconds
        self._final_step = None

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        signum = interrupt.received()
        # max_steps reached mid-epoch: saved here, at this batch, and not again when fit ends, because by then
        # Lightning has counted the cut epoch as done, and a run resumed from there would skip its other batches.
        final = _max_steps_reached_mid_epoch(trainer, batch_idx)
        save = signum is not None or final or (time.monotonic() >= self._due and _update_ended(trainer, batch_idx))
        if trainer.world_size > 1:  # every rank saves, and stops, at the same batch: saving is collective
            save = trainer.strategy.reduce_boolean_decision(save, all=False)
            stop = save and trainer.strategy.reduce_boolean_decision(signum is not None, all=False)
            signum = signum or (signal.SIGTERM if stop else None)
        if not save:
            return
        if signum is None:
            trainer.save_checkpoint(self.path, weights_only=False)  # with the optimizer's state, to resume from
            self._due = time.monotonic() + self.every_seconds
            self._final_step = trainer.global_step if final else None
            return
        raise self._save_and_say(trainer, signum)

    def _save_and_say(self, trainer: L.Trainer, signum: int) -> interrupt.Interrupted:
        """Save ``last.ckpt`` for a stop by ``signum``, say so in one line, and return the exception that ends
        the run (from now on a further signal ends the process at once)."""
        trainer.save_checkpoint(self.path, weights_only=False)
        if trainer.is_global_zero:
            print(
                f"Stopped by {interrupt.signal_name(signum)} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}; saved {self.path}. Resume with --ckpt_path last (or --ckpt_path {self.path}).",
                file=sys.stderr,
                flush=True,
            )
        return interrupt.stop(signum)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run and self._final_step != trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        interrupt.stop_at_batch_end(False)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        interrupt.stop_at_batch_end(False)  # a failed run may skip teardown; a later signal must not wait
        signum = interrupt.received()
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if (
            isinstance(exception, SIGTERMException)
            and signum is not None
            and not interrupt.stopping()
            and progress.ready == progress.started == progress.processed == progress.completed
        ):
            # Lightning stops for SIGTERM itself, after a batch's hooks (a SIGTERM that came after this callback's
            # on_train_batch_end, while the logger saved, say), during validation or at an epoch's end: the last
            # training batch is complete there, as where this callback saves, a clean point to resume from.
            self._save_and_say(trainer, signum)


def _max_steps_reached_mid_epoch(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether this batch's update was the last one ``max_steps`` allows, and the epoch has batches left."""
    last_batch = batch_idx + 1 == trainer.num_training_batches
    return 0 <= trainer.max_steps <= trainer.global_step and _update_ended(trainer, batch_idx) and not last_batch


def _update_ended(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether this batch ended a weight update, so that a checkpoint leaves no accumulated gradient out."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or batch_idx + 1 == trainer.num_training_batches
