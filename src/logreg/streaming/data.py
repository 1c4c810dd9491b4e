"""Batches streamed from a prepared directory (``logreg prepare``) with LitData, in flat memory.

A prepared split is a LitData dataset whose items are blocks of ``block_rows`` rows, (rows, D + 1) float32
arrays (features, then the label). ``StreamingBatches`` reads it with LitData's ``StreamingDataset`` and
``StreamingDataLoader``: LitData deals the blocks out to the DDP processes (and nodes), shuffles them per
epoch from the seed, downloads and caches chunks when the data lives in object storage, and keeps its
position for resuming. A *window* is a few blocks written into one tensor (``chunk_rows`` of the data
module), standardised with the training statistics on the way in (one fused pass, no per-row collation),
and, when shuffling, its rows permuted with a generator seeded by (seed, epoch, rank, window); then it is
cut into batches.

Three ways to cut, one per ``batch_mode``:

- ``batch_size`` rows (minibatch; 1 for per-example SGD): rows left over at the end of a window are carried
  into the next, so every batch but the epoch's last holds exactly ``batch_size`` rows. Under DDP every
  process yields the same number of batches, floor(rows of the smallest shard / batch_size), as DDP needs;
  the few rows beyond that are dropped for the epoch (a different few each epoch).
- ``full``: one batch per window, no shuffle, every training row exactly once across processes, each batch
  ``(x, y, N / P)`` (P batches per process and epoch, N training rows). The model weights a batch that
  carries a row count R as a DDP shard of a global batch: summed loss * W / R (W processes), here
  summed loss * W * P / N. With Lightning's gradient accumulation over the P batches (the Trainer divides
  each loss by P) and DDP's average over the W processes, the one optimizer step per epoch uses the exact
  mean gradient over all N rows. Processes with fewer blocks pad with empty batches, so all take P.

Resuming: ``state_dict`` holds LitData's loader state as of the start of the window that the last batch
Lightning *processed* came from, the rows carried into it, and how many of its batches were served. The
Trainer fetches one batch ahead, so the loader's own count would be one batch too far.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, get_args

import numpy as np
import torch

from logreg.batch import Batch, ShardBatch
from logreg.machinery.errors import ConfigError, DataError
from logreg.streaming.integrity import check_split, damaged

LITDATA_REQUIREMENT = "litdata==0.2.76"
Split = Literal["train", "val", "test"]
METADATA = "logreg.json"
WINDOW_ROWS = 65_536  # rows per LitData batch: large enough that a window's overhead is small per row


def import_litdata() -> ModuleType:
    """``litdata``, with its PyPI version check turned off (a web request per process, and offline a wait)."""
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    try:
        import litdata
    except ModuleNotFoundError:
        raise DataError(
            f"streaming needs litdata: pip install --no-deps {LITDATA_REQUIREMENT} (see the README's install section)."
        ) from None
    return litdata


def is_url(dataset: str) -> bool:
    """Whether ``dataset`` names object storage (``s3://bucket/path`` and the like) rather than a local path."""
    return "://" in dataset


def is_prepared(dataset: str) -> bool:
    """Whether ``dataset`` is a prepared directory: a local one holding ``logreg.json``, or any URL."""
    return is_url(dataset) or (Path(dataset) / METADATA).is_file()


@dataclass(frozen=True)
class PreparedData:
    """What ``logreg prepare`` wrote beside the chunks: columns, training statistics, rows per split.

    Attributes:
        url: The prepared directory (a local path or an object-store URL).
        feature_names: The D feature columns, in the stored order.
        label_name: The label column.
        mean: Training mean per feature, shape (D,), float32.
        std: Training standard deviation per feature, shape (D,), float32 (1 for constant columns).
        rows: Rows per split: ``{"train": ..., "val": ..., "test": ...}``.
        block_rows: Rows per LitData item (the last item of a split may hold fewer).
    """

    url: str
    feature_names: tuple[str, ...]
    label_name: str
    mean: torch.Tensor
    std: torch.Tensor
    rows: dict[str, int]
    block_rows: int

    @classmethod
    def read(cls, url: str) -> PreparedData:
        """Read ``url/logreg.json``; a DataError says plainly when it is missing or not from ``logreg prepare``."""
        url = url.rstrip("/")
        try:
            text = _read_text(f"{url}/{METADATA}")
            meta = json.loads(text)
            data = cls(
                url,
                tuple(str(name) for name in meta["feature_names"]),
                str(meta["label_name"]),
                torch.tensor(meta["mean"], dtype=torch.float32),
                torch.tensor(meta["std"], dtype=torch.float32),
                {split: int(meta["rows"][split]) for split in get_args(Split)},
                int(meta["block_rows"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(
                f"{url}: not a prepared dataset ({METADATA} is missing or unreadable: {type(err).__name__}); "
                "create one with `logreg prepare SOURCE DIR`."
            ) from None
        width = len(data.feature_names)
        if (
            data.mean.shape != (width,)
            or data.std.shape != (width,)
            or not (data.mean.isfinite().all() and data.std.isfinite().all() and (data.std > 0).all())
            or data.block_rows < 1
            or min(data.rows.values()) < 1
        ):
            raise DataError(
                f"{url}/{METADATA}: its statistics, row counts or block size do not describe {width} features "
                "(changed by hand?); prepare the data again (logreg prepare SOURCE NEW_DIR)."
            )
        return data

    def check(self, split: str) -> None:
        """Raise DataError, naming the file, when the split's chunks are missing, damaged or hold other rows than
        ``rows`` says (see :mod:`logreg.streaming.integrity`)."""
        width = len(self.feature_names) + 1
        check_split(self.url, split, width, self.rows[split], self.block_rows, _read_text)

    def split_url(self, split: str) -> str:
        return f"{self.url}/{split}"

    def load(self, split: str) -> torch.Tensor:
        """Every row of a split in stored order, (rows, D + 1) float32, unstandardised: for small data and checks.

        >>> import tempfile
        >>> from logreg.streaming.prepare import prepare
        >>> out = tempfile.mkdtemp() + "/prepared"
        >>> data = PreparedData.read(prepare("banknote", out) and out)
        >>> tuple(data.load("train").shape) == (data.rows["train"], 5)
        True
        """
        self.check(split)
        dataset = import_litdata().StreamingDataset(self.split_url(split))
        return torch.from_numpy(np.concatenate([dataset[i] for i in range(len(dataset))]))


def _read_text(path: str) -> str:
    if not is_url(path):
        return Path(path).read_text()
    if path.startswith("s3://"):
        import boto3  # a dependency of litdata's S3 access

        bucket, _, key = path[len("s3://") :].partition("/")
        return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    raise OSError(f"reading {path}: only local directories and s3:// URLs are supported")


def _first(items: list[np.ndarray]) -> np.ndarray:
    """LitData's collate for batches of one block: the block as it is, (rows, D + 1), not a stacked copy."""
    return items[0]


def _block_serializer() -> Any:
    """LitData's numpy serializer, but reading a block as a view of the bytes LitData read, without a copy.

    The view is read-only; ``StreamingBatches`` copies it once, into the window it assembles.
    """
    from litdata.constants import _NUMPY_DTYPES_MAPPING
    from litdata.streaming.serializers import NumpySerializer

    class BlockView(NumpySerializer):
        def deserialize(self, data: bytes) -> np.ndarray:  # the layout of NumpySerializer.serialize
            dtype = _NUMPY_DTYPES_MAPPING[int(np.frombuffer(data[0:4], np.uint32)[0])]
            ndim = int(np.frombuffer(data[4:8], np.uint32)[0])
            shape = tuple(int(d) for d in np.frombuffer(data[8 : 8 + 4 * ndim], np.uint32))
            return np.frombuffer(data, dtype=dtype, offset=8 + 4 * ndim).reshape(shape)

    return BlockView()


@dataclass
class _Window:
    """Where a window starts: enough to replay it exactly on resume."""

    first_batch: int  # index within the epoch of the first batch cut from this window
    index: int  # window number within the epoch, on this process
    carry: torch.Tensor  # rows carried into the window, (c, D + 1)
    loader_state: dict[str, Any] | None  # LitData's loader state before the window was fetched


class StreamingBatches:
    """Batches of standardised (x (B, D), y (B,)) float32 tensors from one split of a prepared directory.

    Args:
        prepared: The prepared directory's description.
        split: ``train``, ``val`` or ``test``.
        mean: Standardisation mean, (D,); the training statistics (from the directory or a checkpoint).
        std: Standardisation standard deviation, (D,).
        batch_size: Rows per batch; None for full-batch mode (one batch per window, with ``loss_scale``).
        shuffle: Whether to shuffle blocks (LitData) and rows within windows, anew each epoch.
        seed: Seed of the shuffles.
        epoch: Returns the current epoch (e.g. the Trainer's); default: count the passes over this object.
        processed: Returns how many batches of the current epoch the consumer has processed (e.g. the
            Trainer's batch progress); ``state_dict`` saves that position. Default: the batches yielded.
        window_rows: Rows per LitData batch (rounded to whole blocks).
        num_workers: LitData loader processes (0: read in this process).
        equal_counts: Whether every DDP process must yield the same number of batches (training) or each
            yields all of its shard (validation, test, prediction).

    Example:
        >>> import tempfile
        >>> from logreg.streaming.prepare import prepare
        >>> out = tempfile.mkdtemp() + "/prepared"
        >>> _ = prepare("synthetic", out, synthetic_rows=500, synthetic_features=3, block_rows=16)
        >>> data = PreparedData.read(out)
        >>> batches = StreamingBatches(data, "train", data.mean, data.std, batch_size=64, shuffle=True)
        >>> sizes = [len(y) for x, y in batches]
        >>> sum(sizes) == data.rows["train"], set(sizes[:-1])
        (True, {64})
    """

    def __init__(
        self,
        prepared: PreparedData,
        split: Split,
        mean: torch.Tensor,
        std: torch.Tensor,
        batch_size: int | None,
        shuffle: bool = False,
        seed: int = 42,
        epoch: Callable[[], int] | None = None,
        processed: Callable[[], int] | None = None,
        window_rows: int = WINDOW_ROWS,
        num_workers: int = 0,
        equal_counts: bool = True,
    ) -> None:
        if split not in get_args(Split):
            raise ConfigError(f"split must be one of {', '.join(map(repr, get_args(Split)))}; got {split!r}.")
        litdata = import_litdata()
        prepared.check(split)
        self.prepared, self.split = prepared, split
        self.mean, self.std = mean.float(), std.float()
        # (x - mean) / std as x * scale + shift, in one pass; the two factors in float64, then float32
        self._scale = (1 / std.double()).float()
        self._shift = (-mean.double() / std.double()).float()
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self._epoch, self._processed = epoch, processed
        block = prepared.block_rows
        self.blocks_per_window = max(1, window_rows // block, math.ceil((batch_size or 1) / block))
        self._dataset = litdata.StreamingDataset(
            prepared.split_url(split),
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
            item_shuffle_window="full",
            serializers={"numpy": _block_serializer()},
        )
        # One block per LitData batch, so LitData deals blocks (not windows) out evenly to the processes.
        self.loader = litdata.StreamingDataLoader(
            self._dataset, batch_size=1, num_workers=num_workers, collate_fn=_first
        )
        self.rank = self._dataset.distributed_env.global_rank
        self.world_size = self._dataset.distributed_env.world_size
        self.num_workers = num_workers
        self.equal_counts = equal_counts and self.world_size > 1
        self._passes = 0
        self._windows: deque[_Window] = deque(maxlen=3)  # the Trainer is at most one batch behind
        self._yielded = 0
        self._epoch_seen: int | None = None
        self._restored: dict[str, Any] | None = None

    # -- how many batches each process takes -------------------------------------------------------------

    def _items_per_worker(self, epoch: int) -> list[list[tuple[int, int]]]:
        """[(first item, end item), ...] of every LitData worker of every process, in this epoch's deal."""
        from litdata.utilities.env import _DistributedEnv

        self._dataset.set_epoch(epoch + 1)  # LitData counts epochs from 1
        self._dataset.get_len(self.num_workers, 1)  # builds its shuffler
        env = _DistributedEnv(self.world_size, 0, self._dataset.distributed_env.num_nodes)
        _, intervals = self._dataset.shuffler.get_chunks_and_intervals_per_workers(
            env, max(self.num_workers, 1), 1, epoch + 1
        )
        return [[(int(iv[1]), int(iv[2])) for iv in worker] for worker in intervals]

    def _rows_of(self, ranges: list[tuple[int, int]]) -> int:
        """Rows in the items of ``ranges``: block_rows each, except the split's last (short) item."""
        total_rows = self.prepared.rows[self.split]
        n_items = math.ceil(total_rows / self.prepared.block_rows)
        short = n_items * self.prepared.block_rows - total_rows
        rows = sum(b - a for a, b in ranges) * self.prepared.block_rows
        return rows - (short if any(a < n_items <= b for a, b in ranges) else 0)

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches every process yields in ``epoch`` (the same on all processes)."""
        workers = self._items_per_worker(epoch)
        per_rank = max(self.num_workers, 1)
        ranks = [workers[r * per_rank : (r + 1) * per_rank] for r in range(self.world_size)]
        if not self.equal_counts:
            ranks = [ranks[self.rank]]
        if self.batch_size is None:  # full: one batch per window
            return max(math.ceil(sum(b - a for w in rank for a, b in w) / self.blocks_per_window) for rank in ranks)
        rows = [self._rows_of([r for w in rank for r in w]) for rank in ranks]
        if not self.equal_counts:
            return math.ceil(rows[0] / self.batch_size)
        return min(rows) // self.batch_size

    def __len__(self) -> int:
        if self.world_size > 1 and self.shuffle:
            # The deal of blocks to processes changes every epoch, and with it the batch count; the Trainer
            # would keep the first epoch's. Without a length it reads until the (equal) end on every process.
            raise TypeError("the number of batches varies by epoch")
        return self.batches_per_epoch(self._current_epoch())

    # -- iteration ---------------------------------------------------------------------------------------

    def _current_epoch(self) -> int:
        return self._epoch() if self._epoch is not None else self._passes

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        epoch = self._current_epoch()
        self._passes += 1
        restored, self._restored = self._restored, None
        if restored is not None and restored["epoch"] != epoch:
            restored = None  # saved at the end of an earlier epoch: this one starts afresh
        limit = self.batches_per_epoch(epoch)
        # full: each chunk's summed loss is weighted as a share of a global batch of N / P rows (see above)
        global_rows = self.prepared.rows[self.split] / limit if self.batch_size is None else None
        width = len(self.prepared.feature_names) + 1
        if restored is not None:
            if restored["loader"] is not None:
                self.loader.load_state_dict(restored["loader"])
            else:
                self.loader.current_epoch = epoch
            carry, window, served = restored["carry"], restored["window"], restored["batch"]
            skip = restored["served"]
        else:
            self.loader.current_epoch = epoch  # LitData adds one when the iteration starts
            carry, window, served, skip = torch.zeros(0, width), 0, 0, 0
        self._windows.clear()
        self._yielded = served
        self._epoch_seen = epoch
        items = iter(self.loader)
        while served < limit:
            # LitData's position before this window; None at the epoch's start, where a resume starts afresh
            state = self.loader.state_dict() if window > 0 else None
            self._windows.append(_Window(served, window, carry, state))
            rows = self._window(itertools.islice(items, self.blocks_per_window))  # (rows, D + 1)
            if self.batch_size is None:  # full batch: the window as it is, or an empty pad
                rows = torch.zeros(0, width) if rows is None else rows
                served += 1
                self._yielded = served
                yield ShardBatch(rows[:, :-1], rows[:, -1], global_rows)
                window += 1
                continue
            if rows is None:
                rows = torch.zeros(0, width)
            elif self.shuffle:
                seed = np.random.SeedSequence([self.seed, epoch, self.rank, window]).generate_state(1, np.uint64)[0]
                gen = torch.Generator().manual_seed(int(seed) >> 1)
                rows = rows[torch.randperm(len(rows), generator=gen)]
            buffer = torch.cat([carry, rows]) if len(carry) else rows
            x, y = buffer[:, :-1], buffer[:, -1]  # views: (n, D) and (n,)
            start = 0
            last_window = len(rows) == 0
            while served < limit and (len(buffer) - start >= self.batch_size or (last_window and start < len(buffer))):
                end = start + self.batch_size
                if skip:
                    skip -= 1
                else:
                    self._yielded = served + 1
                    yield Batch(x[start:end], y[start:end])
                served += 1
                start = end
            carry = buffer[start:]
            window += 1
            if last_window:
                break
        # finish LitData's epoch so its next iteration starts a new one
        for _ in items:
            pass

    def _window(self, blocks: Iterator[np.ndarray]) -> torch.Tensor | None:
        """The next blocks in one new (rows, D + 1) tensor, features standardised; None when none are left.

        Two passes over the window, each one operation: the blocks (read-only views of the bytes LitData read)
        copied whole into it, then its features standardised in place as x * (1 / std) - mean / std by one
        fused ``addcmul``. One ``addcmul`` per block instead, writing around the label column, cost 3 to 10
        times as much on 2 shared cores, where torch's threads wait on each other at every small operation;
        a copy, a subtraction and a division over the window made epochs memory-bound at a third of in-memory
        speed.
        """
        from litdata.exceptions import ChunkWaitTimeoutError

        try:
            blocks = list(blocks)
        except ChunkWaitTimeoutError as err:  # LitData waits for a chunk file that was there when checked
            raise damaged(err.path, "vanished or shrank while it was being read") from None
        if not blocks:
            return None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # only read here
            window = torch.cat([torch.from_numpy(block) for block in blocks])
        features = window[:, :-1]
        torch.addcmul(self._shift, features, self._scale, out=features)
        return window

    # -- resuming ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the consumer is: LitData's state at the start of the window of its next batch, and the offset."""
        done = self._processed() if self._processed is not None else self._yielded
        window = next((w for w in reversed(self._windows) if w.first_batch <= done), None)
        if window is None:
            return {}
        return {
            "epoch": self._epoch_seen,
            "batch": window.first_batch,
            "served": done - window.first_batch,
            "window": window.index,
            "carry": window.carry.clone(),
            "loader": window.loader_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = state or None
