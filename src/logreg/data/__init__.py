"""The data: how rows are read, split, standardised and served in batches, and so which algorithm runs."""

from logreg.data.batches import TensorBatches
from logreg.data.tabular import TabularDataModule

__all__ = ["TabularDataModule", "TensorBatches"]
