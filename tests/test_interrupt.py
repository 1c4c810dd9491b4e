import os
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from logreg.machinery import interrupt
from logreg.machinery.callbacks import LastCheckpoint
from logreg.machinery.interrupt import Interrupted


@pytest.fixture
def handlers():
    """The CLI's signal handlers, for one test; Python's own are restored after it."""
    saved = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    interrupt.install_handlers()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    interrupt._received.clear()


class SignalAt(BoringModel):
    """Sends itself ``signum`` during training step ``step``, as ``kill`` or Ctrl+C would."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__()
        self.signum, self.at_step = signum, step

    def training_step(self, batch, batch_idx):
        if self.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)
        return super().training_step(batch, batch_idx)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        limit_train_batches=10,
        limit_val_batches=1,
        callbacks=[LastCheckpoint()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_saves_last_ckpt_at_the_current_step_and_exits_with_its_code(tmp_path, handlers, capsys, signum, code):
    model = SignalAt(signum, step=13)  # in epoch 1
    with pytest.raises(Interrupted) as stopped:
        trainer(tmp_path).fit(model)
    assert stopped.value.code == code
    path = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (1, 14)  # the batch that got the signal was finished
    assert torch.equal(saved["state_dict"]["layer.weight"], model.layer.weight.detach())
    name = "SIGINT (Ctrl+C)" if signum == signal.SIGINT else signal.Signals(signum).name
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"Stopped by {name} at epoch 1, step 14; saved {path}. Resume with --ckpt_path last (or --ckpt_path {path})."
    )


def test_without_a_signal_the_callback_changes_nothing(tmp_path, handlers):
    model = SignalAt(signal.SIGINT, step=-1)
    trainer(tmp_path).fit(model)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 30


FIT = [
    *("fit", "--data.dataset", "synthetic", "--data.synthetic_rows", "200", "--data.synthetic_features", "3"),
    *("--trainer.max_epochs", "5", "--trainer.enable_progress_bar", "false"),
]


def test_a_second_signal_stops_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    from logreg.cli import main
    from logreg.models import LogisticRegression

    original = LogisticRegression.training_step

    def signalled_twice(self, batch, batch_idx):
        if self.global_step == 10:  # the first is left for the batch end, the second stops at once
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LogisticRegression, "training_step", signalled_twice)
    with pytest.raises(SystemExit) as stopped:
        main([*FIT, "--trainer.default_root_dir", str(tmp_path)])
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Stopped by" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: stopped at once by a second SIGINT (Ctrl+C), before the step could be saved; --ckpt_path last "
        "resumes from the run's last save."
    ]


def test_a_signal_while_a_stopped_run_shuts_down_ends_it_quietly(tmp_path, monkeypatch, capsys):
    from logreg.cli import main
    from logreg.models import LogisticRegression

    original, on_exception = LogisticRegression.training_step, LastCheckpoint.on_exception

    def signalled(self, batch, batch_idx):
        if self.global_step == 10:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    def signalled_again(self, trainer, pl_module, exception):  # Lightning's shutdown after the stop
        os.kill(os.getpid(), signal.SIGINT)
        on_exception(self, trainer, pl_module, exception)

    monkeypatch.setattr(LogisticRegression, "training_step", signalled)
    monkeypatch.setattr(LastCheckpoint, "on_exception", signalled_again)
    with pytest.raises(SystemExit) as stopped:
        main([*FIT, "--trainer.default_root_dir", str(tmp_path)])
    assert stopped.value.code == 143  # the first signal's
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: " not in err
    path = tmp_path / "minibatch" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"Stopped by SIGTERM at epoch 2, step 11; saved {path}." in err
    assert torch.load(path, weights_only=True)["global_step"] == 11


class SigtermInValidation(BoringModel):
    """Sends itself SIGTERM while validating epoch ``epoch``: after the epoch's last training batch."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.at_epoch = epoch

    def validation_step(self, batch, batch_idx):
        if self.current_epoch == self.at_epoch and not self.trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().validation_step(batch, batch_idx)


def test_sigterm_after_an_epochs_last_batch_saves_the_finished_epoch(tmp_path, handlers, capsys):
    # Lightning itself stops for SIGTERM at the epoch's end, before another training batch could save
    with pytest.raises(SystemExit):
        trainer(tmp_path).fit(SigtermInValidation(epoch=1))
    path = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (2, 20)  # epochs 0 and 1, whole
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"Stopped by SIGTERM at epoch 2, step 20; saved {path}. Resume with --ckpt_path last (or --ckpt_path {path})."
    )
    assert interrupt.stopping()  # the CLI ends quietly with the signal's code (see reported)


class SigtermAfterBatch(BoringModel):
    """Sends itself SIGTERM in its own ``on_train_batch_end`` (which Lightning calls after every callback's, so
    after LastCheckpoint's) of batch ``batch`` of epoch ``epoch``: Lightning stops for it before the next batch."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at = (epoch, batch)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if (self.current_epoch, batch_idx) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_after_last_checkpoints_batch_end_saves_that_batch(tmp_path, handlers, capsys):
    # the window between this callback's batch end and Lightning's own SIGTERM check (the logger's save, say)
    with pytest.raises(SystemExit):
        trainer(tmp_path).fit(SigtermAfterBatch(epoch=1, batch=3))
    path = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (1, 10 + 4)  # epoch 0 whole, then batches 0 to 3 of epoch 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"Stopped by SIGTERM at epoch 1, step 14; saved {path}. Resume with --ckpt_path last (or --ckpt_path {path})."
    )
    assert interrupt.stopping()
