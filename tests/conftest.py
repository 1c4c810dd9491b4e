"""Shared helpers: small synthetic data and readers for what a run leaves on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a TensorBoard run directory, as {tag: [(step, value), ...]}."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture
def csv_file(tmp_path: Path):
    """Write a CSV with a header and return its path; rows of linearly separable data by default."""

    def write(text: str | None = None, name: str = "data.csv", rows: int = 60, seed: int = 0) -> Path:
        if text is None:
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn(rows, 3, generator=gen)
            y = (x[:, 0] - x[:, 1] > 0).int()
            text = "a,b,c,label\n" + "".join(
                f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},{int(t)}\n" for r, t in zip(x, y, strict=True)
            )
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where no CUDA device is visible (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
