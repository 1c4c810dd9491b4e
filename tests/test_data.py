import math

import lightning as L
import pytest
import torch

from logreg import LogisticRegression, TabularDataModule, TensorBatches
from logreg.machinery.errors import ConfigError, DataError


def fitted_steps(batch_mode: str, epochs: int = 1, **data_args) -> tuple[int, int]:
    """(global_step after `epochs` epochs, number of training rows) for one batch mode."""
    dm = TabularDataModule(batch_mode=batch_mode, **data_args)
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0
    )
    trainer.fit(LogisticRegression(num_features=dm.num_features), datamodule=dm)
    return trainer.global_step, len(dm.split("train")[0])


SMALL = {"dataset": "synthetic", "synthetic_rows": 103, "synthetic_features": 3}


def test_full_batch_is_one_update_per_epoch():
    assert fitted_steps("full", epochs=3, **SMALL)[0] == 3


def test_per_example_is_one_update_per_training_row():
    steps, n_train = fitted_steps("example", **SMALL)
    assert n_train == 61  # 103 rows less round(20.6) val and round(20.6) test
    assert steps == n_train


@pytest.mark.parametrize("batch_size", [1, 7, 10, 61, 500])
def test_minibatch_is_ceil_n_over_b_updates_per_epoch_with_no_dropped_batch(batch_size):
    steps, n_train = fitted_steps("minibatch", batch_size=batch_size, **SMALL)
    assert steps == math.ceil(n_train / batch_size)


def test_banknote_minibatch_update_count():
    steps, n_train = fitted_steps("minibatch", batch_size=32)
    assert (n_train, steps) == (824, 26)


def test_split_is_deterministic_from_the_seed_and_disjoint():
    def rows(seed):
        dm = TabularDataModule(seed=seed)
        dm.setup("fit")
        return {stage: dm._raw[stage][0] for stage in ("train", "val", "test")}

    a, b, c = rows(1), rows(1), rows(2)
    assert all(torch.equal(a[s], b[s]) for s in a)
    assert not torch.equal(a["train"], c["train"])
    every = torch.cat([a["train"], a["val"], a["test"]])
    assert len(every) == len(torch.cat(list(c.values()))) == 1372


def test_standardisation_uses_training_statistics_only():
    dm = TabularDataModule()
    dm.setup("fit")
    raw_train, raw_val = dm._raw["train"][0], dm._raw["val"][0]
    torch.testing.assert_close(dm.mean, raw_train.mean(0))
    torch.testing.assert_close(dm.std, raw_train.std(0))
    x_train, x_val = dm.split("train")[0], dm.split("val")[0]
    torch.testing.assert_close(x_train.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(x_train.std(0), torch.ones(4))
    torch.testing.assert_close(x_val, (raw_val - raw_train.mean(0)) / raw_train.std(0))
    assert not torch.allclose(x_val.mean(0), torch.zeros(4), atol=1e-3)  # val was not standardised by itself


def test_statistics_travel_in_the_state_dict_and_override_recomputed_ones():
    dm = TabularDataModule()
    dm.setup("fit")
    state = {"mean": torch.full((4,), 2.0), "std": torch.full((4,), 4.0)}
    dm.split("val")  # made with the split's own statistics ...
    dm.load_state_dict(state)  # ... and remade with the restored ones
    torch.testing.assert_close(dm.split("val")[0], (dm._raw["val"][0] - 2.0) / 4.0)
    assert dm.state_dict()["mean"] is state["mean"]


def test_batches_reshuffle_each_epoch_and_repeat_for_the_same_epoch():
    x = torch.arange(20.0).view(10, 2)
    epoch = 0
    batches = TensorBatches(x, torch.arange(10.0), batch_size=3, shuffle=True, seed=5, epoch=lambda: epoch)
    first = torch.cat([b[1] for b in batches])
    again = torch.cat([b[1] for b in batches])
    epoch = 1
    second = torch.cat([b[1] for b in batches])
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(10))
    # rows stay paired with their labels through the shuffle
    assert all(torch.equal(bx[:, 0], 2 * by) for bx, by in batches)


def test_batches_are_views_of_the_held_tensors_when_not_shuffled():
    x = torch.randn(10, 2)
    (bx, _), *_ = TensorBatches(x, torch.zeros(10), batch_size=4)
    assert bx.data_ptr() == x.data_ptr()


def test_invalid_choices_and_values_are_rejected_with_the_valid_ones_listed():
    with pytest.raises(ValueError, match="batch_mode must be one of 'full', 'example', 'minibatch'; got 'mini'"):
        TabularDataModule(batch_mode="mini")
    with pytest.raises(ValueError, match="batch_size must be a positive number"):
        TabularDataModule(batch_size=0)
    with pytest.raises(ValueError, match="val_fraction must lie strictly between 0 and 1"):
        TabularDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match="must be below 1"):
        TabularDataModule(val_fraction=0.5, test_fraction=0.5)


def test_num_features_comes_from_the_csv_header(csv_file):
    assert TabularDataModule(dataset=str(csv_file())).num_features == 3
    assert TabularDataModule().num_features == 4
    assert TabularDataModule(dataset="synthetic", synthetic_features=7).num_features == 7


@pytest.mark.parametrize(
    ("n", "global_batch", "world_size"), [(61, 61, 2), (61, 2, 2), (61, 16, 2), (10, 4, 3), (5, 3, 4)]
)
def test_ddp_shards_split_every_global_batch_into_disjoint_near_equal_parts(n, global_batch, world_size):
    x, y = torch.arange(float(n)), torch.arange(float(n)) * 10
    single = list(TensorBatches(x, y, batch_size=global_batch, shuffle=True, seed=3))
    ranks = [
        list(TensorBatches(x, y, batch_size=global_batch, shuffle=True, seed=3, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    # every rank takes the same number of steps (DDP would hang otherwise): one per global batch
    assert (
        [len(batches) for batches in ranks] == [len(single)] * world_size == [math.ceil(n / global_batch)] * world_size
    )
    for step, (bx, _) in enumerate(single):
        shards = [batches[step] for batches in ranks]
        assert [rows for _, _, rows in shards] == [len(bx)] * world_size  # each shard names its global batch size
        assert torch.equal(torch.cat([sx for sx, _, _ in shards]), bx)  # together: the single-process batch
        assert all(torch.equal(sy, sx * 10) for sx, sy, _ in shards)  # rows stay paired with their labels
        sizes = [len(sx) for sx, _, _ in shards]
        assert max(sizes) - min(sizes) <= 1


def test_ddp_shards_of_an_unshuffled_full_batch_are_views():
    x = torch.randn(7, 2)
    (sx, _, rows), *_ = TensorBatches(x, torch.zeros(7), batch_size=7, rank=1, world_size=2)
    assert rows == 7 and len(sx) == 4 and sx.data_ptr() == x[3:].data_ptr()


def test_the_columns_travel_with_the_statistics_and_must_match_when_restored(csv_file):
    dm = TabularDataModule(dataset=str(csv_file()))
    dm.setup("fit")
    state = dm.state_dict()
    assert (state["feature_names"], state["label_name"]) == (["a", "b", "c"], "label")
    reordered = TabularDataModule(dataset=str(csv_file()), feature_columns=["c", "b", "a"])
    assert reordered.num_features == 3
    with pytest.raises(
        DataError,
        match=r"--data.feature_columns c, b, a differ from the features the checkpoint's model was trained on",
    ):
        reordered.load_state_dict(state)
    fresh = TabularDataModule(dataset=str(csv_file()))
    fresh.load_state_dict(state)
    assert fresh.feature_names == ["a", "b", "c"] and torch.equal(fresh.mean, dm.mean)


def test_feature_columns_must_name_columns_once():
    with pytest.raises(
        ConfigError, match=r"feature_columns must name at least one column, each once; got \['a', 'a'\]"
    ):
        TabularDataModule(feature_columns=["a", "a"])


def same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v for u, v in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("trained", [0, 5, 15, 16])
def test_a_resumed_epoch_continues_with_the_batch_after_the_last_one_trained(world_size, trained):
    x, y = torch.arange(61.0), torch.arange(61.0) * 10
    for rank in range(world_size):
        kwargs = {"batch_size": 4, "shuffle": True, "seed": 3, "rank": rank, "world_size": world_size}
        straight = TensorBatches(x, y, **kwargs, trained=lambda: trained)
        first = list(straight)
        state = straight.state_dict()  # as a checkpoint written after `trained` batches of epoch 0
        assert state == {"epoch": 0, "batches": trained}
        second = list(straight)  # epoch 1, in a new order
        assert len(first) == 16 and not torch.equal(first[0][0], second[0][0])
        resumed = TensorBatches(x, y, **kwargs)
        resumed.load_state_dict(state)
        rest = list(resumed)  # the rest of epoch 0 ...
        assert len(rest) == 16 - trained and all(map(same, rest, first[trained:]))
        assert all(map(same, resumed, second))  # ... then whole epochs, as if it had never stopped


def test_a_saved_position_applies_only_to_its_own_epoch():
    batches = TensorBatches(torch.arange(8.0), batch_size=2)
    batches.load_state_dict({"epoch": 3, "batches": 2})  # a checkpoint written in epoch 3; this is epoch 0
    assert len(list(batches)) == 4
