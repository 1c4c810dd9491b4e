"""logreg: the three variants of gradient descent on logistic regression, as a PyTorch Lightning template."""

from logreg.data import TabularDataModule, TensorBatches
from logreg.errors import ConfigError, DataError
from logreg.mlp import MLP
from logreg.model import BinaryClassifier, LogisticRegression

__all__ = [
    "MLP",
    "BinaryClassifier",
    "ConfigError",
    "DataError",
    "LogisticRegression",
    "TabularDataModule",
    "TensorBatches",
]
