"""TensorBoard with an HPARAMS tab that compares every run, without a placeholder metric.

Lightning's ``TensorBoardLogger`` fills the HPARAMS tab only together with metric values: a placeholder
``hp_metric`` of -1, or values written at step 0 that would start every curve at a made-up point. This
logger writes only the run's hyperparameters there; TensorBoard then offers every scalar tag of the runs
(``val/loss``, ``val/acc``, ...) as a metric column, showing its last value.

A write the event file cannot take (a full disk, a quota, a read-only directory) stops the run in one line
naming the run's directory, instead of a traceback of TensorBoard's writer thread and a message about the
value logged.
"""

from __future__ import annotations

import contextlib
import threading
from argparse import Namespace
from collections.abc import Iterator, Mapping
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams as hparams_summary
from typing_extensions import override

from logreg.machinery.errors import WriteError, causes, raised_through

EVENT_WRITER = "tensorboard.summary.writer"  # the package of TensorBoard's event file writer and its thread


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger, whose ``log_hyperparams`` also fills the HPARAMS tab.

    What Lightning's own does not give: with ``default_hp_metric=False`` its HPARAMS tab stays empty, and
    otherwise it lists every run against a made-up ``hp_metric`` of -1. Here every hyperparameter of the model
    and the data is a column, and every logged scalar (``val/loss``, ``val/acc``, ...) a metric to sort by.

    Args:
        save_dir: Directory of the runs.
        name: Subdirectory of this kind of run (the CLI uses the batch mode).
        **kwargs: Any other argument of Lightning's ``TensorBoardLogger`` (``version``, ``sub_dir``, ...).

    Example:
        >>> TensorBoardLogger("runs", name="full").name
        'full'
    """

    def __init__(self, save_dir: str, name: str = "lightning_logs", **kwargs: Any) -> None:
        super().__init__(save_dir, name=name, default_hp_metric=False, **kwargs)
        self._session_written = False  # the HPARAMS tab's session start, written at the first log_hyperparams
        quiet_event_writer_failures()

    @override
    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, metrics: dict[str, Any] | None = None, step: int | None = None
    ) -> None:
        with self._event_file():
            super().log_hyperparams(params, metrics, step)  # hparams.yaml, and the tab when metrics are given
            if metrics is not None or self._session_written:  # once: a later stage's writer may be closed already
                return
            # Only the session start: with no experiment summary, TensorBoard builds one from all runs.
            _, session_start, _ = hparams_summary(flat_hparams(self.hparams), {})
            self.experiment.file_writer.add_summary(session_start)  # SummaryWriter.add_hparams writes it so too
            self._session_written = True

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        with self._event_file():
            super().log_metrics(metrics, step)

    @override
    @rank_zero_only
    def save(self) -> None:
        with self._event_file():
            super().save()

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        try:
            with self._event_file():
                super().finalize(status)
        except WriteError:
            if status == "success":
                raise
            # A run that failed (or was stopped) has said why already; when the event file was the cause, the
            # writer's failure was raised then, and raising it again here would hide any other cause.

    @contextlib.contextmanager
    def _event_file(self) -> Iterator[None]:
        """Turn a failed write of the event file into a WriteError naming the run's directory. TensorBoard's
        writer thread writes the events; when a write fails, the thread ends and every later call of the writer
        raises its exception (Lightning wraps the one of ``add_scalar`` into a ValueError about the value)."""
        try:
            yield
        except Exception as err:
            failed = next((e for e in causes(err) if isinstance(e, OSError) and raised_through(e, EVENT_WRITER)), None)
            if failed is None:
                raise
            raise WriteError(
                f"{self.log_dir}: TensorBoard cannot write the run's event file ({failed.strerror or failed}); "
                "the run stopped there."
            ) from None


def flat_hparams(params: Mapping[str, Any] | Namespace, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested hyperparameters as TensorBoard's HPARAMS tab takes them: ``a/b`` keys, and any value that is not a
    number, a bool or a string as its text. Lightning's own bookkeeping entries (the CLI's ``_class_path`` and
    ``_instantiator``) start with ``_`` and say nothing about the run: they are left out.

    >>> flat_hparams({"lr": 0.1, "optimizer": {"class_path": "torch.optim.SGD"}, "columns": None})
    {'lr': 0.1, 'optimizer/class_path': 'torch.optim.SGD', 'columns': 'None'}
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in (vars(params) if isinstance(params, Namespace) else params).items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, Mapping | Namespace):
            flat.update(flat_hparams(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value if type(value) in (bool, int, float, str) else str(value)
    return flat


def quiet_event_writer_failures() -> None:
    """Keep Python from printing the traceback of TensorBoard's writer thread when a write of it fails (once per
    process; other threads' exceptions are printed as before). Its exception is not lost: TensorBoard raises it
    again in the thread that writes the next event or flushes, where the logger turns it into one line."""
    if getattr(threading.excepthook, "quiet_event_writer", False):
        return
    earlier = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and raised_through(args.exc_value, EVENT_WRITER)):
            earlier(args)

    hook.quiet_event_writer = True  # type: ignore[attr-defined]
    threading.excepthook = hook
