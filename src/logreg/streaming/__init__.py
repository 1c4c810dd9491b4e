"""Optional extra: data larger than memory. ``logreg prepare`` converts a table into LitData's streaming
format; ``StreamingDataModule`` trains on it in flat memory, in every batch mode."""

from logreg.streaming.datamodule import StreamingDataModule

__all__ = ["StreamingDataModule"]
