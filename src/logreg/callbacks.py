"""The template's default callbacks: a ``last.ckpt`` to resume from, and a progress bar that stays cheap.

Both keep per-epoch work small, because a full-batch epoch on a million rows takes about 20 ms on a laptop
CPU: writing a checkpoint after every such epoch, or redrawing the bar four times per epoch, would cost more
than a tenth of the training itself.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, the state ``--ckpt_path last`` resumes from: written every ``every_seconds`` of training
    and at the end of fit.

    ``ModelCheckpoint(save_last=True)`` on the monitored callback would not do: Lightning refreshes that copy
    only when a best checkpoint is saved, so after an epoch without improvement it holds an older state.

    Args:
        every_seconds: Training time between two saves; a crash loses at most this much work.

    Example:
        >>> LastCheckpoint(every_seconds=60).filename
        'last'
    """

    def __init__(self, every_seconds: float = 30.0) -> None:
        super().__init__(
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            train_time_interval=timedelta(seconds=every_seconds),
        )

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:
            trainer.save_checkpoint(self.format_checkpoint_name({}), weights_only=False)  # with the optimizer state


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
