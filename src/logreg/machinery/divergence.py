"""Stop training when the loss diverges to NaN or infinity, naming the epoch and step where it did.

A step far too large (the learning rate, momentum, or features on a large scale) overflows the weights; from
then on every loss, metric and checkpoint is NaN. The message names the optimizer and its step settings.
Checking ``torch.isfinite(loss)`` on the host after every step would make the host wait for the device at
every step. Instead each step's loss (a detached tensor) is only kept, which costs no device work; the kept
losses are checked together, with one wait, on the steps whose loss the logger writes (it is read then
anyway), and at the end of each epoch, before validation and checkpointing see the weights. The callback's
``on_train_batch_end`` runs before Lightning writes the step's metrics, so no NaN reaches the logger.

A step can also be far too large yet finite: with lr 1e30 the loss computed from logits stays finite (4e26) and
the run would train, validate and checkpoint nonsense. So the mean training loss of each epoch is checked too,
in the same wait, against a bound past which it is as good as infinite (:data:`MAX_MEAN_LOSS`).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from logreg.machinery.errors import NonFiniteLossError

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss", "describe_optimizer"]


# A mean binary cross-entropy above -ln(float32's smallest normal number) = 87.3 means the model gives the true
# labels a (geometric mean) probability that float32 cannot hold: computed from the logits, the loss stays
# finite far beyond it (lr 1e30 gives 4e26), but as a probability the model's answer is 0 for the truth, an
# infinite loss. No model that learns passes it in an epoch's mean: a constant guess scores ln 2 = 0.69.
MAX_MEAN_LOSS = -math.log(torch.finfo(torch.float32).tiny)


class StopOnNonFiniteLoss(Callback):
    """Raise :class:`NonFiniteLossError` at the first NaN or infinite training loss, before it is logged, and
    at the end of an epoch whose mean training loss diverged beyond ``max_mean_loss``, before validation.

    What Lightning's own pieces do not give: ``EarlyStopping(check_finite=True)`` looks at a logged metric only
    when it checks (after validation, or at an epoch's end), when the NaN is already in the logs and the
    checkpoints, and ends the run as if it had finished; ``Trainer(detect_anomaly=True)`` slows every backward
    pass. This one fails the run (exit code 1 from the CLI) naming the first bad step and the optimizer's settings.

    Args:
        max_pending: Most losses kept between two checks, which bounds memory when ``log_every_n_steps``
            is large.
        max_mean_loss: The largest mean training loss of an epoch that is not divergence; None: no bound. The
            default, 87.3, is where a mean cross-entropy (the template's loss) is as good as infinite (see
            :data:`MAX_MEAN_LOSS`); another kind of loss may need another bound.

    Example:
        >>> StopOnNonFiniteLoss().max_pending, round(StopOnNonFiniteLoss().max_mean_loss, 2)
        (1024, 87.34)
    """

    def __init__(self, max_pending: int = 1024, max_mean_loss: float | None = MAX_MEAN_LOSS) -> None:
        self.max_pending = max_pending
        self.max_mean_loss = max_mean_loss
        self._pending: list[torch.Tensor] = []  # losses of consecutive steps not yet checked, the last one newest
        self._batch_idx = 0  # the epoch's batch of the newest pending loss
        self._epoch_sum: torch.Tensor | float = 0.0  # the epoch's checked losses, summed on their device
        self._epoch_steps = 0

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending.clear()
        self._epoch_sum, self._epoch_steps = 0.0, 0

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # a skipped step
            return
        self._pending.append(loss if loss.ndim == 0 else loss.reshape(()))  # stacked later: one shape for all
        self._batch_idx = batch_idx
        logged = trainer.global_step % trainer.log_every_n_steps == 0  # global_step counts this step already
        epoch_end = batch_idx + 1 == trainer.num_training_batches
        if logged or epoch_end or len(self._pending) >= self.max_pending:
            self._check(trainer, epoch_end)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:  # an epoch cut short, e.g. by max_steps
            self._check(trainer, epoch_end=True)

    def _check(self, trainer: L.Trainer, epoch_end: bool) -> None:
        losses = torch.stack(self._pending)  # (P,) losses of steps global_step - P .. global_step - 1
        self._pending.clear()
        self._epoch_sum = losses.sum() + self._epoch_sum
        self._epoch_steps += len(losses)
        finite = torch.isfinite(losses)
        mean = self._epoch_sum / self._epoch_steps
        bounded = epoch_end and self.max_mean_loss is not None
        # the one host-device wait
        all_finite, below = torch.stack(
            [finite.all(), mean <= self.max_mean_loss if bounded else finite.all()]
        ).tolist()
        if all_finite and below:
            return
        if not all_finite:
            first = int((~finite).nonzero()[0])
            step = trainer.global_step - len(losses) + first
            batch = self._batch_idx - len(losses) + 1 + first
            what = f"the loss became {losses[first].item()} at epoch {trainer.current_epoch}, step {step} (batch {batch} of the epoch)"
        else:
            what = (
                f"the mean training loss of epoch {trainer.current_epoch} was {mean.item():.3g}, beyond "
                f"{self.max_mean_loss:.1f}, where the probability given to the true labels underflows float32 (as "
                "good as an infinite loss)"
            )
        raise NonFiniteLossError(
            f"training stopped: {what}, under {describe_optimizer(trainer)}; the updates grew without bound, which a "
            "smaller learning rate or momentum, or features on a smaller scale, prevent."
        )


def describe_optimizer(trainer: L.Trainer) -> str:
    """The optimizer and the settings that size its steps, e.g. ``SGD with lr 0.1, momentum 0.9``.

    The message names them all rather than blaming one: with a momentum of 5, the learning rate is not why.
    """
    if not trainer.optimizers:
        return "no optimizer"
    optimizer = trainer.optimizers[0]
    settings = []
    for key in ("lr", "momentum", "betas", "weight_decay"):
        values = [group[key] for group in optimizer.param_groups if key in group]
        if not values or (key == "weight_decay" and not any(values)):
            continue
        shown = [f"({', '.join(f'{b:g}' for b in v)})" if isinstance(v, tuple) else f"{v:g}" for v in values]
        settings.append(f"{key} {' / '.join(dict.fromkeys(shown))}")  # one value per distinct group setting
    return f"{type(optimizer).__name__} with {', '.join(settings)}"
