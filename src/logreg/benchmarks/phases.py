"""A callback that time-stamps the phases of a ``logreg fit`` run, for the end-to-end benchmark."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from logreg.benchmarks.end_to_end import PHASES_ENV


class Phases(Callback):
    """Time stamps (``time.time()``) of a ``logreg fit`` run, written as JSON to ``$LOGREG_BENCHMARK_PHASES``.

    Added to a run with ``--trainer.callbacks+=logreg.benchmarks.phases.Phases``. ``validation_s`` sums the
    validation loops during training (not the sanity check before it); ``epochs`` holds each epoch's
    training seconds, its validation left out.
    """

    def __init__(self) -> None:
        self.stamps: dict[str, Any] = {"configured": time.time(), "validation_s": 0.0, "epochs": []}

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stamps["setup"] = time.time()  # after the data module's setup: read, split, statistics

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps["train_start"] = time.time()

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._epoch_validation = time.time(), 0.0

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.time()

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:  # before training starts: counted with the set-up
            return
        seconds = time.time() - self._validation_start
        self.stamps["validation_s"] += seconds
        self._epoch_validation += seconds

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # training seconds of the epoch: validation at its end runs before this hook
        self.stamps["epochs"].append(time.time() - self._epoch_start - self._epoch_validation)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps["train_end"] = time.time()
        self.stamps["train_rows"] = trainer.datamodule.train_rows

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stamps["teardown"] = time.time()  # the last checkpoint written, the logger closed
        Path(os.environ[PHASES_ENV]).write_text(json.dumps(self.stamps))
