import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import scalars
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.linear_model import LogisticRegression as SklearnLogisticRegression
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.data import DataLoader, TensorDataset

from logreg import LogisticRegression, TabularDataModule

CONFIGS = Path(__file__).parent.parent / "configs"
SMALL = {"dataset": "synthetic", "synthetic_rows": 103, "synthetic_features": 3}


def quiet_trainer(**args) -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0, **args)


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
    with pytest.raises(ValueError, match="optimizer must be one of 'sgd', 'adam', 'lbfgs'; got 'rmsprop'"):
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


def test_weight_decay_in_the_loss_is_sgd_weight_decay_on_the_weights_only():
    # The model's penalty wd/2 * ||w||^2 must give the same updates as torch's SGD weight_decay applied to the
    # weights and not the bias (weights start at zero, so the penalty acts from the second update on).
    dm = TabularDataModule(batch_mode="full", **SMALL)
    model = LogisticRegression(num_features=3, lr=0.5, momentum=0.9, weight_decay=0.3)
    quiet_trainer(max_epochs=4).fit(model, datamodule=dm)
    x, y = dm.split("train")
    linear = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    groups = [{"params": [linear.weight], "weight_decay": 0.3}, {"params": [linear.bias], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=0.5, momentum=0.9)
    for _ in range(4):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(linear(x).squeeze(-1), y).backward()
        optimizer.step()
    torch.testing.assert_close(model.linear.weight, linear.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model.linear.bias, linear.bias, rtol=1e-6, atol=1e-7)
    assert model.linear.weight.abs().min() > 0.01  # the comparison is not between zeros


def test_lbfgs_rejects_more_than_one_batch_per_epoch():
    dm = TabularDataModule(batch_mode="minibatch", batch_size=16, **SMALL)
    model = LogisticRegression(num_features=3, optimizer="lbfgs", lr=1.0)
    with pytest.raises(ValueError, match=r"optimizer 'lbfgs' needs .*batch_mode 'full'.*got 4 batches per epoch"):
        quiet_trainer(max_epochs=1).fit(model, datamodule=dm)
    assert torch.equal(model.linear.weight, torch.zeros(1, 3))  # no update happened


# Agreement with scikit-learn's exact maximum-likelihood solution on the standardised banknote training split.
# Banknote is almost linearly separable: the unpenalised optimum has coefficients near 30 and a training
# log-loss near 0.014, which curvature-aware L-BFGS reaches in a few dozen steps and plain gradient descent
# (whose gradients fade as the margins grow) only approaches.


def sklearn_reference(x: torch.Tensor, y: torch.Tensor, weight_decay: float = 0.0) -> torch.Tensor:
    """(coef..., intercept) of scikit-learn's fit, float64.

    scikit-learn minimises C * sum(losses) + ||w||^2 / 2 (the intercept unpenalised); divided by C * N that is
    mean(losses) + ||w||^2 / (2 * C * N), the model's objective with weight_decay = 1 / (C * N).
    """
    C = np.inf if weight_decay == 0 else 1 / (len(x) * weight_decay)
    fit = SklearnLogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x.double().numpy(), y.numpy())
    return torch.tensor(np.r_[fit.coef_[0], fit.intercept_])


def train_on_banknote(epochs: int, **model_args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, trained (w..., b) in float64) after full-batch training on banknote."""
    dm = TabularDataModule(batch_mode="full")
    model = LogisticRegression(num_features=4, **model_args)
    quiet_trainer(max_epochs=epochs).fit(model, datamodule=dm)
    x, y = dm.split("train")
    return x, y, torch.cat([model.linear.weight[0], model.linear.bias]).detach().double()


def objective(x: torch.Tensor, y: torch.Tensor, params: torch.Tensor, weight_decay: float = 0.0) -> float:
    """Mean training log-loss of (w..., b) plus the model's L2 penalty, in float64."""
    loss = F.binary_cross_entropy_with_logits(x.double() @ params[:-1] + params[-1], y.double())
    return (loss + weight_decay / 2 * params[:-1].square().sum()).item()


def test_lbfgs_config_reaches_the_unpenalised_sklearn_solution_in_a_few_dozen_steps():
    config = yaml.safe_load((CONFIGS / "lbfgs.yaml").read_text())
    assert config["data"]["batch_mode"] == "full" and config["trainer"]["max_epochs"] <= 40
    x, y, params = train_on_banknote(config["trainer"]["max_epochs"], **config["model"])
    reference = sklearn_reference(x, y)
    assert reference.abs().max() > 25  # the large-coefficient optimum described above
    # measured: 4e-5 (float32 training against float64 scikit-learn) and 7e-14
    assert (params - reference).abs().max() < 5e-4
    assert abs(objective(x, y, params) - objective(x, y, reference)) < 1e-10


def test_full_batch_config_approaches_the_sklearn_solution_in_its_epochs():
    config = yaml.safe_load((CONFIGS / "full_batch.yaml").read_text())
    assert config["data"]["batch_mode"] == "full"
    x, y, params = train_on_banknote(config["trainer"]["max_epochs"], lr=config["model"]["lr"])
    reference = sklearn_reference(x, y)
    # measured after 200 epochs at lr 2: log-loss 0.0421 against 0.0140 (a gap of 0.028), cosine 0.990
    assert objective(x, y, params) - objective(x, y, reference) < 0.035
    assert F.cosine_similarity(params, reference, dim=0) > 0.98


@pytest.mark.parametrize(("optimizer", "lr", "epochs"), [("lbfgs", 1.0, 30), ("sgd", 2.0, 100)])
def test_weight_decay_reaches_the_matching_l2_penalised_sklearn_solution(optimizer, lr, epochs):
    # The penalty makes the objective strongly convex, so gradient descent converges linearly here too.
    x, y, params = train_on_banknote(epochs, optimizer=optimizer, lr=lr, weight_decay=0.05)
    reference = sklearn_reference(x, y, weight_decay=0.05)
    assert reference[-1] < -0.3  # an intercept a penalty would have shrunk: the bias must stay unpenalised
    # measured: 5e-7 and 2e-14 for gradient descent, 6e-7 and 3e-14 for L-BFGS
    assert (params - reference).abs().max() < 1e-5
    assert abs(objective(x, y, params, 0.05) - objective(x, y, reference, 0.05)) < 1e-10


def fit_weights(update_group: int, batch_mode: str = "example", **trainer_args) -> tuple[torch.Tensor, int, float]:
    """(weights and bias, global_step, train/loss_epoch) after SGD with momentum on 61 rows."""
    dm = TabularDataModule(batch_mode=batch_mode, batch_size=7, update_group=update_group, **SMALL)
    model = LogisticRegression(num_features=3, lr=0.3, momentum=0.9, weight_decay=0.01)
    trainer = quiet_trainer(**trainer_args)
    trainer.fit(model, datamodule=dm)
    params = torch.cat([model.linear.weight[0], model.linear.bias]).detach()
    return params, trainer.global_step, trainer.callback_metrics["train/loss_epoch"].item()


@pytest.mark.parametrize("batch_mode", ["example", "minibatch"])
def test_the_updates_are_bit_identical_for_any_update_group(batch_mode):
    # 61 rows: 61 updates per example (groups of 7: the last holds 5) or 9 minibatches of 7 (groups 7 + 2)
    params, steps, epoch_loss = fit_weights(1, batch_mode, max_epochs=2)
    assert steps == 2 * (61 if batch_mode == "example" else 9)
    assert params.abs().min() > 0.01  # trained, not zeros
    for group in (7, 64):
        grouped, grouped_steps, grouped_loss = fit_weights(group, batch_mode, max_epochs=2)
        assert torch.equal(grouped, params) and grouped_steps == steps
        assert grouped_loss == epoch_loss


def test_max_steps_counts_updates_within_a_group():
    params, steps, _ = fit_weights(1, max_steps=5)
    grouped, grouped_steps, _ = fit_weights(3, max_steps=5)  # stops in the second group
    assert grouped_steps == steps == 5 and torch.equal(grouped, params)


def test_a_plain_dataloader_batch_is_one_update():
    dm = TabularDataModule(batch_mode="minibatch", batch_size=16, update_group=3, **SMALL)
    grouped = LogisticRegression(num_features=3, lr=0.5)
    quiet_trainer(max_epochs=1).fit(grouped, datamodule=dm)
    x, y = dm.split("train")
    plain = LogisticRegression(num_features=3, lr=0.5)
    trainer = quiet_trainer(max_epochs=1)
    # the data module's first epoch order, served by a DataLoader over the shuffled rows
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(42 * 1_000_003))
    trainer.fit(plain, train_dataloaders=DataLoader(TensorDataset(x[order], y[order]), batch_size=16))
    assert trainer.global_step == 4
    torch.testing.assert_close(plain.linear.weight, grouped.linear.weight, rtol=0, atol=0)
