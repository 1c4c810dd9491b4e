"""The command line, ``logreg fit | validate | test | predict``: LightningCLI with the template's defaults.

Config keys are the ``__init__`` arguments of the model, the data module and the Trainer. Both classes are
chosen by class path: ``--model logreg.models.MLP`` (default ``LogisticRegression``) and ``--data my.Data``
(default ``TabularDataModule``), and so are the optimizer and scheduler (``--model.optimizer Adam``).

What the CLI asks of them: the data module exposes ``num_features``, which ``link_arguments`` passes to the
model's ``__init__`` (so it is never typed); with ``--ckpt_path`` the model's class and arguments come from the
checkpoint, as LightningCLI does it, and the data module's state (its training statistics and columns) is
restored before anything runs, so a file that does not fit the model fails first. A data module may name its
runs (``run_name``); fit runs go to ``lightning_logs/<run_name>/version_N``.

``logreg prepare`` and ``logreg sweep`` are commands of the optional extras, dispatched by ``logreg.launch``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from logreg.machinery import interrupt
from logreg.machinery.callbacks import LastCheckpoint
from logreg.machinery.checkpoint import (
    RunKind,
    SavedRun,
    choose_last_checkpoint,
    claim_run_dir,
    claimed_runs,
    count_updates,
    read_checkpoint,
    release_run_dirs,
)
from logreg.machinery.divergence import StopOnNonFiniteLoss
from logreg.machinery.errors import DataError, raised_in, reporting
from logreg.machinery.loggers import TensorBoardLogger
from logreg.machinery.predict import PredictionWriter
from logreg.machinery.preflight import check_epochs_left, logger_root, restore_data_state, usage_problem
from logreg.machinery.quiet import silence_harmless_messages
from logreg.machinery.yaml_files import check_config_files, guard_jsonargparse

DEFAULT_LOG_DIR = "lightning_logs"
DEFAULT_MODEL = "logreg.models.LogisticRegression"
DEFAULT_DATA = "logreg.data.TabularDataModule"
# A directory made by `logreg prepare`, given to the default data module, is streamed by the extra's module.
STREAMED_DATA, PREPARED_MARKER = "logreg.streaming.StreamingDataModule", "logreg.json"


class LogRegCLI(LightningCLI):
    """LightningCLI with the template's defaults: a TensorBoard run per batch mode, best and last checkpoints."""

    saved: SavedRun | None = None  # what --ckpt_path holds, read before the classes are built
    # Set before the classes are built: the template's logger or run directory, for the Trainer only, and the
    # run directory claimed for this run, if any.
    _trainer_kwargs: dict[str, Any]
    _run_dir: Path | None

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data", "model.init_args.num_features", self._num_features, apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # last.ckpt, to resume from, also saved when a signal stops training: --last_checkpoint.every_seconds sets
        # how much training a crash may lose.
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.set_defaults(
            {
                "model": {"class_path": DEFAULT_MODEL},
                "data": {"class_path": DEFAULT_DATA},
                "checkpoint.monitor": "val/loss",
                "checkpoint.filename": "best-epoch{epoch}",
                "checkpoint.auto_insert_metric_name": False,
                # val/loss exists only after validation: check there, not at every training epoch's end (where a
                # run without validation would look for it, in vain, after every epoch)
                "checkpoint.save_on_train_epoch_end": False,
            }
        )

    def _num_features(self, data: Any) -> int:
        """The model's input size: the checkpoint's model's with ``--ckpt_path``, else the data module's."""
        if self.saved is not None and self.saved.num_features is not None:
            return self.saved.num_features
        return data.num_features

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args is None or isinstance(args, list):  # the parser's own message would not name a malformed file
            check_config_files(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        problem = usage_problem(config)
        if problem is not None:  # LightningCLI would seed or build the Trainer first, and fail with a traceback
            parser.error(problem)
        dataset = str(config.data.init_args.get("dataset", ""))
        if config.data.class_path.endswith(".TabularDataModule") and (
            "://" in dataset or (Path(dataset) / PREPARED_MARKER).is_file()
        ):  # the arguments both classes take carry over, as when a class path is chosen on the command line
            streamed = {"data": {"class_path": STREAMED_DATA}}
            self.config = parser.parse_object({subcommand: streamed} if subcommand else streamed, self.config)
            config = self.config[subcommand] if subcommand else self.config
        if config.get("ckpt_path") is None:
            return
        if config.ckpt_path == "last":
            # LightningCLI next rebuilds the model from the checkpoint's hyperparameters: find the file first.
            root = config.trainer.default_root_dir or DEFAULT_LOG_DIR
            logger = config.trainer.logger
            runs = Path(root) / _run_name(config.data) if logger in (None, True, False) else logger_root(logger)
            # The furthest run of the configured model class (the default one too: which class is resumed must not
            # depend on which run went furthest) trained on this data; predict's rows are new ones.
            data_args = None if subcommand == "predict" else config.data.init_args.as_dict()
            last = choose_last_checkpoint(runs, RunKind(config.model.class_path, config.data.class_path, data_args))
            print(last.describe("resuming from" if subcommand == "fit" else "using"), file=sys.stderr)
            config.ckpt_path = str(last.path)
        self.saved = read_checkpoint(config.ckpt_path, data_key=config.data.class_path.rsplit(".", 1)[-1])

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.saved is not None and self.subcommand == "fit":
            check_epochs_left(config.trainer, self.saved)
        elif self.saved is None and self.subcommand in ("predict", "validate", "test"):
            # Without one, validate and test would evaluate the untrained initial weights.
            raise DataError(
                f"{self.subcommand} needs a trained model: pass --ckpt_path CHECKPOINT (or --ckpt_path last)."
            )
        # The template's bar, logger and run directory go to the Trainer as it is built (instantiate_trainer), not
        # into the configuration: config.yaml records what the user chose, so rerunning it starts a new run (a
        # logger pinned to version N would find N's config.yaml and refuse), and a bar written into it would
        # contradict --trainer.enable_progress_bar false.
        self._trainer_kwargs, self._run_dir = {}, None
        logger = config.trainer.logger
        if logger not in (None, True, False):
            return  # a configured logger picks its own directory
        # One run directory per batch mode (DIR/<mode>/version_N), so the modes overlay in TensorBoard; predict,
        # validate and test runs have their own. Claimed here, atomically, so two runs started at once never share
        # it; without a logger it holds the config and the checkpoints.
        root = config.trainer.default_root_dir or DEFAULT_LOG_DIR
        name = _run_name(config.data) if self.subcommand in (None, "fit") else self.subcommand
        version = None  # build_cli(run=False) runs nothing yet: the logger picks its version when first used
        if self.subcommand is not None:
            run_dir = self._run_dir = claim_run_dir(Path(root) / name)
            version = int(run_dir.name.removeprefix("version_"))
            if logger is False:
                self._trainer_kwargs["default_root_dir"] = str(run_dir)
        if logger is not False:
            self._trainer_kwargs["logger"] = TensorBoardLogger(save_dir=root, name=name, version=version)

    @override
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        callbacks = list(config.trainer.callbacks or [])
        if config.trainer.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            # Lightning's default bar redraws at every step, which costs more than a small update. Added here, not
            # to the config, so a run's config.yaml holds only the user's choices.
            callbacks.append(TQDMProgressBar(refresh_rate=50))
        try:
            return super().instantiate_trainer(**{"callbacks": callbacks, **self._trainer_kwargs, **kwargs})
        except (ValueError, MisconfigurationException) as err:  # Lightning's verdict on the Trainer's flags
            self.parser.error(f"--trainer: {err}")

    @override
    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self._run_dir is not None:  # updates of its own: a resumed run starts at the checkpoint's step
            start = self.saved.global_step if self.saved is not None and self.subcommand == "fit" else 0
            count_updates(self._run_dir, lambda: self.trainer.global_step - start)
        if self.subcommand != "predict":  # the writer's hooks would run at every training batch for nothing
            self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, PredictionWriter)]
        if self.saved is not None:  # the data must fit the checkpoint's model before anything runs
            restore_data_state(self.saved, self.datamodule)


def _run_name(data: Namespace) -> str:
    """The directory of a data module's fit runs: its batch mode for the template's, else its class's name."""
    return data.init_args.get("batch_mode") or data.class_path.rsplit(".", 1)[-1]


def build_cli(args: list[str] | None = None, run: bool = True) -> LogRegCLI:
    """The project's CLI with its defaults; ``run=False`` only builds the model, data module and Trainer."""
    silence_harmless_messages()
    guard_jsonargparse()
    return LogRegCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
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


def is_usage_error(err: BaseException) -> bool:
    """A mistake in the command line or a Trainer flag: jsonargparse's, or a ValueError raised by Lightning's own
    code (a validation interval longer than an epoch, say), which names the flag."""
    return isinstance(err, ArgumentError | MisconfigurationException) or (
        type(err) is ValueError and raised_in(err, "lightning")
    )


def main(args: list[str] | None = None) -> None:
    """Run the CLI on ``args`` (default: the command line), e.g. ``main(["fit", "--trainer.max_epochs", "5"])``."""
    with interrupt.reported():
        try:
            reporting(build_cli, args, is_usage=is_usage_error, where=lambda: str(claimed_runs() or "") or None)
        except BaseException:
            release_run_dirs(failed=True)  # a run that failed before its first update leaves no directory behind
            raise
        release_run_dirs()


if __name__ == "__main__":
    main()
