"""The command line: ``logreg fit | validate | test | predict``, configured by YAML through LightningCLI.

Config keys are the ``__init__`` arguments of the model, the data module and the Trainer. The number of
features flows from the data to the model by ``link_arguments``, so it is never typed.
"""

from __future__ import annotations

import re
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from logreg.data import TabularDataModule
from logreg.datasets import DataError
from logreg.model import LogisticRegression

DEFAULT_LOG_DIR = "lightning_logs"
PROGRESS_REFRESH_RATE = 50


def last_checkpoint() -> ModelCheckpoint:
    """``last.ckpt`` written after every epoch, the state ``--ckpt_path last`` resumes from.

    ``ModelCheckpoint(save_last=True)`` on the monitored callback would not do: Lightning refreshes that
    copy only when a best checkpoint is saved, so after an epoch without improvement it holds an older state.
    """
    return ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)


class LogRegCLI(LightningCLI):
    """LightningCLI with the template's defaults: a TensorBoard run per batch mode, best and last checkpoints."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_features", "model.num_features", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.filename": "best-epoch{epoch}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        callbacks = config.trainer.callbacks or []
        if config.trainer.enable_progress_bar is not False and not any(
            "ProgressBar" in c.class_path for c in callbacks
        ):
            # Redrawing the bar costs more than a small update; redraw every PROGRESS_REFRESH_RATE steps.
            config.trainer.callbacks = [
                *callbacks,
                Namespace(
                    class_path="lightning.pytorch.callbacks.TQDMProgressBar",
                    init_args=Namespace(refresh_rate=PROGRESS_REFRESH_RATE, process_position=0, leave=False),
                ),
            ]
        if self.subcommand == "fit" and config.model.optimizer == "lbfgs" and config.data.batch_mode != "full":
            # Checked here, before any run directory exists; the model checks again for Python users.
            self.parser.error(
                f"--model.optimizer lbfgs needs --data.batch_mode full (one batch per epoch); got {config.data.batch_mode!r}."
            )
        if config.trainer.logger in (None, True):
            # One run directory per batch mode (DIR/<mode>/version_N), so the modes overlay in TensorBoard.
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(
                    save_dir=config.trainer.default_root_dir or DEFAULT_LOG_DIR,
                    name=config.data.batch_mode,
                    default_hp_metric=False,
                ),
            )

    def _resolve_last_checkpoint(self) -> None:
        """Turn ``--ckpt_path last`` into the newest ``last.ckpt`` of this mode's earlier runs.

        Lightning looks for ``last`` in the new run's own (empty) version directory; the resumed run instead
        reads the previous run's checkpoint and writes a new version, so nothing earlier is overwritten.
        """
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        root = Path(self.trainer.logger.root_dir)
        found = sorted(
            root.glob("version_*/checkpoints/last.ckpt"),
            key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or -1),
        )
        if not found:
            raise DataError(f"--ckpt_path last: no last.ckpt under {root}/version_*/checkpoints.")
        config["ckpt_path"] = str(found[-1])

    def before_fit(self) -> None:
        self._resolve_last_checkpoint()

    def before_validate(self) -> None:
        self._resolve_last_checkpoint()

    def before_test(self) -> None:
        self._resolve_last_checkpoint()

    def before_predict(self) -> None:
        self._resolve_last_checkpoint()


def build_cli(args: list[str] | None = None, run: bool = True) -> LogRegCLI:
    """The project's CLI with its defaults; ``run=False`` only builds the model, data module and Trainer."""
    return LogRegCLI(
        LogisticRegression,
        TabularDataModule,
        args=args,
        run=run,
        seed_everything_default=42,
        auto_configure_optimizers=False,
        # Default callbacks are added to any given with --trainer.callbacks.
        trainer_defaults={"max_epochs": 20, "callbacks": [last_checkpoint()]},
    )


def main(args: list[str] | None = None) -> None:
    """Run the CLI on ``args`` (default: the command line), e.g. ``main(["fit", "--trainer.max_epochs", "5"])``."""
    try:
        build_cli(args)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
