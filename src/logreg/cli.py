"""The command line: ``logreg fit | validate | test | predict``, configured by YAML through LightningCLI,
``logreg prepare`` (``logreg.streaming.prepare``), which converts a table for streaming, and ``logreg sweep``
(``logreg.sweep.sweep``), a hyperparameter search whose trials are ``logreg fit`` runs.

Config keys are the ``__init__`` arguments of the model, the data module and the Trainer. The model is
any LightningModule that takes ``num_features`` (``--model logreg.models.MLP``; default
``LogisticRegression``), its optimizer and scheduler are classes chosen the same way
(``--model.optimizer Adam``). The number of features flows from the data to the model by
``link_arguments``, so it is never typed. With ``--ckpt_path`` Lightning rebuilds the checkpoint's model
class and hyperparameters, and the data module reads the checkpoint's feature columns.

Mistakes in the input end in ``error: <one sentence>`` on stderr and exit code 1 (2 for the command line
itself), never in a traceback; the exception types that carry such sentences are listed in ``USER_ERRORS``.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from logreg.data import TabularDataModule
from logreg.machinery import interrupt
from logreg.machinery.callbacks import LastCheckpoint
from logreg.machinery.checkpoint import (
    SavedRun,
    choose_last_checkpoint,
    claim_version,
    configure_columns,
    read_checkpoint,
)
from logreg.machinery.divergence import NonFiniteLossError, StopOnNonFiniteLoss
from logreg.machinery.errors import ConfigError, DataError, WriteError
from logreg.machinery.predict import PredictionWriter
from logreg.machinery.quiet import silence_harmless_messages

DEFAULT_LOG_DIR = "lightning_logs"
DEFAULT_MODEL = "logreg.models.LogisticRegression"
USER_ERRORS = (DataError, ConfigError, NonFiniteLossError, WriteError)
EVALUATIONS = ("validate", "test")  # they, and predict, get run directories of their own, named after the command
SEED_RANGE = (0, 2**32 - 1)  # what Lightning's seed_everything (numpy's generator) accepts


class LogRegCLI(LightningCLI):
    """LightningCLI with the template's defaults: a TensorBoard run per batch mode, best and last checkpoints."""

    saved: SavedRun | None = None  # what --ckpt_path holds, read before the classes are built
    run_dir: Path | None = None  # the version_N directory this run claimed, removed again if it stays empty
    _new_dirs: list[Path] = []  # noqa: RUF012 -- its parents that did not exist before, innermost first

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_features", "model.init_args.num_features", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # last.ckpt, to resume from, also saved when a signal stops training: --last_checkpoint.every_seconds sets
        # how much training a crash may lose.
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.set_defaults(
            {
                "model": {"class_path": DEFAULT_MODEL},
                "checkpoint.monitor": "val/loss",
                "checkpoint.filename": "best-epoch{epoch}",
                "checkpoint.auto_insert_metric_name": False,
                # val/loss exists only after validation: check there, not at every training epoch's end (where a
                # run without validation would look for it, in vain, after every epoch)
                "checkpoint.save_on_train_epoch_end": False,
            }
        )

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI next rebuilds the model from the checkpoint's hyperparameters: find the file that
        # `last` names, and check that it is a logreg checkpoint before anything unpickles it.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        seed = config.get("seed_everything") if config is not None else None
        if not isinstance(seed, bool) and isinstance(seed, int) and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            # LightningCLI seeds before any other hook, with a ValueError traceback for this.
            parser.error(
                f"--seed_everything must lie between {SEED_RANGE[0]} and {SEED_RANGE[1]}, or be true for a random "
                f"seed; got {seed}."
            )
        if config is None or config.get("ckpt_path") is None:
            return
        if config.ckpt_path == "last":
            root = config.trainer.default_root_dir or DEFAULT_LOG_DIR
            logger = config.trainer.logger
            # The furthest earlier run of this batch mode; the new run writes a new version, so nothing is overwritten.
            runs = Path(root) / config.data.batch_mode if logger in (None, True, False) else _logger_root(logger)
            last = choose_last_checkpoint(runs)
            print(last.describe("resuming from" if subcommand == "fit" else "using"), file=sys.stderr)
            config.ckpt_path = str(last.path)
        self.saved = read_checkpoint(config.ckpt_path)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        callbacks = config.trainer.callbacks or []
        if config.trainer.enable_progress_bar is not False and not any(
            "ProgressBar" in c.class_path for c in callbacks
        ):
            # Lightning's default bar redraws at every step, which costs more than a small update.
            bar = Namespace(class_path="lightning.pytorch.callbacks.TQDMProgressBar", init_args={"refresh_rate": 50})
            config.trainer.callbacks = [*callbacks, bar]
        root = config.trainer.default_root_dir or DEFAULT_LOG_DIR
        self._check_trainer_flags(config)
        if self.saved is not None:
            configure_columns(config.data, self.saved)
            if self.subcommand == "fit":
                self._check_epochs_left(config.trainer, self.saved)
        elif self.subcommand in ("predict", *EVALUATIONS):
            # Without one, validate and test would evaluate the untrained initial weights.
            raise DataError(
                f"{self.subcommand} needs a trained model: pass --ckpt_path CHECKPOINT (or --ckpt_path last)."
            )
        logger = config.trainer.logger
        if logger in (None, True, False):
            # One run directory per batch mode (DIR/<mode>/version_N), so the modes overlay in TensorBoard;
            # predict, validate and test runs have their own. The directory is claimed here, atomically, so two
            # runs started at once never share it; without a logger it holds the config and the checkpoints.
            name = config.data.batch_mode if self.subcommand in (None, "fit") else self.subcommand
            version = None  # build_cli(run=False) runs nothing yet: the logger picks its version when first used
            if self.subcommand is not None:
                self._new_dirs = [d for d in (Path(root) / name, Path(root)) if not d.exists()]
                version = claim_version(Path(root) / name)
                self.run_dir = Path(root) / name / f"version_{version}"
            if logger is False:
                if self.run_dir is not None:
                    config.trainer.default_root_dir = str(self.run_dir)
            else:
                config.trainer.logger = Namespace(
                    class_path="logreg.machinery.loggers.TensorBoardLogger",
                    init_args=Namespace(save_dir=root, name=name, version=version),
                )

    def _check_trainer_flags(self, config: Namespace) -> None:
        """Trainer flags Lightning would accept and then fail on, or silently misread: one line each, exit 2."""
        trainer = config.trainer
        if trainer.log_every_n_steps is not None and trainer.log_every_n_steps < 1:
            self.parser.error(f"--trainer.log_every_n_steps must be 1 or more; got {trainer.log_every_n_steps}.")
        for name in ("max_epochs", "max_steps"):
            value = trainer[name]
            if value is not None and value != -1 and value < 1:
                self.parser.error(f"--trainer.{name} must be a positive number, or -1 for no limit; got {value}.")
        devices = trainer.devices
        if (isinstance(devices, int) and devices != -1 and devices < 1) or devices in ("0", []):
            self.parser.error(
                f"--trainer.devices must be a positive number of devices, -1 (all of them) or auto; got {devices}."
            )
        if trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            self.parser.error(
                f"--trainer.accelerator {trainer.accelerator}: this machine has no usable CUDA GPU "
                "(torch.cuda.is_available() is False); use --trainer.accelerator cpu or auto."
            )

    @staticmethod
    def _check_epochs_left(trainer: Namespace, saved: SavedRun) -> None:
        """A resumed run whose limit the checkpoint has reached would train nothing: say so before any run exists."""
        if trainer.max_epochs not in (None, -1) and trainer.max_epochs <= saved.epochs_done:
            raise ConfigError(
                f"--trainer.max_epochs {trainer.max_epochs} leaves nothing to train: the checkpoint {saved.path} has "
                f"done {saved.epochs_done} epochs already; pass a larger value, e.g. --trainer.max_epochs "
                f"{saved.epochs_done + trainer.max_epochs}."
            )
        if trainer.max_steps not in (None, -1) and trainer.max_steps <= saved.global_step:
            raise ConfigError(
                f"--trainer.max_steps {trainer.max_steps} leaves nothing to train: the checkpoint {saved.path} has "
                f"done {saved.global_step} steps already; pass a larger value."
            )

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
            self._check_optimizer()
        except BaseException:
            self._release_run_dir()
            raise

    @override
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as err:  # Lightning's verdict on the Trainer's flags
            self.parser.error(f"--trainer: {_one_line(err)}")

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except ValueError as err:
            if "`val_check_interval`" not in str(err):
                raise
            batches = re.search(r"training batches \((\d+)\)", str(err))
            raise ConfigError(
                f"--trainer.val_check_interval {self.trainer.val_check_interval} is more than the "
                f"{batches[1] if batches else 'number of'} training batches of an epoch; pass at most that many, "
                "a fraction of an epoch such as 0.5, or add --trainer.check_val_every_n_epoch null to count "
                "batches across epochs."
            ) from None
        finally:
            self._release_run_dir()

    def _release_run_dir(self) -> None:
        """Remove this run's claimed directory if nothing was written into it (a run that failed early)."""
        if self.run_dir is None:
            return
        with contextlib.suppress(OSError):  # not empty: the run wrote something worth keeping
            self.run_dir.rmdir()
            for directory in self._new_dirs:  # and the parents made for it, if nothing else is in them
                directory.rmdir()

    def _check_optimizer(self) -> None:
        """Build the optimizer once on a stand-in parameter, so options torch refuses (a negative momentum) end
        in one line before any run directory holds anything."""
        make = getattr(self.model, "optimizer", None)
        lr = self.model.hparams.get("lr") if hasattr(self.model, "hparams") else None
        if not callable(make) or lr is None:
            return
        try:
            make([torch.nn.Parameter(torch.zeros(1))], lr)
        except (ValueError, TypeError) as err:
            config = self.config[self.subcommand] if self.subcommand else self.config
            chosen = config.model.get("init_args", Namespace()).get("optimizer")
            name = chosen.get("class_path") if isinstance(chosen, Namespace) else chosen
            raise ConfigError(
                f"--model.optimizer {name or ''} refuses its options: {err} (they are set as "
                f"--model.optimizer.<option>; the learning rate is --model.lr, {lr:g} here)."
            ) from None

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
        # Checkpoints are written atomically (a temporary file, fsync, rename).
        trainer_defaults={
            "max_epochs": 20,
            "callbacks": [StopOnNonFiniteLoss()],
            "plugins": [{"class_path": "logreg.machinery.atomic.AtomicCheckpointIO"}],
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
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["prepare"]:  # not a Trainer method: its own parser (logreg.streaming.prepare)
        from logreg.streaming.prepare import main as prepare_main

        prepare_main(argv[1:])
        return
    if argv[:1] == ["sweep"]:  # not a Trainer method: its own parser (logreg.sweep.sweep); it reports its own mistakes
        try:
            from logreg.sweep.sweep import main as sweep_main
        except ConfigError as err:  # Optuna, an optional extra, is missing: the message says how to install it
            raise SystemExit(f"error: {err}") from None
        sweep_main(argv[1:])
        return
    with interrupt.handlers():
        try:
            build_cli(args)
        except interrupt.Interrupted:
            raise  # training saved last.ckpt and said so; the exit code is the signal's
        except ArgumentError as err:
            _exit_with(f"error: {_one_line(err)}", 2)
        except MisconfigurationException as err:  # Lightning's verdict on a Trainer flag
            _exit_with(f"error: {_one_line(err)}", 2)
        except (KeyboardInterrupt, SystemExit) as err:
            signum = interrupt.received()
            if signum is None and isinstance(err, SystemExit):
                raise
            signum = signum or signal.SIGINT  # a KeyboardInterrupt is Ctrl+C
            _exit_with(
                f"error: stopped by {interrupt.signal_name(signum)} outside training (start-up, evaluation or "
                "prediction); nothing was saved.",
                interrupt.exit_code(signum),
            )
        except Exception as err:
            # jsonargparse wraps what a model's __init__ raises in its own ValueError; the user's mistake is the cause.
            causes = list(_causes(err))
            cause = next((e for e in causes if isinstance(e, USER_ERRORS)), None)
            if cause is not None:
                raise SystemExit(f"error: {cause}") from None
            io_error = next((e for e in causes if isinstance(e, OSError) and e.filename), None)
            if io_error is None:
                raise
            # A directory that cannot be written (read-only, full) met outside the atomic writers: say which.
            raise SystemExit(f"error: {io_error.filename}: {io_error.strerror or io_error}.") from None


def _one_line(err: BaseException) -> str:
    """jsonargparse and Lightning spread a message over indented lines; one line reads better and greps."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _exit_with(message: str, code: int) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(code) from None


if __name__ == "__main__":
    main()
