"""``logreg sweep``: trials are ordinary fit runs, results rerun exactly, studies are shared and resumed."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import scalars
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from logreg.launch import main
from logreg.sweep.sweep import Space, best_lr_per_batch_size, check_space

REPO = Path(__file__).resolve().parents[1]
MINIBATCH = str(REPO / "configs" / "minibatch.yaml")
# Keys that exist before and after the model takes optimizer classes; lr spans the useful range on banknote.
SPACE = """\
params:
  model.lr: {log_uniform: [0.3, 30]}
  data.batch_size: {choices: [16, 64]}
  model.weight_decay: {choices: [0.0, 0.001]}
"""
SHORT = """\
trainer:
  accelerator: cpu
  enable_progress_bar: false
"""


EPOCHS = ("--trainer.max_epochs", "3")  # given after `--`: fit arguments for every trial


def write_inputs(tmp: Path, space: str = SPACE) -> tuple[Path, Path]:
    (tmp / "space.yaml").write_text(space)
    (tmp / "short.yaml").write_text(SHORT)
    return tmp / "space.yaml", tmp / "short.yaml"


def sweep_args(tmp: Path, out: Path, trials: int, *extra: str, fit: Sequence[str] = EPOCHS) -> list[str]:
    """``logreg sweep`` on the minibatch config, quiet, with ``fit`` as every trial's fit arguments (after --)."""
    return [
        *("sweep", "--config", MINIBATCH, "--config", str(tmp / "short.yaml"), "--space", str(tmp / "space.yaml")),
        *("--trials", str(trials), "--out", str(out), *extra, "--", *fit),
    ]


def load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="logreg", storage=f"sqlite:///{out / 'study.db'}")


def last_val_loss(run_dir: Path) -> float:
    return scalars(run_dir)["val/loss"][-1][1]


def hparams_tab(run_dir: Path) -> dict[str, float | str]:
    """The hyperparameters a run shows in TensorBoard's HPARAMS tab (numbers and strings)."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            values = data.session_start_info.hparams
            return {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in values.items()}
    raise AssertionError(f"{run_dir}: no HPARAMS entry")


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, optuna.Study]:
    """A 6-trial sweep on banknote (3 epochs per trial), shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("sweep")
    write_inputs(tmp)
    out = tmp / "out"
    os.environ["PL_TRAINER_ACCELERATOR"] = "cpu"  # module scope: the autouse fixture has not run yet
    try:
        main(sweep_args(tmp, out, 6, "--seed", "0"))
    finally:
        del os.environ["PL_TRAINER_ACCELERATOR"]
    return out, load(out)


def test_six_trials_each_an_ordinary_run_with_its_config_checkpoints_and_state(swept):
    out, study = swept
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert run == out / "runs" / f"trial_{t.number:04d}" / "minibatch" / "version_0"
        config = yaml.safe_load((run / "config.yaml").read_text())
        # the run's resolved config holds exactly the sampled values, on top of the fit configs
        model = config["model"].get("init_args", config["model"])  # the model is chosen by class path
        assert (model["lr"], model["weight_decay"]) == (t.params["model.lr"], t.params["model.weight_decay"])
        assert config["data"]["init_args"]["batch_size"] == t.params["data.batch_size"]
        assert config["trainer"]["max_epochs"] == 3  # given after --
        tab = hparams_tab(run)  # TensorBoard's HPARAMS tab compares the trials by these
        assert (tab["lr"], tab["batch_size"]) == (pytest.approx(t.params["model.lr"]), t.params["data.batch_size"])
        series = scalars(run)
        pruned = t.state == TrialState.PRUNED
        assert [v for _, v in series["sweep/pruned"]] == [float(pruned)]
        # a pruned trial stopped at the epoch it was pruned at; a finished one validated all 3 epochs
        epochs = len(t.intermediate_values)
        assert len(series["val/loss"]) == epochs == (max(t.intermediate_values) + 1 if pruned else 3)
        assert [v for _, v in series["val/loss"]] == pytest.approx(list(t.intermediate_values.values()), rel=1e-6)
        if not pruned:
            assert t.value == pytest.approx(series["val/loss"][-1][1], rel=1e-6)
            assert (run / "checkpoints" / "last.ckpt").is_file()
            assert len(list((run / "checkpoints").glob("best-epoch*.ckpt"))) == 1


def test_the_best_trial_is_at_least_as_good_as_the_default_minibatch_config(swept, tmp_path):
    _, study = swept
    (tmp_path / "short.yaml").write_text(SHORT)
    root = tmp_path / "default"
    main(
        [
            "fit",
            "--config",
            MINIBATCH,
            "--config",
            str(tmp_path / "short.yaml"),
            *EPOCHS,
            "--trainer.default_root_dir",
            str(root),
        ]
    )
    default = last_val_loss(root / "minibatch" / "version_0")
    assert study.best_value <= default


def test_best_yaml_reruns_to_the_same_val_loss(swept):
    out, study = swept
    text = (out / "best.yaml").read_text()
    assert text.startswith(f"# Trial {study.best_trial.number} of study 'logreg'")
    main(["fit", "--config", str(out / "best.yaml")])
    rerun = out / "best" / "minibatch" / "version_0"  # not inside the trial's own directory
    assert last_val_loss(rerun) == pytest.approx(study.best_value, rel=1e-7, abs=0)
    assert len(list((out / "runs" / f"trial_{study.best_trial.number:04d}" / "minibatch").iterdir())) == 1


def test_the_table_lists_every_trial_and_the_figures_are_pngs(swept):
    out, study = swept
    with (out / "trials.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    for row, t in zip(rows, study.trials, strict=True):
        assert row["state"] == t.state.name
        assert float(row["model.lr"]) == t.params["model.lr"]
        assert int(row["rows_per_update"]) == t.params["data.batch_size"]
        assert (float(row["value"]) if row["value"] else None) == t.value
    for name in ("history.png", "importance.png", "lr_by_batch_size.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (out / name).stat().st_size > 10_000, name


def test_best_lr_per_batch_size_picks_the_lowest_value_of_each_size(swept):
    _, study = swept
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    expected = {}
    for size in sorted({t.params["data.batch_size"] for t in finished}):
        best = min((t for t in finished if t.params["data.batch_size"] == size), key=lambda t: t.value)
        expected[size] = (best.params["model.lr"], best.value)
    assert best_lr_per_batch_size(study) == expected


def test_a_rerun_sweep_keeps_its_finished_trials_and_adds_new_ones(tmp_path):
    write_inputs(tmp_path, "sampler: random\n" + SPACE.replace("{choices: [16, 64]}", "{choices: [64]}"))
    out = tmp_path / "out"
    main(sweep_args(tmp_path, out, 2, "--seed", "1"))
    before = [(t.number, t.state, t.params, t.value) for t in load(out).trials]
    main(sweep_args(tmp_path, out, 2, "--seed", "2"))
    after = load(out).trials
    assert [(t.number, t.state, t.params, t.value) for t in after[:2]] == before
    assert [t.number for t in after] == [0, 1, 2, 3]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [f"trial_{n:04d}" for n in range(4)]
    with (out / "trials.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 4  # the results cover the whole study


def sweep_process(tmp: Path, out: Path, trials: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "logreg", *sweep_args(tmp, out, trials, *extra)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study_without_losing_or_repeating_trials(tmp_path):
    write_inputs(tmp_path)
    out = tmp_path / "out"
    processes = [sweep_process(tmp_path, out, 3, "--seed", str(seed)) for seed in (1, 2)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    trials = load(out).trials
    assert [t.number for t in trials] == list(range(6))  # distinct, none lost: 3 + 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    workers = [t.user_attrs["worker"] for t in trials]
    assert sorted(workers.count(w) for w in set(workers)) == [3, 3]
    assert len({t.user_attrs["run_dir"] for t in trials}) == 6
    assert all(Path(t.user_attrs["run_dir"], "config.yaml").is_file() for t in trials)


def wait_for_the_second_trial_to_train(out: Path) -> None:
    """Until trial 1 has started fitting (its run wrote config.yaml), so trial 0 has finished; the deadline only
    guards against a hang, however loaded the machine."""
    deadline = time.monotonic() + 600
    while not list((out / "runs").glob("trial_0001/*/version_0/config.yaml")):
        assert time.monotonic() < deadline, "trial 1 did not start within 600 s"
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_fails_the_running_trial_at_once_and_keeps_the_finished_ones(tmp_path):
    write_inputs(tmp_path, SPACE.replace("{choices: [16, 64]}", "{choices: [1]}"))  # slow trials: seconds each
    out = tmp_path / "out"
    process = sweep_process(tmp_path, out, 20, "--seed", "1")
    wait_for_the_second_trial_to_train(out)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=600)  # a hang guard, not a speed limit
    assert process.returncode == 130, err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: stopped by SIGINT (Ctrl+C) in trial 1, which failed; the finished trials are kept: run the same "
        "command again to go on."
    ]
    assert "Traceback" not in err
    states = [t.state for t in load(out).trials]
    # Trial 1, interrupted while training, is failed at once: no heartbeat has to expire first.
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    with (out / "trials.csv").open() as file:  # the results were written on the way out
        assert [r["state"] for r in csv.DictReader(file)] == [state.name for state in states]


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_study_and_retries_the_trial_it_lost(tmp_path):
    write_inputs(tmp_path, SPACE.replace("{choices: [16, 64]}", "{choices: [1]}"))  # slow trials: seconds each
    out = tmp_path / "out"
    process = sweep_process(tmp_path, out, 20, "--seed", "1", "--heartbeat", "1")
    wait_for_the_second_trial_to_train(out)
    process.send_signal(signal.SIGKILL)  # no chance to clean up, as when a machine goes away
    process.wait()
    kept, lost = load(out).trials
    assert (kept.state, lost.state) == (TrialState.COMPLETE, TrialState.RUNNING)  # as the killed process left them
    time.sleep(2.5)  # its heartbeat is now stale (grace period: 2 heartbeats)
    main(sweep_args(tmp_path, out, 1, "--seed", "2", "--heartbeat", "1"))
    after = {t.number: t for t in load(out).trials}
    assert (after[0].state, after[0].params, after[0].value) == (kept.state, kept.params, kept.value)
    assert after[1].state == TrialState.FAIL
    # the new run's one trial was the lost one again, with the same values
    assert sorted(after) == [0, 1, 2]
    assert (after[2].system_attrs.get("failed_trial"), after[2].params) == (1, lost.params)
    assert after[2].state == TrialState.COMPLETE


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in-process; (exit status, the error line) as a shell would see them."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    code = exit_info.value.code
    if isinstance(code, str):  # SystemExit("error: ...") prints the text and exits with status 1
        return 1, code
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    return code, errors[0]


def lr_space(spec: str) -> str:
    return f"params:\n  model.lr: {spec}\n"


# (id, space file, extra sweep arguments, fit arguments after --, expected message as a regex)
MISTAKES = [
    (
        "unknown-key",
        "params:\n  model.lrr: {log_uniform: [0.1, 1]}\n",
        [],
        EPOCHS,
        r"space\.yaml: model\.lrr is not a key of the fit configuration",
    ),
    (
        "empty-range",
        lr_space("{log_uniform: [1, 0.1]}"),
        [],
        EPOCHS,
        r"space\.yaml: model\.lr: the range \[1, 0\.1\] is empty",
    ),
    (
        "no-choices",
        "params:\n  data.batch_size: {choices: []}\n",
        [],
        EPOCHS,
        r"space\.yaml: data\.batch_size has no choices",
    ),
    (
        "negative-log-bound",
        lr_space("{log_uniform: [-1, 1]}"),
        [],
        EPOCHS,
        r"space\.yaml: model\.lr: log_uniform needs a positive low bound; got -1\.",
    ),
    (
        "negative-lr-bound",
        lr_space("{uniform: [-0.5, 1]}"),
        [],
        EPOCHS,
        r"space\.yaml: model\.lr: the value -0\.5 is not accepted: lr must be positive",
    ),
    (
        "invalid-choice",
        "params:\n  data.batch_mode: {choices: [full, fast]}\n",
        [],
        EPOCHS,
        r"space\.yaml: data\.batch_mode: the value 'fast' is not accepted: .*'minibatch'",
    ),
    (
        "unknown-optimizer-class",
        "params:\n  model.optimizer: {choices: [torch.optim.Adam, torch.optim.Nope]}\n",
        [],
        EPOCHS,
        r"space\.yaml: model\.optimizer: the value 'torch\.optim\.Nope' is not accepted: ",
    ),
    ("no-params", "params: {}\n", [], EPOCHS, r"space\.yaml: params must map at least one config key"),
    (
        "unknown-sampler",
        "sampler: grid\n" + SPACE,
        [],
        EPOCHS,
        r"space\.yaml: sampler must be one of tpe, random; got 'grid'",
    ),
    (
        "billion-laughs",
        "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
        [],
        EPOCHS,
        r"space\.yaml: refused: its aliases \(\*name\) expand 29 written nodes to 1,234,567,909,",
    ),
    (
        "unknown-fit-argument",
        SPACE,
        [],
        ("--trainer.epochs_max", "3"),
        r"error: the fit configuration is not accepted: unrecognized arguments: --trainer\.epochs_max 3\.",
    ),
    (
        "unreachable-sqlite",
        SPACE,
        ["--storage", "sqlite:////nonexistent/dir/study.db"],
        EPOCHS,
        r"--storage sqlite:////nonexistent/dir/study\.db: cannot open the study database \(.*unable to open database file",
    ),
    (
        "unknown-database",
        SPACE,
        ["--storage", "nosuchdb://host/study"],
        EPOCHS,
        r"--storage nosuchdb://host/study: cannot open the study database \(",
    ),
]


@pytest.mark.parametrize(("space", "extra", "fit", "message"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_mistakes_end_in_one_line_before_any_trial(tmp_path, capsys, space, extra, fit, message):
    write_inputs(tmp_path, space)
    out = tmp_path / "out"
    code, line = run_cli(sweep_args(tmp_path, out, 6, *extra, fit=fit), capsys)
    assert code == 1
    assert re.fullmatch(r"error: .*\.", line) and re.search(message, line), line
    assert not (out / "runs").exists()  # no trial ran


def test_a_missing_space_file_and_a_missing_option_are_one_line_each(tmp_path, capsys):
    code, line = run_cli(["sweep", "--space", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert (code, line) == (1, f"error: {tmp_path / 'nope.yaml'}: no such file.")
    code, line = run_cli(["sweep", "--out", str(tmp_path / "o")], capsys)
    assert (code, line) == (2, "error: the following arguments are required: space")
    assert not (tmp_path / "o").exists()


def test_the_shipped_space_names_keys_and_values_the_fit_config_accepts():
    space = Space.read(REPO / "configs" / "sweep.yaml")
    assert space.metric == "val/loss" and space.direction == "minimize"
    assert {"model.lr", "data.batch_size"} <= {p.key for p in space.params}
    check_space(
        space, ["--config", MINIBATCH], "configs/sweep.yaml"
    )  # builds the fit run once per value; raises if one fails


def test_a_space_key_can_choose_the_optimizer_class(tmp_path):
    space = Space.parse({"params": {"model.optimizer": {"choices": ["torch.optim.SGD", "torch.optim.Adam"]}}}, "s")
    check_space(space, ["--config", MINIBATCH], "s")  # both classes build
    (tmp_path / "space.yaml").write_text("params:\n  model.optimizer: {choices: [torch.optim.Adam]}\n")
    (tmp_path / "short.yaml").write_text(SHORT)
    main(sweep_args(tmp_path, tmp_path / "out", 1, fit=("--trainer.max_epochs", "1")))
    (trial,) = load(tmp_path / "out").trials
    config = yaml.safe_load((Path(trial.user_attrs["run_dir"]) / "config.yaml").read_text())
    assert config["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.Adam"


def test_a_range_may_be_written_as_yaml_reads_1e_3():
    space = Space.parse(yaml.safe_load("params:\n  model.lr: {log_uniform: [1e-3, 10]}\n"), "s")  # '1e-3': a str
    assert space.params[0].values == (0.001, 10.0)


@pytest.mark.parametrize("pruner", ["{n_startup_trials: 1}", "false"])
def test_the_median_pruner_stops_trials_worse_than_the_finished_ones_unless_it_is_off(tmp_path, pruner):
    # lr 0.001 is far worse than lr 5 after any epoch, so once an lr-5 trial has finished, lr-0.001 trials are
    # pruned at their first validation, and lr-5 trials never are.
    space = f"sampler: random\npruner: {pruner}\nparams:\n  model.lr: {{choices: [5.0, 0.001]}}\n  data.batch_size: {{choices: [64]}}\n"
    write_inputs(tmp_path, space)
    main(sweep_args(tmp_path, tmp_path / "out", 6, "--seed", "0", fit=("--trainer.max_epochs", "3")))
    trials = load(tmp_path / "out").trials
    assert [t.params["model.lr"] for t in trials] == [0.001, 5.0, 0.001, 0.001, 5.0, 5.0]  # as seed 0 draws
    first_good = min(t.number for t in trials if t.params["model.lr"] == 5.0)
    for t in trials:
        pruned = pruner != "false" and t.params["model.lr"] == 0.001 and t.number > first_good
        assert t.state == (TrialState.PRUNED if pruned else TrialState.COMPLETE), t.number
        assert len(t.intermediate_values) == (1 if pruned else 3)
        assert [v for _, v in scalars(Path(t.user_attrs["run_dir"]))["sweep/pruned"]] == [float(pruned)]


def test_best_yaml_of_trials_with_a_progress_bar_reruns_without_one(tmp_path):
    write_inputs(tmp_path, "params:\n  model.lr: {choices: [0.5]}\n")
    out = tmp_path / "out"
    # the trials show the bar (the config does not turn it off); best.yaml records the trial's choices only
    args = ["sweep", "--config", MINIBATCH, "--space", str(tmp_path / "space.yaml"), "--trials", "1"]
    main([*args, "--out", str(out), "--", "--trainer.max_epochs", "1"])
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["trainer"]["callbacks"] is None and best["trainer"]["logger"] is None
    main(["fit", "--config", str(out / "best.yaml"), "--trainer.enable_progress_bar", "false"])
    assert last_val_loss(out / "best" / "minibatch" / "version_0") == pytest.approx(load(out).best_value, rel=1e-7)


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")])
def test_a_signal_during_a_trial_fails_it_and_ends_the_sweep_in_one_line(
    tmp_path, monkeypatch, capsys, signum, code, name
):
    from logreg.models import LogisticRegression

    write_inputs(tmp_path)
    out = tmp_path / "out"
    original, fits = LogisticRegression.training_step, []

    def signalled(self, batch, batch_idx):  # in the second trial's fit, at its fourth update
        if self.global_step == 0 and batch_idx == 0:
            fits.append(self)
        if len(fits) == 2 and self.global_step == 3:
            os.kill(os.getpid(), signum)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LogisticRegression, "training_step", signalled)
    with pytest.raises(SystemExit) as stopped:
        main(sweep_args(tmp_path, out, 6, "--seed", "0"))
    assert stopped.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: stopped by {name} in trial 1, which failed; the finished trials are kept: run the same command "
        "again to go on."
    ]
    assert [t.state for t in load(out).trials] == [TrialState.COMPLETE, TrialState.FAIL]
    with (out / "trials.csv").open() as file:  # the results were written on the way out
        assert [r["state"] for r in csv.DictReader(file)] == ["COMPLETE", "FAIL"]


def test_a_rerun_with_the_same_seed_goes_on_with_new_values(tmp_path):
    write_inputs(tmp_path, "sampler: random\n" + lr_space("{log_uniform: [0.3, 30]}"))
    out = tmp_path / "out"
    for _ in range(2):  # the same command twice: the seed alone would propose trials 0 and 1 again
        main(sweep_args(tmp_path, out, 2, "--seed", "1", fit=("--trainer.max_epochs", "1")))
    lrs = [t.params["model.lr"] for t in load(out).trials]
    assert len(lrs) == 4 and len(set(lrs)) == 4, lrs
    main(sweep_args(tmp_path, tmp_path / "again", 2, "--seed", "1", fit=("--trainer.max_epochs", "1")))
    assert [t.params["model.lr"] for t in load(tmp_path / "again").trials] == lrs[:2]  # a new study: reproducible


def test_a_sqlite_storage_inside_a_new_out_directory(tmp_path):
    write_inputs(tmp_path, lr_space("{choices: [0.5]}"))
    out = tmp_path / "new" / "out"
    storage = f"sqlite:///{out / 'mine.db'}"
    main(sweep_args(tmp_path, out, 1, "--storage", storage, fit=("--trainer.max_epochs", "1")))
    study = optuna.load_study(study_name="logreg", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert (out / "trials.csv").is_file() and not (out / "study.db").exists()
