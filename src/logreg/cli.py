"""The command line: ``logreg fit | validate | test | predict``, configured by YAML through LightningCLI, and
``logreg sweep`` (a hyperparameter search, see :mod:`logreg.sweep`).

Config keys are the ``__init__`` arguments of the model, the data module and the Trainer. The model is
any LightningModule that takes ``num_features`` (``--model logreg.mlp.MLP``; default
``LogisticRegression``), its optimizer and scheduler are classes chosen the same way
(``--model.optimizer Adam``). The number of features flows from the data to the model by
``link_arguments``, so it is never typed. With ``--ckpt_path`` Lightning rebuilds the checkpoint's model
class and hyperparameters, and the data module reads the checkpoint's feature columns.

Mistakes in the input end in ``error: <one sentence>`` on stderr and exit code 1 (2 for the command line
itself), never in a traceback; the exception types that carry such sentences are listed in ``USER_ERRORS``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from logreg.callbacks import LastCheckpoint
from logreg.checkpoint import SavedRun, configure_columns, find_last_checkpoint, read_checkpoint
from logreg.data import ConfigError, TabularDataModule
from logreg.datasets import DataError
from logreg.divergence import NonFiniteLossError, StopOnNonFiniteLoss
from logreg.predict import PredictionWriter
from logreg.quiet import silence_harmless_messages

DEFAULT_LOG_DIR = "lightning_logs"
DEFAULT_MODEL = "logreg.model.LogisticRegression"
PREDICT_RUN_NAME = "predict"  # prediction runs get their own versions, apart from the training runs
USER_ERRORS = (DataError, ConfigError, NonFiniteLossError)


class LogRegCLI(LightningCLI):
    """LightningCLI with the template's defaults: a TensorBoard run per batch mode, best and last checkpoints."""

    saved: SavedRun | None = None  # what --ckpt_path holds, read before the classes are built

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_features", "model.init_args.num_features", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.set_defaults(
            {
                "model": {"class_path": DEFAULT_MODEL},
                "checkpoint.monitor": "val/loss",
                "checkpoint.filename": "best-epoch{epoch}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI next rebuilds the model from the checkpoint's hyperparameters: find the file that
        # `last` names, and check that it is a logreg checkpoint before anything unpickles it.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if config is None or config.get("ckpt_path") is None:
            return
        if config.ckpt_path == "last":
            root = config.trainer.default_root_dir or DEFAULT_LOG_DIR
            logger = config.trainer.logger
            # The newest earlier run of this batch mode; the new run writes a new version, so nothing is overwritten.
            runs = Path(root) / config.data.batch_mode if logger in (None, True) else _logger_root(logger)
            config.ckpt_path = str(find_last_checkpoint(runs))
        self.saved = read_checkpoint(config.ckpt_path)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        callbacks = config.trainer.callbacks or []
        if config.trainer.enable_progress_bar is not False and not any(
            "ProgressBar" in c.class_path for c in callbacks
        ):
            # Lightning's default bar redraws at every step, which costs more than a small update (see ProgressBar).
            config.trainer.callbacks = [*callbacks, Namespace(class_path="logreg.callbacks.ProgressBar")]
        root = config.trainer.default_root_dir or DEFAULT_LOG_DIR
        if self.saved is not None:
            configure_columns(config.data, self.saved)
        elif self.subcommand == "predict":
            raise DataError("predict needs a trained model: pass --ckpt_path CHECKPOINT (or --ckpt_path last).")
        if config.trainer.logger in (None, True):
            # One run directory per batch mode (DIR/<mode>/version_N), so the modes overlay in TensorBoard.
            name = PREDICT_RUN_NAME if self.subcommand == "predict" else config.data.batch_mode
            config.trainer.logger = Namespace(
                class_path="logreg.loggers.TensorBoardLogger", init_args=Namespace(save_dir=root, name=name)
            )

    @override
    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self.subcommand != "predict":  # the writer's hooks would run at every training batch for nothing
            self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, PredictionWriter)]
        if self.saved is not None and self.model.hparams.num_features != self.saved.num_features:
            raise DataError(
                f"{self.datamodule.hparams.dataset}: has {self.model.hparams.num_features} features, but the "
                f"checkpoint {self.saved.path} holds a model of {self.saved.num_features}."
            )


def _logger_root(logger: Any) -> Path:
    """The directory holding a configured logger's version_N runs (save_dir/name, as TensorBoard and CSV use)."""
    init = getattr(logger, "init_args", None)
    if init is None or init.get("save_dir") is None or init.get("name") is None:
        raise DataError("--ckpt_path last needs a logger with save_dir and name; pass the checkpoint's path instead.")
    return Path(init.save_dir) / init.name


def build_cli(args: list[str] | None = None, run: bool = True) -> LogRegCLI:
    """The project's CLI with its defaults; ``run=False`` only builds the model, data module and Trainer."""
    silence_harmless_messages()
    return LogRegCLI(
        L.LightningModule,
        TabularDataModule,
        subclass_mode_model=True,
        args=args,
        run=run,
        seed_everything_default=42,
        auto_configure_optimizers=False,  # the model takes its optimizer and scheduler as arguments
        # Default callbacks are added to any given with --trainer.callbacks.
        trainer_defaults={
            "max_epochs": 20,
            "callbacks": [LastCheckpoint(), StopOnNonFiniteLoss()],
            # The summary would list the metric objects beside a 5-parameter layer, and like every callback it is
            # called at every step; --trainer.enable_model_summary true brings it back.
            "enable_model_summary": False,
        },
        parser_kwargs={"exit_on_error": False},  # parse errors are raised, and reported by main() as one line
    )


def _causes(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from."""
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def main(args: list[str] | None = None) -> None:
    """Run the CLI on ``args`` (default: the command line), e.g. ``main(["fit", "--trainer.max_epochs", "5"])``."""
    try:
        if (sys.argv[1:] if args is None else args)[:1] == ["sweep"]:  # not a Trainer method: its own parser
            from logreg.sweep import main as sweep

            sweep(None if args is None else args[1:])
            return
        build_cli(args)
    except ArgumentError as err:
        # jsonargparse spreads a message over indented lines; one line reads better and greps.
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        # jsonargparse wraps what a model's __init__ raises in its own ValueError; the user's mistake is the cause.
        cause = next((e for e in _causes(err) if isinstance(e, USER_ERRORS)), None)
        if cause is None:
            raise
        raise SystemExit(f"error: {cause}") from None


if __name__ == "__main__":
    main()
