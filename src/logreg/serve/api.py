"""What ``logreg serve`` computes for a request: a LitServe API around :class:`~logreg.predictor.Predictor`.

``POST /predict`` takes ``{"rows": [{"variance": 3.62, "skewness": 8.67, ...}, ...]}``, each row naming its
features, and answers ``{"label": "class", "probabilities": [...], "predictions": [...]}``. A request the model
cannot read answers 422 with one sentence naming the row and the field. Other keys of a row (an id, the label)
are ignored: the features are taken by name, so a mistyped one shows up as missing.

Requests are checked in the worker, one by one, before the batch is put together, and a rejected request keeps
its place with its message: with dynamic batching, one bad request among concurrent ones fails alone.
"""

# No `from __future__ import annotations` here: LitServe reads decode_request's annotation as FastAPI's body type,
# which must be the class itself, not its name.
import json
import math
import signal
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import litserve as ls
import torch
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from typing_extensions import override

from logreg.data.tables import FLOAT32_MAX
from logreg.machinery.errors import DataError
from logreg.predictor import load_predictor

UNPROCESSABLE = 422  # the HTTP status of a request whose rows the model cannot read


class PredictRequest(BaseModel):
    """The body of ``POST /predict``: rows, each an object of feature values by column name."""

    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class Rejected:
    """A request the model cannot read, and the sentence that says why."""

    message: str


def rows_to_tensor(rows: Sequence[dict[str, Any]], feature_names: Sequence[str]) -> torch.Tensor:
    """The rows' features as float32 (N, D) in the model's order, checked as ``logreg predict`` checks a file.

    >>> rows_to_tensor([{"b": 2, "a": 1.5, "note": "ignored"}], ["a", "b"])
    tensor([[1.5000, 2.0000]])
    >>> rows_to_tensor([{"a": 1.5}], ["a", "b"])
    Traceback (most recent call last):
    ...
    logreg.machinery.errors.DataError: rows[0]: no column 'b'; the model takes 2 features: a, b.
    """
    values = []
    for i, row in enumerate(rows):
        picked = []
        for name in feature_names:
            if name not in row:
                expected = f"the model takes {len(feature_names)} features: {', '.join(feature_names)}"
                raise DataError(f"rows[{i}]: no column {name!r}; {expected}.")
            value = row[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DataError(f"rows[{i}]: column {name!r} holds the non-numeric value {json.dumps(value)}.")
            if isinstance(value, float) and not math.isfinite(value):
                raise DataError(f"rows[{i}]: column {name!r} holds {value}; features must be finite.")
            if abs(value) > FLOAT32_MAX:  # a finite number that float32, the model's precision, turns into inf
                shown = json.dumps(value)
                raise DataError(
                    f"rows[{i}]: column {name!r} holds {shown if len(shown) < 25 else shown[:20] + '...'}, beyond "
                    f"float32's range (magnitude at most {FLOAT32_MAX:.3g})."
                )
            picked.append(float(value))
        values.append(picked)
    return torch.tensor(values, dtype=torch.float32).reshape(len(values), len(feature_names))


def unreadable_body(request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's answer to a body that is not ``{"rows": [...]}`` (checked before it reaches a worker): 422 with
    the first problem in one sentence, rather than a list of pydantic's records."""
    first = err.errors()[0]
    if first["type"] == "json_invalid":  # its location is a character of the body
        where, reason = f"body, character {first['loc'][-1]}", f"{first['msg']} ({first['ctx']['error']})"
    else:  # a place in the JSON: ("body", "rows", 2) -> rows[2]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"][1:])
        where, reason = where.lstrip(".") or "body", first["msg"]
    detail = f'{where}: {reason}; expected {{"rows": [{{column: number, ...}}, ...]}} as application/json.'
    return JSONResponse({"detail": detail}, status_code=UNPROCESSABLE)


class PredictorAPI(ls.LitAPI):
    """The checkpoint's predictor behind ``POST /predict``; each worker process loads its own copy in ``setup``.

    Args:
        checkpoint: A checkpoint written by ``logreg fit``.
        threshold: Probability from which the prediction is 1.
        max_batch_size: Most requests LitServe puts into one forward pass (1: no batching).
        batch_timeout: Seconds LitServe waits for a batch to fill before running a partial one.
    """

    def __init__(self, checkpoint: str, threshold: float = 0.5, max_batch_size: int = 1, batch_timeout: float = 0.0):
        with warnings.catch_warnings():  # LitServe warns that batch() is defined when batching is off: it is unused
            warnings.simplefilter("ignore")
            super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint, self.threshold = checkpoint, threshold

    @override
    def setup(self, device: str) -> None:
        if threading.current_thread() is threading.main_thread():
            # A terminal's Ctrl+C reaches every process of the group, and LitServe's loop would print a traceback
            # here; the server process stops this one itself when it shuts down.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.predictor = load_predictor(self.checkpoint).to(device)

    @override
    def decode_request(self, request: PredictRequest) -> torch.Tensor | Rejected:
        try:
            return rows_to_tensor(request.rows, self.predictor.feature_names)
        except DataError as err:
            return Rejected(str(err))

    @override
    def batch(self, inputs: list[torch.Tensor | Rejected]) -> list[torch.Tensor | Rejected]:
        return list(inputs)  # joined in predict, around the rejected ones

    @override
    def predict(self, inputs: Any) -> Any:
        batched = isinstance(inputs, list)  # without batching, LitServe passes one request's rows
        requests = inputs if batched else [inputs]
        rows = [x for x in requests if isinstance(x, torch.Tensor)]
        device = self.predictor.mean.device
        with torch.inference_mode():  # one forward pass for every readable request of the batch: (sum N_i, D)
            probs = self.predictor(torch.cat(rows).to(device)).cpu() if rows else torch.empty(0)
        parts = iter(probs.split([len(x) for x in rows]))
        outputs = [next(parts) if isinstance(x, torch.Tensor) else x for x in requests]
        return outputs if batched else outputs[0]

    @override
    def unbatch(self, output: list[torch.Tensor | Rejected]) -> list[torch.Tensor | Rejected]:
        return output

    @override
    def encode_response(self, output: torch.Tensor | Rejected) -> Any:
        if isinstance(output, Rejected):
            return JSONResponse({"detail": output.message}, status_code=UNPROCESSABLE)
        return {
            "label": self.predictor.label_name,
            "probabilities": output.tolist(),
            "predictions": (output >= self.threshold).long().tolist(),
        }
