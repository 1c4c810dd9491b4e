"""Logistic regression as a LightningModule: one linear layer whose logits meet BCE-with-logits.

The model does not know which gradient-descent variant runs; the data module decides that by the size of
the batches it serves. ``binary_cross_entropy_with_logits`` takes logits, not probabilities: it equals
sigmoid followed by BCE, but computes log(sigmoid(z)) stably, so it stays exact where sigmoid saturates.
"""

from __future__ import annotations

from typing import Literal, get_args

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score
from typing_extensions import override

from logreg.data import ConfigError, check_choice

Optimizer = Literal["sgd", "adam"]


class LogisticRegression(L.LightningModule):
    """p(y = 1 | x) = sigmoid(w . x + b), trained on the mean binary cross-entropy.

    The weights start at zero: the loss is convex, so the start does not change the optimum, and runs are
    reproducible without a weight-initialisation seed.

    Args:
        num_features: Inputs per row; the CLI links it from the data module.
        optimizer: ``sgd`` (plain gradient descent, the lesson of this template) or ``adam``.
        lr: Learning rate.
        momentum: SGD momentum (0 is plain gradient descent).
        weight_decay: L2 penalty coefficient added by the optimizer.

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
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(num_features, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        # The epoch mean of the training loss, weighted by batch size; per-step values go straight to the logger.
        self.train_loss = MeanMetric()
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        scores = MetricCollection({"acc": BinaryAccuracy(), "auroc": BinaryAUROC(), "f1": BinaryF1Score()})
        self.val_scores = scores.clone(prefix="val/")
        self.test_scores = scores.clone(prefix="test/")

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)  # (B, D) -> (B,) logits

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._shared_step(batch)
        self.train_loss.update(loss.detach(), weight=len(batch[1]))
        # self.log costs more than a small update; call it only on the steps the logger writes.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.train_loss.compute())
        self.train_loss.reset()

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
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return F.binary_cross_entropy_with_logits(logits, y), logits

    def _evaluate(
        self, batch: tuple[torch.Tensor, torch.Tensor], loss_metric: MeanMetric, scores: MetricCollection
    ) -> None:
        loss, logits = self._shared_step(batch)
        loss_metric.update(loss, weight=len(logits))
        scores.update(torch.sigmoid(logits), batch[1].long())

    def _log_evaluation(self, stage: str, loss_metric: MeanMetric, scores: MetricCollection) -> None:
        self.log(f"{stage}/loss", loss_metric.compute(), prog_bar=stage == "val")
        self.log_dict(scores.compute(), prog_bar=stage == "val")
        loss_metric.reset()
        scores.reset()
