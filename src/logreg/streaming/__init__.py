"""Optional extra: data larger than memory. ``logreg prepare`` converts a table into LitData's streaming
format; ``StreamingDataModule`` trains on it in flat memory, in every batch mode."""

from __future__ import annotations

from typing import Any

__all__ = ["StreamingDataModule"]


def __getattr__(name: str) -> Any:  # imported on first use: `logreg prepare` needs no Lightning
    if name != "StreamingDataModule":
        raise AttributeError(f"module 'logreg.streaming' has no attribute {name!r}")
    from logreg.streaming.datamodule import StreamingDataModule

    return StreamingDataModule
