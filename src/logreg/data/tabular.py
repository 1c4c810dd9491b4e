"""How the data is fed, and so which gradient-descent variant runs.

``batch_mode`` picks the number of rows behind each weight update:

- ``full``: the whole training split in one batch, gradient descent (1 update per epoch);
- ``example``: one row per batch, stochastic gradient descent (N updates per epoch);
- ``minibatch``: ``batch_size`` rows per batch (ceil(N / B) updates per epoch, the last batch may be short).

Batches are slices of tensors held in memory (on the training device when it has room): one shuffle per
epoch, then a view per step. A ``DataLoader`` over a ``TensorDataset`` would index and collate row by row,
which costs hundreds of times more than the update itself for large batches.

The training batches resume mid-epoch: they implement ``state_dict`` / ``load_state_dict``, Lightning's
interface for resumable loaders, so a run restarted from a checkpoint written inside an epoch (the timed
``last.ckpt``) continues with the batch after the last one trained, as if it had never stopped.

Under DDP (world size W > 1) the data module shards itself: Lightning injects a ``DistributedSampler``
only into ``DataLoader`` objects, and that sampler pads the shards with repeated rows, which would bias
full-batch gradient descent. Here an update takes a *global* batch of W times the rows of one process
(``full``: all N rows; ``example``: W rows; ``minibatch``: W * batch_size rows), drawn from the same
shuffled order a single process would use, and split into W disjoint near-equal shards, one per rank.
Each shard carries its global batch's row count, so the model weights it to make the ranks' averaged
gradient equal the global batch's mean gradient exactly. Every rank takes ceil(N / global batch) steps
per epoch, as DDP needs. Validation and test rows are split into W contiguous shards, and the metrics
(torchmetrics) combine them.

A ``dataset`` made by ``logreg prepare`` (a local directory or an object-store URL) is streamed instead, in
flat memory, by ``logreg.streaming.data.StreamingBatches`` on LitData: LitData deals its blocks out to the DDP
processes, so each reads only its share. ``minibatch`` and ``example`` batches hold ``batch_size`` (1) rows
per process, as above. ``full`` stays gradient descent: the training rows come in chunks, and Lightning's
gradient accumulation (``accumulate_grad_batches``, set here to the chunks per epoch) sums their weighted
gradients into one update per epoch from the exact mean gradient over all N rows.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import lightning as L
import torch
from typing_extensions import override

from logreg.data.batches import TensorBatches
from logreg.data.tables import (
    BANKNOTE_COLUMNS,
    BANKNOTE_PATH,
    CsvBatches,
    Table,
    find_columns,
    label_index,
    load_banknote,
    make_synthetic,
    read_csv,
    read_header,
    select_features,
)
from logreg.machinery.checkpoint import read_checkpoint
from logreg.machinery.errors import ConfigError, DataError
from logreg.streaming.data import PreparedData, StreamingBatches, is_prepared

BatchMode = Literal["full", "example", "minibatch"]
BUILTIN_LABELS = {"banknote": BANKNOTE_COLUMNS[-1], "synthetic": "y"}  # the label column of the built-in data
MAX_SEED = 2**32 - 1  # the per-epoch shuffle seeds torch with seed * 1_000_003 + epoch, which must fit 64 bits


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Raise a ConfigError that lists the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


class TabularDataModule(L.LightningDataModule):
    """Splits a table into train/val/test, standardises it with training statistics, and serves batches.

    The standardisation statistics are part of ``state_dict``, so a checkpoint carries them and prediction
    on new data uses the training statistics, never ones fitted on the new file.

    Args:
        dataset: ``banknote`` (embedded UCI data), ``synthetic``, the path of a CSV file with a header row
            (read into memory), or a directory made by ``logreg prepare`` (a path or an object-store URL such
            as ``s3://bucket/prepared``), which is streamed. Prediction streams any CSV file.
        batch_mode: ``full`` (gradient descent), ``example`` (stochastic gradient descent) or ``minibatch``.
        batch_size: Rows per update in ``minibatch`` mode, per process under DDP (an update then takes
            ``batch_size * world_size`` rows); a size above the training rows acts as ``full``.
        label_column: Name of the CSV label column (values 0 or 1); default the last column.
        feature_columns: Names of the feature columns, in the model's input order; default every column but
            the label. Runs given ``--ckpt_path`` take them from the checkpoint, so prediction reads the
            columns the model was trained on, with or without the label column, in any column order.
        columns_from: A checkpoint whose feature and label columns to take, as ``feature_columns`` and
            ``label_column`` would give them. The CLI sets it from ``--ckpt_path``: a path keeps the names out of
            the parsed configuration, which the argument parser copies per element (quadratic in the number
            of columns: minutes for 10,000 of them).
        val_fraction: Fraction of rows held out for validation.
        test_fraction: Fraction of rows held out for testing.
        seed: Seed of the split, the per-epoch shuffle and the synthetic data.
        synthetic_rows: Rows of the synthetic dataset.
        synthetic_features: Features of the synthetic dataset.
        synthetic_noise: Standard deviation of the noise added to the synthetic logits (0: separable).
        eval_batch_size: Rows per batch for validation, test and prediction (no updates happen there).
        chunk_rows: Rows read at a time from a prepared dataset (whole blocks); in ``full`` mode the rows of
            each accumulated chunk. Memory holds a few chunks, whatever the data's size.

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
        columns_from: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 42,
        synthetic_rows: int = 10_000,
        synthetic_features: int = 8,
        synthetic_noise: float = 0.5,
        eval_batch_size: int = 65_536,
        chunk_rows: int = 65_536,
    ) -> None:
        super().__init__()
        check_choice("batch_mode", batch_mode, get_args(BatchMode))
        for name, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("chunk_rows", chunk_rows),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be a positive number of rows; got {value}.")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise ConfigError(f"{name} must lie strictly between 0 and 1; got {value}.")
        if val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"val_fraction + test_fraction must be below 1 to leave training rows; got {val_fraction + test_fraction:g}."
            )
        if feature_columns is not None and (not feature_columns or len(set(feature_columns)) < len(feature_columns)):
            raise ConfigError(f"feature_columns must name at least one column, each once; got {feature_columns}.")
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed must lie between 0 and {MAX_SEED}; got {seed}.")
        builtin_label = BUILTIN_LABELS.get(dataset)
        if builtin_label is not None and label_column not in (None, builtin_label):
            raise ConfigError(
                f"label_column names a column of a CSV file; the {dataset} data's label column is {builtin_label!r}, "
                f"got {label_column!r}."
            )
        self.save_hyperparameters()
        self.mean: torch.Tensor | None = None  # (D,), from the training split or a checkpoint
        self.std: torch.Tensor | None = None
        # The columns behind mean/std, saved with them, so a checkpoint says which columns its model reads.
        self.feature_names: list[str] | None = None
        self.label_name: str | None = None
        if columns_from is not None:
            saved = read_checkpoint(columns_from)
            self.feature_names, self.label_name = saved.feature_names, saved.label_name
        self._raw: dict[str, tuple[torch.Tensor, ...]] = {}
        self._ready: dict[str, tuple[torch.Tensor, ...]] = {}
        self._prepared: PreparedData | None = None

    @property
    def prepared(self) -> PreparedData | None:
        """The description of a prepared (streamed) dataset; None when the data is read into memory."""
        if self._prepared is None and is_prepared(self.hparams.dataset):
            self._prepared = PreparedData.read(self.hparams.dataset)
        return self._prepared

    @property
    def num_features(self) -> int:
        """Features per row, read from the dataset's description (header), not its rows."""
        hp = self.hparams
        if self.prepared is not None:
            return len(self._prepared_features())
        names = hp.feature_columns if hp.feature_columns is not None else self.feature_names
        if names is not None:
            if hp.dataset not in ("banknote", "synthetic"):  # a file that does not fit fails here, before any run
                label = hp.label_column if hp.label_column is not None else self.label_name
                find_columns(hp.dataset, read_header(hp.dataset), label, names)
            return len(names)
        dataset = hp.dataset
        if dataset == "banknote":
            return len(read_header(BANKNOTE_PATH)) - 1
        if dataset == "synthetic":
            return self.hparams.synthetic_features
        header = read_header(dataset)
        label_index(dataset, header, self.hparams.label_column)
        return len(header) - 1

    @property
    def run_name(self) -> str:
        """Name of this data feeding for loggers, so runs of the three modes sit side by side."""
        return self.hparams.batch_mode

    @property
    def train_rows(self) -> int:
        """Rows of the training split."""
        return self.prepared.rows["train"] if self.prepared is not None else len(self._raw["train"][0])

    @property
    def train_batch_size(self) -> int:
        """Rows per weight update: under DDP the global batch, i.e. all ranks' shards together."""
        n_train = self.train_rows
        world = self._rank_and_world_size()[1]
        per_process = {"full": n_train, "example": 1, "minibatch": self.hparams.batch_size}[self.hparams.batch_mode]
        return min(per_process * world, n_train)

    @property
    def updates_per_epoch(self) -> int:
        """Weight updates per epoch: ceil(N_train / train_batch_size)."""
        return math.ceil(self.train_rows / self.train_batch_size)

    def load_table(self, stage: str = "fit") -> Table:
        """All rows of the configured dataset, in file order, with the features the model reads.

        The features are ``feature_columns``, else those of a restored checkpoint, else all but the label;
        only prediction accepts a file without the label column.
        """
        hp = self.hparams
        features = hp.feature_columns if hp.feature_columns is not None else self.feature_names
        if hp.dataset == "banknote":
            return select_features(load_banknote(), hp.dataset, features)
        if hp.dataset == "synthetic":
            table = make_synthetic(hp.synthetic_rows, hp.synthetic_features, hp.synthetic_noise, hp.seed)
            return select_features(table, hp.dataset, features)
        label = hp.label_column if hp.label_column is not None else self.label_name
        return read_csv(hp.dataset, label, features, need_label=stage != "predict")

    def _prepared_features(self) -> list[str]:
        """The prepared data's features; ``feature_columns`` (or a checkpoint's) must name the same, in order."""
        names = list(self.prepared.feature_names)
        wanted = self.hparams.feature_columns
        if wanted is not None and list(wanted) != names:
            raise DataError(
                f"{self.hparams.dataset}: holds the features {', '.join(names)}, in this order; "
                f"the model reads {', '.join(wanted)}."
            )
        return names

    def _setup_streamed(self, stage: str) -> None:
        data = self.prepared
        self.feature_names, self.label_name = self._prepared_features(), data.label_name
        if self.mean is None:  # a checkpoint restored later overrides these before any batch is served
            self.mean, self.std = data.mean, data.std
        if stage == "fit" and self.hparams.batch_mode == "full" and self.trainer is not None:
            # One update per epoch from all training rows: accumulate the gradients of the epoch's chunks.
            chunks = self._streamed("train").batches_per_epoch()
            accumulate = self.trainer.accumulate_grad_batches
            if accumulate not in (1, chunks):
                raise ConfigError(
                    f"--trainer.accumulate_grad_batches {accumulate}: full-batch training on streamed data "
                    f"accumulates over the {chunks} chunks of each epoch by itself; leave it unset."
                )
            self.trainer.accumulate_grad_batches = chunks

    def _batches_trained(self) -> int:
        """Batches of the current epoch the Trainer has trained; a loader cannot count them itself, because
        the Trainer fetches one batch ahead."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _streamed(self, split: str) -> StreamingBatches:
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
    def setup(self, stage: str) -> None:
        if self.prepared is not None:
            self._setup_streamed(stage)
            return
        if self._raw or stage == "predict":
            return
        table = self.load_table(stage)
        n = len(table.x)
        n_val, n_test = round(n * self.hparams.val_fraction), round(n * self.hparams.test_fraction)
        n_train = n - n_val - n_test
        if min(n_train, n_val, n_test) < 1:
            raise DataError(
                f"{self.hparams.dataset}: {n} rows are too few to split into non-empty train ({n_train}), "
                f"val ({n_val}) and test ({n_test}) sets."
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.seed))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
        self._raw = {stage: (table.x[order[a:b]], table.y[order[a:b]]) for stage, (a, b) in bounds.items()}
        self.feature_names, self.label_name = list(table.feature_names), table.label_name
        if self.mean is None:  # a checkpoint restored later overrides these before any batch is served
            x_train = self._raw["train"][0]
            self.mean = x_train.mean(dim=0)
            std = x_train.std(dim=0)
            self.std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column stays constant

    def split(self, stage: str) -> tuple[torch.Tensor, ...]:
        """Standardised (x, y) of a split, made once and kept on the training device when it has room."""
        if stage not in self._ready:
            x, y = self._raw[stage]
            self._ready[stage] = self._to_device(self.standardize(x), y)
        return self._ready[stage]

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean).div_(self.std)  # (N, D) with statistics (D,); in place: one copy of x at a time

    def _to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type == "cuda":
            needed = sum(t.numel() * t.element_size() for t in tensors)
            free, _ = torch.cuda.mem_get_info(device)
            if needed > free // 2:  # leave room for the model's work; Lightning then copies each batch instead
                return tensors
        return tuple(t.to(device) for t in tensors)

    def _rank_and_world_size(self) -> tuple[int, int]:
        return (0, 1) if self.trainer is None else (self.trainer.global_rank, self.trainer.world_size)

    def _eval_shard(self, stage: str) -> tuple[torch.Tensor, ...]:
        """This rank's contiguous share of a validation or test split (all of it on one process)."""
        tensors = self.split(stage)
        rank, world = self._rank_and_world_size()
        n = len(tensors[0])
        return tuple(t[rank * n // world : (rank + 1) * n // world] for t in tensors)

    @override
    def train_dataloader(self) -> TensorBatches | StreamingBatches:
        if self.prepared is not None:
            return self._streamed("train")
        shuffle = self.hparams.batch_mode != "full"  # the full-batch gradient does not depend on row order
        rank, world = self._rank_and_world_size()
        return TensorBatches(
            *self.split("train"),
            batch_size=self.train_batch_size,
            shuffle=shuffle,
            seed=self.hparams.seed,
            epoch=lambda: self.trainer.current_epoch,
            rank=rank,
            world_size=world,
            trained=self._batches_trained,
        )

    @override
    def val_dataloader(self) -> TensorBatches | StreamingBatches:
        if self.prepared is not None:
            return self._streamed("val")
        return TensorBatches(*self._eval_shard("val"), batch_size=self.hparams.eval_batch_size)

    @override
    def test_dataloader(self) -> TensorBatches | StreamingBatches:
        if self.prepared is not None:
            return self._streamed("test")
        return TensorBatches(*self._eval_shard("test"), batch_size=self.hparams.eval_batch_size)

    @override
    def predict_dataloader(self) -> TensorBatches | StreamingBatches | CsvBatches:
        # Loaded here, after a checkpoint restored the training statistics, and never split or re-fitted.
        if self.mean is None:
            raise DataError("prediction needs the training statistics: pass --ckpt_path of a trained model.")
        hp = self.hparams
        if self.prepared is not None:  # the prepared test split, in its stored order
            self._prepared_features()
            return self._streamed("test")
        if hp.dataset not in ("banknote", "synthetic"):  # a CSV file of any size: read piece by piece
            features = hp.feature_columns if hp.feature_columns is not None else self.feature_names
            label = hp.label_column if hp.label_column is not None else self.label_name
            return CsvBatches(hp.dataset, self.mean, self.std, hp.eval_batch_size, label, features, need_label=False)
        table = self.load_table("predict")
        tensors = (self.standardize(table.x),) if table.y is None else (self.standardize(table.x), table.y)
        return TensorBatches(*self._to_device(*tensors), batch_size=self.hparams.eval_batch_size)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "feature_names": self.feature_names, "label_name": self.label_name}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checkpoints from before the column names were saved hold only the statistics.
        saved = state_dict.get("feature_names")
        ours = self.hparams.feature_columns if self.hparams.feature_columns is not None else self.feature_names
        if saved is not None and ours is not None and list(ours) != list(saved):
            raise DataError(
                f"{self.hparams.dataset}: the checkpoint's model reads the features {', '.join(saved)}, "
                f"but this data has {', '.join(ours)}."
            )
        self.mean, self.std = state_dict["mean"], state_dict["std"]
        self.feature_names = list(saved) if saved is not None else self.feature_names
        self.label_name = state_dict.get("label_name", self.label_name)
        self._ready.clear()
