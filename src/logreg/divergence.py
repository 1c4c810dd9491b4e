"""Stop training when the loss diverges to NaN or infinity, naming the epoch and step where it did.

A learning rate far too large overflows the weights; from then on every loss, metric and checkpoint is NaN.
Checking ``torch.isfinite(loss)`` on the host after every step would make the host wait for the device at
every step. Instead each step's loss (a detached tensor) is only kept, which costs no device work; the kept
losses are checked together, with one wait, on the steps whose loss the logger writes (it is read then
anyway), and at the end of each epoch, before validation and checkpointing see the weights. The callback's
``on_train_batch_end`` runs before Lightning writes the step's metrics, so no NaN reaches the logger.
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
        self._pending: list[torch.Tensor] = []  # losses of consecutive steps not yet checked, the last one newest

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending.clear()

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # a skipped step
            return
        self._pending.append(loss.reshape(()))
        logged = trainer.global_step % trainer.log_every_n_steps == 0  # global_step counts this step already
        if logged or batch_idx + 1 == trainer.num_training_batches or len(self._pending) >= self.max_pending:
            self._check(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:  # an epoch cut short, e.g. by max_steps
            self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        losses = torch.stack(self._pending)  # (P,) losses of steps global_step - P .. global_step - 1
        self._pending.clear()
        finite = torch.isfinite(losses)
        if bool(finite.all()):  # the one host-device wait
            return
        first = int((~finite).nonzero()[0])
        step = trainer.global_step - len(losses) + first
        batch = trainer.fit_loop.epoch_loop.batch_idx - len(losses) + 1 + first
        lr = (
            ", ".join(f"{group['lr']:g}" for group in trainer.optimizers[0].param_groups) if trainer.optimizers else "?"
        )
        raise NonFiniteLossError(
            f"training stopped: the loss became {losses[first].item()} at epoch {trainer.current_epoch}, "
            f"step {step} (batch {batch} of the epoch), with learning rate {lr}; a smaller learning rate "
            "usually keeps it finite."
        )
