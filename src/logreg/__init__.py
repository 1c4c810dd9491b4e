"""logreg: the three variants of gradient descent on logistic regression, as a PyTorch Lightning template."""

from logreg.data import TabularDataModule, TensorBatches
from logreg.datasets import DataError
from logreg.model import LogisticRegression

__all__ = ["DataError", "LogisticRegression", "TabularDataModule", "TensorBatches"]
