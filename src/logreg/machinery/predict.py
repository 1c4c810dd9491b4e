"""Prediction output: a CSV of probabilities and 0/1 predictions, one row per input row, in input order."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from logreg.machinery.atomic import AtomicFile
from logreg.machinery.errors import ConfigError, DataError

HEADER = "row,probability,prediction"


class PredictionWriter(Callback):
    """Write ``row,probability,prediction`` for every input row to a CSV file, in the input's order.

    ``row`` counts the input's data rows from 0 (row r is line r + 2 of a CSV file with its header),
    ``probability`` is p(y = 1 | x) and ``prediction`` is 1 where it reaches ``threshold``. The rows go to
    a hidden file next to the output (:class:`~logreg.machinery.atomic.AtomicFile`), fsync'ed and given the output's
    name when prediction ends, so a failed run, a full disk or a kill leaves no half-written file. An
    existing file is never replaced, and the input never: of two runs writing the same output, the second
    to finish keeps its rows in its hidden file and says so.

    What Lightning's own does not give: its ``BasePredictionWriter`` writes nothing by itself (a subclass
    writes each batch its own way) and looks up sampler indices, which batches sliced from tensors do not have
    (it warns on every run); this one writes the CSV, in input order, atomically, and never over a file.

    Args:
        output: The CSV file to write; default ``<input name>.predictions.csv`` (the data module's ``dataset``
            hyperparameter; ``predictions.csv`` for one without) in the prediction run's directory
            (``lightning_logs/predict/version_N/``).
        threshold: Probability from which the prediction is 1.

    Example:
        >>> PredictionWriter(output="scores.csv").output
        'scores.csv'
    """

    def __init__(self, output: str | None = None, threshold: float = 0.5) -> None:
        super().__init__()
        if not 0 < threshold < 1:
            raise ConfigError(f"threshold must lie strictly between 0 and 1; got {threshold}.")
        self.output = output
        self.threshold = threshold
        self.path: Path | None = None
        self._file: AtomicFile | None = None
        self._rows = 0

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict" or not trainer.is_global_zero:
            return
        # The input's name, where the data module has one (TabularDataModule's dataset): banknote.predictions.csv
        dataset = getattr(trainer.datamodule, "hparams", {}).get("dataset")
        self.path = self._resolve(trainer, str(dataset) if dataset is not None else None)
        self._file = AtomicFile(self.path, text=True, what="predictions file")
        self._file.write(HEADER + "\n")
        self._rows = 0

    def _resolve(self, trainer: L.Trainer, dataset: str | None) -> Path:
        source = Path(dataset) if dataset is not None else None
        if self.output is not None:
            path = Path(self.output)
        else:
            name = f"{source.stem}.predictions.csv" if source is not None else "predictions.csv"
            path = Path(trainer.log_dir or ".") / name
        if source is not None and source.is_file() and path.resolve() == source.resolve():
            raise DataError(f"{path}: is the input file; choose another output for the predictions.")
        if path.exists():
            raise DataError(f"{path}: already exists; remove it or choose another output for the predictions.")
        return path

    @override
    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._file is None:
            return
        probs = outputs.detach().float().cpu().numpy()  # (B,)
        rows = np.arange(self._rows, self._rows + len(probs))
        table = np.rec.fromarrays([rows, probs, (probs >= self.threshold).astype(np.int64)])
        # %.9g keeps every digit of a float32, so the file reproduces the probabilities exactly.
        text = io.StringIO()
        np.savetxt(text, table, fmt=["%d", "%.9g", "%d"], delimiter=",")
        self._file.write(text.getvalue())
        self._rows += len(probs)

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is None:
            return
        written, self._file = self._file, None
        written.commit()  # refuses, keeping the rows in the hidden file, if the output appeared meanwhile
        rank_zero_info(f"Wrote {self._rows} predictions to {self.path}")

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._file is not None:
            self._file.discard()
            self._file = None
