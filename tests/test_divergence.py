import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import scalars
from lightning.pytorch.loggers import TensorBoardLogger

from logreg import LogisticRegression, TabularDataModule
from logreg.machinery.divergence import NonFiniteLossError, StopOnNonFiniteLoss

SMALL = {"dataset": "synthetic", "synthetic_rows": 103, "synthetic_features": 3}  # 61 training rows


class DivergesAt(LogisticRegression):
    """The training loss is ``scale`` times the model's from update ``bad_step`` on: infinite, as an overflowing
    learning rate makes it, or huge but finite, as a step far too large yet finite makes it (lr 1e30: 4e26)."""

    def __init__(self, bad_step: int, scale: float = math.inf, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bad_step, self.scale = bad_step, scale

    def _shared_step(self, batch):
        loss, logits = super()._shared_step(batch)
        if self.training and self.global_step >= self.bad_step:
            loss = loss * self.scale
        return loss, logits


def guarded(tmp_path, **kwargs) -> L.Trainer:
    """A quiet Trainer with the guard, logging to TensorBoard in ``tmp_path``."""
    return L.Trainer(
        logger=TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=[StopOnNonFiniteLoss()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("batch_mode", "batch_size", "log_every", "bad_step", "epoch", "batch"),
    [
        ("full", 32, 5, 3, 3, 0),  # 1 step per epoch: found at the epoch's last batch
        ("minibatch", 10, 5, 15, 2, 1),  # 7 steps per epoch: found at the logged step 19
        ("example", 32, 50, 37, 0, 37),  # found at step 50, 13 steps after it happened
        ("example", 32, 1, 37, 0, 37),  # checked every step
    ],
)
def test_training_stops_naming_the_first_non_finite_step(
    tmp_path, batch_mode, batch_size, log_every, bad_step, epoch, batch
):
    dm = TabularDataModule(batch_mode=batch_mode, batch_size=batch_size, **SMALL)
    trainer = guarded(tmp_path, max_epochs=10, log_every_n_steps=log_every)
    with pytest.raises(
        NonFiniteLossError,
        match=rf"the loss became inf at epoch {epoch}, step {bad_step} \(batch {batch} of the epoch\), under SGD with lr 0\.1, momentum 0;",
    ):
        trainer.fit(DivergesAt(bad_step, num_features=3), datamodule=dm)
    logged = scalars(tmp_path)
    losses = [v for tag in ("train/loss", "train/loss_epoch", "val/loss") for _, v in logged.get(tag, [])]
    assert all(math.isfinite(v) for v in losses)  # nothing non-finite reached the logger
    assert len(logged.get("val/loss", [])) == epoch  # no validation of the broken weights


def test_pending_losses_are_bounded_between_logged_steps():
    dm = TabularDataModule(batch_mode="example", **SMALL)
    guard = StopOnNonFiniteLoss(max_pending=4)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        callbacks=[guard],
        log_every_n_steps=1000,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with pytest.raises(NonFiniteLossError, match=r"at epoch 0, step 5 \(batch 5 of the epoch\)"):
        trainer.fit(DivergesAt(5, num_features=3), datamodule=dm)
    # checked once 4 updates are pending: after updates 0-3 (fine) and 4-7 (step 5 is infinite)
    assert trainer.global_step == 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_steps_between_checks_never_wait_for_the_device():
    guard = StopOnNonFiniteLoss()
    trainer = SimpleNamespace(num_training_batches=100, log_every_n_steps=10, global_step=0, current_epoch=0)
    module = SimpleNamespace(hparams={"lr": 0.1})
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation now raises
    try:
        for batch_idx in range(9):  # steps 0-8, none of them logged
            trainer.global_step = batch_idx + 1
            guard.on_train_batch_end(trainer, module, {"loss": torch.ones((), device="cuda")}, None, batch_idx)
        trainer.global_step = 10
        with pytest.raises(RuntimeError, match="synchroniz"):  # the check after the logged step 9 is the one wait
            guard.on_train_batch_end(trainer, module, {"loss": torch.ones((), device="cuda")}, None, 9)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(("batch_mode", "log_every"), [("full", 1), ("minibatch", 5), ("example", 50)])
def test_a_finite_loss_beyond_the_bound_stops_at_the_epochs_end_before_validation(tmp_path, batch_mode, log_every):
    dm = TabularDataModule(batch_mode=batch_mode, batch_size=10, **SMALL)
    trainer = guarded(tmp_path, max_epochs=3, log_every_n_steps=log_every)
    with pytest.raises(NonFiniteLossError, match=r"the mean training loss of epoch 0 was \S+, beyond 87\.3, where"):
        trainer.fit(DivergesAt(0, scale=1e6, num_features=3), datamodule=dm)  # 0.69 * 1e6
    assert "val/loss" not in scalars(tmp_path)  # no validation of the broken weights


def test_a_loss_below_the_bound_trains_on(tmp_path):
    # a mean loss of 83 (ln 2 * 120, a tiny lr keeps it there) is high, but not beyond the bound
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=[StopOnNonFiniteLoss()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DivergesAt(0, scale=120.0, num_features=3, lr=1e-9), datamodule=TabularDataModule(**SMALL))
    assert trainer.current_epoch == 2
    assert trainer.callback_metrics["train/loss_epoch"] == pytest.approx(120 * math.log(2), rel=1e-3)
    assert math.log(torch.finfo(torch.float32).tiny) == pytest.approx(-87.336, abs=1e-3)
