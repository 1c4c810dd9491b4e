"""How the data is fed, and so which gradient-descent variant runs: the base of the template's data modules.

``batch_mode`` picks the number of rows behind each weight update:

- ``full``: the whole training split in one batch, gradient descent (1 update per epoch);
- ``example``: one row per batch, stochastic gradient descent (N updates per epoch);
- ``minibatch``: ``batch_size`` rows per batch (ceil(N / B) updates per epoch, the last batch may be short).

A dataset subclasses :class:`BatchModeDataModule` and provides its rows (``load_table``); the split, the
standardisation, the batches and everything below come with it, as a model subclasses ``BinaryClassifier``
and provides ``forward``.

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
Each shard carries its global batch's row count (a :class:`~logreg.batch.ShardBatch`), so the model weights
it to make the ranks' averaged gradient equal the global batch's mean gradient exactly. Every rank takes
ceil(N / global batch) steps per epoch, as DDP needs. Validation and test rows are split into W contiguous
shards, and the metrics (torchmetrics) combine them.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import lightning as L
import torch
from typing_extensions import override

from logreg.data.batches import TensorBatches
from logreg.data.tables import Table, check_split_fractions
from logreg.machinery.errors import ConfigError, DataError

BatchMode = Literal["full", "example", "minibatch"]
MAX_SEED = 2**32 - 1  # the per-epoch shuffle seeds torch with seed * 1_000_003 + epoch, which must fit 64 bits


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Raise a ConfigError that lists the valid choices when ``value`` is not one of them.

    >>> check_choice("batch_mode", "mini", get_args(BatchMode))
    Traceback (most recent call last):
    ...
    logreg.machinery.errors.ConfigError: batch_mode must be one of 'full', 'example', 'minibatch'; got 'mini'.
    """
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


class BatchModeDataModule(L.LightningDataModule):
    """Splits a table into train/val/test, standardises it with training statistics, and serves the batches of
    the chosen ``batch_mode``. A dataset subclasses it and overrides :meth:`load_table`.

    The standardisation statistics and the column names are the data module's ``state_dict``, so a checkpoint
    carries them: prediction on new rows uses the training statistics, never ones fitted on the new rows, and a
    file whose columns differ from the checkpoint's is refused.

    Args:
        batch_mode: ``full`` (gradient descent), ``example`` (stochastic gradient descent) or ``minibatch``.
        batch_size: Rows per update in ``minibatch`` mode, per process under DDP (an update then takes
            ``batch_size * world_size`` rows); a size above the training rows acts as ``full``.
        val_fraction: Fraction of rows held out for validation.
        test_fraction: Fraction of rows held out for testing.
        seed: Seed of the split and the per-epoch shuffle.
        eval_batch_size: Rows per batch for validation, test and prediction (no updates happen there).

    Example:
        >>> class Ones(BatchModeDataModule):  # a dataset of 10 rows of 2 features
        ...     def load_table(self, stage):
        ...         return Table(torch.ones(10, 2), torch.arange(10.0) % 2, ("a", "b"), "label")
        >>> data = Ones(batch_mode="minibatch", batch_size=4)
        >>> data.num_features, data.setup("fit"), len(data.train_dataloader())  # 6 training rows
        (2, None, 2)
    """

    def __init__(
        self,
        batch_mode: BatchMode = "minibatch",
        batch_size: int = 32,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 42,
        eval_batch_size: int = 65_536,
    ) -> None:
        super().__init__()
        check_choice("batch_mode", batch_mode, get_args(BatchMode))
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigError(f"{name} must be a positive number of rows; got {value}.")
        check_split_fractions(val_fraction, test_fraction)
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed must lie between 0 and {MAX_SEED}; got {seed}.")
        self.save_hyperparameters()  # a subclass's own arguments too: Lightning collects every __init__'s
        self.mean: torch.Tensor | None = None  # (D,), from the training split or a checkpoint
        self.std: torch.Tensor | None = None
        # The columns behind mean/std, saved with them, so a checkpoint says which columns its model reads.
        self.feature_names: list[str] | None = None
        self.label_name: str | None = None
        self._table: Table | None = None  # read early by num_features, kept for setup
        self._raw: dict[str, tuple[torch.Tensor, ...]] = {}
        self._ready: dict[str, tuple[torch.Tensor, ...]] = {}

    def load_table(self, stage: str) -> Table:
        """All rows of the dataset, in a fixed order (the split shuffles them by ``seed``). Override it.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``; rows for prediction may come without labels.
        """
        raise NotImplementedError(f"{type(self).__name__} must override load_table(stage) to provide its rows.")

    @property
    def num_features(self) -> int:
        """Features per row, which the CLI links to the model's ``num_features``.

        Here: the restored checkpoint's columns, else those of the table (read once, and kept for ``setup``).
        A subclass that can tell without reading every row (a file's header) overrides it.
        """
        if self.feature_names is None:
            self._table = self.load_table("fit")
            self.feature_names = list(self._table.feature_names)
        return len(self.feature_names)

    @property
    def run_name(self) -> str:
        """Name of this data feeding for loggers, so runs of the three modes sit side by side."""
        return self.hparams.batch_mode

    @property
    def train_rows(self) -> int:
        """Rows of the training split."""
        return len(self._raw["train"][0])

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

    @override
    def setup(self, stage: str) -> None:
        if self._raw or stage == "predict":
            return
        table, self._table = self._table or self.load_table(stage), None
        self._check_columns(table.feature_names)
        n = len(table.x)
        n_val, n_test = round(n * self.hparams.val_fraction), round(n * self.hparams.test_fraction)
        n_train = n - n_val - n_test
        if min(n_train, n_val, n_test) < 1:
            raise DataError(
                f"{self.source}: {n} rows are too few to split into non-empty train ({n_train}), "
                f"val ({n_val}) and test ({n_test}) sets."
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.seed))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
        self._raw = {stage: (table.x[order[a:b]], table.y[order[a:b]]) for stage, (a, b) in bounds.items()}
        if stage == "fit":
            self._check_both_classes(table, self._raw["train"][1])
        self.feature_names, self.label_name = list(table.feature_names), table.label_name
        if self.mean is None:  # a checkpoint restored later overrides these before any batch is served
            x_train = self._raw["train"][0]
            self.mean = x_train.mean(dim=0)
            std = x_train.std(dim=0)
            self.std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column stays constant

    def _check_both_classes(self, table: Table, train_y: torch.Tensor) -> None:
        """Refuse labels of one class only, in the file or (by chance) in the training split: the model would
        train to exit 0 and a meaningless AUROC of 0. A validation or test split of one class is left alone: a
        tiny one (a benchmark's single row) is legitimate, and torchmetrics warns that its AUROC is undefined."""
        column = f"column {table.label_name!r}" if table.label_name else "the labels"
        if bool((table.y == table.y[0]).all()):
            raise DataError(
                f"{self.source}: all {len(table.y)} rows have label {table.y[0].item():g} ({column}); a binary "
                "classifier needs rows of both classes, 0 and 1."
            )
        if bool((train_y == train_y[0]).all()):
            raise DataError(
                f"{self.source}: the training split's {len(train_y)} rows all have label {train_y[0].item():g} "
                f"({column}, split by seed {self.hparams.seed}); a binary classifier needs both classes to learn: use "
                "more rows of the other class, or another --data.seed."
            )

    @property
    def source(self) -> str:
        """What the rows come from, for messages (a file name, say); default the class's name."""
        return self.hparams.get("dataset", type(self).__name__)

    def split(self, stage: str) -> tuple[torch.Tensor, ...]:
        """Standardised (x, y) of a split, made once and kept on the training device when it has room."""
        if stage not in self._ready:
            x, y = self._raw[stage]
            self._ready[stage] = self._to_device(self.standardize(x), y)
        return self._ready[stage]

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean).div_(self.std)  # (N, D) with statistics (D,); in place: one copy of x at a time

    def _to_device(self, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        present = [t for t in tensors if t is not None]
        if device.type == "cuda":
            needed = sum(t.numel() * t.element_size() for t in present)
            free, _ = torch.cuda.mem_get_info(device)
            if needed > free // 2:  # leave room for the model's work; Lightning then copies each batch instead
                return tensors
        return tuple(None if t is None else t.to(device) for t in tensors)

    def _rank_and_world_size(self) -> tuple[int, int]:
        return (0, 1) if self.trainer is None else (self.trainer.global_rank, self.trainer.world_size)

    def _batches_trained(self) -> int:
        """Batches of the current epoch the Trainer has trained; a loader cannot count them itself, because
        the Trainer fetches one batch ahead."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _eval_shard(self, stage: str) -> tuple[torch.Tensor, ...]:
        """This rank's contiguous share of a validation or test split (all of it on one process)."""
        tensors = self.split(stage)
        rank, world = self._rank_and_world_size()
        n = len(tensors[0])
        return tuple(t[rank * n // world : (rank + 1) * n // world] for t in tensors)

    @override
    def train_dataloader(self) -> TensorBatches:
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
    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._eval_shard("val"), batch_size=self.hparams.eval_batch_size)

    @override
    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._eval_shard("test"), batch_size=self.hparams.eval_batch_size)

    @override
    def predict_dataloader(self) -> Any:
        # Loaded here, after a checkpoint restored the training statistics, and never split or re-fitted.
        if self.mean is None:
            raise DataError("prediction needs the training statistics: pass --ckpt_path of a trained model.")
        table = self.load_table("predict")
        self._check_columns(table.feature_names)
        x, y = self._to_device(self.standardize(table.x), table.y)
        return TensorBatches(x, y, batch_size=self.hparams.eval_batch_size)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "feature_names": self.feature_names, "label_name": self.label_name}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("feature_names")  # checkpoints from before the names were saved lack them
        if saved is not None:
            self._check_columns(saved, from_checkpoint=True)
        self.mean, self.std = state_dict["mean"], state_dict["std"]
        self.feature_names = list(saved) if saved is not None else self.feature_names
        self.label_name = state_dict.get("label_name", self.label_name)
        self._ready.clear()

    def _check_columns(self, names: Any, from_checkpoint: bool = False) -> None:
        """Refuse rows whose features are not the ones the statistics (and so the model) were made for."""
        ours = self.feature_names
        if ours is None or list(names) == list(ours):
            return
        saved, data = (names, ours) if from_checkpoint else (ours, names)
        raise DataError(
            f"{self.source}: the checkpoint's model reads the features {', '.join(saved)}, "
            f"but this data has {', '.join(data)}."
        )
