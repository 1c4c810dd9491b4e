"""Seconds per training epoch of the same weight updates done four ways, in one process.

- ``project``: ``Trainer.fit`` on this package's data module and model, built by the CLI with its default
  logging, progress bar and checkpointing (validation off for the timing);
- ``bare``: the framework's floor: a Trainer with no logger, callbacks or metrics, running a LightningModule
  whose ``training_step`` only returns the loss, over the same tensor slices (``TensorBatches``);
- ``bare_callbacks``: ``bare`` with as many callbacks as ``logreg fit`` has, all empty: Lightning calls every
  callback at every hook of every step, so this is the floor for a Trainer with that many callbacks;
- ``hand``: a hand-written PyTorch loop: per-epoch shuffle, then a slice per step and
  ``zero_grad / forward / BCE-with-logits / backward / step``;
- ``naive``: the Lightning template as often written: ``DataLoader(TensorDataset(x, y))`` and ``self.log``
  on every step.

Runs are interleaved (project, bare, hand, naive, project, ...), the first epoch of each run is a warm-up, and an
epoch is timed from its start to the next one's (or the end of training), so Trainer start-up is excluded
but per-epoch work such as checkpointing is not. The figure reported is the median.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from logreg.cli import build_cli
from logreg.data import TabularDataModule, TensorBatches

MODES = {"full": 1_000_000, "minibatch": 1_000_000, "example": 20_000}  # default rows per mode
# Timed epochs per run and path: a full-batch epoch lasts about 20 ms, so three of them would be mostly noise.
EPOCHS = {"full": 10, "minibatch": 1, "example": 1}
NAIVE_EPOCHS = 1  # the naive path's epochs take seconds in every mode


class EpochTimer(Callback):
    """Wall-clock seconds of each training epoch, from its start to the next epoch's start or the end."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.starts: list[float] = []
        self.seconds: list[float] = []

    def _stamp(self) -> None:
        self.sync()
        now = time.perf_counter()
        if self.starts:
            self.seconds.append(now - self.starts[-1])
        self.starts.append(now)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp()

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp()


class BareLogisticRegression(L.LightningModule):
    """Nothing but the update: the floor of Lightning's automatic optimization."""

    def __init__(self, num_features: int, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.linear = torch.nn.Linear(num_features, 1)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.linear(x).squeeze(-1), y)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class NaiveLogisticRegression(BareLogisticRegression):
    """The common way: log every step, with an epoch aggregate too."""

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss


def _sync_for(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _holdout(rows: int) -> float:
    """val/test fraction: the split needs a row in each, but the timing is about the training rows."""
    return max(1e-4, 1.0 / rows)


def _training_rows(rows: int, features: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The standardised training split of the synthetic table every path trains on, as the CLI's data module
    makes it from ``_data_args``."""
    dm = TabularDataModule(
        dataset="synthetic",
        synthetic_rows=rows,
        synthetic_features=features,
        val_fraction=_holdout(rows),
        test_fraction=_holdout(rows),
    )
    dm.setup("fit")
    x, y = dm.split("train")
    return x.to(device), y.to(device)


def _rows_per_update(mode: str, train_rows: int, batch_size: int) -> int:
    return {"full": train_rows, "example": 1, "minibatch": batch_size}[mode]


def _data_args(mode: str, rows: int, features: int, batch_size: int) -> list[str]:
    holdout = str(_holdout(rows))
    return [
        *("--data.dataset", "synthetic", "--data.synthetic_rows", str(rows)),
        *("--data.synthetic_features", str(features), "--data.batch_mode", mode),
        *("--data.batch_size", str(batch_size), "--data.val_fraction", holdout),
        *("--data.test_fraction", holdout),
    ]


def time_project(
    mode: str, rows: int, features: int, batch_size: int, epochs: int, device: str, lr: float, without: str = ""
) -> list[float]:
    """Epoch seconds of the project's own path, built exactly as ``logreg fit`` builds it; ``without`` names a
    default callback's class, or ``logger``, to leave out (what it costs is the difference)."""
    with tempfile.TemporaryDirectory() as root:
        cli = build_cli(
            [
                *_data_args(mode, rows, features, batch_size),
                *("--model.lr", str(lr), "--trainer.max_epochs", str(epochs + 1)),
                *("--trainer.limit_val_batches", "0", "--trainer.default_root_dir", root),
                *("--trainer.accelerator", "gpu" if device == "cuda" else "cpu", "--trainer.devices", "1"),
            ],
            run=False,
        )
        if without == "logger":
            cli.trainer.loggers = []
        elif without:
            cli.trainer.callbacks = [c for c in cli.trainer.callbacks if type(c).__name__ != without]
        timer = EpochTimer(_sync_for(device))
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.seconds[1:]


def time_hand_written(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, epochs: int, device: str, lr: float
) -> list[float]:
    """Epoch seconds of a plain PyTorch loop over tensors already on ``device``."""
    sync = _sync_for(device)
    model = torch.nn.Linear(x.shape[1], 1).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    seconds = []
    for _ in range(epochs + 1):
        sync()
        start = time.perf_counter()
        xs, ys = x, y
        if shuffle:
            order = torch.randperm(len(x)).to(device)
            xs, ys = x[order], y[order]
        for i in range(0, len(xs), batch_size):
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(xs[i : i + batch_size]).squeeze(-1), ys[i : i + batch_size])
            loss.backward()
            optimizer.step()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds[1:]


def _time_lightning(
    model: L.LightningModule, batches: Any, epochs: int, device: str, callbacks: int = 0, **trainer_args: Any
) -> list[float]:
    """Epoch seconds of ``Trainer.fit`` of ``model`` on ``batches``, with the epoch timer and ``callbacks`` empty
    callbacks."""
    timer = EpochTimer(_sync_for(device))
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_epochs=epochs + 1,
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            default_root_dir=root,
            callbacks=[timer, *(Callback() for _ in range(callbacks))],
            enable_model_summary=False,
            **trainer_args,
        )
        trainer.fit(model, train_dataloaders=batches)
    return timer.seconds[1:]


def time_bare(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, epochs: int, device: str, lr: float
) -> list[float]:
    """Epoch seconds of bare Lightning: the same slices, no logger, callbacks (but the timer) or metrics."""
    batches = TensorBatches(x, y, batch_size=batch_size, shuffle=shuffle)
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return _time_lightning(BareLogisticRegression(x.shape[1], lr), batches, epochs, device, **quiet)


@functools.cache
def default_callbacks() -> tuple[str, ...]:
    """The class names of the callbacks ``logreg fit`` gives the Trainer."""
    with tempfile.TemporaryDirectory() as root:
        args = ["--data.dataset", "synthetic", "--data.synthetic_rows", "100", "--trainer.default_root_dir", root]
        return tuple(type(c).__name__ for c in build_cli(args, run=False).trainer.callbacks)


def time_bare_callbacks(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, epochs: int, device: str, lr: float
) -> list[float]:
    """Epoch seconds of bare Lightning with as many empty callbacks as ``logreg fit`` has."""
    batches = TensorBatches(x, y, batch_size=batch_size, shuffle=shuffle)
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    model = BareLogisticRegression(x.shape[1], lr)
    return _time_lightning(model, batches, epochs, device, callbacks=len(default_callbacks()), **quiet)


def time_naive(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, epochs: int, device: str, lr: float
) -> list[float]:
    """Epoch seconds of the naive template: a DataLoader over a TensorDataset in host memory, Lightning's defaults."""
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=batch_size, shuffle=shuffle)
    return _time_lightning(NaiveLogisticRegression(x.shape[1], lr), loader, epochs, device)


PATHS = {
    "bare": time_bare,
    "bare_callbacks": time_bare_callbacks,
    "hand": time_hand_written,
    "naive": time_naive,
}  # the baselines, besides project


def benchmark_mode(
    mode: str, rows: int, features: int, batch_size: int, repeats: int, epochs: int, device: str, lr: float = 0.01
) -> dict:
    """Interleaved runs of the five paths for one batch mode; medians of the timed epochs and their ratios."""
    x, y = _training_rows(rows, features, device)  # the same standardised training rows for every path
    size = _rows_per_update(mode, len(x), batch_size)
    shuffle = mode != "full"
    times: dict[str, list[float]] = {"project": [], **{path: [] for path in PATHS}}
    # Both Lightning paths draw progress bars; send them to /dev/null alike so the table stays readable.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for _ in range(repeats):
            times["project"] += time_project(mode, rows, features, batch_size, epochs, device, lr)
            for path, time_path in PATHS.items():
                runs = NAIVE_EPOCHS if path == "naive" else epochs
                times[path] += time_path(x, y, size, shuffle, runs, device, lr)
    median = {path: statistics.median(seconds) for path, seconds in times.items()}
    return {
        "mode": mode,
        "rows": rows,
        "train_rows": len(x),
        "features": features,
        "batch_size": size,
        "updates_per_epoch": math.ceil(len(x) / size),
        "device": device,
        "project_s": median["project"],
        "bare_s": median["bare"],
        "bare_callbacks_s": median["bare_callbacks"],
        "callbacks": list(default_callbacks()),
        "hand_s": median["hand"],
        "naive_s": median["naive"],
        "project_over_bare": median["project"] / median["bare"],
        "project_over_bare_callbacks": median["project"] / median["bare_callbacks"],
        "project_over_hand": median["project"] / median["hand"],
        "naive_over_project": median["naive"] / median["project"],
        "samples": times,
    }


def ablate_mode(
    mode: str, rows: int, features: int, batch_size: int, repeats: int, epochs: int, device: str, lr: float = 0.01
) -> dict:
    """What each default callback and the logger cost: the project's path without each, interleaved with the
    whole, in microseconds per weight update (medians)."""
    variants = ["", *default_callbacks(), "logger"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for _ in range(repeats):
            for variant in variants:
                times[variant] += time_project(mode, rows, features, batch_size, epochs, device, lr, without=variant)
    median = {v: statistics.median(seconds) for v, seconds in times.items()}
    train_rows = len(_training_rows(rows, features, "cpu")[0])
    updates = math.ceil(train_rows / _rows_per_update(mode, train_rows, batch_size))
    return {
        "mode": mode,
        "updates_per_epoch": updates,
        "project_s": median[""],
        "cost_us_per_update": {v: (median[""] - median[v]) / updates * 1e6 for v in variants[1:]},
        "samples": times,
    }


def measure_memory(rows: int, features: int, device: str) -> dict:
    """Peak resident memory of a fresh process training the project in full-batch mode, against the data size."""
    probe = ["--memory-probe", "--device", device, "--rows", str(rows), "--features", str(features)]
    result = subprocess.run(
        [sys.executable, "-m", "logreg.benchmarks.training", *probe],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process from /proc; the peak from getrusage elsewhere."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_probe(rows: int, features: int, device: str) -> None:
    before = _rss_bytes("VmRSS")  # imports done, no data yet
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        time_project("full", rows, features, rows, 2, device, 0.01)
    peak = _rss_bytes("VmHWM")
    data = rows * (features + 1) * 4  # float32 features and labels
    report = {"data_bytes": data, "peak_rss_increase_bytes": peak - before, "ratio": (peak - before) / data}
    if device == "cuda":  # the training data lives in GPU memory there
        report["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        report["cuda_ratio"] = report["peak_cuda_bytes"] / data
    print(json.dumps(report))


def format_table(results: list[dict]) -> str:
    lines = [
        "| mode | data | updates/epoch | project s/epoch | bare Lightning s/epoch | bare + empty callbacks s/epoch "
        "| hand-written s/epoch | naive s/epoch | project / bare | project / bare + callbacks | project / hand "
        "| naive / project |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['rows']:,} x {r['features']} | {r['updates_per_epoch']:,} | {r['project_s']:.4f} "
            f"| {r['bare_s']:.4f} | {r['bare_callbacks_s']:.4f} | {r['hand_s']:.4f} | {r['naive_s']:.4f} "
            f"| {r['project_over_bare']:.2f} | {r['project_over_bare_callbacks']:.2f} | {r['project_over_hand']:.2f} "
            f"| {r['naive_over_project']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--rows", type=int, help="rows for every mode (default: 1M full/minibatch, 20k example)")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256, help="minibatch size")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per path")
    parser.add_argument(
        "--epochs", type=int, help=f"timed epochs per run, after one warm-up epoch (default per mode: {EPOCHS})"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-memory", action="store_true", help="skip the full-batch peak memory measurement")
    parser.add_argument(
        "--ablate", action="store_true", help="instead: what each default callback and the logger cost per update"
    )
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        _memory_probe(args.rows, args.features, args.device)
        return
    if args.ablate:
        ablations = []
        for mode in args.modes:
            epochs = args.epochs or EPOCHS[mode]
            rows = args.rows or MODES[mode]
            ablations.append(ablate_mode(mode, rows, args.features, args.batch_size, args.repeats, epochs, args.device))
            costs = ", ".join(f"{k} {v:.1f}" for k, v in ablations[-1]["cost_us_per_update"].items())
            print(f"{mode}: us per update: {costs}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"device": args.device, "ablations": ablations}, indent=2))
        return
    results = []
    for mode in args.modes:
        rows = args.rows or MODES[mode]
        epochs = args.epochs or EPOCHS[mode]
        results.append(benchmark_mode(mode, rows, args.features, args.batch_size, args.repeats, epochs, args.device))
        print(format_table(results[-1:]).splitlines()[-1], flush=True)
    report = {"device": args.device, "torch": torch.__version__, "lightning": L.__version__, "modes": results}
    if not args.no_memory:
        report["memory"] = measure_memory(args.rows or MODES["full"], args.features, args.device)
    print()
    print(format_table(results))
    if "memory" in report:
        m = report["memory"]
        print(
            f"\nfull batch peak memory: {m['peak_rss_increase_bytes'] / 2**20:.0f} MiB over the baseline "
            f"for {m['data_bytes'] / 2**20:.0f} MiB of data ({m['ratio']:.2f}x)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
