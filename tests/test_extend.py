"""The README's "Extend it" recipes, each run as a user would run it: Lightning's own features must just work."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import QUIET, scalars
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.tuner import Tuner

from logreg import MLP, LogisticRegression, TabularDataModule
from logreg.cli import main
from logreg.machinery.callbacks import LastCheckpoint

# 200 synthetic rows: 120 training rows, so minibatches of 16 give ceil(120 / 16) = 8 updates per epoch.
TINY = ["--data.dataset", "synthetic", "--data.synthetic_rows", "200", "--data.synthetic_features", "3"]
MINIBATCH = ["--data.batch_mode", "minibatch", "--data.batch_size", "16"]


def fit(root: Path, *extra: str) -> Path:
    """Run ``logreg fit`` into ``root`` and return the run directory it wrote."""
    main(["fit", *TINY, *MINIBATCH, *QUIET, "--trainer.default_root_dir", str(root), *extra])
    (run,) = sorted(root.glob("*/version_*"))[-1:]
    return run


def last_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def test_another_model_by_class_path_trains_resumes_and_predicts(tmp_path):
    run = fit(tmp_path, "--model", "logreg.models.MLP", "--model.hidden", "6", "--trainer.max_epochs", "2")
    ckpt = last_checkpoint(run)
    assert ckpt["state_dict"]["net.0.weight"].shape == (6, 3) and "linear.weight" not in ckpt["state_dict"]
    assert ckpt["hyper_parameters"]["_class_path"] == "logreg.models.MLP" and ckpt["hyper_parameters"]["hidden"] == 6
    # --ckpt_path last takes the furthest run of the class given; the checkpoint rebuilds its hyperparameters
    resumed = fit(tmp_path, "--model", "logreg.models.MLP", "--trainer.max_epochs", "3", "--ckpt_path", "last")
    assert yaml.safe_load((resumed / "config.yaml").read_text())["model"]["init_args"]["hidden"] == 6
    assert last_checkpoint(resumed)["global_step"] == 3 * 8
    out = tmp_path / "p.csv"
    ckpt = str(resumed / "checkpoints" / "last.ckpt")  # a checkpoint's path: its class needs no --model
    main(
        [
            "predict",
            *TINY,
            *QUIET,
            "--ckpt_path",
            ckpt,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--prediction.output",
            str(out),
        ]
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 200 and len({r["probability"] for r in rows}) > 100  # a real, bent boundary


def test_a_scheduler_from_the_command_line_is_stepped_by_lightning(tmp_path):
    run = fit(
        tmp_path,
        *("--model.lr", "0.4", "--model.lr_scheduler", "StepLR", "--model.lr_scheduler.step_size", "1"),
        *("--model.lr_scheduler.gamma", "0.5", "--trainer.max_epochs", "3"),
        *("--trainer.callbacks+", "LearningRateMonitor"),
    )
    # one value per epoch, logged at the epoch's first step
    assert scalars(run)["lr-SGD"] == [(0, pytest.approx(0.4)), (8, pytest.approx(0.2)), (16, pytest.approx(0.1))]


def test_reduce_lr_on_plateau_watches_val_loss(tmp_path):
    # lr 50 overshoots, so val/loss stops improving and the plateau scheduler halves the rate
    run = fit(
        tmp_path,
        *("--data.batch_mode", "full", "--model.lr", "50", "--trainer.max_epochs", "8"),
        *("--model.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau", "--model.lr_scheduler.patience", "0"),
        *("--model.lr_scheduler.factor", "0.5", "--trainer.callbacks+", "LearningRateMonitor"),
    )
    lrs = [v for _, v in scalars(run)["lr-SGD"]]
    val = [v for _, v in scalars(run)["val/loss"]]
    assert lrs[0] == 50 and min(lrs) < 50
    for epoch in range(1, len(lrs)):  # halved exactly after the epochs whose val/loss did not improve on the best
        worse = val[epoch - 1] >= min(val[: epoch - 1], default=math.inf)
        assert lrs[epoch] == pytest.approx(lrs[epoch - 1] * (0.5 if worse else 1)), epoch


def test_early_stopping_ends_the_run_when_val_loss_stops_improving(tmp_path):
    run = fit(
        tmp_path,
        *("--data.batch_mode", "full", "--model.lr", "50", "--trainer.max_epochs", "50"),
        *("--trainer.callbacks+", "EarlyStopping", "--trainer.callbacks.monitor", "val/loss"),
        *("--trainer.callbacks.patience", "2"),
    )
    val = [v for _, v in scalars(run)["val/loss"]]
    best = val.index(min(val))
    assert len(val) == best + 3 < 50  # stopped two epochs without improvement after the best


def test_a_csv_logger_beside_tensorboard(tmp_path):
    config = tmp_path / "loggers.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "logger": [
                        {
                            "class_path": "logreg.machinery.loggers.TensorBoardLogger",
                            "init_args": {"save_dir": str(tmp_path), "name": "tb"},
                        },
                        {
                            "class_path": "lightning.pytorch.loggers.CSVLogger",
                            "init_args": {"save_dir": str(tmp_path), "name": "csv"},
                        },
                    ]
                }
            }
        )
    )
    args = ["--config", str(config), "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "4"]
    main(["fit", *TINY, *MINIBATCH, *QUIET, *args])
    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").open()))
    csv_steps = [int(r["step"]) for r in rows if r["train/loss"]]
    tb = scalars(tmp_path / "tb" / "version_0")
    assert csv_steps == [s for s, _ in tb["train/loss"]] == [3, 7, 11, 15]
    assert [float(r["train/loss"]) for r in rows if r["train/loss"]] == pytest.approx([v for _, v in tb["train/loss"]])


def test_gradient_clipping_bounds_every_update(tmp_path):
    # plain SGD with lr 1: an update is minus the gradient, whose norm clipping caps at 0.01
    run = fit(tmp_path, "--model.lr", "1.0", "--trainer.gradient_clip_val", "0.01", "--trainer.max_steps", "1")
    weights = last_checkpoint(run)["state_dict"]
    step = torch.cat([weights["linear.weight"].flatten(), weights["linear.bias"]])  # from zero weights
    assert step.norm().item() == pytest.approx(0.01, rel=1e-5)


def test_gradient_accumulation_makes_one_update_of_several_batches(tmp_path):
    accumulated = fit(tmp_path / "a", "--trainer.accumulate_grad_batches", "2", "--trainer.max_epochs", "2")
    assert last_checkpoint(accumulated)["global_step"] == 2 * 4  # 8 batches per epoch, 4 updates
    # with equal batches, two accumulated batches of 16 are one batch of 32 (Lightning averages the losses)
    single = fit(
        tmp_path / "b",
        "--data.batch_size",
        "32",
        "--data.batch_mode",
        "minibatch",
        "--trainer.max_steps",
        "1",
        "--data.seed",
        "7",
    )
    pair = fit(tmp_path / "c", "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "1", "--data.seed", "7")
    a, b = last_checkpoint(single)["state_dict"], last_checkpoint(pair)["state_dict"]
    for name in ("linear.weight", "linear.bias"):
        torch.testing.assert_close(a[name], b[name])


def test_the_trainer_counts_weight_updates(tmp_path):
    # limit_train_batches, val_check_interval, max_steps and the timed checkpoint all mean what Lightning says
    run = fit(
        tmp_path,
        *("--trainer.limit_train_batches", "5", "--trainer.val_check_interval", "2"),
        *("--trainer.max_steps", "7", "--trainer.log_every_n_steps", "1"),
    )
    logged = scalars(run)
    assert [s for s, _ in logged["train/loss"]] == list(range(7))
    assert [s for s, _ in logged["val/loss"]] == [1, 3, 6]  # after batches 2 and 4 of each 5-batch epoch
    assert last_checkpoint(run)["global_step"] == 7
    half = fit(tmp_path / "half", "--trainer.limit_train_batches", "0.5", "--trainer.max_epochs", "1")
    assert last_checkpoint(half)["global_step"] == 4


def test_a_checkpoint_every_n_training_steps(tmp_path):
    run = fit(
        tmp_path,
        *("--trainer.max_epochs", "2", "--trainer.callbacks+", "ModelCheckpoint"),
        *("--trainer.callbacks.every_n_train_steps", "5", "--trainer.callbacks.save_top_k", "-1"),
        *("--trainer.callbacks.filename", "{step}"),
    )
    saved = sorted(p.name for p in (run / "checkpoints").glob("step*.ckpt"))
    assert saved == ["step=10.ckpt", "step=15.ckpt", "step=5.ckpt"]


def test_lr_find_sweeps_real_learning_rates_and_its_suggestion_is_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # lr_find keeps a temporary checkpoint in the working directory
    dm = TabularDataModule(dataset="synthetic", synthetic_rows=200, synthetic_features=3, batch_size=16)
    model = LogisticRegression(num_features=3)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    finder = Tuner(trainer).lr_find(
        model, datamodule=dm, min_lr=1e-4, max_lr=10, num_training=20, early_stop_threshold=None
    )
    lrs = finder.results["lr"]
    assert len(lrs) == 20 and lrs[0] == pytest.approx(1e-4) and lrs[-1] > 5 and lrs == sorted(set(lrs))
    assert len(set(finder.results["loss"])) > 10  # the loss responded to the rates
    suggestion = finder.suggestion()
    assert model.hparams.lr == suggestion != 0.1
    trainer.fit(model, datamodule=dm)
    assert trainer.optimizers[0].param_groups[0]["lr"] == suggestion


def test_a_plain_trainer_without_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe writes its checkpoints under the working directory
    # the README's recipe, word for word
    data = TabularDataModule(batch_mode="minibatch", batch_size=32)
    model = MLP(num_features=4, hidden=8, lr=0.5, optimizer=torch.optim.Adam)
    trainer = L.Trainer(
        max_epochs=5,
        callbacks=[EarlyStopping(monitor="val/loss"), ModelCheckpoint(monitor="val/loss")],
        logger=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 5 * 26 and trainer.callback_metrics["val/acc"] > 0.95
    # its best checkpoint loads back to the same class and weights
    best = MLP.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert isinstance(best.configure_optimizers(), torch.optim.Adam) and best.hparams.hidden == 8


def test_mixed_precision_trains_on_the_cpu(tmp_path):
    run = fit(tmp_path, "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "2")
    weights = last_checkpoint(run)["state_dict"]["linear.weight"]
    assert weights.dtype == torch.float32 and weights.abs().min() > 0  # fp32 master weights, trained
    assert math.isfinite(scalars(run)["val/loss"][-1][1])


def test_the_timed_last_checkpoint_is_written_during_training(tmp_path):
    steps = []

    class ReadLast(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if (tmp_path / "last.ckpt").exists():
                steps.append(torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"])

    dm = TabularDataModule(dataset="synthetic", synthetic_rows=200, synthetic_features=3, batch_size=16)
    last = LastCheckpoint(every_seconds=1e-6)  # due after every step
    last.dirpath = str(tmp_path)
    trainer = L.Trainer(max_steps=5, callbacks=[last, ReadLast()], logger=False, enable_progress_bar=False)
    trainer.fit(LogisticRegression(num_features=3), datamodule=dm)
    # saved after every step; Lightning runs checkpoint callbacks last, so each read sees the step before
    assert steps == [1, 2, 3, 4]


def test_the_timed_last_checkpoint_waits_for_the_end_of_an_accumulated_update(tmp_path):
    saved_at = []  # (batches of the epoch done, global_step) at each save

    class Recorded(L.Trainer):
        def save_checkpoint(self, *args, **kwargs) -> None:
            saved_at.append((self.fit_loop.epoch_loop.batch_progress.current.ready, self.global_step))
            super().save_checkpoint(*args, **kwargs)

    dm = TabularDataModule(dataset="synthetic", synthetic_rows=200, synthetic_features=3, batch_size=16)  # 8 batches
    last = LastCheckpoint(every_seconds=0)  # due at every batch
    last.dirpath = str(tmp_path)
    trainer = Recorded(
        max_epochs=1, accumulate_grad_batches=3, callbacks=[last], logger=False, enable_progress_bar=False
    )
    trainer.fit(LogisticRegression(num_features=3), datamodule=dm)
    # updates after batches 3, 6 and the epoch's last, 8; then the end of fit saves again
    assert saved_at == [(3, 1), (6, 2), (8, 3), (8, 3)]


def test_the_best_checkpoint_still_saves_every_n_train_steps_when_asked(tmp_path):
    every_3 = ("--checkpoint.every_n_train_steps", "3", "--checkpoint.save_top_k", "-1", "--checkpoint.monitor", "null")
    run = fit(
        tmp_path, *every_3, "--checkpoint.filename", "step={step}", "--trainer.max_steps", "7"
    )  # 8 batches an epoch
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step=3.ckpt", "step=6.ckpt"]


def test_a_default_fit_prints_no_warning(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "logreg", "fit", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout + result.stderr
    assert "warn" not in said.lower() and "Tip" not in said and "weights_only" not in said, said
    assert (tmp_path / "lightning_logs" / "minibatch" / "version_0" / "checkpoints" / "last.ckpt").is_file()
