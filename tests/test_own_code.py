"""A user's own data module and model, each in one file of their own, through ``logreg`` with no edit to the
package: the model/data contract (``num_features`` linked from the data, batches by name, ``--ckpt_path``)."""

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUIET, scalars, separable_csv

from logreg.cli import main

# Written as a user would, from scratch: no import from logreg.
PLAIN_DATA = '''
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class Blobs(L.LightningDataModule):
    """Two Gaussian blobs in 3 features, served by DataLoaders over TensorDatasets."""

    def __init__(self, rows: int = 300, batch_size: int = 25, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.num_features = 3

    def setup(self, stage: str) -> None:
        gen = torch.Generator().manual_seed(self.hparams.seed)
        y = (torch.rand(self.hparams.rows, generator=gen) < 0.5).float()
        x = torch.randn(self.hparams.rows, 3, generator=gen) + 2 * y[:, None] - 1
        n = self.hparams.rows // 3
        self.train, self.val, self.test = (TensorDataset(x[i : i + n], y[i : i + n]) for i in range(0, 3 * n, n))

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=100)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=100)

    def predict_dataloader(self):
        return DataLoader(TensorDataset(self.test.tensors[0]), batch_size=100)
'''

PLAIN_MODEL = '''
import lightning as L
import torch
import torch.nn.functional as F


class Logit(L.LightningModule):
    """Logistic regression from scratch: only num_features, save_hyperparameters and predict_step's (B,)."""

    def __init__(self, num_features: int, lr: float = 0.5):
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(num_features, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.binary_cross_entropy_with_logits(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", F.binary_cross_entropy_with_logits(self(x), y))

    def predict_step(self, batch, batch_idx):
        return torch.sigmoid(self(batch[0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
'''

# A dataset in another file format (.npz), given its batch modes by the template's base class.
NPZ_DATA = '''
import numpy as np
import torch

from logreg.data import BatchModeDataModule, Table


class NpzData(BatchModeDataModule):
    """Rows from a NumPy .npz file holding arrays x (N, D) and y (N,).

    Args:
        path: The .npz file.
    """

    def __init__(self, path: str, **kwargs):
        super().__init__(**kwargs)

    def load_table(self, stage: str) -> Table:
        arrays = np.load(self.hparams.path)
        x, y = torch.from_numpy(arrays["x"]).float(), torch.from_numpy(arrays["y"]).float()
        return Table(x, y, tuple(f"f{i}" for i in range(x.shape[1])), "y")
'''


# A subclass of the template's base that takes only some of its arguments (Adam and no weight decay, fixed).
DEEP_MODEL = """
import torch

from logreg.models import BinaryClassifier


class Deep(BinaryClassifier):
    \"\"\"Two hidden layers, Adam.

    Args:
        num_features: Inputs per row.
        hidden: Units per hidden layer.
        lr: Learning rate.
    \"\"\"

    def __init__(self, num_features: int, hidden: int = 8, lr: float = 0.01):
        super().__init__(lr=lr, optimizer=torch.optim.Adam)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(num_features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden),
            torch.nn.Tanh(), torch.nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)
"""


@pytest.fixture
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's files, importable as modules ``user_data``, ``user_model`` and ``npz_data``."""
    code = tmp_path / "code"
    code.mkdir()
    for name, text in (
        ("user_data", PLAIN_DATA),
        ("user_model", PLAIN_MODEL),
        ("npz_data", NPZ_DATA),
        ("deep", DEEP_MODEL),
    ):
        (code / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(code))
    return tmp_path


def logreg(root: Path, *args: str) -> None:
    main([*args, *QUIET, "--trainer.default_root_dir", str(root / "logs")])


def last_ckpt(root: Path, name: str, version: int) -> dict:
    return torch.load(root / "logs" / name / f"version_{version}" / "checkpoints" / "last.ckpt", weights_only=True)


def test_a_data_module_written_from_scratch_trains_resumes_tests_and_predicts(user_code):
    data = ["--data", "user_data.Blobs"]
    logreg(user_code, "fit", *data, "--trainer.max_epochs", "2")
    first = last_ckpt(user_code, "Blobs", 0)  # runs are named after the data module's class
    assert first["global_step"] == 2 * math.ceil(100 / 25) and first["hyper_parameters"]["num_features"] == 3
    logreg(user_code, "fit", *data, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    resumed = last_ckpt(user_code, "Blobs", 1)
    assert (resumed["global_step"], resumed["epoch"]) == (3 * 4, 3)
    logreg(user_code, "test", *data, "--ckpt_path", "last")
    tested = scalars(user_code / "logs" / "test" / "version_0")
    assert 0 < tested["test/loss"][0][1] < math.log(2)  # better than the untrained model's log 2
    out = user_code / "p.csv"
    logreg(user_code, "predict", *data, "--ckpt_path", "last", "--prediction.output", str(out))
    rows = np.loadtxt(out, delimiter=",", skiprows=1)
    assert rows.shape == (100, 3) and ((rows[:, 1] >= 0.5) == rows[:, 2]).all()


def test_a_model_written_from_scratch_trains_resumes_and_predicts(user_code):
    data = separable_csv(user_code / "data.csv", rows=100)
    args = ["--model", "user_model.Logit", "--data.dataset", str(data), "--data.batch_mode", "full"]
    logreg(user_code, "fit", *args, "--trainer.max_epochs", "3")
    first = last_ckpt(user_code, "full", 0)
    assert first["hyper_parameters"]["num_features"] == 3 and first["global_step"] == 3
    # the same command and --ckpt_path last, as for the template's own models: the run of the class given
    logreg(user_code, "fit", *args, "--trainer.max_epochs", "5", "--ckpt_path", "last")
    resumed = last_ckpt(user_code, "full", 1)
    assert resumed["global_step"] == 5 and resumed["hyper_parameters"]["_class_path"] == "user_model.Logit"
    out = user_code / "p.csv"
    logreg(user_code, "predict", *args, "--ckpt_path", "last", "--prediction.output", str(out))
    rows = np.loadtxt(out, delimiter=",", skiprows=1)
    # by hand: the checkpoint's weights on the file's rows, standardised with the checkpoint's statistics
    x = np.loadtxt(data, delimiter=",", skiprows=1)[:, :3]
    stats, weights = resumed["TabularDataModule"], resumed["state_dict"]
    z = (x - stats["mean"].numpy()) / stats["std"].numpy() @ weights["linear.weight"].numpy()[0]
    expected = 1 / (1 + np.exp(-(z + weights["linear.bias"].numpy()[0])))
    np.testing.assert_allclose(rows[:, 1], expected, rtol=1e-5)


def test_a_subclass_taking_only_some_of_the_bases_arguments_trains_and_resumes(user_code):
    data = separable_csv(user_code / "data.csv", rows=100)
    args = ["--model", "deep.Deep", "--model.lr", "0.02", "--data.dataset", str(data), "--data.batch_mode", "full"]
    logreg(user_code, "fit", *args, "--trainer.max_epochs", "2")
    first = last_ckpt(user_code, "full", 0)
    assert {k: first["hyper_parameters"][k] for k in ("num_features", "hidden", "lr")} == {
        "num_features": 3,
        "hidden": 8,
        "lr": 0.02,
    }
    (adam,) = first["optimizer_states"]  # the subclass's own choice, with the learning rate given
    assert adam["param_groups"][0]["lr"] == 0.02 and "exp_avg" in adam["state"][0]
    logreg(user_code, "fit", *args, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    assert last_ckpt(user_code, "full", 1)["global_step"] == 4


@pytest.mark.parametrize(("mode", "updates"), [("full", 1), ("example", 60), ("minibatch", math.ceil(60 / 16))])
def test_a_subclass_of_the_base_reading_another_format_gets_every_batch_mode(user_code, mode, updates):
    gen = np.random.default_rng(0)
    x = gen.normal(size=(100, 2))
    np.savez(user_code / "rows.npz", x=x, y=(x[:, 0] > x[:, 1]).astype(np.float64))
    args = ["--data", "npz_data.NpzData", "--data.path", str(user_code / "rows.npz"), "--data.batch_mode", mode]
    logreg(user_code, "fit", *args, "--data.batch_size", "16", "--trainer.max_epochs", "2")
    ckpt = last_ckpt(user_code, mode, 0)  # 60 training rows of 100: 20 validation, 20 test
    assert ckpt["global_step"] == 2 * updates
    assert ckpt["NpzData"]["feature_names"] == ["f0", "f1"] and ckpt["NpzData"]["mean"].shape == (2,)
