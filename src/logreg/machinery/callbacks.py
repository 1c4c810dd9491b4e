"""The template's default callbacks: the best checkpoint, a ``last.ckpt`` to resume from, and a progress bar,
each cheap per step.

Lightning calls every callback at about ten hooks of every step, so a callback's per-step work counts against
an update that takes half a millisecond. Per-epoch work stays small too, because a full-batch epoch on a
million rows takes about 20 ms on a laptop CPU: writing a checkpoint after every such epoch, or redrawing the
bar four times per epoch, would cost more than a tenth of the training itself.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from logreg.machinery import interrupt
from logreg.machinery.errors import ConfigError


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (the same arguments and files), without its per-step cost when it saves
    only after validation or at epochs, as the template's best checkpoint by ``val/loss`` does.

    ``ModelCheckpoint`` decides at every training batch whether a step- or time-triggered save is due, and
    Lightning rebuilds its ``state_key`` (a string of its settings) for every hook call: about 30 us per step
    together, a fifteenth of a small update. Here the decision runs only when ``every_n_train_steps`` or
    ``train_time_interval`` is set, and the key, fixed by ``__init__``, is built once.

    Example:
        >>> BestCheckpoint(monitor="val/loss").state_key
        "BestCheckpoint{'monitor': 'val/loss', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, 'train_time_interval': None}"
    """

    @functools.cached_property
    def state_key(self) -> str:  # type: ignore[override]
        return super().state_key

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._every_n_train_steps > 0 or self._train_time_interval is not None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class LastCheckpoint(Checkpoint):
    """``last.ckpt``, the state ``--ckpt_path last`` resumes from: written every ``every_seconds`` of training,
    at the end of fit (at the batch that reaches ``max_steps``, when that cuts an epoch short, so that a run
    resumed with a larger ``max_steps`` goes on with the epoch's next batch), and at the batch where a signal
    stops the run.

    On SIGINT (Ctrl+C), SIGTERM or SIGHUP during training it saves at the end of the current batch, prints one
    line naming the file and how to resume, and raises :class:`~logreg.machinery.interrupt.Interrupted` (exit code
    130, 143 or 129). That needs the handlers of :func:`logreg.machinery.interrupt.install_handlers`, which the CLI installs; without
    them (a Trainer used from Python) Ctrl+C behaves as Lightning makes it.

    A ``Checkpoint`` (Lightning runs those after the other callbacks, so the file holds their state of the step),
    but not ``ModelCheckpoint(train_time_interval=...)``: Lightning calls every callback at
    about ten hooks of every step, and ModelCheckpoint's work there (a save decision, and a state key rebuilt for
    each call) costs about 20 us per step, a twentieth of a small update; this one reads the clock once per step.
    Nor ``ModelCheckpoint(save_last=True)``: that copy is refreshed only when a best checkpoint is saved.

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
        final = _max_steps_reached_mid_epoch(trainer)
        save = signum is not None or final or (time.monotonic() >= self._due and _update_ended(trainer))
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
        progress = trainer.fit_loop.epoch_progress.current
        if (
            isinstance(exception, SIGTERMException)
            and signum is not None
            and not interrupt.stopping()
            and progress.ready == progress.started == progress.processed == progress.completed
        ):
            # Lightning stops for SIGTERM itself at an epoch's end when it came after the epoch's last batch (during
            # validation, say): the epoch is complete there, as at the end of fit, a clean point to resume from.
            self._save_and_say(trainer, signum)


def _max_steps_reached_mid_epoch(trainer: L.Trainer) -> bool:
    """Whether this batch's update was the last one ``max_steps`` allows, and the epoch has batches left."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return 0 <= trainer.max_steps <= trainer.global_step and _update_ended(trainer) and not progress.is_last_batch


def _update_ended(trainer: L.Trainer) -> bool:
    """Whether this batch ended a weight update, so that a checkpoint leaves no accumulated gradient out."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.current.ready % trainer.accumulate_grad_batches == 0 or progress.is_last_batch


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, redrawn at most every ``min_interval`` seconds.

    Lightning redraws the bar at every ``refresh_rate``-th batch and several times per epoch; at thousands of
    updates per second, or fifty full-batch epochs per second, drawing would cost more than training.

    Args:
        min_interval: Seconds between two redraws of the training bar.
        refresh_rate: Batches between two updates of the bar's count and metrics (as for ``TQDMProgressBar``);
            each update gathers the progress-bar metrics, which costs about as much as a small weight update.

    Example:
        >>> ProgressBar(min_interval=0.5).min_interval
        0.5
    """

    def __init__(self, min_interval: float = 0.1, refresh_rate: int = 50) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=False)
        self.min_interval = min_interval

    @override
    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        draw = bar.refresh
        drawn_at = float("-inf")

        def refresh(*args: Any, **kwargs: Any) -> None:
            nonlocal drawn_at
            now = time.monotonic()
            if now - drawn_at >= self.min_interval:  # the bar's close() still draws the final state
                drawn_at = now
                draw(*args, **kwargs)

        bar.refresh = refresh
        return bar
