import pytest
import torch
from jsonargparse import Namespace

from logreg.checkpoint import configure_columns, find_last_checkpoint, read_checkpoint
from logreg.datasets import DataError


def test_read_checkpoint_returns_the_model_size_and_the_training_columns(trained):
    saved = read_checkpoint(trained["ckpt"])
    assert (saved.num_features, saved.feature_names, saved.label_name) == (3, ["a", "b", "c"], "label")


def test_last_checkpoint_is_the_highest_version_number_not_the_last_name(tmp_path):
    for version in (2, 9, 10):
        (tmp_path / f"version_{version}" / "checkpoints").mkdir(parents=True)
        (tmp_path / f"version_{version}" / "checkpoints" / "last.ckpt").touch()
    (tmp_path / "version_11").mkdir()  # a run that failed before its first checkpoint
    assert find_last_checkpoint(tmp_path) == tmp_path / "version_10" / "checkpoints" / "last.ckpt"
    with pytest.raises(DataError, match=r"no last\.ckpt under"):
        find_last_checkpoint(tmp_path / "empty")


def test_columns_come_from_the_checkpoint_and_the_label_only_when_not_given(trained):
    saved = read_checkpoint(trained["ckpt"])
    data = Namespace(feature_columns=None, label_column=None)
    configure_columns(data, saved)
    assert (data.feature_columns, data.label_column) == (["a", "b", "c"], "label")
    data = Namespace(feature_columns=["a", "b", "c"], label_column="target")
    configure_columns(data, saved)
    assert data.label_column == "target"  # the label's name does not change the model


def test_a_checkpoint_without_column_names_leaves_the_columns_to_the_file(trained, tmp_path):
    old = torch.load(trained["ckpt"], weights_only=True)
    del old["TabularDataModule"]["feature_names"]
    torch.save(old, tmp_path / "old.ckpt")
    data = Namespace(feature_columns=None, label_column=None)
    configure_columns(data, read_checkpoint(tmp_path / "old.ckpt"))
    assert data.feature_columns is None
