"""The base of every model: a binary classifier trained on BCE-with-logits, whatever its network.

``BinaryClassifier`` holds everything but the network: the loss, the metrics, the optimizer and the
logging, in Lightning's automatic optimization (one training batch, one weight update). A model is a
subclass that builds its layers and defines ``forward`` (rows -> logits); ``LogisticRegression`` is the
smallest one, ``logreg.models.MLP`` another. The model does not know which gradient-descent variant runs:
the data module decides that by the size of the batches it serves.

``binary_cross_entropy_with_logits`` takes logits, not probabilities: it equals sigmoid followed by BCE,
but computes log(sigmoid(z)) stably, so it stays exact where sigmoid saturates.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score
from typing_extensions import override

from logreg.batch import Batch, ShardBatch, as_batch
from logreg.machinery.errors import ConfigError

# An optimizer class, called with the parameters and the learning rate. The learning rate is the model's own
# argument, not the optimizer's, so that Tuner.lr_find finds it; the CLI offers the class's other options.
Optimizer = Callable[[Iterable, float], torch.optim.Optimizer]


class BinaryClassifier(L.LightningModule):
    """Trains any network that maps rows (B, D) to logits (B,) on the mean binary cross-entropy.

    The contract between a model and the rest of the template, in one place:

    - **A model provides** ``forward(x)``: features (B, D) to logits (B,), and an ``__init__`` that takes
      ``num_features`` (the CLI links it from the data module, so it is never typed) and calls
      ``super().__init__(lr, weight_decay, optimizer, lr_scheduler)``. Hyperparameters are saved here, so
      ``--ckpt_path`` rebuilds the model's class and arguments from a checkpoint.
    - **It gets** batches as :class:`logreg.batch.Batch` ``(x, y)``; a plain ``(x, y)`` tuple from a
      ``DataLoader`` over a ``TensorDataset`` works too. Under DDP the template's data modules send a
      :class:`logreg.batch.ShardBatch` ``(x, y, global_rows)``, which this class weights so that the update
      is the global batch's exact mean gradient.
    - **It gives** ``predict_step`` -> probabilities of class 1, shape (B,), which ``logreg predict`` writes.
      A model written from scratch (a plain ``LightningModule``) works with the CLI when it keeps these three:
      ``num_features`` in ``__init__``, ``self.save_hyperparameters()``, and ``predict_step`` returning (B,)
      probabilities.

    Args:
        lr: Learning rate, given to the optimizer (and what ``Tuner.lr_find`` tunes).
        weight_decay: Coefficient ``wd`` of the L2 penalty ``wd / 2 * ||W||^2`` on the weight matrices (not
            the biases) added to the mean training loss. For logistic regression it is scikit-learn's
            ``LogisticRegression(C=1 / (N_train * wd))``, for any optimizer, L-BFGS included.
        optimizer: The optimizer, e.g. ``torch.optim.Adam`` (``--model.optimizer Adam``); its own options
            follow as ``--model.optimizer.momentum 0.9``. Called with the parameters and ``lr``.
        lr_scheduler: An optional learning-rate scheduler, stepped by Lightning every epoch;
            ``ReduceLROnPlateau`` watches ``val/loss``.

    Both classes may also be given as the plain data a checkpoint holds, ``{"class_path": "torch.optim.Adam",
    "init_args": {...}}`` (the class must be imported already: a checkpoint never makes Python import code).

    Example:
        >>> BinaryClassifier(lr=0.5, optimizer=torch.optim.Adam).hparams.optimizer
        {'class_path': 'torch.optim.adam.Adam'}
    """

    def __init__(
        self,
        lr: float = 0.1,
        weight_decay: float = 0.0,
        optimizer: Optimizer = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if not 0 < lr <= torch.finfo(torch.float32).max:  # a larger step overflows float32 weights at once
            raise ConfigError(f"lr must be positive and at most {torch.finfo(torch.float32).max:.3g}; got {lr}.")
        if weight_decay < 0:
            raise ConfigError(f"weight_decay must be zero or positive; got {weight_decay}.")
        self.save_hyperparameters()
        # Classes given in Python are recorded as the CLI records them, as plain data, so that a checkpoint
        # loads with torch.load(weights_only=True); load_from_checkpoint passes that data back to __init__.
        as_data = {k: class_config(v) for k, v in self.hparams.items() if class_config(v) is not v}
        if as_data:
            self.save_hyperparameters(as_data)
        # Read back from attributes, not hparams: a subclass's __init__ that fixes some of these (it does not
        # take them) saves only its own arguments. Tuner.lr_find sets the attribute (and the hparam, if saved).
        self.lr, self.weight_decay = lr, weight_decay
        self.optimizer = from_class_config(optimizer, torch.optim.Optimizer, "optimizer")
        self.lr_scheduler = from_class_config(lr_scheduler, torch.optim.lr_scheduler.LRScheduler, "lr_scheduler")
        try:  # options torch refuses (a negative momentum) end in one line now, before any run starts
            self.optimizer([torch.nn.Parameter(torch.zeros(1))], lr)
        except (ValueError, TypeError) as err:
            chosen = self.hparams.get("optimizer", class_config(optimizer))  # the CLI's record of it, if any
            name = chosen.get("class_path") if isinstance(chosen, dict) else getattr(chosen, "__name__", chosen)
            raise ConfigError(
                f"--model.optimizer {name} refuses its options: {err} (they are set as --model.optimizer.<option>; "
                f"the learning rate is --model.lr, {lr:g} here)."
            ) from None
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        scores = MetricCollection({"acc": BinaryAccuracy(), "auroc": BinaryAUROC(), "f1": BinaryF1Score()})
        self.val_scores, self.test_scores = scores.clone(prefix="val/"), scores.clone(prefix="test/")
        self._loss_sum, self._rows = torch.zeros(()), 0.0  # the epoch's summed training loss and its rows

    @override
    def on_train_start(self) -> None:
        # Lightning resumes a checkpoint saved mid-epoch (the timed last.ckpt, a signal's) without calling
        # on_train_epoch_start: the epoch's sums come from the checkpoint instead, and go to the device here.
        self._loss_sum = self._loss_sum.to(self.device)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["train_loss_sum"] = (self._loss_sum.detach().cpu(), self._rows)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "train_loss_sum" in checkpoint:  # checkpoints from before it was saved restart the sum
            self._loss_sum, self._rows = checkpoint["train_loss_sum"]

    @override
    def on_train_epoch_start(self) -> None:
        # The epoch's summed loss, kept on the device: a metric update per step would cost more than a small
        # update. A plain tensor, not a buffer: DDP would overwrite every rank's buffers with rank 0's.
        self._loss_sum, self._rows = torch.zeros((), device=self.device), 0.0

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        batch = as_batch(batch)
        loss, _ = self._shared_step(batch)
        # the rows behind this loss: under DDP this process's share of the global batch's weight
        rows = batch.global_rows / self.trainer.world_size if isinstance(batch, ShardBatch) else len(batch.y)
        self._loss_sum.add_(loss.detach(), alpha=rows)
        self._rows += rows
        # Log only on the steps the logger writes (every log_every_n_steps): the same curve, but self.log on
        # every step would cost about as much as a small weight update. Not on the progress bar, which would
        # read the value back from the device at every step; the bar shows the epoch's mean loss instead.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, sync_dist=True)
        if self.weight_decay:  # the logged loss stays the data term, comparable with val/loss
            decayed = (p.square().sum() for p in self.parameters() if p.ndim > 1)  # weights, not biases
            loss = loss + self.weight_decay / 2 * sum(decayed)
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        if self._rows:  # the mean over all rows of the epoch, on every DDP rank (reduce is a no-op on one)
            sums = self.trainer.strategy.reduce(
                torch.stack([self._loss_sum, self._loss_sum.new_tensor(self._rows)]), reduce_op="sum"
            )
            self.log("train/loss_epoch", sums[0] / sums[1], prog_bar=True)

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_scores)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val", self.val_loss, self.val_scores)

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_scores)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", self.test_loss, self.test_scores)

    @override
    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(as_batch(batch).x))  # probabilities of class 1; labels, if any, are not needed

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters(), self.lr)
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        # What ReduceLROnPlateau watches: val/loss, unless it names its own (Lightning's variant can)
        monitor = getattr(scheduler, "monitor", "val/loss")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": monitor}}

    def _shared_step(self, batch: Batch | ShardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        batch = as_batch(batch)
        logits = self(batch.x)  # (B, D) -> (B,)
        if not isinstance(batch, ShardBatch):
            return F.binary_cross_entropy_with_logits(logits, batch.y), logits
        # A DDP rank's shard of a global batch of global_rows rows. DDP averages the ranks' gradients, so
        # each rank contributes its summed loss * world_size / rows: the average is the global batch's mean
        # loss however unevenly the rows divide, and an empty shard contributes 0.
        loss_sum = F.binary_cross_entropy_with_logits(logits, batch.y, reduction="sum")
        return loss_sum * (self.trainer.world_size / batch.global_rows), logits

    def _evaluate(self, batch: Batch, loss_metric: MeanMetric, scores: MetricCollection) -> None:
        batch = as_batch(batch)
        loss, logits = self._shared_step(batch)
        loss_metric.update(loss, weight=len(logits))
        scores.update(torch.sigmoid(logits), batch.y.long())

    def _log_evaluation(self, stage: str, loss_metric: MeanMetric, scores: MetricCollection) -> None:
        self.log(f"{stage}/loss", loss_metric, prog_bar=stage == "val")
        self.log_dict(scores, prog_bar=stage == "val")


def class_config(value: Any) -> Any:
    """A class, or a ``functools.partial`` of one with keyword arguments only, as the plain data LightningCLI
    writes for a class it was given (``{"class_path": ..., "init_args": {...}}``); any other value unchanged.

    >>> class_config(functools.partial(torch.optim.SGD, momentum=0.9))
    {'class_path': 'torch.optim.sgd.SGD', 'init_args': {'momentum': 0.9}}
    """
    if isinstance(value, type):
        return {"class_path": f"{value.__module__}.{value.__name__}"}
    if isinstance(value, functools.partial) and isinstance(value.func, type) and not value.args:
        return {**class_config(value.func), "init_args": dict(value.keywords)}
    return value


def from_class_config(value: Any, base: type, name: str) -> Any:
    """The inverse of :func:`class_config` for a subclass of ``base``: the class, or a partial of it with its
    ``init_args``; any other value unchanged. The class is looked up among the modules already imported.

    >>> from_class_config({"class_path": "torch.optim.adam.Adam"}, torch.optim.Optimizer, "optimizer")
    <class 'torch.optim.adam.Adam'>
    """
    if not isinstance(value, Mapping) or "class_path" not in value:
        return value
    module, _, attribute = str(value["class_path"]).rpartition(".")
    found = getattr(sys.modules.get(module), attribute, None)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(
            f"{name}: {value['class_path']} is not an imported subclass of {base.__module__}.{base.__name__}; "
            "import the module that defines it first."
        )
    init_args = dict(value.get("init_args") or {})
    return functools.partial(found, **init_args) if init_args else found
