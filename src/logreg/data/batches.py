"""Batches sliced from tensors held in memory: one shuffle per epoch, then a view per step."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import torch


class TensorBatches:
    """One epoch of batches sliced from tensors that share their first dimension.

    Shuffling draws a new order each epoch from (seed, epoch), so a run resumed at epoch e sees the same
    batches as one that never stopped.

    Args:
        *tensors: Tensors of shape (N, ...), e.g. features (N, D) and labels (N,).
        batch_size: Rows per batch; the last batch holds the remainder.
        shuffle: Whether to draw a new row order every epoch.
        seed: Seed of the shuffle.
        epoch: Returns the current epoch (e.g. the Trainer's); default: count the passes over this object.
        rank: This process's rank under DDP.
        world_size: Number of DDP processes. Above 1, each batch of ``batch_size`` rows is a global batch:
            this object yields shard ``rank`` of it (rows ``[rank * n // W, (rank + 1) * n // W)`` of its
            ``n`` rows) followed by ``n``, so batches are ``(*shards, n)``.
        trained: Returns how many batches of the current epoch were trained (e.g. the Trainer's count); saved
            by ``state_dict``, so a resumed epoch skips them. Default: none, the epoch starts from its beginning.

    Example:
        >>> batches = TensorBatches(torch.arange(10.0).view(5, 2), torch.zeros(5), batch_size=2)
        >>> len(batches), [tuple(x.shape) for x, y in batches]
        (3, [(2, 2), (2, 2), (1, 2)])
        >>> [(x[:, 0].tolist(), n) for x, y, n in TensorBatches(*batches.tensors, batch_size=5, rank=1, world_size=2)]
        [([4.0, 6.0, 8.0], 5)]
        >>> resumed = TensorBatches(*batches.tensors, batch_size=2)
        >>> resumed.load_state_dict({"epoch": 0, "batches": 2})
        >>> [len(x) for x, y in resumed]  # the rest of epoch 0, then whole epochs again
        [1]
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        trained: Callable[[], int] | None = None,
    ) -> None:
        self.tensors = tensors
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
        return math.ceil(len(self.tensors[0]) / self.batch_size)  # under DDP: global batches

    def state_dict(self) -> dict[str, int]:
        """Where the epoch stands: its number and the batches of it trained so far."""
        return {"epoch": self._current_epoch, "batches": self._trained() if self._trained is not None else 0}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next pass over epoch ``state_dict["epoch"]`` skip its first ``state_dict["batches"]``."""
        self._resume = dict(state_dict)

    def __iter__(self) -> Iterator[tuple[torch.Tensor | int, ...]]:
        tensors = self.tensors
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
            order = torch.randperm(len(tensors[0]), generator=gen)
        if self.world_size > 1:
            yield from self._shards(order, skip)
            return
        if order is not None:
            tensors = tuple(t[order.to(t.device)] for t in tensors)  # one gather per epoch, then views
        for start in range(skip * self.batch_size, len(tensors[0]), self.batch_size):
            yield tuple(t[start : start + self.batch_size] for t in tensors)

    def _shards(self, order: torch.Tensor | None, skip: int) -> Iterator[tuple[torch.Tensor | int, ...]]:
        """This rank's shard of every global batch from batch ``skip`` on, each followed by the batch's rows."""
        n = len(self.tensors[0])
        rank, world = self.rank, self.world_size
        bounds = []  # (first, end, rows of the global batch) of this rank's shard, per global batch
        for start in range(skip * self.batch_size, n, self.batch_size):
            rows = min(self.batch_size, n - start)
            bounds.append((start + rank * rows // world, start + (rank + 1) * rows // world, rows))
        tensors = self.tensors
        if order is not None and bounds:  # gather this rank's rows of the epoch's batches once, then serve views
            picked = torch.cat([order[first:end] for first, end, _ in bounds])
            tensors = tuple(t[picked.to(t.device)] for t in tensors)
            sizes = [end - first for first, end, _ in bounds]
            ends = list(itertools.accumulate(sizes))
            bounds = [(end - size, end, rows) for end, size, (_, _, rows) in zip(ends, sizes, bounds, strict=True)]
        for first, end, rows in bounds:
            yield (*(t[first:end] for t in tensors), rows)
