"""The models: ``BinaryClassifier`` (loss, metrics, optimizer, logging) and the networks built on it.

A model of your own subclasses ``BinaryClassifier`` and defines ``forward`` (rows (B, D) -> logits (B,));
train it with ``logreg fit --model my_package.MyModel``.
"""

from logreg.models.classifier import BinaryClassifier, Optimizer
from logreg.models.logistic import LogisticRegression
from logreg.models.mlp import MLP

__all__ = ["MLP", "BinaryClassifier", "LogisticRegression", "Optimizer"]
