"""A real TensorBoard server over the logs of short runs: what its HTTP data API serves is what was logged."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import scalars, session_hparams

from logreg.cli import main
from logreg.machinery import loggers

TINY = ["--data.dataset", "synthetic", "--data.synthetic_rows", "200", "--data.synthetic_features", "3"]
# CPU, as in CI, even where a GPU is visible; progress bars and summaries would only fill the output.
QUIET = [
    *("--trainer.accelerator", "cpu"),
    *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
]
STARTUP_S = 30  # bound on every wait for the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None):
    """JSON from a GET, or from a POST of ``body`` (the hparams plugin takes its request that way)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def poll(fetch, ready, what: str):
    """fetch() until ready(result) holds, for at most STARTUP_S seconds."""
    deadline, last = time.monotonic() + STARTUP_S, None
    while time.monotonic() < deadline:
        try:
            last = fetch()
            if ready(last):
                return last
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet
        time.sleep(0.25)
    raise AssertionError(f"TensorBoard did not serve {what} within {STARTUP_S} s; last answer: {last!r}")


@pytest.fixture
def tensorboard(tmp_path):
    """A function that starts `tensorboard --logdir DIR` on a free local port and returns its URL; stopped after the test."""
    servers, stack = [], contextlib.ExitStack()

    def start(logdir: Path) -> str:
        port = free_port()
        log = stack.enter_context((tmp_path / "tensorboard.log").open("w"))
        servers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tensorboard.main",
                    "--logdir",
                    str(logdir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.terminate()
        try:
            server.wait(timeout=STARTUP_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    stack.close()


@pytest.mark.slow
def test_tensorboard_serves_the_runs_scalars_and_hyperparameters(tmp_path, tensorboard):
    logs = tmp_path / "logs"
    for mode in ("full", "minibatch"):
        main(
            [
                "fit",
                *TINY,
                *QUIET,
                "--trainer.default_root_dir",
                str(logs),
                "--data.batch_mode",
                mode,
                "--data.batch_size",
                "40",
                "--trainer.max_epochs",
                "3",
                "--trainer.log_every_n_steps",
                "1",
            ]
        )
    runs = ["full/version_0", "minibatch/version_0"]
    url = tensorboard(logs)

    served = poll(lambda: get(f"{url}/data/runs"), lambda r: sorted(r) == runs, "both runs")
    assert sorted(served) == runs
    tags = poll(lambda: get(f"{url}/data/plugin/scalars/tags"), lambda t: set(t) == set(runs), "scalar tags")
    for run in runs:
        assert {"train/loss", "val/loss", "val/acc"} <= set(tags[run]), run
        written = scalars(logs / run)
        for tag in ("train/loss", "val/loss", "val/acc"):
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            points = get(f"{url}/data/plugin/scalars/scalars?{query}")  # [[wall_time, step, value], ...]
            assert [(step, pytest.approx(value)) for _, step, value in points] == written[tag], (run, tag)
    # one update per epoch in full mode, ceil(120 / 40) = 3 in minibatch mode: train/loss at every update
    assert [s for s, _ in scalars(logs / "full/version_0")["train/loss"]] == [0, 1, 2]
    assert [s for s, _ in scalars(logs / "minibatch/version_0")["train/loss"]] == list(range(9))

    # The HPARAMS tab: one session per run, its hyperparameters, and the last val/acc as a metric.
    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": "batch_mode"}, {"metric": {"tag": "val/acc", "group": ""}}],
        "startIndex": 0,
        "sliceSize": 10,
        "includeMetrics": True,
    }
    groups = get(f"{url}/data/plugin/hparams/session_groups", request)["sessionGroups"]
    assert sorted(g["name"] for g in groups) == runs
    for group in groups:
        run = group["name"]
        assert group["hparams"]["batch_mode"] == run.split("/")[0]
        assert group["hparams"]["batch_size"] == 40
        assert (
            group["hparams"]["dataset"] == "synthetic" and group["hparams"]["optimizer/class_path"] == "torch.optim.SGD"
        )
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert metrics["val/acc"] == pytest.approx(scalars(logs / run)["val/acc"][-1][1])


def test_every_save_puts_the_curves_on_disk_as_lightnings_does_and_the_end_writes_all(tmp_path):
    logger = loggers.TensorBoardLogger(str(tmp_path), name="run")
    on_disk = []  # steps of train/loss in the event file right after each save
    for step in range(5):
        logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        logger.save()  # Lightning calls it after every write; it waits until the writer's thread wrote it all
        on_disk.append([s for s, _ in scalars(Path(logger.log_dir))["train/loss"]])
    assert on_disk == [list(range(n + 1)) for n in range(5)]
    assert (Path(logger.log_dir) / "hparams.yaml").is_file()  # the first save wrote it, as Lightning's does
    logger.finalize("success")
    assert [s for s, _ in scalars(Path(logger.log_dir))["train/loss"]] == [0, 1, 2, 3, 4]


def leaves(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a/b': 1}."""
    flat = {}
    for key, value in tree.items():
        flat.update(leaves(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def test_the_hparams_tab_lists_every_hyperparameter_of_a_cli_run(tmp_path):
    main(["fit", *TINY, *QUIET, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1"])
    adam = ["--model.optimizer", "Adam", "--model.lr_scheduler", "StepLR", "--model.lr_scheduler.step_size", "2"]
    main(["fit", *adam, *TINY, *QUIET, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1"])
    for run, optimizer in (("version_0", "torch.optim.SGD"), ("version_1", "torch.optim.Adam")):
        run_dir = tmp_path / "minibatch" / run
        saved = leaves(yaml.safe_load((run_dir / "hparams.yaml").read_text()))  # the model's and the data's
        tab = session_hparams(run_dir)
        # every hyperparameter but Lightning's bookkeeping (the CLI's _instantiator), a non-scalar as its text
        assert "_instantiator" in saved and len(tab) > 15
        assert set(tab) == {key for key in saved if not key.startswith("_")}
        for key, value in tab.items():
            assert value == (saved[key] if isinstance(saved[key], int | float | str) else str(saved[key])), key
        assert (tab["optimizer/class_path"], tab["batch_mode"], tab["synthetic_rows"]) == (optimizer, "minibatch", 200)
    tab = session_hparams(tmp_path / "minibatch" / "version_1")
    assert (tab["optimizer/init_args/betas"], tab["lr_scheduler/init_args/step_size"]) == ("[0.9, 0.999]", 2)
    assert session_hparams(tmp_path / "minibatch" / "version_0")["lr_scheduler"] == "None"


def test_a_stage_after_fit_on_the_same_logger_keeps_one_session_and_writes_its_metrics(tmp_path):
    import lightning as L

    from logreg import LogisticRegression, TabularDataModule

    logger = loggers.TensorBoardLogger(str(tmp_path), name="run")
    trainer = L.Trainer(max_epochs=1, logger=logger, enable_progress_bar=False, enable_checkpointing=False)
    dm = TabularDataModule(dataset="synthetic", synthetic_rows=200, synthetic_features=3)
    trainer.fit(LogisticRegression(num_features=3), datamodule=dm)  # ends by closing the event writer
    trainer.test(trainer.lightning_module, datamodule=dm)  # logs the hyperparameters again, then test metrics
    run_dir = Path(logger.log_dir)
    assert session_hparams(run_dir)["synthetic_rows"] == 200
    assert len(scalars(run_dir)["test/loss"]) == 1


# `logreg fit` whose disk fills up while TensorBoard writes: the event file takes BUDGET appends (one per event,
# from TensorBoard's writer thread), then every write fails with ENOSPC, as on a full disk.
DISK_FILLS_UP = """
import errno, os, sys
from tensorboard.compat.tensorflow_stub.io import gfile

budget = int(sys.argv[1])
real = gfile.LocalFileSystem.append

def append(self, filename, content, binary_mode=False):
    global budget
    if b"tfevents" in (filename if isinstance(filename, bytes) else filename.encode()):
        budget -= 1
        if budget < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(self, filename, content, binary_mode)

gfile.LocalFileSystem.append = append
from logreg.launch import main
main(sys.argv[2:])
"""


@pytest.mark.slow  # a fresh interpreter imports torch: seconds
def test_a_disk_that_fills_while_tensorboard_writes_ends_the_run_in_one_line(tmp_path):
    fit = ["fit", *TINY, *QUIET, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "50"]
    process = subprocess.run(
        [sys.executable, "-c", DISK_FILLS_UP, "20", *fit, "--data.batch_mode", "minibatch"],
        capture_output=True,
        text=True,
        timeout=300,  # a run that hangs fails the test here, it does not hold the suite
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    run = tmp_path / "minibatch" / "version_0"
    assert process.returncode == 1, process.stderr
    # one line, without the writer thread's traceback or Lightning's "you tried to log ..." about the value
    assert "Traceback" not in process.stderr and "tried to log" not in process.stderr, process.stderr
    assert process.stderr.splitlines()[-1] == (
        f"error: {run}: TensorBoard cannot write the run's event file (No space left on device); the run stopped there."
    )
    assert scalars(run)["val/loss"]  # it trained before the disk filled: the run and what was written are kept
