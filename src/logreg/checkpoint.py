"""What a checkpoint says before anything is built from it: that it is one, and which columns its model reads.

The CLI reads a ``--ckpt_path`` file here first, so a truncated or unrelated file ends in one sentence
instead of an unpickling traceback, and the data module can be configured with the checkpoint's feature
columns before the model's ``num_features`` is linked from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from logreg.datasets import DataError

DATAMODULE_KEY = "TabularDataModule"  # Lightning stores a data module's state under its class name


@dataclass(frozen=True)
class SavedRun:
    """The parts of a logreg checkpoint the CLI needs before instantiating the model and the data.

    Attributes:
        path: The checkpoint file.
        num_features: The model's input size.
        feature_names: The training data's feature columns, in the model's order; None in checkpoints
            written before the names were saved.
        label_name: The training data's label column, if known.
    """

    path: Path
    num_features: int
    feature_names: list[str] | None
    label_name: str | None


def read_checkpoint(path: str | Path) -> SavedRun:
    """Load ``path`` on the CPU and check that a logreg run wrote it; raise DataError otherwise.

    >>> read_checkpoint("no/such.ckpt")
    Traceback (most recent call last):
    ...
    logreg.errors.DataError: no/such.ckpt: no such checkpoint file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file.")
    try:
        # weights_only: tensors and plain containers only, so an untrusted file cannot run code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign file fails in many ways inside the unpickler; all mean the same
        raise DataError(
            f"{path}: not a readable checkpoint; it is truncated, damaged or another kind of file "
            f"(torch.load raised {type(err).__name__})."
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    data = checkpoint.get(DATAMODULE_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "num_features" not in hparams or not isinstance(data, dict):
        raise DataError(
            f"{path}: not a logreg checkpoint; it lacks the model's hyperparameters or the data statistics."
        )
    return SavedRun(path, int(hparams["num_features"]), data.get("feature_names"), data.get("label_name"))


def find_last_checkpoint(runs: Path) -> Path:
    """The ``last.ckpt`` of the highest-numbered ``runs/version_N`` that has one."""
    found = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: _version(p.parent.parent.name))
    if not found:
        raise DataError(f"--ckpt_path last: no last.ckpt under {runs}/version_*/checkpoints.")
    return found[-1]


def _version(name: str) -> int:
    return int(re.sub(r"\D", "", name) or -1)


def configure_columns(data: Any, saved: SavedRun) -> None:
    """Give the data configuration the checkpoint's feature columns, and its label column unless one is set.

    ``data`` is the ``data`` section of the parsed configuration (a jsonargparse Namespace).
    """
    if saved.feature_names is None:
        return
    given = data.feature_columns
    if given is not None and list(given) != list(saved.feature_names):
        raise DataError(
            f"--data.feature_columns {', '.join(given)} differ from the features the checkpoint {saved.path} "
            f"was trained on: {', '.join(saved.feature_names)}."
        )
    data.feature_columns = list(saved.feature_names)
    if data.label_column is None:
        data.label_column = saved.label_name
