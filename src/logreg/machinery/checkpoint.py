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

from logreg.machinery.errors import DataError

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
        epochs_done: Training epochs completed when it was saved (a run resumed from it with ``max_epochs``
            at or below this has nothing left to train).
        global_step: Weight updates done when it was saved.
    """

    path: Path
    num_features: int
    feature_names: list[str] | None
    label_name: str | None
    epochs_done: int = 0
    global_step: int = 0


def read_checkpoint(path: str | Path) -> SavedRun:
    """Load ``path`` on the CPU and check that a logreg run wrote it; raise DataError otherwise.

    >>> read_checkpoint("no/such.ckpt")
    Traceback (most recent call last):
    ...
    logreg.machinery.errors.DataError: no/such.ckpt: no such checkpoint file.
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
    _check_finite(path, checkpoint.get("state_dict"), "weights")
    _check_finite(path, data, "standardisation statistics")
    return SavedRun(
        path,
        int(hparams["num_features"]),
        data.get("feature_names"),
        data.get("label_name"),
        epochs_done=_epochs_done(checkpoint),
        global_step=int(checkpoint.get("global_step", 0)),
    )


def _epochs_done(checkpoint: dict[str, Any]) -> int:
    """Completed training epochs: the fit loop's count (Lightning's ``epoch`` key says the same for its
    checkpoints, but the loop's state is what a resumed run continues from)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"])
    except (KeyError, TypeError):
        return int(checkpoint.get("epoch", 0))


def _check_finite(path: Path, tensors: Any, what: str) -> None:
    """A model whose weights hold NaN or inf predicts NaN for every row: refuse it, naming the tensor."""
    if not isinstance(tensors, dict):
        return
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            bad = value[~torch.isfinite(value)].flatten()[0].item()
            raise DataError(
                f"{path}: its {what} hold non-finite values ({name} has {bad}), so every prediction would be "
                "nan; use a checkpoint saved before the values became non-finite, or retrain."
            )


@dataclass(frozen=True)
class LastRun:
    """The ``last.ckpt`` that ``--ckpt_path last`` resumes from, and why that one.

    Attributes:
        path: The chosen ``last.ckpt``.
        epoch: Its epoch (Lightning's ``current_epoch`` when it was saved).
        global_step: Its weight updates so far.
        candidates: How many runs' ``last.ckpt`` files were compared.
        unreadable: Paths of candidates that could not be read (truncated by a crash, say), left out.
    """

    path: Path
    epoch: int
    global_step: int
    candidates: int
    unreadable: tuple[Path, ...] = ()

    def describe(self, use: str = "resuming from") -> str:
        """One line saying which file is used (resumed from, evaluated, ...), for the console."""
        skipped = (
            f"; skipped {len(self.unreadable)} unreadable: {', '.join(map(str, self.unreadable))}"
            if self.unreadable
            else ""
        )
        return (
            f"--ckpt_path last: {use} {self.path} (epoch {self.epoch}, step {self.global_step}), the most "
            f"training progress among {self.candidates} run{'s' if self.candidates != 1 else ''}{skipped}."
        )


def find_last_checkpoint(runs: Path) -> Path:
    """The path of :func:`choose_last_checkpoint`'s choice."""
    return choose_last_checkpoint(runs).path


def choose_last_checkpoint(runs: Path) -> LastRun:
    """The ``runs/version_N/checkpoints/last.ckpt`` with the most training progress.

    Progress is the global step, then the epoch; of equal ones the newest file wins (then the highest
    version). The newest run is not always the furthest one: a short finished run started after a long
    killed one would otherwise be resumed, silently dropping the longer run's work.
    """
    found = []
    unreadable = []
    for path in runs.glob("version_*/checkpoints/last.ckpt"):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            progress = (int(checkpoint["global_step"]), int(checkpoint["epoch"]))
        except Exception:  # truncated or foreign: resuming from it would fail; the others may do
            unreadable.append(path)
            continue
        found.append((*progress, path.stat().st_mtime_ns, _version(path.parent.parent.name), path))
    if not found:
        if unreadable:
            raise DataError(
                f"--ckpt_path last: no readable last.ckpt under {runs}/version_*/checkpoints; "
                f"{', '.join(map(str, sorted(unreadable)))} cannot be loaded."
            )
        raise DataError(f"--ckpt_path last: no last.ckpt under {runs}/version_*/checkpoints.")
    step, epoch, *_, path = max(found)
    return LastRun(path, epoch, step, len(found) + len(unreadable), tuple(sorted(unreadable)))


def claim_version(runs: Path) -> int:
    """Create ``runs/version_N`` for the next free N and return N; of concurrent callers, each gets its own.

    ``os.mkdir`` fails when the directory exists, so two runs started at once cannot both take a number, as
    they can when each lists the directory and picks one above the highest (which TensorBoardLogger does).

    >>> import tempfile
    >>> runs = Path(tempfile.mkdtemp())
    >>> claim_version(runs), claim_version(runs)
    (0, 1)
    """
    runs.mkdir(parents=True, exist_ok=True)
    taken = [_version(p.name) for p in runs.iterdir() if p.name.startswith("version_")]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (runs / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def _version(name: str) -> int:
    return int(re.sub(r"\D", "", name) or -1)  # version_12 -> 12


def configure_columns(data: Any, saved: SavedRun) -> None:
    """Point the data configuration at the checkpoint for its feature and label columns (``columns_from``).

    ``data`` is the ``data`` section of the parsed configuration (a jsonargparse Namespace). The names stay
    in the checkpoint: in the configuration the parser would copy the list once per element at every
    validation, which costs minutes for 10,000 columns. Explicit ``feature_columns`` must match them.
    """
    if saved.feature_names is None:
        return
    given = data.feature_columns
    if given is not None and list(given) != list(saved.feature_names):
        raise DataError(
            f"--data.feature_columns {', '.join(given)} differ from the features the checkpoint {saved.path} "
            f"was trained on: {', '.join(saved.feature_names)}."
        )
    data.columns_from = str(saved.path)
