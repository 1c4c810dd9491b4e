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


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_last_ckpt_at_the_current_step_and_exits_with_its_code(tmp_path, handlers, capsys, signum, code):
    model = SignalAt(signum, step=13)  # in epoch 1
    with pytest.raises(Interrupted) as stopped:
        trainer(tmp_path).fit(model)
    assert stopped.value.code == code
    path = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (1, 14)  # the batch that got the signal was finished
    assert torch.equal(saved["state_dict"]["layer.weight"], model.layer.weight.detach())
    name = "SIGINT (Ctrl+C)" if signum == signal.SIGINT else "SIGTERM"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"Stopped by {name} at epoch 1, step 14; saved {path}. Resume with --ckpt_path last (or --ckpt_path {path})."
    )


def test_without_a_signal_the_callback_changes_nothing(tmp_path, handlers):
    model = SignalAt(signal.SIGINT, step=-1)
    trainer(tmp_path).fit(model)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 30
