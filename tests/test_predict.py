import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUIET

from logreg.cli import main
from logreg.machinery.predict import HEADER


def predict_with(ckpt: Path, data: Path, root: Path, *extra: str) -> None:
    main(
        [
            "predict",
            "--ckpt_path",
            str(ckpt),
            "--data.dataset",
            str(data),
            "--trainer.default_root_dir",
            str(root),
            *QUIET,
            *extra,
        ]
    )


def read_output(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, probability, prediction) columns of a predictions file, after checking its header."""
    assert path.read_text().splitlines()[0] == HEADER
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return table[:, 0].astype(int), table[:, 1], table[:, 2].astype(int)


def by_hand(ckpt: Path, x: np.ndarray) -> np.ndarray:
    """p(y = 1 | x) from the checkpoint's weights and training statistics, without Lightning."""
    saved = torch.load(ckpt, weights_only=True)
    stats, weights = saved["TabularDataModule"], saved["state_dict"]
    z = (torch.as_tensor(x, dtype=torch.float32) - stats["mean"]) / stats["std"]
    return torch.sigmoid(z @ weights["linear.weight"][0] + weights["linear.bias"][0]).numpy()


def test_predict_writes_one_row_per_input_row_matching_the_checkpoint_by_hand(trained, tmp_path):
    predict_with(trained["ckpt"], trained["data"], tmp_path)
    out = tmp_path / "predict" / "version_0" / "train.predictions.csv"  # the default place
    rows, probs, preds = read_output(out)
    x = np.loadtxt(trained["data"], delimiter=",", skiprows=1)[:, :3]
    assert rows.tolist() == list(range(60))  # every row, in input order
    expected = by_hand(trained["ckpt"], x)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert preds.tolist() == (expected >= 0.5).astype(int).tolist()
    labels = np.loadtxt(trained["data"], delimiter=",", skiprows=1)[:, 3]
    assert (preds == labels).mean() > 0.9  # the model learned something, so the comparison above is not trivial


def test_a_file_without_labels_in_another_column_order_gives_the_same_probabilities(trained, tmp_path):
    x = np.loadtxt(trained["data"], delimiter=",", skiprows=1)[:7, :3]
    new = tmp_path / "new.csv"
    new.write_text("c,a,b\n" + "".join(f"{c},{a},{b}\n" for a, b, c in x))
    predict_with(trained["ckpt"], new, tmp_path, "--prediction.output", str(tmp_path / "out.csv"))
    rows, probs, _ = read_output(tmp_path / "out.csv")
    assert rows.tolist() == list(range(7))
    # The same values as for these rows of the training file: the statistics come from the checkpoint, not
    # from the 7 new rows (whose own mean and std differ), and columns are matched by name.
    np.testing.assert_allclose(probs, by_hand(trained["ckpt"], x), rtol=0, atol=1e-6)
    assert x.mean(axis=0) != pytest.approx(torch.load(trained["ckpt"])["TabularDataModule"]["mean"].numpy(), abs=0.05)


def test_predict_with_ckpt_path_last_uses_the_newest_run_of_the_mode(trained, tmp_path):
    shutil.copytree(trained["root"] / "logs", tmp_path / "logs")
    out = tmp_path / "p.csv"
    main(
        [
            "predict",
            "--ckpt_path",
            "last",
            "--data.batch_mode",
            "full",
            "--data.dataset",
            str(trained["data"]),
            "--trainer.default_root_dir",
            str(tmp_path / "logs"),
            "--prediction.output",
            str(out),
            *QUIET,
        ]
    )
    x = np.loadtxt(trained["data"], delimiter=",", skiprows=1)[:, :3]
    np.testing.assert_allclose(read_output(out)[1], by_hand(trained["ckpt"], x), rtol=0, atol=1e-6)


def test_each_prediction_run_gets_its_own_directory_and_never_overwrites(trained, tmp_path):
    predict_with(trained["ckpt"], trained["data"], tmp_path)
    predict_with(trained["ckpt"], trained["data"], tmp_path)
    first, second = (tmp_path / "predict" / f"version_{v}" / "train.predictions.csv" for v in (0, 1))
    assert first.read_text() == second.read_text()
    assert (tmp_path / "predict" / "version_1" / "config.yaml").is_file()  # records what was predicted from what


def test_an_existing_output_file_is_refused_and_left_as_it_was(trained, tmp_path, capsys):
    out = tmp_path / "out.csv"
    out.write_text("keep me\n")
    with pytest.raises(SystemExit, match=r"out\.csv: already exists; remove it or choose another output"):
        predict_with(trained["ckpt"], trained["data"], tmp_path, "--prediction.output", str(out))
    assert out.read_text() == "keep me\n"


def test_the_input_file_is_never_the_output(trained, tmp_path):
    data = shutil.copy(trained["data"], tmp_path / "data.csv")
    before = Path(data).read_bytes()
    with pytest.raises(SystemExit, match=r"data\.csv: is the input file"):
        predict_with(trained["ckpt"], Path(data), tmp_path, "--prediction.output", str(tmp_path / "." / "data.csv"))
    assert Path(data).read_bytes() == before


def test_a_failed_prediction_leaves_no_partial_output(trained, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n4,oops,6\n")
    out = tmp_path / "out" / "p.csv"
    with pytest.raises(SystemExit, match=r"bad\.csv: column 'b' holds the non-numeric value 'oops' on line 3"):
        predict_with(trained["ckpt"], bad, tmp_path, "--prediction.output", str(out))
    assert list(out.parent.iterdir()) == []  # neither the output nor its hidden partial file


def test_the_threshold_sets_the_predicted_class(trained, tmp_path):
    predict_with(trained["ckpt"], trained["data"], tmp_path, "--prediction.output", str(tmp_path / "p.csv"))
    probs = np.sort(read_output(tmp_path / "p.csv")[1])
    gaps = np.diff(probs[10:-10])
    k = 10 + int(np.argmax(gaps))  # a cut well between two probabilities, away from 0.5
    cut = float(probs[k] + probs[k + 1]) / 2
    out = tmp_path / "t.csv"
    predict_with(
        trained["ckpt"], trained["data"], tmp_path, "--prediction.output", str(out), "--prediction.threshold", repr(cut)
    )
    _, probs, preds = read_output(out)
    assert preds.tolist() == (probs >= cut).astype(int).tolist()
    assert 10 < preds.sum() < 50


def test_a_checkpoint_with_nan_weights_is_refused_before_any_file_is_written(trained, tmp_path):
    diverged = torch.load(trained["ckpt"], weights_only=True)
    diverged["state_dict"]["linear.weight"][0, 1] = float("nan")
    torch.save(diverged, tmp_path / "diverged.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        predict_with(
            tmp_path / "diverged.ckpt", trained["data"], tmp_path, "--prediction.output", str(tmp_path / "p.csv")
        )
    assert exit_info.value.code == (
        f"error: {tmp_path}/diverged.ckpt: its weights hold non-finite values (linear.weight has nan), so every "
        "prediction would be nan; use a checkpoint saved before the values became non-finite, or retrain."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverged.ckpt"]  # no output, no run directory


def test_a_read_only_output_directory_is_named_in_one_line(trained, tmp_path, read_only_dir):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "earlier.csv").write_text("keep me\n")
    read_only_dir(out_dir)
    with pytest.raises(SystemExit) as exit_info:
        predict_with(trained["ckpt"], trained["data"], tmp_path, "--prediction.output", str(out_dir / "p.csv"))
    assert exit_info.value.code == (
        f"error: {out_dir / 'p.csv'}: cannot write this predictions file (Permission denied); nothing was "
        "replaced, earlier files are intact."
    )
    assert sorted(p.name for p in out_dir.iterdir()) == ["earlier.csv"]
    assert (out_dir / "earlier.csv").read_text() == "keep me\n"


def test_a_full_disk_while_predicting_leaves_no_partial_file(trained, tmp_path, full_disk):
    out = tmp_path / "out" / "p.csv"
    full_disk(budget=500)  # the header and a few rows fit, not all 60
    with pytest.raises(SystemExit) as exit_info:
        predict_with(trained["ckpt"], trained["data"], tmp_path, "--prediction.output", str(out))
    assert exit_info.value.code == (
        f"error: {out}: cannot write this predictions file (No space left on device); nothing was replaced, "
        "earlier files are intact."
    )
    assert list(out.parent.iterdir()) == []


def test_two_predictions_to_one_output_never_replace_each_others_file(trained, tmp_path, monkeypatch):
    from logreg.machinery.predict import PredictionWriter

    out = tmp_path / "p.csv"
    finish = PredictionWriter.on_predict_end

    def another_run_finishes_first(self, trainer, pl_module):
        out.write_text("the other run's predictions\n")  # it started after this run checked the name was free
        finish(self, trainer, pl_module)

    monkeypatch.setattr(PredictionWriter, "on_predict_end", another_run_finishes_first)
    with pytest.raises(SystemExit) as exit_info:
        predict_with(trained["ckpt"], trained["data"], tmp_path, "--prediction.output", str(out))
    message = str(exit_info.value.code)
    assert message.startswith(
        f"error: {out}: appeared while writing and is left as it was; this run's predictions file is in "
    )
    assert out.read_text() == "the other run's predictions\n"
    kept = Path(message.rsplit(" is in ", 1)[1].rstrip("."))
    assert kept.parent == tmp_path and read_output(kept)[0].tolist() == list(range(60))  # this run's rows, whole


def test_a_data_module_without_a_dataset_name_writes_predictions_csv(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from logreg import LogisticRegression
    from logreg.machinery.predict import PredictionWriter

    class Rows(L.LightningDataModule):  # a user's own, with no hyperparameters at all
        def predict_dataloader(self):
            return DataLoader(TensorDataset(torch.linspace(-1, 1, 10).unsqueeze(1)), batch_size=4)

    model = LogisticRegression(num_features=1)
    with torch.no_grad():
        model.linear.weight.fill_(2.0)
    trainer = L.Trainer(
        default_root_dir=tmp_path, callbacks=[PredictionWriter()], logger=False, enable_progress_bar=False
    )
    trainer.predict(model, datamodule=Rows())
    rows, probs, _ = read_output(tmp_path / "predictions.csv")
    assert rows.tolist() == list(range(10))
    np.testing.assert_allclose(probs, torch.sigmoid(2 * torch.linspace(-1, 1, 10)).numpy(), rtol=1e-6)
