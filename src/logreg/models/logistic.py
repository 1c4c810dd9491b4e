"""Logistic regression: one linear layer producing logits, the smallest ``BinaryClassifier``."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable
from typing_extensions import override

from logreg.models.classifier import BinaryClassifier, Optimizer


class LogisticRegression(BinaryClassifier):
    """p(y = 1 | x) = sigmoid(w . x + b), trained on the mean binary cross-entropy.

    The weights start at zero: the loss is convex, so the start does not change the optimum, and runs are
    reproducible without a weight-initialisation seed.

    Args:
        num_features: Inputs per row; the CLI links it from the data module.
        lr: Learning rate.
        weight_decay: L2 penalty on the weights (not the bias), see ``BinaryClassifier``.
        optimizer: The optimizer class (default SGD: plain gradient descent, the lesson of this template).
        lr_scheduler: An optional learning-rate scheduler.

    Example:
        >>> model = LogisticRegression(num_features=4)
        >>> model(torch.zeros(3, 4))
        tensor([0., 0., 0.], grad_fn=<SqueezeBackward1>)
    """

    def __init__(
        self,
        num_features: int,
        lr: float = 0.1,
        weight_decay: float = 0.0,
        optimizer: Optimizer = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(lr, weight_decay, optimizer, lr_scheduler)
        self.linear = torch.nn.Linear(num_features, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)  # (B, D) -> (B,) logits
