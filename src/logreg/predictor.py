"""The trained model outside the template: a module that takes raw rows and returns probabilities.

A model alone expects standardised rows: the standardisation statistics are the data module's, saved beside the
model in the checkpoint. :func:`load_predictor` composes the two into a :class:`Predictor`, which gives the
probabilities ``logreg predict`` writes for the same rows, for any model class trained by the CLI.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from typing_extensions import override

from logreg.batch import Batch
from logreg.machinery.checkpoint import SavedRun, read_checkpoint
from logreg.machinery.errors import DataError, one_line


class Predictor(torch.nn.Module):
    """Raw rows (N, D), columns in the training order, to probabilities of class 1 (N,).

    The rows are standardised with the training statistics, then go through the model's ``predict_step``, as
    ``logreg predict`` does; the model is frozen (evaluation mode, no gradients).

    Composed here rather than held by the model (as buffers of a standardisation layer): the statistics belong to
    the data module, which a user swaps without touching the model, so neither class needs to know the other.

    Args:
        model: The trained model; its ``predict_step`` returns probabilities (B,) for standardised rows (B, D).
        mean: The training split's mean of each feature, shape (D,).
        std: Its standard deviation of each feature, shape (D,).
        feature_names: The D feature columns, in the model's input order.
        label_name: The label column the model predicts, where known.

    Example:
        >>> from logreg.models import LogisticRegression
        >>> predictor = Predictor(LogisticRegression(num_features=2), torch.zeros(2), torch.ones(2), ["a", "b"])
        >>> predictor(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # zero weights: 0.5 for every row
        tensor([0.5000, 0.5000])
    """

    def __init__(
        self,
        model: L.LightningModule,
        mean: torch.Tensor,
        std: torch.Tensor,
        feature_names: Sequence[str],
        label_name: str | None = None,
    ) -> None:
        super().__init__()
        if not mean.shape == std.shape == (len(feature_names),):
            raise DataError(
                f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must each hold one value per feature "
                f"({len(feature_names)}: {', '.join(feature_names)})."
            )
        model.freeze()
        self.model = model
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())
        self.feature_names = list(feature_names)
        self.label_name = label_name
        self.eval()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise DataError(
                f"rows of shape {tuple(x.shape)}: the model reads (rows, {len(self.feature_names)}), the features "
                f"{', '.join(self.feature_names)} in that order."
            )
        # float32 first, as `logreg predict` reads a file, so float64 rows give its probabilities to the digit
        x = (x.to(self.mean.dtype) - self.mean) / self.std  # (N, D)
        # predict_step, not forward: it is what `logreg predict` writes, and the one output every model promises
        return self.model.predict_step(Batch(x), 0)  # (N,)


def load_predictor(checkpoint: str | Path) -> Predictor:
    """The :class:`Predictor` of a checkpoint written by ``logreg fit``: its model, with the standardisation
    statistics and column names of the data module it was trained with; on the CPU (``.to(device)`` moves it).

    The model's class is imported by the path the checkpoint records (a model of your own: run where its module
    is importable, as for ``logreg predict``). Load only checkpoints you trust, as for any Lightning checkpoint.

    >>> load_predictor("no/such.ckpt")
    Traceback (most recent call last):
    ...
    logreg.machinery.errors.DataError: no/such.ckpt: no such checkpoint file.
    """
    saved = read_checkpoint(checkpoint)
    state = saved.data_state or {}
    if any(state.get(key) is None for key in ("mean", "std", "feature_names")):
        raise DataError(
            f"{saved.path}: holds no standardisation statistics and column names of a data module (saved by "
            "logreg.data.BatchModeDataModule and its subclasses), so raw rows cannot be prepared for its model."
        )
    cls = import_class(saved, saved.model_class, L.LightningModule, "model")
    try:
        model = cls.load_from_checkpoint(saved.path, map_location="cpu", weights_only=True)
    except (TypeError, ValueError) as err:  # the class's arguments changed since the checkpoint was written
        raise DataError(f"{saved.path}: cannot rebuild its model {saved.model_class}: {one_line(err)}") from None
    return Predictor(model, state["mean"], state["std"], state["feature_names"], state.get("label_name"))


def import_class(saved: SavedRun, class_path: str | None, base: type, what: str) -> type:
    """The class a checkpoint names for its model or data module, which must subclass ``base``.

    >>> import_class(SavedRun(Path("a.ckpt"), 4), "logreg.models.LogisticRegression", L.LightningModule, "model")
    <class 'logreg.models.logistic.LogisticRegression'>
    """
    if class_path is None:
        raise DataError(
            f"{saved.path}: does not record its {what}'s class (LightningCLI writes it as _class_path; `logreg fit` "
            "checkpoints have it)."
        )
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:  # ValueError: a name without a module
        raise DataError(
            f"{saved.path}: its {what} class {class_path} cannot be imported ({one_line(err)}); run where its "
            "module is importable (its directory, or with its package installed)."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise DataError(f"{saved.path}: its {what} class {class_path} is not a {base.__name__}.")
    return cls
