"""The data: how rows are read, split, standardised and served in batches, and so which algorithm runs.

A dataset of your own subclasses ``BatchModeDataModule`` and overrides ``load_table`` to return a ``Table``;
train on it with ``logreg fit --data my_package.MyData``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: the readers (``logreg prepare`` uses them) need neither Lightning nor the data modules.
_EXPORTS = {
    "BatchModeDataModule": "logreg.data.base",
    "CsvBatches": "logreg.data.batches",
    "Table": "logreg.data.tables",
    "TabularDataModule": "logreg.data.tabular",
    "TensorBatches": "logreg.data.batches",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'logreg.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
