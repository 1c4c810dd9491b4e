"""Logistic regression as a LightningModule: one linear layer whose logits meet BCE-with-logits.

The model does not know which gradient-descent variant runs; the data module decides that by the size of
the batches it serves. Under DDP a training batch is one rank's shard of a global batch and carries that
global batch's row count (see ``TensorBatches``), so the ranks' averaged gradient is exactly the global
batch's mean gradient. A training batch from ``TabularDataModule`` is a group of consecutive update
batches (``update_group``), and ``training_step`` does one weight update per batch of the group.
``binary_cross_entropy_with_logits`` takes logits, not probabilities: it equals sigmoid followed by BCE,
but computes log(sigmoid(z)) stably, so it stays exact where sigmoid saturates.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams as hparams_summary
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score
from typing_extensions import override

from logreg.data import ConfigError, TabularDataModule, check_choice

Optimizer = Literal["sgd", "adam", "lbfgs"]


class LogisticRegression(L.LightningModule):
    """p(y = 1 | x) = sigmoid(w . x + b), trained on the mean binary cross-entropy.

    The weights start at zero: the loss is convex, so the start does not change the optimum, and runs are
    reproducible without a weight-initialisation seed.

    Args:
        num_features: Inputs per row; the CLI links it from the data module.
        optimizer: ``sgd`` (plain gradient descent, the lesson of this template), ``adam``, or ``lbfgs``
            (quasi-Newton, one L-BFGS iteration per update; needs ``batch_mode: full`` and takes ``lr`` 1).
        lr: Learning rate (for ``lbfgs``, the fraction of the quasi-Newton step taken).
        momentum: SGD momentum (0 is plain gradient descent).
        weight_decay: Coefficient ``wd`` of the L2 penalty ``wd / 2 * ||w||^2`` on the weights (not the bias)
            added to the mean training loss: the same update as SGD's ``weight_decay`` on the weights, and
            scikit-learn's ``LogisticRegression(C=1 / (N_train * wd))``.

    Example:
        >>> model = LogisticRegression(num_features=4)
        >>> model(torch.zeros(3, 4))
        tensor([0., 0., 0.], grad_fn=<SqueezeBackward1>)
    """

    def __init__(
        self,
        num_features: int,
        optimizer: Optimizer = "sgd",
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("optimizer", optimizer, get_args(Optimizer))
        if not 0 < lr <= torch.finfo(torch.float32).max:  # a larger step overflows float32 weights at once
            raise ConfigError(f"lr must be positive and at most {torch.finfo(torch.float32).max:.3g}; got {lr}.")
        if weight_decay < 0:
            raise ConfigError(f"weight_decay must be zero or positive; got {weight_decay}.")
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(num_features, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        # The epoch mean of the training loss. A metric's update costs more than a small weight update, so each
        # step only adds loss * rows to a running sum on the device (no host sync, see on_train_epoch_start);
        # the metric sees it once per epoch, and syncs it across DDP processes weighted by rows.
        self.train_loss = MeanMetric()
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        scores = MetricCollection({"acc": BinaryAccuracy(), "auroc": BinaryAUROC(), "f1": BinaryF1Score()})
        self.val_scores = scores.clone(prefix="val/")
        self.test_scores = scores.clone(prefix="test/")
        self._grouped = False  # whether a batch held several updates, so Lightning's batch count is not the step
        # One Lightning batch holds several weight updates (Lightning's per-batch bookkeeping costs more than a
        # small update), so training_step steps the optimizer itself; global_step still counts every update.
        self.automatic_optimization = False

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)  # (B, D) -> (B,) logits

    @override
    def on_fit_start(self) -> None:
        # TensorBoard's HPARAMS tab: each run states its hyperparameters. No experiment summary is written, so
        # TensorBoard builds it from all runs and offers every scalar tag (val/loss, val/acc, ...) as a metric,
        # showing its last value; nothing else needs logging.
        if not self.trainer.is_global_zero:  # other ranks' loggers write nothing
            return
        hparams = {name: self.hparams[name] for name in ("optimizer", "lr", "momentum", "weight_decay")}
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, TabularDataModule):
            hparams["dataset"] = str(datamodule.hparams.dataset)
            hparams["batch_mode"] = datamodule.hparams.batch_mode
            hparams["batch_size"] = datamodule.train_batch_size  # rows per update: N in full mode, 1 per example
        _, session_start, _ = hparams_summary(hparams, {})
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                # The writer Lightning's own log_hyperparams uses; it reopens if an earlier fit closed it.
                logger.experiment._get_file_writer().add_summary(session_start)

    @override
    def on_train_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        updates = (
            datamodule.updates_per_epoch
            if isinstance(datamodule, TabularDataModule)
            else self.trainer.num_training_batches
        )
        if self.hparams.optimizer == "lbfgs" and updates != 1:
            raise ValueError(
                "optimizer 'lbfgs' needs the whole training split in one batch (batch_mode 'full'); "
                f"got {updates} batches per epoch."
            )

    @override
    def on_train_epoch_start(self) -> None:
        # A plain tensor, not a buffer: DDP would overwrite every rank's buffers with rank 0's at each forward.
        self._loss_sum = torch.zeros((), device=self.device)
        self._rows = 0

    @override
    def training_step(self, batch: tuple[Any, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        # A group of update batches; a plain (x, y) batch, as any DataLoader gives, is a group of one.
        group = (batch,) if isinstance(batch[0], torch.Tensor) else batch
        self._grouped |= len(group) > 1
        optimizer = self.optimizers()
        losses, written = [], []  # every update's loss; (step, loss) of those the logger writes
        for update in group:
            if 0 <= self.trainer.max_steps <= self.global_step:  # max_steps counts updates, not groups
                break
            step = self.global_step  # 0-based index of this update
            loss = self._update(optimizer, update)
            losses.append(loss)
            # Rows behind this loss; a DDP rank's loss is a 1/world_size share of its global batch's mean.
            rows = len(update[1]) if len(update) == 2 else update[2] / self.trainer.world_size
            self._loss_sum.add_(loss, alpha=rows)
            self._rows += rows
            if (step + 1) % self.trainer.log_every_n_steps == 0:  # the updates Lightning's logger would write
                written.append((step, loss))
        if written:
            self._write_losses(written)
        # (K,) the updates' losses, for callbacks' on_train_batch_end, e.g. StopOnNonFiniteLoss
        return {"losses": torch.stack(losses)}

    @override
    def on_train_epoch_end(self) -> None:
        if self._rows:
            self.train_loss.update(self._loss_sum / self._rows, weight=self._rows)
            # compute() gathers the ranks' sums under DDP, so every rank logs the same value. A tensor, not
            # the metric object: Lightning moves a logged metric object to the device at each log, ~1 ms.
            self.log("train/loss_epoch", self.train_loss.compute(), sync_dist=True)
            self.train_loss.reset()
            self._log_update_axis()

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_scores)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val", self.val_loss, self.val_scores)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_scores)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", self.test_loss, self.test_scores)

    @override
    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(batch[0]))  # probabilities of class 1; labels, if any, are not needed

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Weight decay is in the loss (training_step), not in the optimizer, so it spares the bias and means
        # the same for every optimizer, L-BFGS included (which has no weight_decay of its own).
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr)
        if hp.optimizer == "lbfgs":
            # max_iter=1: one L-BFGS iteration and one loss evaluation (closure call) per weight update, as
            # the other optimizers take; a larger max_iter or the line search would make one update of several
            # iterations. The tolerances stop it where float32 gradients no longer resolve the optimum, so a
            # converged model stays put.
            return torch.optim.LBFGS(
                self.parameters(), lr=hp.lr, max_iter=1, history_size=10, tolerance_grad=1e-9, tolerance_change=1e-12
            )
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum)

    def _update(self, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One weight update on one batch; returns the batch's mean loss before the update (detached)."""
        losses = []

        def closure() -> torch.Tensor:  # L-BFGS evaluates the loss through it; SGD and Adam call it once
            loss, _ = self._shared_step(batch)
            losses.append(loss.detach())
            if self.hparams.weight_decay:
                # The bias is not penalised (nor by scikit-learn): shrinking it would pull the base rate towards 1/2.
                loss = loss + self.hparams.weight_decay / 2 * self.linear.weight.square().sum()
            optimizer.zero_grad()
            self.manual_backward(loss)
            return loss

        optimizer.step(closure=closure)
        return losses[0]

    def _write_losses(self, written: list[tuple[int, torch.Tensor]]) -> None:
        """Write the loss of each update u in ``written`` at step u, with one host-device wait.

        Lightning would write step metrics at its count of batches, which are groups of updates here. Nothing
        is written from the first non-finite loss on: a diverged run's curve ends there, and StopOnNonFiniteLoss
        (a CLI default) stops the run after this batch, naming that update.
        """
        steps, losses = zip(*written, strict=True)
        # DDP: average the ranks' shares into the global batch loss (a no-op on one process).
        losses = self.trainer.strategy.reduce(torch.stack(losses), reduce_op="mean")
        self.log("train/loss", losses[-1], prog_bar=True, logger=False)
        if not self.trainer.is_global_zero:
            return
        for step, value in zip(steps, losses.tolist(), strict=True):
            if not math.isfinite(value):
                break
            for logger in self.loggers:
                logger.log_metrics({"train/loss": value, "epoch": self.current_epoch}, step=step)

    def _log_update_axis(self) -> None:
        """During fit, put the metrics logged in this hook at the step of the last weight update done.

        Lightning writes epoch-level metrics at its count of training batches, and a batch is a group of
        updates here; a logged ``step`` sets the x-axis step instead (see Lightning's
        ``_LoggerConnector.log_metrics``), and then the ``epoch`` Lightning would add must be logged too.
        Outside fit (``validate``, ``test``) they would show in the printed results, so they are left out;
        there a fresh Trainer's step is 0, grouped or not. Float64: float32 would round steps beyond 2**24.
        """
        if self.trainer.state.fn != "fit" or not self._grouped:  # one update per batch: Lightning's step is right
            return
        for name, value in (("step", self.global_step - 1), ("epoch", self.current_epoch)):
            self.log(name, torch.tensor(value, dtype=torch.float64), reduce_fx="max")

    def _shared_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, *global_rows = batch
        logits = self(x)  # (B,)
        if not global_rows:
            return F.binary_cross_entropy_with_logits(logits, y), logits
        # A DDP rank's shard of a global batch of global_rows[0] rows. DDP averages the ranks' gradients, so
        # each rank contributes its summed loss * world_size / rows: the average is the global batch's mean
        # loss however unevenly the rows divide, and an empty shard contributes 0.
        loss_sum = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        return loss_sum * (self.trainer.world_size / global_rows[0]), logits

    def _evaluate(
        self, batch: tuple[torch.Tensor, torch.Tensor], loss_metric: MeanMetric, scores: MetricCollection
    ) -> None:
        loss, logits = self._shared_step(batch)
        loss_metric.update(loss, weight=len(logits))
        scores.update(torch.sigmoid(logits), batch[1].long())

    def _log_evaluation(self, stage: str, loss_metric: MeanMetric, scores: MetricCollection) -> None:
        self.log(f"{stage}/loss", loss_metric, prog_bar=stage == "val")
        self.log_dict(scores, prog_bar=stage == "val")
        self._log_update_axis()
