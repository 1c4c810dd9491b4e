import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import scalars
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from logreg import LogisticRegression, TabularDataModule


def test_bce_with_logits_equals_sigmoid_then_bce_for_moderate_logits():
    z = torch.linspace(-8, 8, 33, dtype=torch.float64)
    for y in (torch.zeros_like(z), torch.ones_like(z)):
        stable = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        naive = F.binary_cross_entropy(torch.sigmoid(z), y, reduction="none")
        torch.testing.assert_close(stable, naive, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("z", "y"), [(100.0, 0.0), (-100.0, 1.0), (100.0, 1.0), (-100.0, 0.0)])
def test_bce_with_logits_stays_exact_at_large_logits(z, y):
    loss = F.binary_cross_entropy_with_logits(torch.tensor([z]), torch.tensor([y]))
    assert torch.isfinite(loss)
    # log(1 + exp(-|z|)) + |z| when wrong, about exp(-|z|) when right
    expected = abs(z) if (z > 0) != (y > 0) else 0.0
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_sigmoid_then_bce_saturates_where_the_logits_version_does_not():
    z, y = torch.tensor([-200.0]), torch.tensor([1.0])
    assert F.binary_cross_entropy_with_logits(z, y).item() == pytest.approx(200.0)
    assert F.binary_cross_entropy(torch.sigmoid(z), y).item() == pytest.approx(100.0)  # log(0) clamped at -100


def test_forward_returns_one_logit_per_row_and_predict_returns_probabilities():
    model = LogisticRegression(num_features=3)
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[50.0, -50.0, 1.0]]))
    x = torch.randn(16, 3) * 10
    logits = model(x)
    assert logits.shape == (16,)
    probs = model.predict_step((x,), 0)
    torch.testing.assert_close(probs, torch.sigmoid(logits))
    assert ((probs >= 0) & (probs <= 1)).all()


def test_one_sgd_step_matches_the_closed_form_gradient():
    model = LogisticRegression(num_features=2, lr=0.5)
    x, y = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, -1.0]]), torch.tensor([1.0, 0.0, 1.0])
    optimizer = model.configure_optimizers()
    loss, _ = model._shared_step((x, y))
    loss.backward()
    optimizer.step()
    a = torch.full((3,), 0.5)  # sigmoid(0): the weights start at zero
    torch.testing.assert_close(model.linear.weight.detach(), -0.5 * ((a - y) @ x / 3).unsqueeze(0))
    torch.testing.assert_close(model.linear.bias.detach(), -0.5 * (a - y).mean().unsqueeze(0))


def test_invalid_optimizer_lists_the_choices():
    with pytest.raises(ValueError, match="optimizer must be one of 'sgd', 'adam'; got 'rmsprop'"):
        LogisticRegression(num_features=2, optimizer="rmsprop")


def test_epoch_loss_is_the_row_weighted_mean_of_the_step_losses(tmp_path):
    dm = TabularDataModule(dataset="synthetic", synthetic_rows=100, synthetic_features=3, batch_size=16)
    trainer = L.Trainer(
        max_epochs=1,
        logger=TensorBoardLogger(tmp_path, name="run"),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    trainer.fit(LogisticRegression(num_features=3), datamodule=dm)
    series = scalars(tmp_path / "run" / "version_0")
    steps = [v for _, v in series["train/loss"]]
    n_train = 60
    sizes = [16] * (math.ceil(n_train / 16) - 1) + [n_train % 16]  # the last batch is short: 16, 16, 16, 12
    assert len(steps) == len(sizes)
    expected = sum(v * n for v, n in zip(steps, sizes, strict=True)) / n_train
    assert series["train/loss_epoch"][0][1] == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(sum(steps) / len(steps), rel=1e-6)  # an unweighted mean would differ


def session_hparams(run_dir) -> dict:
    """The hyperparameters a run wrote for TensorBoard's HPARAMS tab, read back from its event file."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert hparams_metadata.EXPERIMENT_TAG not in content  # TensorBoard then builds it from every run
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


@pytest.mark.parametrize(("batch_mode", "rows_per_update"), [("full", 120), ("example", 1), ("minibatch", 16)])
def test_fit_writes_the_hyperparameters_for_tensorboards_hparams_tab(tmp_path, batch_mode, rows_per_update):
    dm = TabularDataModule(
        dataset="synthetic", synthetic_rows=200, synthetic_features=3, batch_mode=batch_mode, batch_size=16
    )
    logger = TensorBoardLogger(tmp_path, name=batch_mode, default_hp_metric=False)
    trainer = L.Trainer(max_steps=1, logger=logger, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(LogisticRegression(num_features=3, optimizer="adam", lr=0.03), datamodule=dm)
    assert session_hparams(tmp_path / batch_mode / "version_0") == {
        "optimizer": "adam",
        "lr": pytest.approx(0.03),
        "momentum": 0.0,
        "weight_decay": 0.0,
        "dataset": "synthetic",
        "batch_mode": batch_mode,
        "batch_size": rows_per_update,  # what one update sees: the whole split (120 rows) in full mode
    }
