"""The one thing the model and the data module share: what a batch is.

A data module's loaders yield a ``Batch`` per step, or under DDP a ``ShardBatch``; a model's steps read them
by name. A plain ``(x, y)`` tuple, as a ``DataLoader`` over a ``TensorDataset`` yields it, is read the same
way, so either side can be swapped for one written from scratch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """The rows of one step.

    Attributes:
        x: Features, shape (B, D).
        y: Labels 0.0 or 1.0, shape (B,); None for unlabelled rows (prediction).

    Example:
        >>> x, y = Batch(torch.zeros(2, 3), torch.ones(2))  # unpacks like the (x, y) tuple it is
        >>> x.shape
        torch.Size([2, 3])
    """

    x: torch.Tensor
    y: torch.Tensor | None = None


class ShardBatch(NamedTuple):
    """One DDP process's share of a global batch, and how many rows the global batch holds.

    The model weights the shard's summed loss by ``world_size / global_rows``: DDP's average of the processes'
    gradients is then the global batch's mean gradient exactly, however unevenly its rows divide.

    Attributes:
        x: This process's features, shape (b, D), b <= global_rows.
        y: Their labels, shape (b,).
        global_rows: Rows of the global batch, all processes together (streamed full-batch chunks carry N / P,
            the training rows over the chunks accumulated into the one update).
    """

    x: torch.Tensor
    y: torch.Tensor
    global_rows: float


def as_batch(batch: Batch | ShardBatch | tuple | list | torch.Tensor) -> Batch | ShardBatch:
    """``batch`` as a named batch: an ``(x, y)`` or ``(x,)`` tuple or list, or a bare features tensor, also do.

    >>> as_batch((torch.zeros(2, 3), torch.ones(2))).y
    tensor([1., 1.])
    """
    if isinstance(batch, Batch | ShardBatch):
        return batch
    if isinstance(batch, torch.Tensor):
        return Batch(batch)
    return Batch(*batch)
