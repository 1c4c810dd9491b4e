"""Real ``logreg`` processes: signals (what a stopped run keeps, how it ends) and runs started at once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import QUIET

pytestmark = pytest.mark.slow  # each test starts Python processes that import torch and Lightning
# How long a wait may last before a test calls it a hang: waits end when the awaited thing happens, so the
# tests take as long as the machine needs (three processes importing torch on two loaded cores took > 60 s).
HANG_S = 600.0

# Per-example SGD on 1,000 synthetic rows: 600 updates (Lightning batches) per epoch, about a second each.
LONG_FIT = [
    "fit",
    *("--data.dataset", "synthetic", "--data.synthetic_rows", "1000", "--data.synthetic_features", "4"),
    *("--data.batch_mode", "example", "--model.lr", "0.05", *QUIET),
]


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "PL_TRAINER_ACCELERATOR": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "logreg", *args, "--trainer.default_root_dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )


def wait_for(path_glob: str, root: Path, timeout: float = HANG_S) -> Path:
    """The first file matching ``path_glob`` under ``root`` once it exists (the run reached that point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {path_glob} under {root} after {timeout} s")


def wait_until_caught(process: subprocess.Popen, signum: int, timeout: float = HANG_S) -> None:
    """Wait until ``process`` has a handler for ``signum`` (Linux lists caught signals in /proc/PID/status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught >> (signum - 1) & 1:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {process.pid} caught no signal {signum} after {timeout} s")


def finish(process: subprocess.Popen, timeout: float = HANG_S) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


SIGNALS = [(signal.SIGINT, 130, "SIGINT (Ctrl+C)"), (signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")]


@pytest.mark.parametrize(("signum", "code", "name"), SIGNALS)
def test_a_signal_during_training_saves_last_ckpt_names_it_and_exits_with_its_code(tmp_path, signum, code, name):
    process = start(tmp_path, *LONG_FIT, "--trainer.max_epochs", "100")
    run = wait_for("logs/example/version_0/checkpoints/best-epoch*.ckpt", tmp_path).parents[1]  # training runs
    process.send_signal(signum)
    returncode, err = finish(process)
    assert returncode == code, err
    assert "Traceback" not in err
    path = run / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=True)
    epoch, step = saved["epoch"], saved["global_step"]
    assert step > 0
    assert (
        f"Stopped by {name} at epoch {epoch}, step {step}; saved {path}. Resume with --ckpt_path last "
        f"(or --ckpt_path {path})." in err.splitlines()
    )


@pytest.mark.parametrize(("signum", "code", "name"), SIGNALS)
def test_a_signal_during_start_up_ends_in_one_line_without_a_traceback(tmp_path, signum, code, name):
    process = start(tmp_path, *LONG_FIT, "--trainer.max_epochs", "100")
    # The entry point's handlers are in place (SIGHUP's comes last), and torch and Lightning are loading: the
    # first seconds of any run. A fixed wait instead raced Python's own start-up on a busy machine.
    wait_until_caught(process, signal.SIGHUP)
    process.send_signal(signum)
    returncode, err = finish(process)
    assert returncode == code, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: stopped by {name} "), err
    assert not list(tmp_path.glob("logs/*/version_*/checkpoints"))


def test_after_sigkill_the_timed_last_ckpt_resumes_to_the_weights_of_an_unbroken_run(tmp_path):
    from logreg.cli import main

    epochs = ["--trainer.max_epochs", "4"]
    main([*LONG_FIT, *epochs, "--trainer.default_root_dir", str(tmp_path / "unbroken")])
    process = start(tmp_path, *LONG_FIT, *epochs, "--last_checkpoint.every_seconds", "0.2")
    last = wait_for("logs/example/version_0/checkpoints/last.ckpt", tmp_path)  # the first timed save
    time.sleep(0.5)
    process.kill()  # SIGKILL: no handler runs, nothing is flushed
    process.communicate(timeout=HANG_S)
    saved = torch.load(last, weights_only=True)  # whole: written under another name, then renamed
    assert 0 < saved["global_step"] < 4 * 600  # killed part-way through training
    main([*LONG_FIT, *epochs, "--ckpt_path", "last", "--trainer.default_root_dir", str(tmp_path / "logs")])
    resumed = torch.load(tmp_path / "logs" / "example" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    unbroken = torch.load(
        tmp_path / "unbroken" / "example" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert resumed["global_step"] == unbroken["global_step"] == 4 * 600
    for name, weights in unbroken["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weights), name


def test_fits_started_at_once_into_one_directory_never_share_a_run(tmp_path):
    short = ["fit", *QUIET, "--data.batch_mode", "full", "--trainer.max_epochs", "3"]
    processes = [start(tmp_path, *short) for _ in range(3)]
    for process in processes:
        returncode, err = finish(process)
        assert returncode == 0, err
    runs = sorted((tmp_path / "logs" / "full").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1", "version_2"]
    for run in runs:  # each run wrote its own files, none was overwritten by another's
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
        assert (run / "config.yaml").is_file()
