"""logreg: the three variants of gradient descent on logistic regression, as a PyTorch Lightning template."""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so `logreg` (the command) starts without loading torch until it needs to, and
# Ctrl+C while it loads ends without a traceback (see logreg.launch).
_EXPORTS = {
    "MLP": "logreg.models.mlp",
    "BinaryClassifier": "logreg.models.classifier",
    "ConfigError": "logreg.machinery.errors",
    "DataError": "logreg.machinery.errors",
    "LogisticRegression": "logreg.models.logistic",
    "Predictor": "logreg.predictor",
    "TabularDataModule": "logreg.data.tabular",
    "TensorBatches": "logreg.data.batches",
    "load_predictor": "logreg.predictor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'logreg' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
