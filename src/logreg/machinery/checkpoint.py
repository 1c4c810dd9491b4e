"""What a checkpoint says before anything is built from it, which one ``--ckpt_path last`` means, and the run
directories (``version_N``) each run claims for itself.

The CLI reads a ``--ckpt_path`` file here first, so a truncated or unrelated file ends in one sentence
instead of an unpickling traceback, and the model's ``num_features`` comes from the checkpoint.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from logreg.machinery.errors import DataError


@dataclass(frozen=True)
class SavedRun:
    """The parts of a checkpoint the CLI needs before the model and the data module are built.

    Attributes:
        path: The checkpoint file.
        num_features: The model's input size, from its hyperparameters (None: the model saved none).
        data_state: The data module's ``state_dict`` as saved (None: that data module saved none).
        epochs_done: Training epochs completed when it was saved (a run resumed from it with ``max_epochs``
            at or below this has nothing left to train).
        global_step: Weight updates done when it was saved.
        model_class: The model's class path as LightningCLI recorded it (None: not recorded).
        data_class: The data module's class path as LightningCLI recorded it (None: not recorded).
    """

    path: Path
    num_features: int | None
    data_state: dict[str, Any] | None = None
    epochs_done: int = 0
    global_step: int = 0
    model_class: str | None = None
    data_class: str | None = None

    @property
    def feature_names(self) -> list[str] | None:
        """The training data's feature columns, in the model's order, where the data module saved them."""
        return (self.data_state or {}).get("feature_names")

    @property
    def label_name(self) -> str | None:
        return (self.data_state or {}).get("label_name")


def read_checkpoint(path: str | Path, data_key: str | None = None) -> SavedRun:
    """Load ``path`` on the CPU and check that it is a Lightning checkpoint with finite values; raise
    DataError otherwise. ``data_key`` is where Lightning saved the data module's state (its class's name), for a
    checkpoint that does not say which data module it was trained with.

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
    if not isinstance(checkpoint, dict) or not {"pytorch-lightning_version", "state_dict"} <= checkpoint.keys():
        raise DataError(f"{path}: not a Lightning checkpoint; it lacks the model's weights or Lightning's version.")
    hparams = checkpoint.get("hyper_parameters")
    num_features = hparams.get("num_features") if isinstance(hparams, dict) else None
    # The state of the data module it was trained with (LightningCLI records that class), else of ``data_key``'s
    trained_with = _class_path(checkpoint.get("datamodule_hyper_parameters"))
    data_key = trained_with.rsplit(".", 1)[-1] if trained_with is not None else data_key
    data = checkpoint.get(data_key) if data_key is not None else None
    data = data if isinstance(data, dict) else None
    _check_finite(path, checkpoint["state_dict"], "weights")
    _check_finite(path, data, "standardisation statistics")
    return SavedRun(
        path,
        None if num_features is None else int(num_features),
        data,
        epochs_done=_epochs_done(checkpoint),
        global_step=int(checkpoint.get("global_step", 0)),
        model_class=_class_path(hparams),
        data_class=trained_with,
    )


def _class_path(hparams: Any) -> str | None:
    found = hparams.get("_class_path") if isinstance(hparams, dict) else None
    return found if isinstance(found, str) else None


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
class RunKind:
    """What ``--ckpt_path last`` looks for: runs of this model class trained on this data.

    Attributes:
        model: The model's class path (LightningCLI records the checkpoint's as ``hyper_parameters._class_path``).
        data: The data module's class path (recorded as ``datamodule_hyper_parameters._class_path``).
        data_args: The data module's arguments a run must have been trained with (recorded beside its class);
            None: any data (``predict``, whose rows are new ones).

    Example:
        >>> wanted = RunKind("logreg.models.MLP", "logreg.data.TabularDataModule", {"dataset": "banknote"})
        >>> wanted.mismatch({"_class_path": "logreg.models.LogisticRegression"}, {})
        'model LogisticRegression'
        >>> wanted.mismatch({"_class_path": "logreg.models.MLP"}, {"dataset": "spam.csv"})
        "data.dataset 'spam.csv' (here 'banknote')"
    """

    model: str
    data: str
    data_args: dict[str, Any] | None = None

    def mismatch(self, hparams: Any, data_hparams: Any) -> str | None:
        """Why a checkpoint with these recorded hyperparameters is not such a run; None when it is one."""
        hparams = hparams if isinstance(hparams, dict) else {}
        data_hparams = data_hparams if isinstance(data_hparams, dict) else {}
        model = hparams.get("_class_path")  # none: trained outside LightningCLI, LightningCLI builds ours from it
        if isinstance(model, str) and not _same_class(model, self.model):
            return f"model {model.rsplit('.', 1)[-1]}"
        if self.data_args is None:
            return None
        data = data_hparams.get("_class_path")
        if isinstance(data, str) and not _same_class(data, self.data):
            return f"data module {data.rsplit('.', 1)[-1]}"
        for key, value in self.data_args.items():
            if key in data_hparams and data_hparams[key] != value:
                return f"data.{key} {data_hparams[key]!r} (here {value!r})"
        return None


def _same_class(a: str, b: str) -> bool:
    """Whether two class paths name one class (``logreg.MLP`` and ``logreg.models.MLP`` do)."""
    if a == b:
        return True
    try:
        classes = [getattr(importlib.import_module(path.rsplit(".", 1)[0]), path.rsplit(".", 1)[1]) for path in (a, b)]
    except (ImportError, AttributeError, ValueError, IndexError):
        return False
    return classes[0] is classes[1]


@dataclass(frozen=True)
class LastRun:
    """The ``last.ckpt`` that ``--ckpt_path last`` resumes from, and why that one.

    Attributes:
        path: The chosen ``last.ckpt``.
        epoch: Its epoch (Lightning's ``current_epoch`` when it was saved).
        global_step: Its weight updates so far.
        candidates: How many runs' ``last.ckpt`` files of the wanted kind were compared.
        unreadable: Paths of candidates that could not be read (truncated by a crash, say), left out.
        others: How many runs of another model or data were left out.
        kind: What was looked for, in words (``of LogisticRegression on the same data``).
    """

    path: Path
    epoch: int
    global_step: int
    candidates: int
    unreadable: tuple[Path, ...] = ()
    others: int = 0
    kind: str = ""

    def describe(self, use: str = "resuming from") -> str:
        """One line saying which file is used (resumed from, evaluated, ...), for the console."""
        skipped = (
            f"; skipped {len(self.unreadable)} unreadable: {', '.join(map(str, self.unreadable))}"
            if self.unreadable
            else ""
        )
        others = f" ({self.others} of another model or data left out)" if self.others else ""
        kind = f" {self.kind}" if self.kind else ""
        return (
            f"--ckpt_path last: {use} {self.path} (epoch {self.epoch}, step {self.global_step}), the most "
            f"training progress among {self.candidates} run{'s' if self.candidates != 1 else ''}{kind}{others}"
            f"{skipped}."
        )


def find_last_checkpoint(runs: Path, wanted: RunKind | None = None) -> Path:
    """The path of :func:`choose_last_checkpoint`'s choice."""
    return choose_last_checkpoint(runs, wanted).path


def choose_last_checkpoint(runs: Path, wanted: RunKind | None = None) -> LastRun:
    """The ``runs/version_N/checkpoints/last.ckpt`` of a ``wanted`` run (any run: None) with the most training
    progress.

    Progress is the global step, then the epoch; of equal ones the newest file wins (then the highest
    version). The newest run is not always the furthest one: a short finished run started after a long
    killed one would otherwise be resumed, silently dropping the longer run's work. Nor is the furthest run of
    another model or data the one meant: runs of an MLP and of a logistic regression share a batch mode's
    directory, and so do runs on different datasets.
    """
    found = []
    unreadable = []
    others: list[tuple[Path, str]] = []
    for path in runs.glob("version_*/checkpoints/last.ckpt"):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            progress = (int(checkpoint["global_step"]), int(checkpoint["epoch"]))
            why_not = None
            if wanted is not None:
                hparams = checkpoint.get("hyper_parameters"), checkpoint.get("datamodule_hyper_parameters")
                why_not = wanted.mismatch(*hparams)
        except Exception:  # truncated or foreign: resuming from it would fail; the others may do
            unreadable.append(path)
            continue
        if why_not is not None:
            others.append((path.parent.parent, why_not))
            continue
        found.append((*progress, path.stat().st_mtime_ns, _version(path.parent.parent.name), path))
    kind = (
        ""
        if wanted is None
        else f"of {wanted.model.rsplit('.', 1)[-1]}" + (" on the same data" if wanted.data_args is not None else "")
    )
    if not found:
        if others:
            listed = "; ".join(
                f"{run.name}: {why}" for run, why in sorted(others, key=lambda o: _version(o[0].name))[:3]
            )
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            raise DataError(
                f"--ckpt_path last: no run under {runs} {kind} ({listed}{more}); choose the model with --model and "
                "the data with the same --data arguments, or pass the checkpoint's path as --ckpt_path."
            )
        if unreadable:
            raise DataError(
                f"--ckpt_path last: no readable last.ckpt under {runs}/version_*/checkpoints; "
                f"{', '.join(map(str, sorted(unreadable)))} cannot be loaded."
            )
        raise DataError(f"--ckpt_path last: no last.ckpt under {runs}/version_*/checkpoints.")
    step, epoch, *_, path = max(found)
    return LastRun(path, epoch, step, len(found) + len(unreadable), tuple(sorted(unreadable)), len(others), kind)


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


@dataclass
class _Claim:
    path: Path  # runs/version_N
    made: list[Path]  # its parents made for it, innermost first
    updates: Callable[[], int] = lambda: 0  # weight updates the run has made in it so far


_claims: list[_Claim] = []  # run directories claimed by this process
# What every run writes as it starts, before its first update: the resolved configuration, the logger's
# hyperparameters and its event file. A failed run that made no update holds nothing else worth keeping.
START_UP_FILES = ("config.yaml", "hparams.yaml", "events.out.tfevents.*")


def claim_run_dir(runs: Path) -> Path:
    """:func:`claim_version`'s ``runs/version_N``, remembered so that :func:`release_run_dirs` removes it (and
    the parents made for it) if the run leaves nothing in it, or fails before its first weight update."""
    new = [d for d in (runs, runs.parent) if not d.exists()]
    path = runs / f"version_{claim_version(runs)}"
    _claims.append(_Claim(path, new))
    return path


def count_updates(path: Path, updates: Callable[[], int]) -> None:
    """Tell :func:`release_run_dirs` how to count the weight updates a run made in its claimed ``path``."""
    for claim in _claims:
        if claim.path == path:
            claim.updates = updates


def claimed_runs() -> Path | None:
    """The directory of the run directory claimed last (``runs`` of ``runs/version_N``), if any."""
    return _claims[-1].path.parent if _claims else None


def release_run_dirs(failed: bool = False) -> None:
    """Remove the run directories claimed so far that stayed empty, and those of a ``failed`` run that made no
    weight update and holds only its start-up files (:data:`START_UP_FILES`), with their parents made for them.

    A run that failed at its start (a data file refused in ``setup``, a full disk, Ctrl+C while it loads) would
    otherwise leave a ``version_N`` with a ``config.yaml`` that looks like a run."""
    while _claims:
        claim = _claims.pop()
        with contextlib.suppress(OSError):  # not empty: the run wrote something worth keeping
            if failed and claim.updates() <= 0:
                _remove_start_up_files(claim.path)
            claim.path.rmdir()
            for directory in claim.made:
                directory.rmdir()


def _remove_start_up_files(path: Path) -> None:
    """Remove ``path``'s start-up files and empty directories, if it holds nothing else."""
    entries = list(path.iterdir())
    files = [e for e in entries if e.is_file() and any(fnmatch.fnmatch(e.name, p) for p in START_UP_FILES)]
    empty = [e for e in entries if e.is_dir() and not any(e.iterdir())]
    if len(files) + len(empty) < len(entries):
        return
    for file in files:
        file.unlink()
    for directory in empty:
        directory.rmdir()


def _version(name: str) -> int:
    return int(re.sub(r"\D", "", name) or -1)  # version_12 -> 12
