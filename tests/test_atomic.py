import os
import re
import stat
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from logreg.machinery.atomic import AtomicCheckpointIO, AtomicFile, WriteError


def test_a_file_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out.csv"
    with pytest.raises(ZeroDivisionError), AtomicFile(out, text=True) as f:
        f.write("row,probability\n")
        _ = 1 / 0  # the writer fails half-way
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    with AtomicFile(out, text=True) as f:
        f.write("row,probability\n0,0.5\n")
    assert out.read_text() == "row,probability\n0,0.5\n"
    assert list(tmp_path.iterdir()) == [out]


def test_two_writers_of_one_name_never_replace_each_other(tmp_path):
    out = tmp_path / "p.csv"
    first, second = AtomicFile(out, text=True, what="predictions file"), AtomicFile(out, text=True)
    first.write("first\n")
    second.write("second\n")
    first.commit()
    with pytest.raises(
        WriteError, match=rf"^{re.escape(str(out))}: appeared while writing and is left as it was; "
    ) as error:
        second.commit()
    assert out.read_text() == "first\n"
    kept = Path(str(error.value).rsplit(" is in ", 1)[1].rstrip("."))
    assert kept.parent == tmp_path and kept.read_text() == "second\n"  # the second run's work is not lost


def test_a_replacing_write_swaps_the_whole_file(tmp_path):
    out = tmp_path / "last.ckpt"
    out.write_bytes(b"old")
    with AtomicFile(out, replace=True) as f:
        f.write(b"new")
    assert out.read_bytes() == b"new" and list(tmp_path.iterdir()) == [out]


def save(path: Path, epoch: int) -> None:
    AtomicCheckpointIO().save_checkpoint({"epoch": epoch, "state_dict": {"w": torch.full((1000,), float(epoch))}}, path)


def test_a_full_disk_leaves_the_earlier_checkpoint_loadable(tmp_path, full_disk):
    path = tmp_path / "checkpoints" / "last.ckpt"
    save(path, 1)
    before = path.read_bytes()
    full_disk(budget=1000)  # the next checkpoint (about 5 kB) does not fit
    with pytest.raises(WriteError) as error:
        save(path, 2)
    assert str(error.value) == (
        f"{path}: cannot write this checkpoint (No space left on device); nothing was replaced, earlier files are intact."
    )
    assert path.read_bytes() == before and torch.load(path, weights_only=True)["epoch"] == 1
    assert list(path.parent.iterdir()) == [path]  # the truncated temporary file is gone


def test_a_read_only_directory_is_named_and_its_checkpoint_kept(tmp_path, read_only_dir):
    path = tmp_path / "checkpoints" / "last.ckpt"
    save(path, 1)
    read_only_dir(path.parent)
    with pytest.raises(
        WriteError, match=rf"^{re.escape(str(path))}: cannot write this checkpoint \(Permission denied\)"
    ):
        save(path, 2)
    assert torch.load(path, weights_only=True)["epoch"] == 1 and list(path.parent.iterdir()) == [path]


class FillDiskAt(Callback):
    """Fill the disk when training reaches ``epoch``."""

    def __init__(self, epoch: int, fill) -> None:
        self.epoch, self.fill = epoch, fill

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            self.fill(budget=500)


def test_the_trainer_writes_every_checkpoint_through_the_plugin(tmp_path, full_disk):
    best = ModelCheckpoint(dirpath=tmp_path, filename="best-epoch{epoch}", auto_insert_metric_name=False, save_top_k=1)
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[best, FillDiskAt(1, full_disk)],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(
        WriteError, match=r"best-epoch1\.ckpt: cannot write this checkpoint \(No space left on device\)"
    ):
        trainer.fit(BoringModel())
    # Epoch 0's checkpoint is whole (Lightning deletes the older best only after the newer one is written).
    assert [p.name for p in tmp_path.iterdir()] == ["best-epoch0.ckpt"]
    assert torch.load(tmp_path / "best-epoch0.ckpt", weights_only=False)["epoch"] == 0


@pytest.fixture
def umask():
    """Call ``set_umask(mask)`` to run under that umask; the earlier one is restored after the test."""
    earlier = os.umask(0o022)
    os.umask(earlier)
    yield os.umask
    os.umask(earlier)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_gives_new_files(tmp_path, umask, mask, mode):
    umask(mask)
    with AtomicFile(tmp_path / "predictions.csv", text=True) as file:
        file.write("row,probability\n")
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt")
    plain = tmp_path / "plain.txt"
    plain.write_text("as open() makes it")
    for path in (tmp_path / "predictions.csv", tmp_path / "last.ckpt", plain):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
