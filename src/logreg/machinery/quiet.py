"""Messages a user cannot act on, silenced by their exact text, in this one place.

Each entry says why it is harmless here. Anything else Lightning or PyTorch says is still shown.
"""

from __future__ import annotations

import logging
import re
import warnings

HARMLESS_WARNINGS = (
    # `logreg` (launch.py) hands the command line to LightningCLI as its args on purpose; nothing is mixed up.
    r"LightningCLI's args parameter is intended to run from within Python like if it were from the command line\.",
    # Lightning's own pytree helper calls a torch API that torch deprecated; nothing in a user's code does.
    re.escape(
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead."
    ),
    # The model logs the epoch's training loss (train/loss_epoch) itself, so short epochs lose no training curve.
    r"The number of training batches \(\d+\) is smaller than the logging interval Trainer\(log_every_n_steps=\d+\)\. "
    r"Set a lower value for log_every_n_steps if you want to see logs for the training epoch\.",
    # A resumed run writes a new version directory on purpose, so that nothing of the earlier run is overwritten.
    r"The dirpath has changed from '.*' to '.*', therefore `best_model_score`, `kth_best_model_path`, "
    r"`kth_value`, `last_model_path` and `best_k_models` won't be reloaded\. Only `best_model_path` will be reloaded\.",
)
HARMLESS_LOG_LINES = (
    # An advertisement for a cloud service, printed at every run.
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    # A signal's stop is said in one line of ours, naming the signal and what was saved; Lightning's notices of
    # it (that it saw SIGTERM, and that it shuts down after a KeyboardInterrupt, whatever the signal) add lines.
    "\nDetected KeyboardInterrupt, attempting graceful shutdown",
    "[rank: 0] Received SIGTERM:",
)
# Lightning's loggers that write those lines: its rank-zero messages, and its signal handling.
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.signal_connector")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(HARMLESS_LOG_LINES)


def silence_harmless_messages() -> None:
    """Hide the messages above; safe to call more than once."""
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in log.filters):
            log.addFilter(_DropLines())
