"""The model used outside the template: ``load_predictor`` gives ``logreg predict``'s probabilities from raw rows,
for the template's models and a user's own."""

import textwrap
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import QUIET, predicted
from test_own_code import PLAIN_MODEL  # a LightningModule written from scratch, as a user would

from logreg import LogisticRegression, load_predictor
from logreg.cli import main
from logreg.machinery.checkpoint import read_checkpoint
from logreg.machinery.errors import DataError
from logreg.predictor import Predictor, import_class


def raw_rows(data: Path) -> torch.Tensor:
    return torch.from_numpy(np.loadtxt(data, delimiter=",", skiprows=1)[:, :4])  # float64, as read


def test_the_predictor_gives_logreg_predicts_probabilities_from_raw_rows(banknote):
    predictor = load_predictor(banknote["ckpt"])
    assert predictor.feature_names == ["variance", "skewness", "curtosis", "entropy"]
    assert predictor.label_name == "class"
    x = raw_rows(banknote["data"])
    probs = predictor(x)
    assert probs.shape == (1372,) and not probs.requires_grad
    np.testing.assert_allclose(probs.numpy(), banknote["probabilities"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(predictor(x.float()).numpy(), probs.numpy())  # float32 rows: the same
    # what the issue found: the model alone on raw rows is far off, as it expects standardised rows
    alone = torch.sigmoid(LogisticRegression.load_from_checkpoint(banknote["ckpt"], weights_only=True)(x.float()))
    assert (alone.detach() - probs).abs().max() > 0.1


@pytest.mark.parametrize("model", ["logreg.models.MLP", "own_model.Logit"])
def test_the_predictor_works_for_another_model_and_a_users_own(model, banknote, tmp_path, monkeypatch):
    (tmp_path / "own_model.py").write_text(textwrap.dedent(PLAIN_MODEL))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["fit", "--model", model, "--data.batch_mode", "full", "--trainer.max_epochs", "3"]
    main([*args, "--trainer.default_root_dir", str(tmp_path / "logs"), *QUIET])
    ckpt = tmp_path / "logs" / "full" / "version_0" / "checkpoints" / "last.ckpt"
    expected = predicted(ckpt, banknote["data"], tmp_path / "p.csv")
    predictor = load_predictor(ckpt)
    assert type(predictor.model).__name__ == model.rsplit(".", 1)[-1]
    np.testing.assert_allclose(predictor(raw_rows(banknote["data"])).numpy(), expected, rtol=0, atol=1e-6)


def test_rows_of_the_wrong_width_are_refused_naming_the_features(banknote):
    with pytest.raises(DataError, match=r"rows of shape \(2, 3\): the model reads \(rows, 4\), the features variance"):
        load_predictor(banknote["ckpt"])(torch.zeros(2, 3))


def test_a_checkpoint_without_training_statistics_is_refused(banknote, tmp_path):
    ckpt = torch.load(banknote["ckpt"], weights_only=True)
    del ckpt["TabularDataModule"]
    torch.save(ckpt, tmp_path / "bare.ckpt")
    with pytest.raises(DataError, match=r"bare.ckpt: holds no standardisation statistics"):
        load_predictor(tmp_path / "bare.ckpt")


def test_a_model_class_that_cannot_be_imported_is_named(banknote, tmp_path):
    ckpt = torch.load(banknote["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "gone_module.Gone"
    torch.save(ckpt, tmp_path / "moved.ckpt")
    with pytest.raises(DataError, match=r"moved.ckpt: its model class gone_module.Gone cannot be imported \(No module"):
        load_predictor(tmp_path / "moved.ckpt")
    saved = read_checkpoint(banknote["ckpt"])
    with pytest.raises(DataError, match=r"its model class logreg.data.TabularDataModule is not a LightningModule"):
        import_class(saved, "logreg.data.TabularDataModule", L.LightningModule, "model")
    with pytest.raises(DataError, match=r"does not record its model's class"):
        import_class(replace(saved, model_class=None), None, Predictor, "model")


def test_the_predictor_moves_and_saves_with_its_statistics(banknote):
    predictor = load_predictor(banknote["ckpt"])
    state = predictor.state_dict()
    saved = torch.load(banknote["ckpt"], weights_only=True)["TabularDataModule"]
    assert torch.equal(state["mean"], saved["mean"]) and torch.equal(state["std"], saved["std"])
    assert {"model.linear.weight", "model.linear.bias"} <= state.keys()


def test_the_readme_python_lines_run_as_written(tmp_path, monkeypatch):
    from test_docs import ROOT, python_block

    monkeypatch.chdir(tmp_path)  # the README's path is relative: lightning_logs/minibatch/version_0
    main(["fit", "--trainer.max_epochs", "1", *QUIET])
    scope: dict = {}
    exec(python_block(ROOT / "README.md", "load_predictor("), scope)
    assert scope["probabilities"].shape == (1,) and 0 <= scope["probabilities"].item() <= 1
    assert scope["predictor"].feature_names == ["variance", "skewness", "curtosis", "entropy"]


@pytest.mark.gpu
def test_on_a_gpu_the_predictor_gives_the_same_probabilities(banknote):
    predictor = load_predictor(banknote["ckpt"]).to("cuda")  # the statistics move with the model
    probs = predictor(raw_rows(banknote["data"]).cuda()).cpu()
    np.testing.assert_allclose(probs.numpy(), banknote["probabilities"], rtol=0, atol=1e-6)
