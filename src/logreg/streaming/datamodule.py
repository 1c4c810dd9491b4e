"""Training on a prepared directory (``logreg prepare``), streamed in flat memory: the batch modes of
:class:`~logreg.data.BatchModeDataModule`, with rows read by LitData instead of held in memory.

LitData deals the prepared blocks out to the DDP processes, so each reads only its share. ``minibatch`` and
``example`` batches hold ``batch_size`` (1) rows per process. ``full`` stays gradient descent: the training rows
come in chunks, and Lightning's gradient accumulation (``accumulate_grad_batches``, set here to the chunks per
epoch) sums their weighted gradients into one update per epoch from the exact mean gradient over all N rows.
"""

from __future__ import annotations

from typing_extensions import override

from logreg.data import BatchModeDataModule
from logreg.data.base import BatchMode
from logreg.machinery.errors import ConfigError, DataError
from logreg.streaming.data import PreparedData, StreamingBatches


class StreamingDataModule(BatchModeDataModule):
    """The rows of a directory made by ``logreg prepare``, streamed in the chosen ``batch_mode``.

    The split and the training statistics were made by ``logreg prepare``; a checkpoint's statistics, when one
    is restored, take their place as for any data module.

    Args:
        dataset: A directory made by ``logreg prepare``: a local path or an object-store URL such as
            ``s3://bucket/prepared``.
        batch_mode: ``full`` (gradient descent), ``example`` (stochastic gradient descent) or ``minibatch``.
        batch_size: Rows per update in ``minibatch`` mode, per process under DDP.
        feature_columns: The features the model reads, in order; they must be the prepared ones (a check).
        seed: Seed of the per-epoch shuffle.
        eval_batch_size: Rows per batch for validation, test and prediction.
        chunk_rows: Rows read at a time (whole blocks); in ``full`` mode the rows of each accumulated chunk.
            Memory holds a few chunks, whatever the data's size.

    Example:
        >>> import tempfile
        >>> from logreg.streaming.prepare import prepare
        >>> out = tempfile.mkdtemp() + "/prepared"
        >>> _ = prepare("banknote", out)
        >>> StreamingDataModule(out, batch_mode="full").num_features
        4
    """

    def __init__(
        self,
        dataset: str,
        batch_mode: BatchMode = "minibatch",
        batch_size: int = 32,
        feature_columns: list[str] | None = None,
        seed: int = 42,
        eval_batch_size: int = 65_536,
        chunk_rows: int = 65_536,
    ) -> None:
        super().__init__(batch_mode, batch_size, seed=seed, eval_batch_size=eval_batch_size)
        if chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be a positive number of rows; got {chunk_rows}.")
        self._prepared: PreparedData | None = None

    @property
    def prepared(self) -> PreparedData:
        """The description ``logreg prepare`` wrote beside the chunks (read on first use)."""
        if self._prepared is None:
            self._prepared = PreparedData.read(self.hparams.dataset)
        return self._prepared

    @property
    @override
    def num_features(self) -> int:
        return len(self._prepared_features())

    @property
    @override
    def train_rows(self) -> int:
        return self.prepared.rows["train"]

    def _prepared_features(self) -> list[str]:
        """The prepared data's features; ``feature_columns`` (or a checkpoint's) must name the same, in order."""
        names = list(self.prepared.feature_names)
        wanted = self.hparams.feature_columns
        if wanted is not None and list(wanted) != names:
            raise DataError(
                f"{self.hparams.dataset}: holds the features {', '.join(names)}, in this order; "
                f"the model reads {', '.join(wanted)}."
            )
        self._check_columns(names)
        return names

    @override
    def setup(self, stage: str) -> None:
        data = self.prepared
        self.feature_names, self.label_name = self._prepared_features(), data.label_name
        if self.mean is None:  # a checkpoint restored later overrides these before any batch is served
            self.mean, self.std = data.mean, data.std
        if stage == "fit" and self.hparams.batch_mode == "full" and self.trainer is not None:
            # One update per epoch from all training rows: accumulate the gradients of the epoch's chunks.
            chunks = self._batches("train").batches_per_epoch()
            accumulate = self.trainer.accumulate_grad_batches
            if accumulate not in (1, chunks):
                raise ConfigError(
                    f"--trainer.accumulate_grad_batches {accumulate}: full-batch training on streamed data "
                    f"accumulates over the {chunks} chunks of each epoch by itself; leave it unset."
                )
            self.trainer.accumulate_grad_batches = chunks

    def _batches(self, split: str) -> StreamingBatches:
        hp = self.hparams
        if split != "train":
            return StreamingBatches(self.prepared, split, self.mean, self.std, hp.eval_batch_size, equal_counts=False)
        trainer = self.trainer
        return StreamingBatches(
            self.prepared,
            "train",
            self.mean,
            self.std,
            batch_size={"full": None, "example": 1, "minibatch": hp.batch_size}[hp.batch_mode],
            shuffle=hp.batch_mode != "full",
            seed=hp.seed,
            epoch=(lambda: trainer.current_epoch) if trainer is not None else None,
            processed=self._batches_trained if trainer is not None else None,
            window_rows=hp.chunk_rows,
        )

    @override
    def train_dataloader(self) -> StreamingBatches:
        return self._batches("train")

    @override
    def val_dataloader(self) -> StreamingBatches:
        return self._batches("val")

    @override
    def test_dataloader(self) -> StreamingBatches:
        return self._batches("test")

    @override
    def predict_dataloader(self) -> StreamingBatches:
        """The prepared test split, in its stored order."""
        if self.mean is None:
            raise DataError("prediction needs the training statistics: pass --ckpt_path of a trained model.")
        self._prepared_features()
        return self._batches("test")
