import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from logreg.machinery.checkpoint import (
    RunKind,
    choose_last_checkpoint,
    claim_version,
    find_last_checkpoint,
    read_checkpoint,
)
from logreg.machinery.errors import DataError


def test_read_checkpoint_returns_the_model_size_and_the_training_columns(trained):
    saved = read_checkpoint(trained["ckpt"], data_key="TabularDataModule")
    assert (saved.num_features, saved.feature_names, saved.label_name) == (3, ["a", "b", "c"], "label")


def fake_last(runs, version: int, epoch: int, step: int, mtime: int = 1_000_000) -> None:
    """A ``version_N/checkpoints/last.ckpt`` holding only the progress counters, written at ``mtime``."""
    path = runs / f"version_{version}" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"epoch": epoch, "global_step": step}, path)
    os.utime(path, (mtime, mtime))


def test_last_checkpoint_is_the_one_with_the_most_training_progress(tmp_path):
    fake_last(tmp_path, 3, epoch=16, step=17, mtime=1_000)  # a long run, killed
    fake_last(tmp_path, 4, epoch=2, step=3, mtime=2_000)  # a short run started and finished after it
    (tmp_path / "version_5" / "checkpoints").mkdir(parents=True)
    (tmp_path / "version_5" / "checkpoints" / "last.ckpt").write_bytes(b"truncated by a crash")
    (tmp_path / "version_6").mkdir()  # a run that failed before its first checkpoint
    chosen = choose_last_checkpoint(tmp_path)
    assert (chosen.path, chosen.epoch, chosen.global_step) == (tmp_path / "version_3/checkpoints/last.ckpt", 16, 17)
    assert find_last_checkpoint(tmp_path) == chosen.path
    assert chosen.describe() == (
        f"--ckpt_path last: resuming from {chosen.path} (epoch 16, step 17), the most training progress among 3 "
        f"runs; skipped 1 unreadable: {tmp_path}/version_5/checkpoints/last.ckpt."
    )


def test_of_equal_progress_the_newest_checkpoint_wins_then_the_highest_version(tmp_path):
    fake_last(tmp_path, 2, epoch=4, step=40, mtime=3_000)
    fake_last(tmp_path, 9, epoch=4, step=40, mtime=2_000)
    fake_last(tmp_path, 10, epoch=3, step=40, mtime=9_000)  # same step count, fewer epochs (larger batches)
    assert find_last_checkpoint(tmp_path) == tmp_path / "version_2" / "checkpoints" / "last.ckpt"
    os.utime(tmp_path / "version_9" / "checkpoints" / "last.ckpt", (3_000, 3_000))
    assert find_last_checkpoint(tmp_path) == tmp_path / "version_9" / "checkpoints" / "last.ckpt"
    with pytest.raises(DataError, match=r"no last\.ckpt under"):
        find_last_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("state_dict", "linear.weight", float("nan")), ("TabularDataModule", "std", float("inf"))],
)
def test_a_checkpoint_with_non_finite_values_is_refused_naming_them(trained, tmp_path, section, key, value):
    broken = torch.load(trained["ckpt"], weights_only=True)
    broken[section][key][..., 0] = value
    torch.save(broken, tmp_path / "diverged.ckpt")
    what = "weights" if section == "state_dict" else "standardisation statistics"
    with pytest.raises(DataError) as error:
        read_checkpoint(tmp_path / "diverged.ckpt", data_key="TabularDataModule")
    assert str(error.value) == (
        f"{tmp_path}/diverged.ckpt: its {what} hold non-finite values ({key} has {value}), so every prediction "
        "would be nan; use a checkpoint saved before the values became non-finite, or retrain."
    )


def test_read_checkpoint_reports_the_training_progress(trained):
    saved = read_checkpoint(trained["ckpt"])  # 5 full-batch epochs: one update each
    assert (saved.epochs_done, saved.global_step) == (5, 5)


def test_concurrent_claims_never_share_a_version(tmp_path):
    (tmp_path / "version_3").mkdir()  # an earlier run; numbering continues above it
    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(lambda _: claim_version(tmp_path), range(40)))
    assert sorted(versions) == list(range(4, 44))
    assert sorted(int(p.name.split("_")[1]) for p in tmp_path.iterdir()) == list(range(3, 44))


def test_last_checkpoint_is_of_the_wanted_model_class_and_data(tmp_path):
    def save(version: int, step: int, model: str, dataset: str) -> None:
        path = tmp_path / f"version_{version}" / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        data = {"_class_path": "logreg.TabularDataModule", "dataset": dataset}
        checkpoint = {"epoch": 1, "global_step": step, "hyper_parameters": {"_class_path": model}}
        torch.save({**checkpoint, "datamodule_hyper_parameters": data}, path)

    save(0, 90, "logreg.LogisticRegression", "banknote")  # the furthest, another class
    save(1, 50, "logreg.MLP", "spam.csv")  # the right class (named by another path), other data
    save(2, 10, "logreg.models.mlp.MLP", "banknote")
    wanted = RunKind("logreg.models.MLP", "logreg.data.TabularDataModule", {"dataset": "banknote", "seed": 1})
    chosen = choose_last_checkpoint(tmp_path, wanted)
    assert (chosen.path, chosen.others) == (tmp_path / "version_2" / "checkpoints" / "last.ckpt", 2)
    assert chosen.describe().endswith(
        "the most training progress among 1 run of MLP on the same data (2 of another model or data left out)."
    )
    # predict's rows are new ones: any data, the class still counts
    assert (
        find_last_checkpoint(tmp_path, RunKind("logreg.MLP", "my.Data")) == tmp_path / "version_1/checkpoints/last.ckpt"
    )
