"""A worked extension: a small multilayer perceptron in place of logistic regression.

It changes nothing but the network: the loss, metrics, optimizer, logging, checkpoints, resume, DDP and
``predict`` come from ``BinaryClassifier``, and the data module is the same. Train it with
``logreg fit --model logreg.models.MLP --model.hidden 32``.
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable
from typing_extensions import override

from logreg.machinery.errors import ConfigError
from logreg.models.classifier import BinaryClassifier, Optimizer


class MLP(BinaryClassifier):
    """One hidden layer of ReLU units, then one logit: a classifier whose boundary can bend.

    Args:
        num_features: Inputs per row; the CLI links it from the data module.
        hidden: Units in the hidden layer.
        lr: Learning rate.
        weight_decay: L2 penalty on both weight matrices (not the biases), see ``BinaryClassifier``.
        optimizer: The optimizer class.
        lr_scheduler: An optional learning-rate scheduler.

    Example:
        >>> model = MLP(num_features=4, hidden=8)
        >>> model(torch.zeros(3, 4)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        num_features: int,
        hidden: int = 16,
        lr: float = 0.1,
        weight_decay: float = 0.0,
        optimizer: Optimizer = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(lr, weight_decay, optimizer, lr_scheduler)
        if hidden < 1:
            raise ConfigError(f"hidden must be a positive number of units; got {hidden}.")
        # Random (PyTorch's default) initialisation: zero weights would keep every hidden unit the same.
        self.net = torch.nn.Sequential(
            torch.nn.Linear(num_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # (B, D) -> (B, H) -> (B,) logits
