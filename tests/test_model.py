import math
import tempfile
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import scalars, session_hparams
from sklearn.linear_model import LogisticRegression as SklearnLogisticRegression
from torch.utils.data import DataLoader, TensorDataset

from logreg import MLP, ConfigError, LogisticRegression, TabularDataModule
from logreg.cli import build_cli
from logreg.machinery.loggers import TensorBoardLogger

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


def test_invalid_learning_rate_and_weight_decay_are_named():
    with pytest.raises(ConfigError, match=r"lr must be positive and at most 3\.4e\+38; got -0\.1\."):
        LogisticRegression(num_features=2, lr=-0.1)
    with pytest.raises(ConfigError, match=r"weight_decay must be zero or positive; got -1"):
        MLP(num_features=2, weight_decay=-1)


def test_the_optimizer_is_called_with_the_parameters_and_the_models_learning_rate():
    model = LogisticRegression(num_features=2, lr=0.25, optimizer=partial(torch.optim.Adam, betas=(0.5, 0.6)))
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 0.25 and optimizer.param_groups[0]["betas"] == (0.5, 0.6)
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_a_scheduler_is_returned_for_lightning_to_step_watching_val_loss():
    model = LogisticRegression(num_features=2, lr_scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau))
    config = model.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (
        config["lr_scheduler"]["monitor"] == "val/loss"
        and config["lr_scheduler"]["scheduler"].optimizer is config["optimizer"]
    )


def test_classes_given_in_python_are_saved_as_plain_data_and_rebuilt_on_load(tmp_path):
    model = LogisticRegression(
        num_features=2, optimizer=torch.optim.Adam, lr_scheduler=torch.optim.lr_scheduler.ConstantLR
    )
    assert model.hparams.optimizer == {"class_path": "torch.optim.adam.Adam"}
    assert model.hparams.lr_scheduler == {"class_path": "torch.optim.lr_scheduler.ConstantLR"}
    saved = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    torch.save(saved, tmp_path / "m.ckpt")
    torch.load(tmp_path / "m.ckpt", weights_only=True)  # plain data: loadable without trusting the file
    loaded = LogisticRegression.load_from_checkpoint(tmp_path / "m.ckpt")
    assert isinstance(loaded.configure_optimizers()["optimizer"], torch.optim.Adam)


def test_a_trainers_checkpoint_of_python_given_classes_loads_weights_only_and_rebuilds_them(tmp_path):
    model = LogisticRegression(
        num_features=3,
        optimizer=partial(torch.optim.Adam, betas=(0.5, 0.6)),
        lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=2),
    )
    quiet_trainer(max_steps=1).fit(model, datamodule=TabularDataModule(**SMALL))
    model.trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]  # plain data only
    assert saved["optimizer"] == {"class_path": "torch.optim.adam.Adam", "init_args": {"betas": (0.5, 0.6)}}
    assert saved["lr_scheduler"] == {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 2}}
    assert not any(key.startswith("_") for key in saved)  # no private key of Lightning's written by the model
    config = LogisticRegression.load_from_checkpoint(tmp_path / "m.ckpt").configure_optimizers()
    assert type(config["optimizer"]) is torch.optim.Adam and config["optimizer"].param_groups[0]["betas"] == (0.5, 0.6)
    assert type(config["lr_scheduler"]["scheduler"]) is torch.optim.lr_scheduler.StepLR
    assert config["lr_scheduler"]["scheduler"].step_size == 2


def test_a_checkpoints_class_is_looked_up_among_imported_subclasses_only():
    with pytest.raises(ConfigError, match=r"optimizer: os\.system is not an imported subclass of torch\.optim"):
        LogisticRegression(num_features=2, optimizer={"class_path": "os.system"})
    with pytest.raises(ConfigError, match=r"lr_scheduler: no_such_module\.Sched is not an imported subclass"):
        LogisticRegression(num_features=2, lr_scheduler={"class_path": "no_such_module.Sched"})


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


@pytest.mark.parametrize("batch_mode", ["full", "example", "minibatch"])
def test_fit_writes_the_hyperparameters_for_tensorboards_hparams_tab(tmp_path, batch_mode):
    dm = TabularDataModule(
        dataset="synthetic", synthetic_rows=200, synthetic_features=3, batch_mode=batch_mode, batch_size=16
    )
    logger = TensorBoardLogger(str(tmp_path), name=batch_mode)
    trainer = L.Trainer(max_steps=1, logger=logger, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(LogisticRegression(num_features=3, optimizer=torch.optim.Adam, lr=0.03), datamodule=dm)
    hparams = session_hparams(tmp_path / batch_mode / "version_0")
    assert {k: hparams[k] for k in ("optimizer/class_path", "lr", "weight_decay", "num_features")} == {
        "optimizer/class_path": "torch.optim.adam.Adam",
        "lr": pytest.approx(0.03),
        "weight_decay": 0.0,
        "num_features": 3,
    }
    assert (hparams["dataset"], hparams["batch_mode"], hparams["batch_size"]) == ("synthetic", batch_mode, 16)
    assert not any(name.startswith("_") for name in hparams)  # Lightning's bookkeeping is left out


def test_weight_decay_in_the_loss_is_sgd_weight_decay_on_the_weights_only():
    # The model's penalty wd/2 * ||w||^2 must give the same updates as torch's SGD weight_decay applied to the
    # weights and not the bias (weights start at zero, so the penalty acts from the second update on).
    dm = TabularDataModule(batch_mode="full", **SMALL)
    model = LogisticRegression(
        num_features=3, lr=0.5, weight_decay=0.3, optimizer=partial(torch.optim.SGD, momentum=0.9)
    )
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


def test_the_mlp_penalises_both_weight_matrices_and_neither_bias():
    model = MLP(num_features=3, hidden=4, weight_decay=0.5)
    x, y = torch.randn(8, 3), torch.ones(8)
    data_loss, _ = model._shared_step((x, y))
    model.trainer = SimpleNamespace(world_size=1, log_every_n_steps=50, global_step=0)  # what training_step reads
    model.on_train_epoch_start()
    total = model.training_step((x, y), 0)
    weights = model.net[0].weight.square().sum() + model.net[2].weight.square().sum()
    torch.testing.assert_close(total, data_loss + 0.25 * weights)


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


def train_on_banknote(*args: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, trained (w..., b) in float64) after full-batch training on banknote, configured as
    ``logreg fit ARGS`` would be."""
    quiet = ["--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    with tempfile.TemporaryDirectory() as root:
        cli = build_cli(["--data.batch_mode", "full", *args, *quiet, "--trainer.default_root_dir", root], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    x, y = cli.datamodule.split("train")
    return x, y, torch.cat([cli.model.linear.weight[0], cli.model.linear.bias]).detach().double()


def objective(x: torch.Tensor, y: torch.Tensor, params: torch.Tensor, weight_decay: float = 0.0) -> float:
    """Mean training log-loss of (w..., b) plus the model's L2 penalty, in float64."""
    loss = F.binary_cross_entropy_with_logits(x.double() @ params[:-1] + params[-1], y.double())
    return (loss + weight_decay / 2 * params[:-1].square().sum()).item()


def test_lbfgs_config_reaches_the_unpenalised_sklearn_solution_in_a_few_dozen_steps():
    config = yaml.safe_load((CONFIGS / "lbfgs.yaml").read_text())
    assert config["data"]["batch_mode"] == "full" and config["trainer"]["max_epochs"] <= 40
    x, y, params = train_on_banknote("--config", str(CONFIGS / "lbfgs.yaml"))
    reference = sklearn_reference(x, y)
    assert reference.abs().max() > 25  # the large-coefficient optimum described above
    # measured: 4e-5 (float32 training against float64 scikit-learn) and 7e-14
    assert (params - reference).abs().max() < 5e-4
    assert abs(objective(x, y, params) - objective(x, y, reference)) < 1e-10


def test_full_batch_config_approaches_the_sklearn_solution_in_its_epochs():
    config = yaml.safe_load((CONFIGS / "full_batch.yaml").read_text())
    assert config["data"]["batch_mode"] == "full"
    x, y, params = train_on_banknote("--config", str(CONFIGS / "full_batch.yaml"))
    reference = sklearn_reference(x, y)
    # measured after 200 epochs at lr 2: log-loss 0.0421 against 0.0140 (a gap of 0.028), cosine 0.990
    assert objective(x, y, params) - objective(x, y, reference) < 0.035
    assert F.cosine_similarity(params, reference, dim=0) > 0.98


@pytest.mark.parametrize(
    "args",
    [
        ["--config", str(CONFIGS / "lbfgs.yaml"), "--trainer.max_epochs", "30"],
        ["--model.lr", "2.0", "--trainer.max_epochs", "100"],
    ],
    ids=["lbfgs", "sgd"],
)
def test_weight_decay_reaches_the_matching_l2_penalised_sklearn_solution(args):
    # The penalty makes the objective strongly convex, so gradient descent converges linearly here too.
    x, y, params = train_on_banknote(*args, "--model.weight_decay", "0.05")
    reference = sklearn_reference(x, y, weight_decay=0.05)
    assert reference[-1] < -0.3  # an intercept a penalty would have shrunk: the bias must stay unpenalised
    # measured: 5e-7 and 2e-14 for gradient descent, 6e-7 and 3e-14 for L-BFGS
    assert (params - reference).abs().max() < 1e-5
    assert abs(objective(x, y, params, 0.05) - objective(x, y, reference, 0.05)) < 1e-10


def test_a_plain_dataloader_gives_the_same_updates_as_the_data_modules_slices():
    dm = TabularDataModule(batch_mode="minibatch", batch_size=16, **SMALL)
    sliced = LogisticRegression(num_features=3, lr=0.5)
    quiet_trainer(max_epochs=1).fit(sliced, datamodule=dm)
    x, y = dm.split("train")
    plain = LogisticRegression(num_features=3, lr=0.5)
    trainer = quiet_trainer(max_epochs=1)
    # the data module's first epoch order, served by a DataLoader over the shuffled rows
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(42 * 1_000_003))
    trainer.fit(plain, train_dataloaders=DataLoader(TensorDataset(x[order], y[order]), batch_size=16))
    assert trainer.global_step == 4
    torch.testing.assert_close(plain.linear.weight, sliced.linear.weight, rtol=0, atol=0)
