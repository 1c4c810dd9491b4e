"""Shared helpers: small synthetic data and readers for what a run leaves on disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a TensorBoard run directory, as {tag: [(step, value), ...]}."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def session_hparams(run_dir) -> dict:
    """The hyperparameters a run wrote for TensorBoard's HPARAMS tab, read back from its event file."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert hparams_metadata.EXPERIMENT_TAG not in content  # TensorBoard then builds it from every run
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


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


@pytest.fixture(autouse=True)
def cpu_unless_marked_gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers built in tests run on the CPU, as in CI, even where a GPU is visible (Lightning reads
    ``PL_TRAINER_*`` variables as Trainer defaults); tests marked ``gpu`` choose their device."""
    if "gpu" not in request.keywords:
        monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where no CUDA device is visible (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def separable_csv(path: Path, rows: int = 60, seed: int = 0, columns: str = "a,b,c,label") -> Path:
    """Write rows of x ~ N(0, 1) in 3 features with label [a - b > 0], under the header ``columns``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, generator=gen) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([0.0, 1.0, -3.0])
    y = (x[:, 0] - x[:, 1] + 1 > 0).int()
    path.write_text(
        columns + "\n" + "".join(f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},{int(t)}\n" for r, t in zip(x, y, strict=True))
    )
    return path


# CPU, as in CI, even where a GPU is visible; progress bars and summaries would only fill the output.
QUIET = [
    *("--trainer.accelerator", "cpu"),
    *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """One short full-batch run on a CSV file (features a, b, c; label 'label'): its root, data and last.ckpt.

    Shared by the tests that only read it; a test that writes next to it copies what it needs first.
    """
    from logreg.cli import main

    root = tmp_path_factory.mktemp("trained")
    data = separable_csv(root / "train.csv")
    args = ["fit", "--data.dataset", str(data), "--data.batch_mode", "full", "--model.lr", "1.0"]
    main([*args, "--trainer.max_epochs", "5", "--trainer.default_root_dir", str(root / "logs"), *QUIET])
    return {"root": root, "data": data, "ckpt": root / "logs" / "full" / "version_0" / "checkpoints" / "last.ckpt"}


def banknote_csv(path: Path) -> Path:
    """The embedded banknote rows as a user's CSV file: a header row, the features, the label column."""
    from logreg.data.tables import BANKNOTE_COLUMNS, BANKNOTE_PATH

    path.write_text(",".join(BANKNOTE_COLUMNS) + "\n" + BANKNOTE_PATH.read_text())
    return path


def predicted(ckpt: Path, data: Path, output: Path) -> np.ndarray:
    """The probabilities ``logreg predict`` writes for ``data`` with ``ckpt``."""
    from logreg.cli import main

    args = ["predict", "--ckpt_path", str(ckpt), "--data.dataset", str(data), "--prediction.output", str(output)]
    main([*args, "--trainer.default_root_dir", str(output.parent / "logs"), *QUIET])
    return np.loadtxt(output, delimiter=",", skiprows=1, ndmin=2)[:, 1]


@pytest.fixture(scope="session")
def banknote(tmp_path_factory) -> dict:
    """A short full-batch logistic regression on the banknote data: its last.ckpt, the banknote rows as a CSV
    file, and the probabilities ``logreg predict`` gives them (shared by tests that only read them)."""
    from logreg.cli import main

    root = tmp_path_factory.mktemp("banknote")
    args = ["fit", "--data.batch_mode", "full", "--model.lr", "1.0", "--trainer.max_epochs", "5"]
    main([*args, "--trainer.default_root_dir", str(root / "logs"), *QUIET])
    ckpt = root / "logs" / "full" / "version_0" / "checkpoints" / "last.ckpt"
    data = banknote_csv(root / "banknote.csv")
    return {"root": root, "ckpt": ckpt, "data": data, "probabilities": predicted(ckpt, data, root / "p.csv")}


class _FullDiskFile:
    """A file whose device fills up after ``budget`` more bytes: that much is written, then ENOSPC."""

    def __init__(self, file, budget: int) -> None:
        self._file, self._budget = file, budget

    def write(self, data):
        if len(data) > self._budget:
            self._file.write(data[: self._budget])
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= len(data)
        return self._file.write(data)

    def __getattr__(self, name: str):
        return getattr(self._file, name)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch):
    """Call ``fill(budget)`` to let files opened from then on (through ``os.fdopen``, as the atomic writes
    open their temporary files) take ``budget`` more bytes each before the disk is full."""

    def fill(budget: int = 100) -> None:
        real = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: _FullDiskFile(real(fd, *args, **kwargs), budget))

    return fill


@pytest.fixture
def read_only_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Call ``protect(directory)`` to make it read-only: no file can be created in it.

    chmod does the job for a normal user. Root (CI containers, this project's test machines) ignores
    permission bits, so there creating a file in the directory fails as the kernel would fail it for
    anyone else: ``os.open(..., O_CREAT)`` and ``os.mkdir`` raise PermissionError (EACCES).
    """
    protected: list[Path] = []

    def protect(directory: Path) -> None:
        directory.chmod(0o555)
        protected.append(directory.resolve())
        if os.geteuid() != 0 or len(protected) > 1:
            return
        real_open, real_mkdir = os.open, os.mkdir

        def refuse(path) -> None:
            if Path(path).resolve().parent in protected:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

        def guarded_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                refuse(path)
            return real_open(path, flags, *args, **kwargs)

        def guarded_mkdir(path, *args, **kwargs):
            refuse(path)
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", guarded_open)
        monkeypatch.setattr(os, "mkdir", guarded_mkdir)

    yield protect
    for directory in protected:
        directory.chmod(0o755)  # so pytest can remove it
