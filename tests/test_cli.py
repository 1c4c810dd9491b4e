import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import scalars
from lightning.pytorch.callbacks import TQDMProgressBar

from logreg import LogisticRegression, TabularDataModule
from logreg.cli import build_cli, main

CONFIGS = Path(__file__).parent.parent / "configs"
TINY = ["--data.dataset", "synthetic", "--data.synthetic_rows", "200", "--data.synthetic_features", "3"]
# CPU, as in CI, even where a GPU is visible; progress bars and summaries would only fill the output.
QUIET = [
    *("--trainer.accelerator", "cpu"),
    *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
]


def fit(root: Path, *extra: str) -> None:
    main(["fit", *TINY, *QUIET, "--trainer.default_root_dir", str(root), *extra])


def test_fit_writes_tensorboard_metrics_checkpoints_and_the_resolved_config(tmp_path):
    fit(
        tmp_path,
        *("--data.batch_mode", "minibatch", "--data.batch_size", "16"),
        *("--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "5"),
    )
    run = tmp_path / "minibatch" / "version_0"
    series = scalars(run)
    for tag in ("train/loss", "train/loss_epoch", "val/loss", "val/acc", "val/auroc", "val/f1"):
        assert tag in series, tag
    # 120 training rows / 16 = 8 updates per epoch; with log_every_n_steps=5 the steps written are 4, 9, 14,
    # and epoch metrics land at the last update of their epoch
    assert [step for step, _ in series["train/loss"]] == [4, 9, 14]
    for tag in ("train/loss_epoch", "val/acc"):
        assert [step for step, _ in series[tag]] == [7, 15], tag
    assert series["epoch"] == [(4, 0), (7, 0), (7, 0), (9, 1), (14, 1), (15, 1), (15, 1)]  # as Lightning writes it
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("best-epoch*.ckpt"))) == 1
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["init_args"]["batch_mode"] == "minibatch"
    assert config["data"]["class_path"] == "logreg.TabularDataModule"  # the default data module
    assert config["model"]["class_path"] == "logreg.LogisticRegression"  # the default model
    assert "num_features" not in config["model"]["init_args"]  # linked from the data, never typed ...
    assert yaml.safe_load((run / "hparams.yaml").read_text())["num_features"] == 3  # ... yet the model got it


def test_the_progress_bar_is_lightnings_and_updates_every_50_steps(tmp_path):
    cli = build_cli(
        ["--trainer.enable_model_summary", "false", *TINY, "--trainer.default_root_dir", str(tmp_path)], run=False
    )
    (bar,) = [c for c in cli.trainer.callbacks if isinstance(c, TQDMProgressBar)]
    assert type(bar) is TQDMProgressBar and bar.refresh_rate == 50


def test_each_mode_logs_to_its_own_run_directory(tmp_path):
    for mode in ("full", "example"):
        fit(tmp_path, "--data.batch_mode", mode, "--trainer.max_epochs", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example", "full"]


def test_resuming_from_last_continues_the_epoch_and_step_count(tmp_path):
    args = ("--data.batch_mode", "minibatch", "--data.batch_size", "40", "--trainer.log_every_n_steps", "1")
    fit(tmp_path, *args, "--trainer.max_epochs", "2")
    fit(tmp_path, *args, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    first, resumed = tmp_path / "minibatch" / "version_0", tmp_path / "minibatch" / "version_1"
    assert [v for _, v in scalars(first)["epoch"]][-1] == 1
    epochs = sorted({int(v) for _, v in scalars(resumed)["epoch"]})
    assert epochs == [2, 3]  # continued, not restarted
    assert [s for s, _ in scalars(resumed)["train/loss"]] == list(range(6, 12))  # 3 updates per epoch
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 12
    assert (first / "checkpoints" / "last.ckpt").is_file()  # the earlier run is left as it was


def test_ckpt_path_last_without_an_earlier_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"no last\.ckpt under"):
        fit(tmp_path, "--ckpt_path", "last")


def test_predicting_from_a_checkpoint_returns_probabilities(tmp_path):
    fit(tmp_path, "--data.batch_mode", "full", "--model.lr", "2.0", "--trainer.max_epochs", "10")
    ckpt = tmp_path / "full" / "version_0" / "checkpoints" / "last.ckpt"
    dm = TabularDataModule(dataset="synthetic", synthetic_rows=200, synthetic_features=3)
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    batches = trainer.predict(LogisticRegression(num_features=3), datamodule=dm, ckpt_path=str(ckpt))
    probs = torch.cat(batches)
    assert probs.shape == (200,)
    assert ((probs > 0) & (probs < 1)).all() and probs.std() > 0.05
    # the statistics came from the checkpoint, i.e. from the training split, not from the predicted rows
    saved = torch.load(ckpt, weights_only=False)["TabularDataModule"]
    torch.testing.assert_close(dm.mean, saved["mean"])


def test_unknown_batch_mode_exits_non_zero_naming_the_choices(tmp_path):
    # configs/ddp.yaml, with two CPU processes instead of every GPU
    result = subprocess.run(
        [sys.executable, "-m", "logreg", "fit", "--data.batch_mode", "stochastic"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "stochastic" in result.stderr and all(m in result.stderr for m in ("full", "example", "minibatch"))
    assert not (tmp_path / "lightning_logs").exists()


def test_last_checkpoint_holds_the_final_epoch_even_when_val_loss_got_worse(tmp_path):
    # lr 50 overshoots, so val/loss rises after the first epochs; last.ckpt must still be the final state.
    fit(tmp_path, "--data.batch_mode", "full", "--model.lr", "50", "--trainer.max_epochs", "6")
    checkpoints = tmp_path / "full" / "version_0" / "checkpoints"
    (best,) = checkpoints.glob("best-epoch*.ckpt")
    assert best.name != "best-epoch5.ckpt"
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (6, 6)  # written at the end of fit: 6 epochs done


# DDP on CPU: 2 processes talking over gloo. 203 synthetic rows leave 121 training rows, odd, so the shards of a
# global batch cannot be equal; validation (41 rows) is split 20 / 21.
DDP_ROWS = ["--data.dataset", "synthetic", "--data.synthetic_rows", "203", "--data.synthetic_features", "3"]
MLP = ["--model", "logreg.models.MLP", "--model.hidden", "4"]
DDP_CPU = ["--config", "configs/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]


def identical(a: object, b: object) -> bool:
    """Bitwise equality of nested dicts / lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(identical, a, b))
    return a == b


def final_state(run: Path) -> tuple[dict, dict[str, list[tuple[int, float]]]]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False), scalars(run)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode_args", "single_process_args", "steps_per_epoch"),
    [
        (["--data.batch_mode", "full"], ["--data.batch_mode", "full"], 1),
        # One example per process, 2 per update: ceil(121 / 2) = 61 updates, the last one's shard on rank 0
        # empty. Minibatch mode runs the same code with B rows per process (its sharding: test_data.py).
        (["--data.batch_mode", "example"], ["--data.batch_mode", "minibatch", "--data.batch_size", "2"], 61),
        # another network: every parameter is used, so DDP needs no unused-parameter search
        (["--data.batch_mode", "full", *MLP], ["--data.batch_mode", "full", *MLP], 1),
    ],
    ids=["full", "example", "mlp"],
)
def test_ddp_on_two_processes_trains_like_one_process_with_the_global_batch(
    tmp_path, mode_args, single_process_args, steps_per_epoch
):
    common = [*DDP_ROWS, *QUIET, "--model.lr", "0.5", "--model.optimizer.momentum", "0.5", "--trainer.max_epochs", "3"]
    # configs/ddp.yaml, with two CPU processes instead of every GPU
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "logreg",
            "fit",
            *common,
            *mode_args,
            *DDP_CPU,
            "--trainer.default_root_dir",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    main(["fit", *common, *single_process_args, "--trainer.default_root_dir", str(tmp_path / "one")])
    (ddp_run,) = (tmp_path / "ddp").glob("*/version_0")
    (one_run,) = (tmp_path / "one").glob("*/version_0")
    (ddp, ddp_logged), (one, one_logged) = final_state(ddp_run), final_state(one_run)
    assert ddp["global_step"] == one["global_step"] == 3 * steps_per_epoch
    assert ddp["state_dict"].keys() == one["state_dict"].keys()
    for name, value in one["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][name], value, rtol=0, atol=1e-5)
    assert max(v.abs().max() for v in one["state_dict"].values()) > 0.1  # trained, not zeros
    # epoch metrics gathered from both ranks: the full training and validation sets
    for tag in ("train/loss_epoch", "val/loss", "val/acc", "val/auroc", "val/f1"):
        assert ddp_logged[tag][-1][1] == pytest.approx(one_logged[tag][-1][1], abs=1e-5), tag


@pytest.mark.parametrize(
    ("mode_args", "epochs"),
    [
        (["--config", str(CONFIGS / "lbfgs.yaml"), "--trainer.max_epochs", "6"], 6),  # L-BFGS history
        (["--data.batch_mode", "example", "--model.optimizer", "Adam", "--model.lr", "0.01"], 2),  # Adam moments
        (["--data.batch_mode", "minibatch", "--data.batch_size", "16", "--model.optimizer.momentum", "0.9"], 4),
        # a scheduler's state, and a model class of its own with its hyperparameters rebuilt from the checkpoint
        (
            [
                *("--model", "logreg.models.MLP", "--model.hidden", "4", "--data.batch_size", "16"),
                *("--model.lr_scheduler", "StepLR", "--model.lr_scheduler.step_size", "1"),
                *("--model.optimizer.momentum", "0.5"),
            ],
            4,
        ),
    ],
    ids=["full-lbfgs", "example-adam", "minibatch-momentum", "mlp-steplr"],
)
def test_resuming_halfway_ends_bit_identical_to_training_straight_through(tmp_path, mode_args, epochs):
    args = (*mode_args, "--trainer.log_every_n_steps", "1")
    fit(tmp_path / "straight", *args, "--trainer.max_epochs", str(epochs))
    fit(tmp_path / "split", *args, "--trainer.max_epochs", str(epochs // 2))
    fit(tmp_path / "split", *args, "--trainer.max_epochs", str(epochs), "--ckpt_path", "last")
    (straight_run,) = (tmp_path / "straight").glob("*/version_0")
    (resumed_run,) = (tmp_path / "split").glob("*/version_1")
    (straight, straight_logged), (resumed, resumed_logged) = final_state(straight_run), final_state(resumed_run)
    assert resumed["global_step"] == straight["global_step"] > 0
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for name, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
    assert straight["TabularDataModule"]["mean"].equal(resumed["TabularDataModule"]["mean"])
    optimizer_state = straight["optimizer_states"][0]["state"]
    assert optimizer_state, "the optimizer keeps state that the resumed run must have restored"
    assert identical(resumed["optimizer_states"][0]["state"], optimizer_state)
    assert identical(resumed["lr_schedulers"], straight["lr_schedulers"])
    # the resumed run logs only the second half; its final values equal the straight run's, step for step
    for tag, series in straight_logged.items():
        assert resumed_logged[tag][-1] == series[-1], tag


def test_ckpt_path_last_resumes_the_run_with_the_most_progress_and_says_which(tmp_path, capsys):
    args = ("--data.batch_mode", "full")
    fit(tmp_path, *args, "--trainer.max_epochs", "6")  # version_0: a longer run
    fit(tmp_path, *args, "--trainer.max_epochs", "3")  # version_1: newer, but shorter
    capsys.readouterr()
    fit(tmp_path, *args, "--trainer.max_epochs", "8", "--ckpt_path", "last")
    chosen = tmp_path / "full" / "version_0" / "checkpoints" / "last.ckpt"
    assert (
        f"--ckpt_path last: resuming from {chosen} (epoch 6, step 6), the most training progress among 2 runs of "
        "LogisticRegression on the same data." in capsys.readouterr().err.splitlines()
    )
    resumed = torch.load(tmp_path / "full" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (8, 8)  # 6 epochs from version_0, then 2 more


def test_resuming_with_no_epochs_left_ends_in_one_line_and_leaves_no_run_directory(tmp_path):
    fit(tmp_path, "--data.batch_mode", "full", "--trainer.max_epochs", "5")
    ckpt = tmp_path / "full" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path, "--data.batch_mode", "full", "--trainer.max_epochs", "5", "--ckpt_path", "last")
    assert exit_info.value.code == (
        f"error: --trainer.max_epochs 5 leaves nothing to train: the checkpoint {ckpt} has done 5 epochs already; "
        "pass a larger value, e.g. --trainer.max_epochs 10."
    )
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["version_0"]


def test_a_full_disk_during_fit_names_the_checkpoint_and_keeps_the_earlier_one(tmp_path, full_disk, monkeypatch):
    from logreg.machinery.atomic import AtomicFile

    opened = 0
    real_init = AtomicFile.__init__

    def counting_init(self, *args, **kwargs):  # the disk fills up after the first checkpoint
        nonlocal opened
        opened += 1
        if opened == 2:
            full_disk(budget=200)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(AtomicFile, "__init__", counting_init)
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path, "--data.batch_mode", "full", "--trainer.max_epochs", "3")
    checkpoints = tmp_path / "full" / "version_0" / "checkpoints"
    assert exit_info.value.code == (
        f"error: {checkpoints / 'best-epoch1.ckpt'}: cannot write this checkpoint (No space left on device); "
        "nothing was replaced, earlier files are intact."
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-epoch0.ckpt"]  # whole, no temporary file
    assert torch.load(checkpoints / "best-epoch0.ckpt", weights_only=True)["epoch"] == 0


def test_predict_keeps_the_checkpoints_column_names_out_of_the_parsed_configuration(tmp_path):
    fit(tmp_path, "--data.batch_mode", "full", "--trainer.max_epochs", "1")
    ckpt = tmp_path / "full" / "version_0" / "checkpoints" / "last.ckpt"
    out = tmp_path / "p.csv"
    args = ["predict", *TINY, *QUIET, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path)]
    cli = build_cli([*args, "--prediction.output", str(out)])
    # The argument parser copies a list value once per element whenever it checks the configuration: with
    # 10,000 column names that made predict take minutes. The names are read from the checkpoint instead.
    assert cli.config.predict.data.init_args.feature_columns is None
    assert cli.datamodule.feature_names == ["x0", "x1", "x2"] and cli.model.hparams.num_features == 3
    assert len(out.read_text().splitlines()) == 201  # and the predictions are written, one per row


def test_a_runs_config_yaml_reruns_into_a_new_run_to_the_same_weights(tmp_path):
    # with the progress bar on, as a user runs it: the bar is the template's, not a choice config.yaml records
    main(["fit", *TINY, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path)])
    first = tmp_path / "minibatch" / "version_0"
    config = yaml.safe_load((first / "config.yaml").read_text())
    assert (config["trainer"]["logger"], config["trainer"]["callbacks"]) == (None, None)
    main(["fit", "--config", str(first / "config.yaml"), "--trainer.enable_progress_bar", "false"])
    rerun = tmp_path / "minibatch" / "version_1"
    weights = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for run in (first, rerun)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert yaml.safe_load((rerun / "config.yaml").read_text())["trainer"]["enable_progress_bar"] is False


def test_a_run_without_a_logger_records_the_root_it_was_given_and_reruns_beside_it(tmp_path):
    fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.logger", "false")
    first = tmp_path / "minibatch" / "version_0"
    assert yaml.safe_load((first / "config.yaml").read_text())["trainer"]["default_root_dir"] == str(tmp_path)
    main(["fit", "--config", str(first / "config.yaml")])
    assert (tmp_path / "minibatch" / "version_1" / "checkpoints" / "last.ckpt").is_file()


def test_ckpt_path_last_takes_the_configured_model_class_and_its_furthest_run(tmp_path, capsys):
    fit(tmp_path, "--trainer.max_epochs", "3")  # version_0: a logistic regression, the furthest run
    mlp = ("--model", "logreg.models.MLP", "--model.hidden", "3")
    fit(tmp_path, *mlp, "--trainer.max_epochs", "2")  # version_1: the README's MLP recipe
    capsys.readouterr()
    fit(tmp_path, "--model", "logreg.models.MLP", "--trainer.max_epochs", "4", "--ckpt_path", "last")
    assert "--ckpt_path last: resuming from " + str(tmp_path / "minibatch/version_1/checkpoints/last.ckpt") in (
        capsys.readouterr().err
    )
    resumed = torch.load(tmp_path / "minibatch" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["hyper_parameters"]["_class_path"] == "logreg.models.MLP"  # the hidden size from the checkpoint
    assert (resumed["epoch"], resumed["hyper_parameters"]["hidden"]) == (4, 3)
    fit(tmp_path, "--trainer.max_epochs", "5", "--ckpt_path", "last")  # no class given: the default one's run
    resumed = torch.load(tmp_path / "minibatch" / "version_3" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["hyper_parameters"]["_class_path"] == "logreg.LogisticRegression" and resumed["epoch"] == 5


def test_ckpt_path_last_takes_a_run_of_the_data_given_and_names_the_others(tmp_path, capsys):
    wide = ["--data.dataset", "synthetic", "--data.synthetic_rows", "200", "--data.synthetic_features", "16"]
    run = ["fit", *QUIET, "--trainer.default_root_dir", str(tmp_path)]
    main([*run, "--trainer.max_epochs", "3"])  # banknote, 4 features: the furthest run
    main([*run, *wide, "--trainer.max_epochs", "1"])
    capsys.readouterr()
    main(["test", *QUIET, *wide, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"])
    assert "--ckpt_path last: using " + str(tmp_path / "minibatch/version_1/checkpoints/last.ckpt") in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        main([*run, *wide[:-1], "8", "--trainer.max_epochs", "4", "--ckpt_path", "last"])
    assert exit_info.value.code == (
        f"error: --ckpt_path last: no run under {tmp_path / 'minibatch'} of LogisticRegression on the same data "
        "(version_0: data.dataset 'banknote' (here 'synthetic'); version_1: data.synthetic_features 16 (here 8)); "
        "choose the model with --model and the data with the same --data arguments, or pass the checkpoint's path "
        "as --ckpt_path."
    )


def test_ckpt_path_last_resumes_the_runs_of_a_csv_logger_beside_tensorboard(tmp_path):
    # the README's YAML: checkpoints go to the first logger's run directory, where --ckpt_path last looks
    loggers = tmp_path / "loggers.yaml"
    loggers.write_text(
        "trainer:\n  logger:\n"
        f"    - {{class_path: logreg.machinery.loggers.TensorBoardLogger, init_args: {{save_dir: {tmp_path}, name: minibatch}}}}\n"
        f"    - {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {tmp_path}, name: minibatch_csv}}}}\n"
    )
    fit(tmp_path, "--config", str(loggers), "--trainer.max_epochs", "2")
    fit(tmp_path, "--config", str(loggers), "--trainer.max_epochs", "3", "--ckpt_path", "last")
    resumed = torch.load(tmp_path / "minibatch" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 3
    assert len((tmp_path / "minibatch_csv" / "version_1" / "metrics.csv").read_text().splitlines()) > 1


def test_resuming_after_max_steps_cut_an_epoch_ends_bit_identical_to_training_straight_through(tmp_path):
    # 120 training rows / 16 = 8 updates per epoch: step 13 stops in epoch 1, step 29 in epoch 3
    args = ("--data.batch_size", "16", "--model.optimizer.momentum", "0.9", "--trainer.log_every_n_steps", "1")
    fit(tmp_path / "straight", *args, "--trainer.max_steps", "29")
    fit(tmp_path / "split", *args, "--trainer.max_steps", "13")
    stopped = torch.load(tmp_path / "split/minibatch/version_0/checkpoints/last.ckpt", weights_only=True)
    assert stopped["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 5}]
    fit(tmp_path / "split", *args, "--trainer.max_steps", "29", "--ckpt_path", "last")
    (straight, straight_logged), (resumed, resumed_logged) = (
        final_state(tmp_path / "straight" / "minibatch" / "version_0"),
        final_state(tmp_path / "split" / "minibatch" / "version_1"),
    )
    assert resumed["global_step"] == straight["global_step"] == 29
    for name, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
    assert identical(resumed["optimizer_states"][0]["state"], straight["optimizer_states"][0]["state"])
    for tag in ("train/loss", "train/loss_epoch", "val/loss"):
        assert resumed_logged[tag][-1] == straight_logged[tag][-1], tag
