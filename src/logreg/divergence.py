"""Stop training when the loss diverges to NaN or infinity, naming the epoch and step where it did.

A learning rate far too large overflows the weights; from then on every loss, metric and checkpoint is NaN.
Checking ``torch.isfinite(loss)`` on the host after every step would make the host wait for the device at
every step. Instead each step's loss (a 0-d tensor Lightning has already detached) is only kept, which costs
no device work; the kept losses are checked together, with one wait, on the steps where the logger reads
the loss anyway and at the last batch of each epoch, before validation and checkpointing see the weights.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class StopOnNonFiniteLoss(Callback):
    """Raise :class:`NonFiniteLossError` at the first NaN or infinite training loss, before it is logged.

    Args:
        max_pending: Most losses kept between two checks, which bounds memory when ``log_every_n_steps``
            is large.

    Example:
        >>> StopOnNonFiniteLoss().max_pending
        1024
    """

    def __init__(self, max_pending: int = 1024) -> None:
        self.max_pending = max_pending
        self._pending: list[torch.Tensor] = []  # losses of consecutive batches not yet checked
        self._batch_idx = 0  # the batch of the newest pending loss

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending.clear()

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:  # a skipped step
            return
        self._pending.append(loss)
        self._batch_idx = batch_idx
        last = batch_idx + 1 == trainer.num_training_batches
        if last or trainer.global_step % trainer.log_every_n_steps == 0 or len(self._pending) >= self.max_pending:
            self._check(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:  # an epoch cut short, e.g. by max_steps
            self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        losses = torch.stack(self._pending)  # (P,) losses of the batches _batch_idx - P + 1 .. _batch_idx
        self._pending.clear()
        finite = torch.isfinite(losses)
        if bool(finite.all()):  # the one host-device wait
            return
        first = int((~finite).nonzero()[0])
        behind = len(losses) - 1 - first  # batches after the first bad one
        # One optimizer step per batch here: global_step has counted this batch's step already.
        step = trainer.global_step - 1 - behind
        lr = pl_module.hparams.get("lr")
        hint = (
            f"the learning rate {lr:g} is likely too large, lower it" if lr is not None else "lower the learning rate"
        )
        raise NonFiniteLossError(
            f"training stopped: the loss became {losses[first].item()} at epoch {trainer.current_epoch}, "
            f"step {step} (batch {self._batch_idx - behind} of the epoch); {hint}."
        )
