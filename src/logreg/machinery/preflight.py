"""Checks of a run's configuration made before anything is built: values Lightning would accept and then fail
on (with a traceback, or after an empty run directory exists), or silently misread. Each ends in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace

from logreg.machinery.checkpoint import SavedRun
from logreg.machinery.errors import ConfigError, DataError

SEED_RANGE = (0, 2**32 - 1)  # what Lightning's seed_everything (numpy's generator) accepts


def usage_problem(config: Namespace) -> str | None:
    """What is wrong with the seed or a Trainer flag, in one sentence; None when nothing is (then exit code 2).

    >>> usage_problem(Namespace(seed_everything=-3, trainer=Namespace()))
    '--seed_everything must lie between 0 and 4294967295, or be true for a random seed; got -3.'
    """
    seed = config.get("seed_everything")
    if not isinstance(seed, bool) and isinstance(seed, int) and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        return (
            f"--seed_everything must lie between {SEED_RANGE[0]} and {SEED_RANGE[1]}, or be true for a random "
            f"seed; got {seed}."
        )
    trainer = config.trainer
    if trainer.get("log_every_n_steps") is not None and trainer.log_every_n_steps < 1:
        return f"--trainer.log_every_n_steps must be 1 or more; got {trainer.log_every_n_steps}."
    for name in ("max_epochs", "max_steps"):
        value = trainer.get(name)
        if value is not None and value != -1 and value < 1:
            return f"--trainer.{name} must be a positive number, or -1 for no limit; got {value}."
    devices = trainer.get("devices")
    if (isinstance(devices, int) and devices != -1 and devices < 1) or devices in ("0", []):
        return f"--trainer.devices must be a positive number of devices, -1 (all of them) or auto; got {devices}."
    if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        return (
            f"--trainer.accelerator {trainer.accelerator}: this machine has no usable CUDA GPU "
            "(torch.cuda.is_available() is False); use --trainer.accelerator cpu or auto."
        )
    return None


def check_epochs_left(trainer: Namespace, saved: SavedRun) -> None:
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


def logger_root(logger: Any) -> Path:
    """The directory holding a configured logger's version_N runs (save_dir/name, as TensorBoard and CSV use);
    of several loggers the first one's, where Lightning puts the checkpoints."""
    if isinstance(logger, list) and logger:
        logger = logger[0]
    init = getattr(logger, "init_args", None)
    if init is None or init.get("save_dir") is None or init.get("name") is None:
        raise DataError("--ckpt_path last needs a logger with save_dir and name; pass the checkpoint's path instead.")
    return Path(init.save_dir) / init.name


def restore_data_state(saved: SavedRun, datamodule: L.LightningDataModule) -> None:
    """Give ``datamodule`` the state the checkpoint saved of it (its training statistics and columns), so a file
    that does not fit the model fails now, in one line; Lightning restores the same state again when it starts.
    Raise DataError when the checkpoint holds no state of a data module that keeps one, or a model of another
    number of features."""
    if saved.data_state is not None:
        datamodule.load_state_dict(saved.data_state)
    elif type(datamodule).state_dict is not L.LightningDataModule.state_dict:
        raise DataError(
            f"{saved.path}: holds no state of {type(datamodule).__name__} (its training statistics); "
            "it was trained with another data module: pass that one as --data."
        )
    features = getattr(datamodule, "num_features", None)
    if saved.num_features is not None and features not in (None, saved.num_features):
        where = getattr(datamodule, "source", type(datamodule).__name__)
        raise DataError(
            f"{where}: has {features} features, but the checkpoint {saved.path} holds a model of {saved.num_features}."
        )
