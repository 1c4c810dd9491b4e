"""The data: how rows are read, split, standardised and served in batches, and so which algorithm runs.

A dataset of your own subclasses ``BatchModeDataModule`` and overrides ``load_table`` to return a ``Table``;
train on it with ``logreg fit --data my_package.MyData``.
"""

from logreg.data.base import BatchModeDataModule
from logreg.data.batches import TensorBatches
from logreg.data.tables import Table
from logreg.data.tabular import TabularDataModule

__all__ = ["BatchModeDataModule", "Table", "TabularDataModule", "TensorBatches"]
