"""Stop training when the loss diverges to NaN or infinity, naming the epoch and step where it did.

A learning rate far too large overflows the weights; from then on every loss, metric and checkpoint is NaN.
Checking ``torch.isfinite(loss)`` on the host after every step would make the host wait for the device at
every step. Instead each training batch's losses (detached tensors: ``{"losses": (K,)}`` for a batch of K
weight updates, as :class:`~logreg.model.LogisticRegression` returns, or one loss) are only kept, which costs
no device work; the kept losses are checked together, with one wait, after batches that hold an update the
logger writes (whose loss is read then anyway), and at the last batch of each epoch, before validation and
checkpointing see the weights.
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
        self._pending: list[torch.Tensor] = []  # (K,) losses per batch, of consecutive updates not yet checked
        self._pending_count = 0  # updates pending
        self._epoch_start = 0  # global_step when the epoch began

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending.clear()
        self._pending_count = 0
        self._epoch_start = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, dict):
            outputs = outputs["losses"] if "losses" in outputs else outputs.get("loss")
        if outputs is None:  # a skipped step
            return
        losses = outputs.reshape(-1)  # (K,) the losses of this batch's updates; the last one is global_step - 1
        self._pending.append(losses)
        self._pending_count += len(losses)
        last = batch_idx + 1 == trainer.num_training_batches
        # an update u is written when (u + 1) % log_every_n_steps == 0; this batch did updates [first, global_step)
        first, every = trainer.global_step - len(losses), trainer.log_every_n_steps
        logged = trainer.global_step // every > first // every
        if last or logged or self._pending_count >= self.max_pending:
            self._check(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:  # an epoch cut short, e.g. by max_steps
            self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        losses = torch.cat(self._pending)  # (P,) losses of the updates global_step - P .. global_step - 1
        self._pending.clear()
        self._pending_count = 0
        finite = torch.isfinite(losses)
        if bool(finite.all()):  # the one host-device wait
            return
        first = int((~finite).nonzero()[0])
        step = trainer.global_step - len(losses) + first  # global_step has counted every pending update
        lr = pl_module.hparams.get("lr")
        hint = (
            f"the learning rate {lr:g} is likely too large, lower it" if lr is not None else "lower the learning rate"
        )
        raise NonFiniteLossError(
            f"training stopped: the loss became {losses[first].item()} at epoch {trainer.current_epoch}, "
            f"step {step} (batch {step - self._epoch_start} of the epoch); {hint}."
        )
