"""The template's dataset: the embedded banknote data, synthetic data, or a CSV file of the user's."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from logreg.data.base import BatchMode, BatchModeDataModule
from logreg.data.batches import CsvBatches, TensorBatches
from logreg.data.tables import (
    BANKNOTE_COLUMNS,
    BANKNOTE_PATH,
    Table,
    find_columns,
    label_index,
    load_banknote,
    make_synthetic,
    read_csv,
    read_header,
    select_features,
)
from logreg.machinery.errors import ConfigError, DataError

BUILTIN = {"banknote": BANKNOTE_COLUMNS[-1], "synthetic": "y"}  # the built-in datasets and their label columns


class TabularDataModule(BatchModeDataModule):
    """The rows of a table in the chosen ``batch_mode``: banknote, synthetic data or a CSV file.

    Args:
        dataset: ``banknote`` (embedded UCI data), ``synthetic``, or the path of a CSV file with a header row.
            Prediction reads a CSV file of any size piece by piece.
        batch_mode: ``full`` (gradient descent), ``example`` (stochastic gradient descent) or ``minibatch``.
        batch_size: Rows per update in ``minibatch`` mode, per process under DDP (an update then takes
            ``batch_size * world_size`` rows); a size above the training rows acts as ``full``.
        label_column: Name of the CSV label column (values 0 or 1); default the last column.
        feature_columns: Names of the feature columns, in the model's input order; default every column but
            the label. Runs given ``--ckpt_path`` take them from the checkpoint, so prediction reads the
            columns the model was trained on, with or without the label column, in any column order.
        val_fraction: Fraction of rows held out for validation.
        test_fraction: Fraction of rows held out for testing.
        seed: Seed of the split, the per-epoch shuffle and the synthetic data.
        synthetic_rows: Rows of the synthetic dataset.
        synthetic_features: Features of the synthetic dataset.
        synthetic_noise: Standard deviation of the noise added to the synthetic logits (0: separable).
        eval_batch_size: Rows per batch for validation, test and prediction (no updates happen there).

    Example:
        >>> dm = TabularDataModule(batch_mode="full")
        >>> dm.setup("fit")
        >>> [len(dm.split(stage)[0]) for stage in ("train", "val", "test")]
        [824, 274, 274]
        >>> len(dm.train_dataloader())
        1
    """

    def __init__(
        self,
        dataset: str = "banknote",
        batch_mode: BatchMode = "minibatch",
        batch_size: int = 32,
        label_column: str | None = None,
        feature_columns: list[str] | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 42,
        synthetic_rows: int = 10_000,
        synthetic_features: int = 8,
        synthetic_noise: float = 0.5,
        eval_batch_size: int = 65_536,
    ) -> None:
        super().__init__(batch_mode, batch_size, val_fraction, test_fraction, seed, eval_batch_size)
        if feature_columns is not None and (not feature_columns or len(set(feature_columns)) < len(feature_columns)):
            raise ConfigError(f"feature_columns must name at least one column, each once; got {feature_columns}.")
        builtin_label = BUILTIN.get(dataset)
        if builtin_label is not None and label_column not in (None, builtin_label):
            raise ConfigError(
                f"label_column names a column of a CSV file; the {dataset} data's label column is {builtin_label!r}, "
                f"got {label_column!r}."
            )

    @property
    def _features(self) -> list[str] | None:
        """The feature columns to read: as configured, else the restored checkpoint's, else all but the label."""
        wanted = self.hparams.feature_columns
        return list(wanted) if wanted is not None else self.feature_names

    @property
    def _label(self) -> str | None:
        return self.hparams.label_column if self.hparams.label_column is not None else self.label_name

    @property
    @override
    def num_features(self) -> int:
        """Features per row, read from the dataset's header, not its rows; a file that does not fit fails here."""
        hp = self.hparams
        names = self._features
        if names is not None:
            if hp.dataset not in BUILTIN:
                find_columns(hp.dataset, read_header(hp.dataset), self._label, names)
            return len(names)
        if hp.dataset == "banknote":
            return len(read_header(BANKNOTE_PATH)) - 1
        if hp.dataset == "synthetic":
            return hp.synthetic_features
        header = read_header(hp.dataset)
        label_index(hp.dataset, header, hp.label_column)
        return len(header) - 1

    @override
    def load_table(self, stage: str) -> Table:
        """All rows of the dataset, in file order, with the features the model reads; only prediction accepts
        a file without the label column."""
        hp = self.hparams
        if hp.dataset == "banknote":
            return select_features(load_banknote(), hp.dataset, self._features)
        if hp.dataset == "synthetic":
            table = make_synthetic(hp.synthetic_rows, hp.synthetic_features, hp.synthetic_noise, hp.seed)
            return select_features(table, hp.dataset, self._features)
        return read_csv(hp.dataset, self._label, self._features, need_label=stage != "predict")

    @override
    def predict_dataloader(self) -> TensorBatches | CsvBatches:
        if self.mean is None or self.hparams.dataset in BUILTIN:
            return super().predict_dataloader()
        # A CSV file of any size, read piece by piece, standardised with the training statistics.
        return CsvBatches(
            self.hparams.dataset,
            self.mean,
            self.std,
            self.hparams.eval_batch_size,
            self._label,
            self._features,
            need_label=False,
        )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, wanted = state_dict.get("feature_names"), self.hparams.feature_columns
        if saved is not None and wanted is not None and list(saved) != list(wanted):
            raise DataError(
                f"--data.feature_columns {', '.join(wanted)} differ from the features the checkpoint's model was "
                f"trained on: {', '.join(saved)}."
            )
        super().load_state_dict(state_dict)
