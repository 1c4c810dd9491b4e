"""Every mistake in the issue's catalogue ends, through the CLI, in one line naming what and where, exit != 0."""

import gzip
import hashlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUIET, scalars, separable_csv

from logreg.cli import main
from logreg.models import LogisticRegression


def run(args: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in-process; (exit status, the error line) as a shell would see them."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    code = exit_info.value.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # SystemExit("error: ...") prints the text and exits with status 1
        return 1, code
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return code, errors[0]


def fit_args(root: Path, *extra: str) -> list[str]:
    return ["fit", *QUIET, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(root / "logs"), *extra]


def write(root: Path, text: str, name: str = "data.csv") -> str:
    (root / name).write_text(text)
    return str(root / name)


# (id, files to write as {name: text}, extra fit arguments, expected message as a regex)
CSV_CASES = [
    ("missing-path", {}, ["--data.dataset", "{root}/nope.csv"], r"nope\.csv: no such file\."),
    ("empty-file", {"d.csv": ""}, ["--data.dataset", "{root}/d.csv"], r"d\.csv: the file is empty"),
    (
        "header-only",
        {"d.csv": "a,b,label\n"},
        ["--data.dataset", "{root}/d.csv"],
        r"d\.csv: has a header but no data rows",
    ),
    (
        "non-numeric-feature",
        {"d.csv": "a,b,label\n1,2,0\n3,four,1\n"},
        ["--data.dataset", "{root}/d.csv"],
        r"d\.csv: column 'b' holds the non-numeric value 'four' on line 3\.",
    ),
    (
        "nan-feature",
        {"d.csv": "a,b,label\n1,2,0\nnan,4,1\n"},
        ["--data.dataset", "{root}/d.csv"],
        r"d\.csv: column 'a' holds nan on line 3; features must be finite\.",
    ),
    (
        "inf-feature",
        {"d.csv": "a,b,label\n1,-inf,0\n3,4,1\n"},
        ["--data.dataset", "{root}/d.csv"],
        r"d\.csv: column 'b' holds -inf on line 2; features must be finite\.",
    ),
    (
        "labels-minus-one-one",
        {"d.csv": "a,b,label\n1,2,-1\n3,4,1\n"},
        ["--data.dataset", "{root}/d.csv"],
        r"d\.csv: labels in column 'label' must be 0 or 1, found -1 on line 2\.",
    ),
    (
        "labels-one-two",
        {"d.csv": "a,b,label\n1,2,1\n3,4,2\n"},
        ["--data.dataset", "{root}/d.csv"],
        r"d\.csv: labels in column 'label' must be 0 or 1, found 2 on line 3\.",
    ),
    (
        "labels-strings",
        {"d.csv": "a,b,label\n1,2,yes\n3,4,no\n"},
        ["--data.dataset", "{root}/d.csv"],
        r"d\.csv: labels in column 'label' must be 0 or 1, found 'yes' on line 2\.",
    ),
    (
        "missing-label-column",
        {"d.csv": "a,b,c\n1,2,0\n3,4,1\n"},
        ["--data.dataset", "{root}/d.csv", "--data.label_column", "label"],
        r"d\.csv: no label column 'label'; the columns are a, b, c\.",
    ),
    (
        "labels-all-zero",
        {"d.csv": "a,b,label\n" + "".join(f"{i},{i % 7},0\n" for i in range(50))},
        ["--data.dataset", "{root}/d.csv"],
        r"d\.csv: all 50 rows have label 0 \(column 'label'\); a binary classifier needs rows of both classes, "
        r"0 and 1\.",
    ),
    (
        "too-small-to-split",
        {"d.csv": "a,label\n1,0\n2,1\n"},
        ["--data.dataset", "{root}/d.csv"],
        r"d\.csv: 2 rows are too few to split into non-empty train \(2\), val \(0\) and test \(0\) sets\.",
    ),
]


@pytest.mark.parametrize(("files", "extra", "message"), [c[1:] for c in CSV_CASES], ids=[c[0] for c in CSV_CASES])
def test_bad_data_files(tmp_path, capsys, files, extra, message):
    for name, text in files.items():
        write(tmp_path, text, name)
    code, line = run(fit_args(tmp_path, *(a.format(root=tmp_path) for a in extra)), capsys)
    assert code == 1
    assert line.startswith("error: ") and len(line.splitlines()) == 1
    assert re.search(message, line), line


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_dataset_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path, capsys, kind):
    path = {"fifo": tmp_path / "pipe.csv", "device": Path("/dev/zero"), "directory": tmp_path / "half-prepared"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":  # what a `logreg prepare` that never finished would leave, but for logreg.json
        (path / "train").mkdir(parents=True)
    code, line = run(fit_args(tmp_path, "--data.dataset", str(path)), capsys)
    expected = {
        "fifo": "is a named pipe (FIFO), not a regular file;",
        "device": "is a character device, not a regular file;",
        "directory": "is a directory without logreg.json, so neither a CSV file nor a directory made by `logreg prepare`",
    }[kind]
    assert code == 1 and line.startswith(f"error: {path}: {expected}"), line
    assert not (tmp_path / "logs").exists()


# (id, file bytes, expected message as a regex); the same file given to fit and to predict
FILE_CASES = [
    (
        "latin-1",
        "a,b,c,label\n1,2,3,0\n4,5,6é,1\n".encode("latin-1"),
        r"d\.csv: is not UTF-8 text \(byte 0xe9 on line 3",
    ),
    ("utf-16", "a,b,c,label\n1,2,3,0\n".encode("utf-16"), r"d\.csv: is UTF-16 text; save it as UTF-8"),
    ("gzip", gzip.compress(b"a,b,c,label\n1,2,3,0\n"), r"d\.csv: is a gzip-compressed file; decompress it first"),
    ("digit-separator", b"a,b,c,label\n1,2,3,0\n1_000,2,3,1\n", r"d\.csv: column 'a' holds '1_000' on line 3;"),
    (
        "beyond-float32",
        b"a,b,c,label\n1,2,3,0\n1,1e39,3,1\n",
        r"d\.csv: column 'b' holds 1e\+39 on line 3, beyond float32",
    ),
]


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
@pytest.mark.parametrize("command", ["fit", "predict"])
def test_files_that_are_not_numeric_utf8_csv(trained, tmp_path, capsys, raw, message, command):
    (tmp_path / "d.csv").write_bytes(raw)
    data = tmp_path / "d.csv"
    args = (
        fit_args(tmp_path, "--data.dataset", str(data))
        if command == "fit"
        else predict_args(trained["ckpt"], data, tmp_path)
    )
    code, line = run(args, capsys)
    assert code == 1
    assert re.search(message, line), line
    if command == "predict":
        assert not (tmp_path / "logs" / "predict" / "version_0" / "d.predictions.csv").exists()


def test_predict_reads_quoted_numbers_and_a_byte_order_mark_like_plain_csv(trained, tmp_path):
    x = torch.tensor([[0.5, -1.25, -3.0], [-0.045, 2.0, -2.5]])
    plain, odd = tmp_path / "plain.csv", tmp_path / "odd.csv"
    plain.write_text("a,b,c\n" + "".join(",".join(f"{v:g}" for v in row) + "\n" for row in x.tolist()))
    odd.write_bytes(
        b"\xef\xbb\xbf" + ("a,b,c\n" + "".join(",".join(f'"{v:g}"' for v in row) + "\n" for row in x.tolist())).encode()
    )
    for name in ("plain", "odd"):
        main(
            predict_args(
                trained["ckpt"],
                tmp_path / f"{name}.csv",
                tmp_path,
                "--prediction.output",
                str(tmp_path / f"{name}.out"),
            )
        )
    assert (tmp_path / "odd.out").read_text() == (tmp_path / "plain.out").read_text()
    assert len((tmp_path / "odd.out").read_text().splitlines()) == 3


ARGUMENT_CASES = [
    ("batch-size-zero", ["--data.batch_size", "0"], r"batch_size must be a positive number of rows; got 0\."),
    ("batch-size-negative", ["--data.batch_size", "-5"], r"batch_size must be a positive number of rows; got -5\."),
    (
        "unknown-batch-mode",
        ["--data.batch_mode", "stochastic"],
        r"Parser key \"batch_mode\".*'full', 'example', 'minibatch'.*stochastic",
    ),
    ("val-fraction-zero", ["--data.val_fraction", "0"], r"val_fraction must lie strictly between 0 and 1; got 0"),
    ("val-fraction-one", ["--data.val_fraction", "1"], r"val_fraction must lie strictly between 0 and 1; got 1"),
    (
        "test-fraction-negative",
        ["--data.test_fraction", "-0.1"],
        r"test_fraction must lie strictly between 0 and 1; got -0\.1",
    ),
    (
        "fractions-sum-to-one",
        ["--data.val_fraction", "0.5", "--data.test_fraction", "0.5"],
        r"val_fraction \+ test_fraction must be below 1 to leave training rows; got 1\.",
    ),
    (
        "fractions-sum-above-one",
        ["--data.val_fraction", "0.7", "--data.test_fraction", "0.4"],
        r"val_fraction \+ test_fraction must be below 1 to leave training rows; got 1\.1\.",
    ),
    (
        "threshold-outside",
        ["--prediction.threshold", "1.5"],
        r"threshold must lie strictly between 0 and 1; got 1\.5\.",
    ),
    ("lr-negative", ["--model.lr", "-0.1"], r"lr must be positive and at most 3\.4e\+38; got -0\.1\."),
    ("lr-overflowing-float32", ["--model.lr", "1e39"], r"lr must be positive and at most 3\.4e\+38; got 1e\+39\."),
    (
        "data-seed-beyond-64-bits",
        ["--data.seed", "99999999999999999999"],
        r"seed must lie between 0 and 4294967295; got 99999999999999999999\.",
    ),
    (
        "label-column-for-banknote",
        ["--data.label_column", "target"],
        r"label_column names a column of a CSV file; the banknote data's label column is 'class', got 'target'\.",
    ),
    (
        "optimizer-option-torch-refuses",
        ["--model.optimizer.momentum", "-1"],
        r"--model\.optimizer torch\.optim\.SGD refuses its options: Invalid momentum value: -1\.0 \(they are set as "
        r"--model\.optimizer\.<option>; the learning rate is --model\.lr, 0\.1 here\)\.",
    ),
]

# Trainer flags Lightning would accept and then fail on with a traceback, or misread: exit 2, as the command line's.
TRAINER_FLAG_CASES = [
    (
        "log-every-zero",
        ["--trainer.log_every_n_steps", "0"],
        r"--trainer\.log_every_n_steps must be 1 or more; got 0\.",
    ),
    (
        "max-epochs-negative",
        ["--trainer.max_epochs", "-5"],
        r"--trainer\.max_epochs must be a positive number, or -1 for no limit; got -5\.",
    ),
    (
        "devices-zero",
        ["--trainer.devices", "0"],
        r"--trainer\.devices must be a positive number of devices, -1 \(all of them\) or auto; got 0\.",
    ),
    (
        "seed-negative",
        ["--seed_everything", "-3"],
        r"--seed_everything must lie between 0 and 4294967295, or be true for a random seed; got -3\.",
    ),
    (
        "unknown-strategy",
        ["--trainer.strategy", "nonsense"],
        r"--trainer: You selected an invalid strategy name: `strategy='nonsense'`\.",
    ),
    pytest.param(
        "gpu-without-one",
        ["--trainer.accelerator", "gpu"],
        r"--trainer\.accelerator gpu: this machine has no usable CUDA GPU .*; use --trainer\.accelerator cpu or auto\.",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
    ),
]


@pytest.mark.parametrize(
    ("name", "extra", "message"), TRAINER_FLAG_CASES, ids=lambda v: v if isinstance(v, str) else ""
)
def test_trainer_flags_that_cannot_run_end_in_one_line_with_code_2(tmp_path, capsys, name, extra, message):
    code, line = run(fit_args(tmp_path, *extra), capsys)
    assert code == 2
    assert re.search(message, line), line
    assert not (tmp_path / "logs").exists()


def test_a_validation_interval_longer_than_an_epoch(tmp_path, capsys):
    code, line = run(fit_args(tmp_path, "--trainer.val_check_interval", "500"), capsys)
    # Lightning's own message, on one line: it names the flag, the value and the 26 batches of an epoch
    assert code == 2 and "`val_check_interval` (500)" in line and "(26)" in line and "\n" not in line, line


def test_rerunning_without_a_logger_into_the_same_directory_keeps_both_runs(tmp_path):
    args = fit_args(tmp_path, "--data.batch_mode", "full", "--trainer.logger", "false", "--trainer.max_epochs", "1")
    main(args)
    first = fingerprint(tmp_path / "logs" / "full" / "version_0")
    main(args)  # Lightning's SaveConfigCallback refused: config.yaml already existed
    assert fingerprint(tmp_path / "logs" / "full" / "version_0") == first
    assert {"config.yaml", "checkpoints/last.ckpt"} <= set(fingerprint(tmp_path / "logs" / "full" / "version_1"))


@pytest.mark.parametrize("command", ["validate", "test"])
def test_evaluating_needs_a_checkpoint(tmp_path, capsys, command):
    code, line = run([command, *QUIET, "--trainer.default_root_dir", str(tmp_path / "logs")], capsys)
    assert (code, line) == (
        1,
        f"error: {command} needs a trained model: pass --ckpt_path CHECKPOINT (or --ckpt_path last).",
    )
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("command", ["validate", "test"])
def test_evaluating_a_checkpoint_writes_its_metrics_to_a_run_of_its_own(trained, tmp_path, command):
    logs = tmp_path / "logs"
    shutil.copytree(trained["root"] / "logs", logs)
    args = [command, "--ckpt_path", "last", "--data.batch_mode", "full", "--data.dataset", str(trained["data"])]
    main([*args, *QUIET, "--trainer.default_root_dir", str(logs)])
    main([*args, *QUIET, "--trainer.default_root_dir", str(logs)])
    runs = sorted((logs / command).iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]  # nothing else, no empty directory
    stage = "val" if command == "validate" else "test"
    trained_val_loss = scalars(logs / "full" / "version_0")["val/loss"][-1][1]  # after the last epoch
    for run_dir in runs:
        logged = scalars(run_dir)
        assert {f"{stage}/{m}" for m in ("loss", "acc", "auroc", "f1")} <= logged.keys()
        loss = logged[f"{stage}/loss"][0][1]
        assert loss < math.log(2) - 0.1  # the trained weights, not the untrained zeros (loss ln 2)
        if command == "validate":
            assert loss == pytest.approx(trained_val_loss, abs=1e-6)  # last.ckpt's weights on the same split
    assert sorted(p.name for p in (logs / "full").iterdir()) == ["version_0"]  # the training runs, untouched


@pytest.mark.parametrize(("extra", "message"), [c[1:] for c in ARGUMENT_CASES], ids=[c[0] for c in ARGUMENT_CASES])
def test_bad_arguments_fail_before_any_run_directory_is_made(tmp_path, capsys, extra, message):
    code, line = run(fit_args(tmp_path, *extra), capsys)
    assert code != 0
    assert re.search(message, line), line
    assert not (tmp_path / "logs").exists()


def test_a_momentum_that_makes_the_loss_diverge_is_named_with_the_learning_rate(tmp_path, capsys):
    args = ["--model.optimizer.momentum", "5", "--trainer.max_epochs", "10"]  # 5^t overflows float32 by t = 56
    code, line = run(fit_args(tmp_path, *args), capsys)
    assert code == 1
    # stopped at the first NaN or inf, or at the first epoch whose mean loss is as good as infinite
    diverged = r"the loss became (nan|inf) at epoch \d+, step \d+ \(batch \d+ of the epoch\)"
    beyond = r"the mean training loss of epoch \d+ was \S+, beyond 87\.3, where .*"
    assert re.fullmatch(
        rf"error: training stopped: ({diverged}|{beyond}), under SGD with lr 0\.1, momentum 5; the updates grew "
        r"without bound, which a smaller learning rate or momentum, or features on a smaller scale, prevent\.",
        line,
    ), line


def test_a_learning_rate_that_makes_the_loss_infinite_stops_training_naming_epoch_and_step(tmp_path, capsys):
    data = ["--data.dataset", "synthetic", "--data.synthetic_rows", "200", "--data.synthetic_features", "3"]
    args = [*data, "--data.batch_mode", "minibatch", "--data.batch_size", "10", "--trainer.log_every_n_steps", "1"]
    code, line = run(fit_args(tmp_path, *args, "--model.lr", "1e38"), capsys)
    assert code == 1
    found = re.fullmatch(
        r"error: training stopped: the loss became inf at epoch 0, step (\d+) \(batch (\d+) of the epoch\), "
        r"under SGD with lr 1e\+38, momentum 0; the updates grew without bound, which a smaller learning rate or "
        r"momentum, or features on a smaller scale, prevent\.",
        line,
    )
    assert found, line
    step = int(found[1])
    assert int(found[2]) == step  # epoch 0: batch index and step agree
    # Every step before it was logged and finite, it and later ones were not: the one named is the first.
    run_dir = tmp_path / "logs" / "minibatch" / "version_0"
    logged = scalars(run_dir)["train/loss"]
    assert [s for s, _ in logged] == list(range(step))
    assert all(math.isfinite(v) for _, v in logged) and logged[0][1] == pytest.approx(math.log(2))  # zero weights
    assert not (run_dir / "checkpoints").exists()  # stopped within epoch 0: no checkpoint of broken weights


# --- prediction: the checkpoint and the file must fit each other ------------------------------------------


def predict_args(ckpt, data, root: Path, *extra: str) -> list[str]:
    common = ["--data.dataset", str(data), *QUIET, "--trainer.default_root_dir", str(root / "logs"), *extra]
    return ["predict", "--ckpt_path", str(ckpt), *common]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("a,b", r"f\.csv: no column 'c'; the model takes 3 features: a, b, c\."),
        ("a,b,label", r"f\.csv: no column 'c'; the model takes 3 features: a, b, c\."),
        (
            "a,b,c,d",
            r"f\.csv: column 'd' is neither one of the model's features nor the label column 'label'; "
            r"the model takes 3 features: a, b, c\.",
        ),
        ("x0,x1,x2", r"f\.csv: no column 'a'; the model takes 3 features: a, b, c\."),
    ],
    ids=["fewer-features", "fewer-features-with-label", "more-features", "other-names"],
)
def test_a_feature_count_that_differs_from_the_checkpoint(trained, tmp_path, capsys, header, message):
    width = len(header.split(","))
    data = write(tmp_path, header + "\n" + ",".join(["1"] * width) + "\n", "f.csv")
    code, line = run(predict_args(trained["ckpt"], data, tmp_path), capsys)
    assert code == 1
    assert re.search(message, line), line
    assert not (tmp_path / "logs").exists()  # found from the header, before a run directory is made


def test_feature_columns_that_contradict_the_checkpoint(trained, tmp_path, capsys):
    args = predict_args(trained["ckpt"], trained["data"], tmp_path, "--data.feature_columns", "[b, a, c]")
    code, line = run(args, capsys)
    assert code == 1
    assert "--data.feature_columns b, a, c differ from the features the checkpoint" in line
    assert line.endswith("was trained on: a, b, c.")


def test_a_checkpoint_written_before_the_names_were_saved_still_checks_the_feature_count(trained, tmp_path, capsys):
    old = torch.load(trained["ckpt"], weights_only=True)
    del old["TabularDataModule"]["feature_names"], old["TabularDataModule"]["label_name"]
    torch.save(old, tmp_path / "old.ckpt")
    data = write(tmp_path, "a,b,label\n1,2,0\n", "f.csv")
    code, line = run(predict_args(tmp_path / "old.ckpt", data, tmp_path), capsys)
    assert (code, line.split(": ", 1)[1]) == (
        1,
        f"{data}: has 2 features, but the checkpoint {tmp_path}/old.ckpt holds a model of 3.",
    )


def truncated(ckpt: Path, dest: Path) -> Path:
    dest.write_bytes(ckpt.read_bytes()[:400])
    return dest


def unrelated_torch_file(ckpt: Path, dest: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}}, dest)
    return dest


def a_csv_file(ckpt: Path, dest: Path) -> Path:
    dest.write_text("a,b\n1,2\n")
    return dest


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            truncated,
            r"x\.ckpt: not a readable checkpoint; it is truncated, damaged or another kind of file \(torch\.load raised RuntimeError\)\.",
        ),
        (a_csv_file, r"x\.ckpt: not a readable checkpoint; it is truncated, damaged or another kind of file"),
        (
            unrelated_torch_file,
            r"x\.ckpt: not a Lightning checkpoint; it lacks the model's weights or Lightning's version\.",
        ),
        (lambda ckpt, dest: dest, r"x\.ckpt: no such checkpoint file\."),
    ],
    ids=["truncated", "csv-file", "unrelated-torch-file", "missing"],
)
def test_a_checkpoint_that_is_not_one(trained, tmp_path, capsys, make, message):
    ckpt = make(trained["ckpt"], tmp_path / "x.ckpt")
    code, line = run(predict_args(ckpt, trained["data"], tmp_path), capsys)
    assert code == 1
    assert re.search(message, line), line


def test_resuming_from_a_damaged_checkpoint(trained, tmp_path, capsys):
    ckpt = truncated(trained["ckpt"], tmp_path / "x.ckpt")
    code, line = run(fit_args(tmp_path, "--data.dataset", str(trained["data"]), "--ckpt_path", str(ckpt)), capsys)
    assert (code, line) == (
        1,
        f"error: {ckpt}: not a readable checkpoint; it is truncated, damaged or another kind of file (torch.load raised RuntimeError).",
    )


def test_predict_without_a_checkpoint(trained, tmp_path, capsys):
    code, line = run(["predict", "--data.dataset", str(trained["data"]), *QUIET], capsys)
    assert (code, line) == (
        1,
        "error: predict needs a trained model: pass --ckpt_path CHECKPOINT (or --ckpt_path last).",
    )


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning: seconds
def test_the_cli_prints_no_traceback_in_a_real_process(tmp_path):
    bad = write(tmp_path, "a,b,label\n1,2,0\n3,4,7\n")
    result = subprocess.run(
        [sys.executable, "-m", "logreg", "fit", "--data.dataset", bad, *QUIET],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "LightningCLI's args parameter" not in result.stderr  # the launcher hands it the command line
    assert (
        result.stderr.splitlines()[-1] == f"error: {bad}: labels in column 'label' must be 0 or 1, found 7 on line 3."
    )


# --- nothing lost -----------------------------------------------------------------------------------------


def fingerprint(directory: Path) -> dict[str, str]:
    """Path -> sha256 of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def earlier_run(trained, tmp_path) -> Path:
    """A copy of the shared trained run's log directory, for tests that add runs beside it."""
    logs = tmp_path / "logs"
    shutil.copytree(trained["root"] / "logs", logs)
    return logs


@pytest.mark.parametrize("failure", ["nan-loss", "ctrl-c"])
def test_a_failed_or_interrupted_run_leaves_earlier_runs_alone(trained, earlier_run, tmp_path, monkeypatch, failure):
    before = fingerprint(earlier_run / "full" / "version_0")
    original = LogisticRegression.training_step

    def failing(self, batch, batch_idx):
        outputs = original(self, batch, batch_idx)
        if self.current_epoch < 7:  # the resumed run starts at epoch 5 and checkpoints epochs 5 and 6
            return outputs
        if failure == "ctrl-c":
            raise KeyboardInterrupt
        return outputs * float("nan")

    monkeypatch.setattr(LogisticRegression, "training_step", failing)
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl+C while it shuts down
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(
                fit_args(
                    tmp_path,
                    "--data.dataset",
                    str(trained["data"]),
                    "--data.batch_mode",
                    "full",
                    "--ckpt_path",
                    "last",
                    "--trainer.max_epochs",
                    "20",
                )
            )
    finally:
        signal.signal(signal.SIGINT, sigint)
    expected = 1 if failure == "ctrl-c" else "error: training stopped: the loss became nan at epoch 7, step 7"
    assert str(exit_info.value.code).startswith(str(expected))
    assert fingerprint(earlier_run / "full" / "version_0") == before
    assert sorted(p.name for p in (earlier_run / "full").iterdir()) == ["version_0", "version_1"]
    # The failed run kept what it had finished, in its own directory: its best checkpoint, of a finished epoch.
    (kept,) = (earlier_run / "full" / "version_1" / "checkpoints").glob("*.ckpt")
    resumed = torch.load(kept, weights_only=True)
    assert kept.name == "best-epoch6.ckpt" and resumed["epoch"] == 6
    assert torch.isfinite(resumed["state_dict"]["linear.weight"]).all()


def test_every_fit_writes_a_new_version_and_leaves_the_others(tmp_path):
    data = separable_csv(tmp_path / "d.csv")
    args = fit_args(tmp_path, "--data.dataset", str(data), "--data.batch_mode", "full")
    main(args)
    before = fingerprint(tmp_path / "logs" / "full" / "version_0")
    main(args)
    assert fingerprint(tmp_path / "logs" / "full" / "version_0") == before
    names = {name for name in before if "events" not in name}  # event file names carry a time stamp
    assert names <= fingerprint(tmp_path / "logs" / "full" / "version_1").keys()
    assert "checkpoints/last.ckpt" in names


def test_a_read_only_log_directory_is_named_in_one_line_and_earlier_runs_kept(
    earlier_run, tmp_path, capsys, read_only_dir
):
    before = fingerprint(earlier_run)
    read_only_dir(earlier_run / "full")
    code, line = run(fit_args(tmp_path, "--data.batch_mode", "full"), capsys)
    assert (code, line) == (1, f"error: {earlier_run / 'full' / 'version_1'}: Permission denied.")
    assert fingerprint(earlier_run) == before


# --- configuration files ------------------------------------------------------------------------------------

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)  # 9^9 = 387,420,489 lols in 600 bytes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            LAUGHS,
            "refused: its aliases (*name) expand 28 written nodes to 490,329,064, more than 100,000 and 10 times "
            "the written ones; write the values out instead.",
        ),
        ("a: &a [1, *a]\n", "refused: an alias (*name) refers to a node that contains it, which never ends."),
        (
            "model:\n  lr: [1, 2\ntrainer: {\n",
            "not valid YAML: did not find expected ',' or ']' on line 3, column 8 (while parsing a flow sequence "
            "from line 2, column 7).",
        ),
        (
            "model:\n\tlr: 1\n",  # a tab
            "not valid YAML: found character that cannot start any token on line 2, column 1 (while scanning for "
            "the next token from line 2, column 1).",
        ),
    ],
    ids=["billion-laughs", "alias-into-itself", "unclosed-list", "tab"],
)
def test_a_config_file_that_cannot_be_read_ends_in_one_line_naming_it(tmp_path, capsys, text, message):
    config = write(tmp_path, text, "config.yaml")
    code, line = run(fit_args(tmp_path, "--config", config), capsys)
    assert (code, line) == (1, f"error: {config}: {message}")
    assert not (tmp_path / "logs").exists()


def test_a_value_on_the_command_line_with_aliases_that_explode_is_not_expanded(tmp_path, capsys):
    value = "{" + LAUGHS.replace("\n", ", ").rstrip(", ") + "}"
    code, line = run(fit_args(tmp_path, "--model.optimizer", value), capsys)
    assert code == 2 and len(line) < 2_100, line  # refused as a value the parser cannot read, and not walked


def test_a_megabyte_value_is_not_echoed_whole(tmp_path, capsys):
    config = write(tmp_path, "model:\n  lr: " + "x" * 1_000_000 + "\n", "config.yaml")
    code, line = run(fit_args(tmp_path, "--config", config), capsys)
    assert code == 2 and "xxxxxxxxxxxxxxxxxxxx... (1,000,000 characters)" in line and len(line) < 2_100, line


# --- tracebacks turned into one line -----------------------------------------------------------------------


def test_adam_with_a_learning_rate_whose_step_overflows_float32(tmp_path, capsys):
    # torch.optim raises RuntimeError: Adam's first step is lr / (1 - beta1) = 1e39, beyond float32
    code, line = run(fit_args(tmp_path, "--model.optimizer", "Adam", "--model.lr", "1e38"), capsys)
    assert (code, line) == (
        1,
        "error: training stopped: an optimizer step overflowed float32 (value cannot be converted to type float "
        "without overflow); the learning rate is far too large for the optimizer, which a smaller one prevents.",
    )
    assert not (tmp_path / "logs").exists()  # it failed before its first update: no run directory is left


def test_a_full_disk_where_lightning_writes_names_the_directory_and_leaves_no_run(tmp_path, capsys, monkeypatch):
    import errno

    from lightning.pytorch.loggers import tensorboard

    def full(*args, **kwargs):  # as fsspec's close() fails on a full disk: an OSError naming no file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tensorboard, "save_hparams_to_yaml", full)  # the logger's hparams.yaml, after config.yaml
    code, line = run(fit_args(tmp_path), capsys)
    assert (code, line) == (
        1,
        f"error: {tmp_path / 'logs' / 'minibatch'}: cannot write the run's files (No space left on device).",
    )
    assert not (tmp_path / "logs").exists()  # config.yaml and the event file were removed with their directory


def test_a_failed_run_keeps_its_directory_once_it_has_trained(tmp_path, capsys, monkeypatch):
    fit = fit_args(tmp_path, "--data.batch_mode", "full")
    main(fit)  # version_0, trained
    original = LogisticRegression.training_step

    def failing(self, batch, batch_idx):
        if self.global_step == 1:  # after one update of its own
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LogisticRegression, "training_step", failing)
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl+C while it shuts down
    try:
        with pytest.raises(SystemExit):
            main(fit)
        monkeypatch.setattr(LogisticRegression, "training_step", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(SystemExit):
            main(fit)  # stopped before its first update: nothing of it is kept
    finally:
        signal.signal(signal.SIGINT, sigint)
    assert sorted(p.name for p in (tmp_path / "logs" / "full").iterdir()) == ["version_0", "version_1"]
    assert (tmp_path / "logs" / "full" / "version_1" / "config.yaml").is_file()


def test_a_training_split_of_one_class_is_refused(tmp_path, capsys):
    # 100 rows, labels 1 only on two rows the seed-42 split puts into validation: training is all 0
    order = torch.randperm(100, generator=torch.Generator().manual_seed(42))
    positive = set(order[60:62].tolist())
    data = write(tmp_path, "a,b,label\n" + "".join(f"{i},{i % 7},{int(i in positive)}\n" for i in range(100)))
    code, line = run(fit_args(tmp_path, "--data.dataset", data), capsys)
    assert (code, line) == (
        1,
        f"error: {data}: the training split's 60 rows all have label 0 (column 'label', split by seed 42); a binary "
        "classifier needs both classes to learn: use more rows of the other class, or another --data.seed.",
    )
    assert not (tmp_path / "logs").exists()


def test_a_learning_rate_so_large_that_the_loss_diverges_yet_stays_finite(tmp_path, capsys):
    code, line = run(fit_args(tmp_path, "--model.lr", "1e30"), capsys)  # val/loss was 4e26, and exit 0
    assert code == 1
    assert re.fullmatch(
        r"error: training stopped: the mean training loss of epoch 0 was \S+e\+2\d, beyond 87\.3, where the "
        r"probability given to the true labels underflows float32 \(as good as an infinite loss\), under SGD with "
        r"lr 1e\+30, momentum 0; the updates grew without bound, which a smaller learning rate or momentum, or "
        r"features on a smaller scale, prevent\.",
        line,
    ), line
    (run_dir,) = (tmp_path / "logs" / "minibatch").iterdir()
    assert not list(run_dir.glob("checkpoints/*.ckpt")) and "val/loss" not in scalars(run_dir)


def test_a_full_disk_that_a_logger_wraps_in_a_value_error_is_a_write_failure_not_a_usage_error():
    # Lightning's TensorBoardLogger.log_metrics raises ValueError("you tried to log ...") from whatever failed,
    # and a ValueError raised in Lightning otherwise reads as a refused flag (exit code 2)
    import errno

    from logreg.machinery.errors import user_message

    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as full:
            raise ValueError("you tried to log 0.5 which is currently not supported") from full
    except ValueError as err:
        wrapped = err
    assert user_message(wrapped, is_usage=lambda e: type(e) is ValueError, where="runs/minibatch") == (
        f"runs/minibatch: cannot write the run's files ({os.strerror(errno.ENOSPC)}).",
        1,
    )
    assert user_message(ValueError("bad flag"), is_usage=lambda e: type(e) is ValueError) == ("bad flag", 2)
