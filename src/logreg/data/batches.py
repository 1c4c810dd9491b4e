"""The data's batches: sliced from tensors held in memory (one shuffle per epoch, then a view per step), or read
from a CSV file of any size piece by piece (prediction)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from logreg.batch import Batch, ShardBatch
from logreg.data.tables import find_columns, read_csv_in_pieces, read_header


class TensorBatches:
    """One epoch of :class:`~logreg.batch.Batch` es sliced from features and labels held in memory.

    Shuffling draws a new order each epoch from (seed, epoch), so a run resumed at epoch e sees the same
    batches as one that never stopped.

    Args:
        x: Features, shape (N, D).
        y: Labels, shape (N,); None for unlabelled rows (prediction).
        batch_size: Rows per batch; the last batch holds the remainder.
        shuffle: Whether to draw a new row order every epoch.
        seed: Seed of the shuffle.
        epoch: Returns the current epoch (e.g. the Trainer's); default: count the passes over this object.
        rank: This process's rank under DDP.
        world_size: Number of DDP processes. Above 1, each batch of ``batch_size`` rows is a global batch:
            this object yields shard ``rank`` of it (rows ``[rank * n // W, (rank + 1) * n // W)`` of its
            ``n`` rows) as a :class:`~logreg.batch.ShardBatch` ``(x, y, n)``.
        trained: Returns how many batches of the current epoch were trained (e.g. the Trainer's count); saved
            by ``state_dict``, so a resumed epoch skips them. Default: none, the epoch starts from its beginning.

    Example:
        >>> batches = TensorBatches(torch.arange(10.0).view(5, 2), torch.zeros(5), batch_size=2)
        >>> len(batches), [tuple(x.shape) for x, y in batches]
        (3, [(2, 2), (2, 2), (1, 2)])
        >>> [(x[:, 0].tolist(), n) for x, y, n in TensorBatches(batches.x, batches.y, batch_size=5, rank=1, world_size=2)]
        [([4.0, 6.0, 8.0], 5)]
        >>> resumed = TensorBatches(batches.x, batches.y, batch_size=2)
        >>> resumed.load_state_dict({"epoch": 0, "batches": 2})
        >>> [len(x) for x, y in resumed]  # the rest of epoch 0, then whole epochs again
        [1]
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        trained: Callable[[], int] | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._epoch = epoch
        self._trained = trained
        self._passes = 0
        self._current_epoch = 0
        self._resume: dict[str, int] | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)  # under DDP: global batches

    def state_dict(self) -> dict[str, int]:
        """Where the epoch stands: its number and the batches of it trained so far."""
        return {"epoch": self._current_epoch, "batches": self._trained() if self._trained is not None else 0}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next pass over epoch ``state_dict["epoch"]`` skip its first ``state_dict["batches"]``."""
        self._resume = dict(state_dict)

    def __iter__(self) -> Iterator[Batch | ShardBatch]:
        x, y = self.x, self.y
        epoch = self._epoch() if self._epoch is not None else self._passes
        self._passes += 1
        self._current_epoch = epoch
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        order = None
        if self.shuffle:
            # Distinct seeds per (seed, epoch) pair; the order is drawn on the CPU so it is the same on any device
            # and on every DDP rank.
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(x), generator=gen)
        if self.world_size > 1:
            yield from self._shards(order, skip)
            return
        if order is not None:  # one gather per epoch, then views
            x, y = x[order.to(x.device)], None if y is None else y[order.to(y.device)]
        size = self.batch_size
        for start in range(skip * size, len(x), size):
            yield Batch(x[start : start + size], None if y is None else y[start : start + size])

    def _shards(self, order: torch.Tensor | None, skip: int) -> Iterator[ShardBatch]:
        """This rank's shard of every global batch from batch ``skip`` on, with the global batch's rows."""
        n = len(self.x)
        rank, world = self.rank, self.world_size
        bounds = []  # (first, end, rows of the global batch) of this rank's shard, per global batch
        for start in range(skip * self.batch_size, n, self.batch_size):
            rows = min(self.batch_size, n - start)
            bounds.append((start + rank * rows // world, start + (rank + 1) * rows // world, rows))
        x, y = self.x, self.y
        if order is not None and bounds:  # gather this rank's rows of the epoch's batches once, then serve views
            picked = torch.cat([order[first:end] for first, end, _ in bounds])
            x, y = x[picked.to(x.device)], y[picked.to(y.device)]
            sizes = [end - first for first, end, _ in bounds]
            ends = list(itertools.accumulate(sizes))
            bounds = [(end - size, end, rows) for end, size, (_, _, rows) in zip(ends, sizes, bounds, strict=True)]
        for first, end, rows in bounds:
            yield ShardBatch(x[first:end], y[first:end], rows)


class CsvBatches:
    """Standardised batches of a CSV file read piece by piece in file order: prediction on a file of any size.

    Columns are matched by name as :func:`~logreg.data.tables.read_csv` matches them, with its messages.

    Args:
        path: The CSV file.
        mean: Standardisation mean, (D,), from the training statistics.
        std: Standardisation standard deviation, (D,).
        batch_size: Rows per batch (a piece's last batch may be shorter).
        label_column: Name of the label column, if the file has one.
        feature_columns: Names of the features, in the model's order.
        need_label: Whether a missing label column is an error.
        piece_bytes: Text per piece; default ``logreg.data.csv.PIECE_BYTES``.

    Example:
        >>> import tempfile, os
        >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        ...     _ = f.write("b,a\\n2,1\\n4,3\\n6,5\\n")
        >>> batches = CsvBatches(f.name, torch.zeros(2), torch.ones(2), 2, feature_columns=["a", "b"], need_label=False)
        >>> [x.tolist() for x, y in batches]
        [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0]]]
        >>> os.remove(f.name)
    """

    def __init__(
        self,
        path: str | Path,
        mean: torch.Tensor,
        std: torch.Tensor,
        batch_size: int,
        label_column: str | None = None,
        feature_columns: list[str] | None = None,
        need_label: bool = True,
        piece_bytes: int | None = None,
    ) -> None:
        find_columns(path, read_header(path), label_column, feature_columns)  # a file that does not fit fails now
        self.path, self.mean, self.std, self.batch_size = path, mean.float(), std.float(), batch_size
        self.label_column, self.feature_columns, self.need_label = label_column, feature_columns, need_label
        self.piece_bytes = piece_bytes

    def __iter__(self) -> Iterator[Batch]:
        pieces = read_csv_in_pieces(
            self.path, self.label_column, self.feature_columns, self.need_label, self.piece_bytes
        )
        for x, y in pieces:
            x = (torch.from_numpy(x) - self.mean).div_(self.std)  # (n, D)
            for start in range(0, len(x), self.batch_size):
                end = start + self.batch_size
                yield Batch(x[start:end], None if y is None else torch.from_numpy(y[start:end]))
