"""``logreg export --ckpt_path CKPT --output FILE``: the checkpoint's model as one ONNX file, raw rows in,
probabilities out, standardisation included.

The file is checked before it is written: onnxruntime runs it on the checkpoint's own validation rows (rebuilt by
its data module; rows drawn from the training statistics where that data is not at hand) against the PyTorch
module, and a file that disagrees by more than ``TOLERANCE`` is refused. It is written atomically, and an existing
file is never replaced.

The graph (``torch.onnx.export``, its ``torch.export`` path):

- opset ``OPSET`` (18; onnxruntime 1.14 or later runs it);
- input ``features``: float32, shape (rows, D), the raw feature values in the training column order;
- output ``probabilities``: float32, shape (rows,), p(y = 1 | x); the row count is dynamic;
- metadata (``metadata_props``): ``feature_names`` (a JSON list), ``label_name``, ``model_class``.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentError, ArgumentParser

from logreg.batch import as_batch
from logreg.machinery.atomic import AtomicFile
from logreg.machinery.checkpoint import SavedRun, read_checkpoint
from logreg.machinery.errors import ConfigError, DataError, one_line, reporting
from logreg.predictor import Predictor, import_class, load_predictor
from logreg.serve import optional

OPSET = 18
INPUT, OUTPUT = "features", "probabilities"
TOLERANCE = 1e-5  # largest difference from PyTorch's probabilities a written file may have
CHECK_ROWS = 10_000  # validation rows compared at most


@dataclass(frozen=True)
class Exported:
    """What ``logreg export`` wrote and how well it agrees with PyTorch.

    Attributes:
        path: The ONNX file.
        feature_names: Its input's columns, in order.
        difference: The largest difference between its probabilities and PyTorch's on ``checked``.
        checked: The rows compared, in words.
    """

    path: Path
    feature_names: list[str]
    difference: float
    checked: str


def export(ckpt_path: str | Path, output: str | Path) -> Exported:
    """Write the checkpoint's :class:`~logreg.predictor.Predictor` to ``output`` as ONNX, checked against PyTorch."""
    onnx = optional("onnx", "export")
    runtime = optional("onnxruntime", "export")
    optional("onnxscript", "export")  # torch.onnx's exporter needs it
    output = Path(output)
    if output.exists():
        raise DataError(f"{output}: already exists; remove it or choose another --output.")
    saved = read_checkpoint(ckpt_path)
    predictor = load_predictor(saved.path)
    rows, checked = check_rows(saved, predictor)
    proto = to_onnx(predictor)
    metadata = {"feature_names": json.dumps(predictor.feature_names), "model_class": saved.model_class or ""}
    metadata["label_name"] = predictor.label_name or ""
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = (
        f"p({predictor.label_name or 'y'} = 1) from raw rows of {', '.join(predictor.feature_names)}; "
        f"exported by logreg from {saved.path.name}."
    )
    data = proto.SerializeToString()
    session = runtime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT], {INPUT: rows.numpy()})
    with torch.no_grad():
        expected = predictor(rows)
    difference = float((torch.from_numpy(got) - expected).abs().max()) if len(rows) else 0.0
    if not difference <= TOLERANCE:  # NaN refuses too
        raise DataError(
            f"{output}: not written; the ONNX graph's probabilities differ from PyTorch's by {difference:.3g} "
            f"(more than {TOLERANCE:g}) on {checked}."
        )
    with AtomicFile(output, what="ONNX file") as f:
        f.write(data)
    return Exported(output, predictor.feature_names, difference, checked)


def to_onnx(predictor: Predictor) -> object:
    """The predictor as an ONNX ``ModelProto``: opset OPSET, a dynamic row count."""
    example = predictor.mean.expand(2, -1).clone()  # (2, D): two rows, so the row count is not fixed at 1
    rows = torch.export.Dim("rows")
    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level
    torch_onnx.setLevel(logging.ERROR)  # it logs a line for each torchvision operator it skips
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notes of torch.export's internals, nothing about the model
            program = torch.onnx.export(
                predictor,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: rows},),
                input_names=[INPUT],
                output_names=[OUTPUT],
                opset_version=OPSET,
                verbose=False,
            )
    except Exception as err:  # a model torch.export cannot trace: say which, in one line
        model = type(predictor.model).__name__
        raise DataError(f"cannot export {model} to ONNX: torch.onnx.export failed ({one_line(err)[:300]}).") from None
    finally:
        torch_onnx.setLevel(level)
    return program.model_proto


def check_rows(saved: SavedRun, predictor: Predictor) -> tuple[torch.Tensor, str]:
    """Raw rows to compare the ONNX graph with PyTorch on, and what they are in words: the checkpoint's own
    validation rows (at most CHECK_ROWS) where its data module can be rebuilt, else rows drawn around the
    training statistics."""
    try:
        cls = import_class(saved, saved.data_class, L.LightningDataModule, "data module")
        data = cls.load_from_checkpoint(saved.path, weights_only=True)  # its statistics restored with it
        data.setup("validate")
        parts, count = [], 0
        for batch in data.val_dataloader():
            parts.append(as_batch(batch).x.cpu())
            count += len(parts[-1])
            if count >= CHECK_ROWS:
                break
        standardised = torch.cat(parts)[:CHECK_ROWS]
        # Back to raw values; rounding makes them not quite the file's, which does not matter for a comparison.
        return standardised * predictor.std + predictor.mean, f"the checkpoint's {len(standardised)} validation rows"
    except Exception as err:  # the training data moved, a data module that cannot be rebuilt here: check anyway
        reason = one_line(err)[:200]
    gen = torch.Generator().manual_seed(0)
    drawn = predictor.mean + 3 * predictor.std * torch.randn(CHECK_ROWS, len(predictor.mean), generator=gen)
    return (
        drawn,
        f"{CHECK_ROWS} rows drawn around the training statistics (its validation rows are not at hand: {reason})",
    )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="logreg export",
        description="Write a checkpoint's model as one ONNX file: raw rows in, probabilities out (see docs/serving.md).",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument("--ckpt_path", required=True, help="A checkpoint written by `logreg fit`.")
    parser.add_argument("--output", required=True, help="The ONNX file to write; an existing file is not replaced.")
    return parser


def run(args: Sequence[str]) -> Exported:
    opts = build_parser().parse_args(list(args))
    if not opts.output:
        raise ConfigError("--output must name a file.")
    done = export(opts.ckpt_path, opts.output)
    print(
        f"Wrote {done.path}: ONNX opset {OPSET}, input {INPUT!r} float32 (rows, {len(done.feature_names)}) = "
        f"{', '.join(done.feature_names)}; output {OUTPUT!r} (rows,). It agrees with PyTorch to {done.difference:.2g} "
        f"on {done.checked}."
    )
    return done


def main(args: Sequence[str] | None = None) -> None:
    """``logreg export``: mistakes end in one line on stderr and exit code 1 (2 for the command line)."""
    reporting(run, list(sys.argv[2:] if args is None else args), is_usage=lambda e: isinstance(e, ArgumentError))
