"""``logreg export``: one ONNX file that computes ``logreg predict``'s probabilities from raw rows, checked against
PyTorch before it is written, never replacing a file."""

import json
import sys
import textwrap
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import QUIET

from logreg.cli import main as cli
from logreg.data.tables import load_banknote
from logreg.launch import main
from logreg.machinery.checkpoint import read_checkpoint
from logreg.predictor import load_predictor
from logreg.serve.export import CHECK_ROWS, check_rows

# A model whose traced graph is not what it computes in Python: the export must refuse it.
TWO_FACED = """
import torch
from logreg.models import LogisticRegression


class TwoFaced(LogisticRegression):
    def forward(self, x):
        logits = super().forward(x)
        return logits + 0.01 if torch.compiler.is_exporting() else logits
"""


def test_the_onnx_file_gives_logreg_predicts_probabilities_from_raw_rows(banknote, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the exporter writes nothing beside the file
    main(["export", "--ckpt_path", str(banknote["ckpt"]), "--output", "model.onnx"])
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    model = onnx.load(tmp_path / "model.onnx")
    assert [(op.domain, op.version) for op in model.opset_import if op.domain == ""] == [("", 18)]
    (features,), (probabilities,) = model.graph.input, model.graph.output
    assert features.name == "features" and probabilities.name == "probabilities"
    rows, columns = features.type.tensor_type.shape.dim
    assert rows.dim_param and columns.dim_value == 4  # a named, dynamic row count
    assert probabilities.type.tensor_type.shape.dim[0].dim_param == rows.dim_param
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["feature_names"]) == ["variance", "skewness", "curtosis", "entropy"]
    assert metadata["label_name"] == "class" and metadata["model_class"] == "logreg.LogisticRegression"

    session = onnxruntime.InferenceSession(tmp_path / "model.onnx", providers=["CPUExecutionProvider"])
    x = np.loadtxt(banknote["data"], delimiter=",", skiprows=1)[:, :4].astype(np.float32)
    (got,) = session.run(None, {"features": x})
    np.testing.assert_allclose(got, banknote["probabilities"], rtol=0, atol=1e-6)
    assert session.run(None, {"features": x[:1]})[0].shape == (1,)
    out = capsys.readouterr().out
    assert "Wrote model.onnx: ONNX opset 18, input 'features' float32 (rows, 4)" in out
    assert "on the checkpoint's 274 validation rows." in out


def test_an_existing_file_is_not_replaced(banknote, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"someone's file")
    with pytest.raises(SystemExit) as stop:
        main(["export", "--ckpt_path", str(banknote["ckpt"]), "--output", str(out)])
    assert stop.value.code == f"error: {out}: already exists; remove it or choose another --output."
    assert out.read_bytes() == b"someone's file"


def test_a_graph_that_disagrees_with_pytorch_is_not_written(tmp_path, monkeypatch):
    (tmp_path / "two_faced.py").write_text(textwrap.dedent(TWO_FACED))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["fit", "--model", "two_faced.TwoFaced", "--data.batch_mode", "full", "--trainer.max_epochs", "1"]
    cli([*args, "--trainer.default_root_dir", str(tmp_path / "logs"), *QUIET])
    ckpt = tmp_path / "logs" / "full" / "version_0" / "checkpoints" / "last.ckpt"
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(SystemExit) as stop:
        main(["export", "--ckpt_path", str(ckpt), "--output", str(out)])
    message = str(stop.value.code)
    assert message.startswith(f"error: {out}: not written; the ONNX graph's probabilities differ from PyTorch's by ")
    assert message.endswith("(more than 1e-05) on the checkpoint's 274 validation rows.")
    assert not out.parent.exists()  # nothing was written, not even its directory


def test_the_check_uses_the_validation_rows_else_rows_drawn_from_the_statistics(banknote):
    saved, predictor = read_checkpoint(banknote["ckpt"]), load_predictor(banknote["ckpt"])
    rows, words = check_rows(saved, predictor)
    assert words == "the checkpoint's 274 validation rows" and rows.shape == (274, 4)
    # raw values again: each is a banknote row, up to the rounding of standardising and back
    nearest = torch.cdist(rows, load_banknote().x, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert nearest.max() < 1e-4
    rows, words = check_rows(replace(saved, data_class="gone.Data"), predictor)
    assert rows.shape == (CHECK_ROWS, 4)
    assert words.startswith(f"{CHECK_ROWS} rows drawn around the training statistics (its validation rows are not")
    assert "gone.Data cannot be imported" in words
    spread = (rows - predictor.mean) / predictor.std  # three standard deviations around the training mean
    assert spread.mean(dim=0).abs().max() < 0.1 and ((spread.std(dim=0) - 3).abs() < 0.1).all()


def test_a_missing_extra_is_named_in_one_line(banknote, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(SystemExit) as stop:
        main(["export", "--ckpt_path", str(banknote["ckpt"]), "--output", str(tmp_path / "model.onnx")])
    assert stop.value.code == (
        'error: logreg export needs onnxruntime, of the optional serve extra: pip install -e ".[serve]" '
        '(or pip install "logreg[serve]").'
    )
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_that_is_not_one_fails_in_one_line(tmp_path):
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(SystemExit) as stop:
        main(["export", "--ckpt_path", str(tmp_path / "junk.ckpt"), "--output", str(tmp_path / "m.onnx")])
    assert str(stop.value.code).startswith(f"error: {tmp_path / 'junk.ckpt'}: not a readable checkpoint")
