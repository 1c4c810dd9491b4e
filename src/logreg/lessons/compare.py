"""The three gradient-descent variants side by side: same data, same split, same model, same Trainer.

Each batch mode trains once through :class:`TabularDataModule`, :class:`LogisticRegression` and a Lightning
``Trainer`` that logs to its own TensorBoard run (``<out>/<mode>/version_N``, as the CLI names runs), so
``tensorboard --logdir <out>`` overlays them. :class:`LossTrace` records the loss of every weight update and
when it happened, independent of the logging interval; each mode trains with one update per Lightning batch,
so the whole-split loss can be evaluated after any number of updates. From those traces come a table
(updates per epoch, total updates, seconds, final validation loss and accuracy, loss noise) and a figure of
the training loss against epochs, weight updates and seconds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from typing_extensions import override

from logreg.data import TabularDataModule
from logreg.machinery.errors import DataError
from logreg.machinery.loggers import TensorBoardLogger
from logreg.models import LogisticRegression

#: The order of the table and the legend: the fewest updates first.
MODES = ("full", "minibatch", "example")
#: Learning rates that suit each mode on standardised data, as in configs/*.yaml: the full-batch gradient is
#: exact and takes long steps; a single example's gradient is noisy and needs short ones.
DEFAULT_LR = {"full": 2.0, "minibatch": 0.5, "example": 0.05}
LABELS = {"full": "full batch (GD)", "minibatch": "minibatch", "example": "per example (SGD)"}
COLORS = {"full": "tab:blue", "minibatch": "tab:orange", "example": "tab:green"}
FIGURE_NAME, TABLE_NAME = "compare_modes.png", "compare_modes.json"


class LossTrace(Callback):
    """Records every weight update, and now and then the loss on the whole training split.

    Per update: the loss of its batch (computed before the update changes the weights, so it belongs to
    ``epochs``, the epochs done before it, e.g. 0.5 halfway through the first) and the seconds of training
    when the update has finished. Seconds count from the start of training and leave out validation and the
    evaluations below, so they measure what the updates cost.

    The whole-split loss is what the updates achieve, free of the batch's sampling noise. It is evaluated
    before the first update, after every epoch, and after update counts that grow by ``growth`` (geometric
    spacing, a few hundred evaluations however long the run), into ``curve`` as
    (updates done, epochs done, seconds, loss). The data module must offer ``split("train")``, as
    :class:`TabularDataModule` does.

    Args:
        growth: Factor between successive update counts at which the whole-split loss is evaluated.

    Example:
        >>> trace = LossTrace()
        >>> trace.losses, trace.epochs, trace.seconds, trace.curve
        ([], [], [], [])
    """

    def __init__(self, growth: float = 1.05) -> None:
        self.growth = growth
        self.losses: list[float] = []
        self.epochs: list[float] = []
        self.seconds: list[float] = []
        self.curve: list[tuple[int, float, float, float]] = []
        self._start = self._paused = self._validation_start = 0.0
        self._next_evaluation = 1
        self._epoch_start = 0  # global_step when the epoch began

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._paused, self._next_evaluation = time.perf_counter(), 0.0, 1
        self._evaluate(trainer, pl_module, epochs=0.0)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # .item() waits for the update to finish, so the clock below includes it on any device.
        self.losses.append(outputs["loss"].item())
        self.seconds.append(self._clock())
        per_epoch = trainer.datamodule.updates_per_epoch
        self.epochs.append(trainer.current_epoch + (trainer.global_step - 1 - self._epoch_start) / per_epoch)
        epoch_done = batch_idx + 1 == trainer.num_training_batches
        if trainer.global_step >= self._next_evaluation or epoch_done:
            done = trainer.global_step - self._epoch_start
            self._evaluate(trainer, pl_module, epochs=trainer.current_epoch + done / per_epoch)

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # the sanity check runs before training starts
            self._paused += time.perf_counter() - self._validation_start

    def _clock(self) -> float:
        return time.perf_counter() - self._start - self._paused

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, epochs: float) -> None:
        began, seconds = time.perf_counter(), self._clock()
        x, y = trainer.datamodule.split("train")
        with torch.no_grad():
            loss = F.binary_cross_entropy_with_logits(pl_module(x), y)  # the model's training loss, whole split
        step = trainer.global_step
        self.curve.append((step, epochs, seconds, loss.item()))
        self._next_evaluation = max(step + 1, math.ceil(step * self.growth))
        self._paused += time.perf_counter() - began


def loss_noise(losses: Sequence[float]) -> float | None:
    """Standard deviation of the successive differences of the per-update loss over the last half of training.

    Differences remove the slow downward trend, leaving the update-to-update jitter that the batch's sample
    of rows adds: large for one example, small for a minibatch, none for the full batch. The first half is
    left out because there the trend itself bends sharply (gradient descent's first long steps), which would
    count as jitter. None when the last half holds fewer than three updates.

    >>> round(loss_noise([0.9, 0.8, 1.0, 0.5, 1.0, 0.5]), 4)  # last half 0.5, 1.0, 0.5: differences 0.5, -0.5
    0.7071
    """
    last_half = losses[len(losses) // 2 :]
    if len(last_half) < 3:
        return None
    return torch.tensor(last_half, dtype=torch.float64).diff().std().item()


@dataclass
class ModeResult:
    """One mode's row of the comparison; ``trace`` holds the curves (not part of the table)."""

    mode: str
    lr: float
    rows_per_update: int
    updates_per_epoch: int
    total_updates: int
    seconds: float
    final_train_loss: float
    final_val_loss: float
    final_val_acc: float
    loss_noise: float | None
    run_dir: str
    trace: LossTrace = field(repr=False)

    def row(self) -> dict[str, Any]:
        """The table row: every field but the trace."""
        return {k: v for k, v in asdict(self).items() if k != "trace"}


def train_mode(
    mode: str,
    out: Path,
    *,
    dataset: str = "banknote",
    epochs: int = 10,
    batch_size: int = 32,
    lr: float | None = None,
    seed: int = 42,
    progress_bar: bool = True,
    data_args: Mapping[str, Any] | None = None,
) -> ModeResult:
    """Fit one batch mode with the project's data module, model and a Trainer; log to ``out/<mode>/version_N``."""
    L.seed_everything(seed, verbose=False)
    dm = TabularDataModule(dataset=dataset, batch_mode=mode, batch_size=batch_size, seed=seed, **(data_args or {}))
    lr = DEFAULT_LR[mode] if lr is None else lr
    model = LogisticRegression(num_features=dm.num_features, lr=lr)
    trace = LossTrace()
    logger = TensorBoardLogger(str(out), name=dm.run_name)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=logger,
        # The CLI's bar: Lightning's default redraws at every update, which the seconds panel would count.
        callbacks=[trace, TQDMProgressBar(refresh_rate=50)] if progress_bar else [trace],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    return ModeResult(
        mode=mode,
        lr=lr,
        rows_per_update=dm.train_batch_size,
        updates_per_epoch=dm.updates_per_epoch,
        total_updates=trainer.global_step,
        seconds=trace.seconds[-1],
        final_train_loss=trace.curve[-1][3],
        final_val_loss=metrics["val/loss"].item(),
        final_val_acc=metrics["val/acc"].item(),
        loss_noise=loss_noise(trace.losses),
        run_dir=logger.log_dir,
        trace=trace,
    )


def compare_modes(
    out: str | Path,
    *,
    dataset: str = "banknote",
    epochs: int = 10,
    batch_size: int = 32,
    lr: Mapping[str, float] | None = None,
    seed: int = 42,
    progress_bar: bool = True,
    modes: Sequence[str] = MODES,
    data_args: Mapping[str, Any] | None = None,
) -> list[ModeResult]:
    """Train every mode on the same split, then write ``out/compare_modes.png`` and ``out/compare_modes.json``.

    Refuses (DataError) when either file exists, before training, so an earlier comparison is never replaced.

    Args:
        out: Parent directory of the TensorBoard runs, the figure and the table.
        dataset: ``banknote``, ``synthetic`` or a CSV path, as in :class:`TabularDataModule`.
        epochs: Passes over the training split, the same for every mode.
        batch_size: Rows per update in minibatch mode.
        lr: Learning rate per mode; missing modes use :data:`DEFAULT_LR`.
        seed: Seed of the split, the shuffles and the synthetic data.
        progress_bar: Show Lightning's progress bar while training.
        modes: Which batch modes to train.
        data_args: Further :class:`TabularDataModule` arguments, e.g. ``synthetic_rows``.
    """
    out = Path(out)
    for name in (FIGURE_NAME, TABLE_NAME):
        if (out / name).exists():
            raise DataError(f"{out / name} exists; choose another output directory or move it away.")
    figure_class()  # fail before training when matplotlib is missing
    lr = {**DEFAULT_LR, **(lr or {})}
    results = [
        train_mode(
            mode,
            out,
            dataset=dataset,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr[mode],
            seed=seed,
            progress_bar=progress_bar,
            data_args=data_args,
        )
        for mode in modes
    ]
    title = f"{dataset}: {epochs} epochs, minibatch of {batch_size}, lr " + ", ".join(
        f"{LABELS[r.mode].split(' (')[0]} {r.lr:g}" for r in results
    )
    plot(results, out / FIGURE_NAME, title=title)
    table = {
        "dataset": dataset,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "modes": {r.mode: r.row() for r in results},
    }
    (out / TABLE_NAME).write_text(json.dumps(table, indent=2) + "\n")
    return results


def format_table(results: Sequence[ModeResult]) -> str:
    """The comparison as aligned text, one mode per line."""
    header = f"{'mode':<10}{'lr':>6}{'rows/update':>13}{'updates/epoch':>15}{'updates':>9}{'seconds':>9}"
    header += f"{'train loss':>12}{'val loss':>10}{'val acc':>9}{'loss noise':>12}"
    lines = [header]
    for r in results:
        noise = "n/a" if r.loss_noise is None else f"{r.loss_noise:.4f}"
        lines.append(
            f"{r.mode:<10}{r.lr:>6g}{r.rows_per_update:>13}{r.updates_per_epoch:>15}{r.total_updates:>9}"
            f"{r.seconds:>9.2f}{r.final_train_loss:>12.4f}{r.final_val_loss:>10.4f}{r.final_val_acc:>9.4f}{noise:>12}"
        )
    return "\n".join(lines)


def figure_class():
    """matplotlib's Figure class, which renders with Agg without pyplot's global state or a display."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DataError("the comparison plot needs matplotlib: pip install -e '.[plots]'.") from None
    return Figure


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def plot(results: Sequence[ModeResult], path: Path, title: str = "") -> None:
    """Three panels of training loss: against epochs, weight updates and seconds (the last two log-scaled).

    Thick lines: the loss on the whole training split; thin lines: the loss of the batch each update saw,
    placed where that update started (after ``k - 1`` updates). Log-scaled panels start after the first update.
    """
    figure = figure_class()(figsize=(16, 5), layout="constrained")
    axes = figure.subplots(1, 3, sharey=True)
    panels = (("epochs", "epochs done", "linear"), ("weight updates", "weight updates done", "log"))
    panels += (("seconds", "seconds of training done (validation excluded)", "log"),)
    for r in results:
        t, color = r.trace, COLORS[r.mode]
        updates, epochs, seconds, loss = (list(column) for column in zip(*t.curve, strict=True))
        batch_x = (t.epochs, range(len(t.losses)), [0.0, *t.seconds[:-1]])
        label = f"{LABELS[r.mode]}: {plural(r.rows_per_update, 'row')}/update, {plural(r.updates_per_epoch, 'update')}/epoch"
        for ax, x, bx, (_, _, scale) in zip(axes, (epochs, updates, seconds), batch_x, panels, strict=True):
            skip = 1 if scale == "log" else 0  # zero updates and seconds have no place on a log axis
            if r.updates_per_epoch > 1:  # the fainter the more updates overlap, so the band reads as a density
                alpha = min(0.4, max(0.1, 40 / r.updates_per_epoch))
                ax.plot(list(bx)[skip:], t.losses[skip:], color=color, linewidth=0.5, alpha=alpha)
            ax.plot(
                x[skip:], loss[skip:], color=color, linewidth=2.2, label=label, marker="o" if len(x) <= 30 else None
            )
    for ax, (key, xlabel, scale) in zip(axes, panels, strict=True):
        ax.set_xscale(scale)
        ax.set_xlabel(xlabel)
        ax.set_title(f"training loss vs {key}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("training loss (binary cross-entropy)")
    first = max(r.trace.curve[0][3] for r in results)  # ln 2 for every mode: the weights start at zero
    axes[0].set_ylim(0, 1.4 * first)
    axes[0].legend(loc="upper right")
    note = "thick: loss on the whole training split; thin: loss of the batch each update saw"
    figure.suptitle(f"{title}\n{note}" if title else note)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def summary(results: Sequence[ModeResult]) -> str:
    """The printed report: the table and the noise ordering the theory predicts."""
    noise = {r.mode: r.loss_noise for r in results}
    lines = [format_table(results)]
    if all(noise.get(m) is not None for m in MODES):
        holds = noise["example"] > noise["minibatch"] > noise["full"]
        lines.append(f"loss noise per example > minibatch > full batch: {'yes' if holds else 'NO'}")
    return "\n".join(lines)
