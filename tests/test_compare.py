import importlib.util
import json
from pathlib import Path

import lightning as L
import pytest
import torch.nn.functional as F
import yaml
from conftest import scalars
from lightning.pytorch.loggers import TensorBoardLogger

from logreg import LogisticRegression, TabularDataModule
from logreg.lessons.compare import DEFAULT_LR, FIGURE_NAME, MODES, TABLE_NAME, LossTrace, compare_modes, loss_noise

ROOT = Path(__file__).parents[1]
TINY = {"synthetic_rows": 200, "synthetic_features": 3}  # 120 training rows


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    results = compare_modes(
        out, dataset="synthetic", epochs=6, batch_size=16, seed=3, progress_bar=False, data_args=TINY
    )
    return out, {r.mode: r for r in results}


@pytest.mark.slow
def test_update_counts_are_exact_for_each_mode(compared):
    out, results = compared
    table = json.loads((out / TABLE_NAME).read_text())
    # 120 training rows: 1 update per epoch in full mode, ceil(120 / 16) = 8 for minibatch, 120 per example
    expected = {"full": (120, 1), "minibatch": (16, 8), "example": (1, 120)}
    for mode, (rows, per_epoch) in expected.items():
        row = table["modes"][mode]
        assert (row["rows_per_update"], row["updates_per_epoch"], row["total_updates"]) == (
            rows,
            per_epoch,
            6 * per_epoch,
        )
        assert len(results[mode].trace.losses) == 6 * per_epoch  # the callback saw every update
        assert row["lr"] == DEFAULT_LR[mode]
        assert 0 < row["final_val_loss"] < 0.6931 and 0.5 < row["final_val_acc"] <= 1  # learned from ln 2
        assert row["seconds"] > 0


@pytest.mark.slow
def test_loss_noise_orders_per_example_above_minibatch_above_full_batch(compared):
    out, _ = compared
    noise = {mode: row["loss_noise"] for mode, row in json.loads((out / TABLE_NAME).read_text())["modes"].items()}
    assert noise["example"] > noise["minibatch"] > noise["full"] >= 0


@pytest.mark.slow
def test_each_mode_is_its_own_tensorboard_run_with_its_updates_and_hyperparameters(compared):
    out, results = compared
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(MODES)
    for mode, r in results.items():
        assert Path(r.run_dir) == out / mode / "version_0"
        series = scalars(Path(r.run_dir))
        # logged at every update, and the callback's losses are the ones the model logged
        assert [step for step, _ in series["train/loss"]] == list(range(r.total_updates))
        assert [v for _, v in series["train/loss"]] == pytest.approx(r.trace.losses)
        assert series["val/loss"][-1][1] == pytest.approx(r.final_val_loss)
        assert yaml.safe_load((Path(r.run_dir) / "hparams.yaml").read_text())["batch_mode"] == mode


@pytest.mark.slow
def test_trace_and_figure(compared):
    out, results = compared
    png = (out / FIGURE_NAME).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    for r in results.values():
        updates = [u for u, _, _, _ in r.trace.curve]
        # the whole-split loss: before the first update (ln 2, zero weights), after every epoch, strictly increasing
        assert updates[0] == 0 and r.trace.curve[0][3] == pytest.approx(0.693147, abs=1e-5)
        assert {e * r.updates_per_epoch for e in range(1, 7)} <= set(updates)
        assert updates == sorted(set(updates)) and updates[-1] == r.total_updates
        seconds = [s for _, _, s, _ in r.trace.curve]
        assert seconds == sorted(seconds) and r.trace.seconds == sorted(r.trace.seconds)
        assert r.trace.epochs == pytest.approx([u / r.updates_per_epoch for u in range(r.total_updates)])


def test_loss_noise_is_the_spread_of_successive_differences_over_the_last_half():
    assert loss_noise([5.0, 0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0, abs=1e-12)  # last half: a steady trend
    assert loss_noise([9.0, 9.0, 9.0, 0.0, 1.0, 0.0]) == pytest.approx(2**0.5)  # differences 1, -1: std sqrt(2)
    assert loss_noise([1.0, 0.5, 0.25, 0.2]) is None  # too few updates to measure


def test_the_whole_split_loss_is_evaluated_at_geometric_update_counts_and_epoch_ends():
    evaluated_at = [0, 1, 2, 4, 8, 16, 32, 64, 120]  # 120 updates in the epoch
    trace = LossTrace(growth=2.0)
    dm = TabularDataModule(dataset="synthetic", batch_mode="example", seed=3, **TINY)
    trainer = L.Trainer(
        max_epochs=1, callbacks=[trace], logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(LogisticRegression(num_features=3, lr=0.05), datamodule=dm)
    assert [u for u, _, _, _ in trace.curve] == evaluated_at
    x, y = dm.split("train")
    final = F.binary_cross_entropy_with_logits(trainer.lightning_module(x), y).item()
    assert trace.curve[-1][3] == pytest.approx(final)


def test_the_trace_records_every_update(tmp_path):
    # 120 rows in minibatches of 16: 8 updates per epoch
    dm = TabularDataModule(dataset="synthetic", batch_mode="minibatch", batch_size=16, **TINY)
    trace = LossTrace()
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[trace],
        logger=TensorBoardLogger(tmp_path, name="", version=""),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(LogisticRegression(num_features=3, lr=0.5), datamodule=dm)
    assert trainer.global_step == 16
    assert trace.epochs == pytest.approx([u / 8 for u in range(16)])
    assert trace.losses == pytest.approx([v for _, v in scalars(tmp_path)["train/loss"]])  # the ones logged
    assert len(set(trace.losses)) == 16 and trace.losses[0] == pytest.approx(0.693147, abs=1e-6)  # zero weights
    assert len(trace.seconds) == 16 and trace.seconds == sorted(trace.seconds) and trace.seconds[0] > 0
    assert {u for u, _, _, _ in trace.curve} >= {0, 8, 16}  # before training and after each epoch


def test_existing_outputs_are_never_replaced(tmp_path):
    (tmp_path / TABLE_NAME).write_text("{}")
    with pytest.raises(ValueError, match=f"{TABLE_NAME} exists; choose another output directory"):
        compare_modes(tmp_path, dataset="synthetic", epochs=1, progress_bar=False, data_args=TINY)
    assert (tmp_path / TABLE_NAME).read_text() == "{}" and not (tmp_path / "full").exists()


def load_script():
    spec = importlib.util.spec_from_file_location("compare_modes_script", ROOT / "scripts" / "compare_modes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "gd=0.1"], "mode must be one of full, minibatch, example; got 'gd'"),
        (["--epochs", "0"], "must be positive; got 0"),
        (["--dataset", "missing.csv"], "error: missing.csv: no such file."),
    ],
)
def test_script_rejects_bad_options_with_one_sentence_and_writes_nothing(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([*args, "--out", str(tmp_path / "out"), "--no-progress-bar"])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err + str(exit_info.value.code)
    assert not (tmp_path / "out").exists()


def test_script_lr_option_sets_every_mode_or_one():
    script = load_script()
    assert script.parse_args(["--lr", "0.2", "example=0.01"]).lr == [(None, 0.2), ("example", 0.01)]
    assert script.learning_rates([(None, 0.2), ("example", 0.01)]) == {"full": 0.2, "minibatch": 0.2, "example": 0.01}


def test_default_learning_rates_are_the_configs():
    names = {"full": "full_batch", "example": "per_example", "minibatch": "minibatch"}
    configs = {mode: yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text()) for mode, name in names.items()}
    assert {mode: c["model"]["lr"] for mode, c in configs.items()} == DEFAULT_LR
    assert all(c["data"]["batch_mode"] == mode for mode, c in configs.items())
