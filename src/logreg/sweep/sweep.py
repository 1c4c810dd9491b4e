"""``logreg sweep``: an Optuna search over any ``logreg fit`` configuration, on one machine or many.

Each trial is an ordinary ``logreg fit`` run, built in this process by ``build_cli`` from the fit config(s)
and the trial's sampled values given as ``--KEY VALUE`` (so a space key is any config key), with its own
TensorBoard run under ``OUT/runs/trial_NNNN``. Optuna's Lightning callback reports the monitored metric after
each validation and prunes trials worse than the median of earlier ones at the same epoch.

The study lives in a database: a SQLite file under ``OUT`` by default, or any URL Optuna accepts, so several
processes or machines started on one study share its trials. A running trial sends a heartbeat; one whose
process died is failed once its heartbeat is stale and re-queued with the same values, so a killed or
interrupted sweep resumes when started again, its finished trials kept.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import numpy
import yaml
from jsonargparse import ArgumentParser

from logreg.machinery import interrupt
from logreg.machinery.errors import ConfigError, DataError, NonFiniteLossError, causes, one_line, reporting
from logreg.machinery.yaml_files import read_yaml

try:
    import optuna
    from optuna.trial import TrialState
    from optuna_integration import PyTorchLightningPruningCallback
except ImportError as err:  # an optional extra: `logreg sweep` then says how to install it, in one line
    raise ConfigError(f"logreg sweep needs {err.name}: pip install 'logreg[sweep]' (or -e '.[sweep]').") from None

DEFAULT_METRIC = "val/loss"
RUNS_DIR = "runs"  # OUT/runs/trial_NNNN/<batch_mode>/version_0: `tensorboard --logdir OUT/runs` compares all
BEST_RUN_DIR = "best"  # where `logreg fit --config OUT/best.yaml` writes its rerun
SQLITE_TIMEOUT_S = 60  # how long a SQLite writer waits for another process's lock before failing
Kind = Literal["log_uniform", "uniform", "int", "choices"]
Sampler = Literal["tpe", "random"]
KINDS: tuple[Kind, ...] = ("log_uniform", "uniform", "int", "choices")
# Trials start quiet (no model summary per trial); a fit config may still turn it on.
TRIAL_DEFAULTS = ["--trainer.enable_model_summary", "false"]
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}


class Rejected(Exception):
    """The fit configuration refused some arguments (in a trial: that trial fails, the sweep goes on)."""


@dataclass(frozen=True)
class Param:
    """One searched config key: a range (``low``, ``high``) for the numeric kinds, or a list of choices.

    Example:
        >>> Param("data.batch_size", "choices", (8, 32)).suggest(optuna.trial.FixedTrial({"data.batch_size": 32}))
        32
    """

    key: str
    kind: Kind
    values: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this key, drawn by the study's sampler."""
        if self.kind == "choices":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.key, *self.values)
        return trial.suggest_float(self.key, *self.values, log=self.kind == "log_uniform")


@dataclass(frozen=True)
class Space:
    """A search space file: the keys to search and the metric to optimise.

    ``params`` maps config keys to ``{log_uniform: [low, high]}``, ``{uniform: [low, high]}``,
    ``{int: [low, high]}`` or ``{choices: [...]}``; ``minimize: TAG`` or ``maximize: TAG`` names the logged
    metric (default ``minimize: val/loss``); ``pruner`` holds options of Optuna's ``MedianPruner``, or is
    ``false`` for no pruning;
    ``sampler`` is ``tpe`` (the default: trials gather where the metric is best) or ``random`` (every value gets
    its share of trials, for a fair comparison such as the best lr per batch size).

    Example:
        >>> space = Space.parse({"params": {"data.batch_size": {"choices": [8, 32]}}}, "space.yaml")
        >>> space.metric, space.direction, space.params[0].values
        ('val/loss', 'minimize', (8, 32))
    """

    params: tuple[Param, ...]
    metric: str = DEFAULT_METRIC
    direction: Literal["minimize", "maximize"] = "minimize"
    pruner: tuple[tuple[str, int], ...] | None = ()  # None: no pruning
    sampler: Sampler = "tpe"

    @classmethod
    def read(cls, path: str | Path) -> Space:
        """Read and check a space YAML file; mistakes raise one sentence naming the file and key."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file.")
        return cls.parse(read_yaml(path), path)

    @classmethod
    def parse(cls, content: Any, where: str | Path) -> Space:
        """Check the content of a space file (``where`` names it in messages)."""
        known = ("params", "minimize", "maximize", "pruner", "sampler")
        if not isinstance(content, dict) or not set(content) <= set(known):
            raise ConfigError(f"{where}: must be a mapping with the keys {', '.join(known)}; got {content!r}.")
        if "minimize" in content and "maximize" in content:
            raise ConfigError(f"{where}: give either minimize or maximize, not both.")
        direction = "maximize" if "maximize" in content else "minimize"
        metric = content.get(direction, DEFAULT_METRIC)
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"{where}: {direction} must name a logged metric such as val/loss; got {metric!r}.")
        params = content.get("params")
        if not isinstance(params, dict) or not params:
            raise ConfigError(f"{where}: params must map at least one config key to its range or choices.")
        pruner = content.get("pruner", {})
        options = ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials")
        if pruner is not False and (
            not isinstance(pruner, dict) or not all(k in options and isinstance(v, int) for k, v in pruner.items())
        ):
            raise ConfigError(
                f"{where}: pruner is false or takes integer options among {', '.join(options)}; got {pruner!r}."
            )
        sampler = content.get("sampler", "tpe")
        if sampler not in get_args(Sampler):
            raise ConfigError(f"{where}: sampler must be one of {', '.join(get_args(Sampler))}; got {sampler!r}.")
        params = tuple(_param(str(k), v, where) for k, v in params.items())
        return cls(params, metric, direction, None if pruner is False else tuple(pruner.items()), sampler)


def _param(key: str, spec: Any, where: str | Path) -> Param:
    """One entry of ``params``, checked: a known kind, a non-empty range, positive bounds for log scales."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(f'{{{k}: ...}}' for k in KINDS)}; got {spec!r}.")
    ((kind, values),) = spec.items()
    if kind == "choices":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {key} has no choices: give a non-empty list.")
        return Param(key, kind, tuple(values))
    if isinstance(values, list) and kind != "int":
        values = [_float(v) for v in values]  # YAML reads 1e-3 (no dot) as a string
    number = int if kind == "int" else (int, float)
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(isinstance(v, number) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    ):
        raise ConfigError(
            f"{where}: {key}: {kind} takes [low, high], two finite {'integers' if kind == 'int' else 'numbers'}; got {values!r}."
        )
    low, high = values
    if low > high:
        raise ConfigError(f"{where}: {key}: the range [{low}, {high}] is empty (low is above high).")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{where}: {key}: log_uniform needs a positive low bound; got {low}.")
    return Param(key, kind, (low, high) if kind == "int" else (float(low), float(high)))


def _float(value: Any) -> Any:
    """``value`` as a float where it is a string that spells one (``"1e-3"``), else unchanged."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def cli_value(value: Any) -> str:
    """A sampled value as the command line writes it: strings as they are, anything else as YAML/JSON.

    Example:
        >>> [cli_value(v) for v in (0.5, 32, True, None, "torch.optim.Adam")]
        ['0.5', '32', 'true', 'null', 'torch.optim.Adam']
    """
    return value if isinstance(value, str) else json.dumps(value)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-Trainer notices (seed, devices, tips) at warning level only: a sweep builds many. Nor
    does LightningCLI warn that ``args`` is given while the command line holds words: they are the sweep's."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended", UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def fit_args(fit: Sequence[str], values: dict[str, Any], root: str | Path) -> list[str]:
    """The ``logreg fit`` arguments of one trial: the sweep's fit arguments, then each value, then its run root."""
    args = [*TRIAL_DEFAULTS, *fit]
    for key, value in values.items():
        args += [f"--{key}", cli_value(value)]
    return [*args, "--trainer.default_root_dir", str(root)]


def build_run(args: list[str]) -> Any:
    """``build_cli(args, run=False)``: the model, data module and Trainer exactly as ``logreg fit`` builds them.

    Raises:
        Rejected: The fit parser or a class it builds refused the arguments.
    """
    from argparse import ArgumentError

    from logreg.cli import build_cli

    try:
        with quiet_lightning():
            return build_cli(args, run=False)
    except ArgumentError as err:
        raise Rejected(_one_line(err)) from None
    except Exception as err:
        # jsonargparse may wrap what a class's __init__ raises in an error of its own; the mistake is the cause.
        cause = next((e for e in causes(err) if isinstance(e, (ConfigError, DataError))), None)
        if cause is None:
            raise
        raise Rejected(_one_line(cause)) from None


def config_keys(config: Any) -> set[str]:
    """The dotted keys of a parsed configuration as the command line writes them (``model.lr`` for
    ``model.init_args.lr``, as LightningCLI accepts), and their parents (``model``, ``model.optimizer``).

    Example:
        >>> from jsonargparse import Namespace
        >>> sorted(config_keys(Namespace(model=Namespace(class_path="M", init_args=Namespace(lr=0.1)))))
        ['model', 'model.class_path', 'model.lr']
    """
    keys = set()
    for key in config.keys():  # noqa: SIM118  (a Namespace iterates its top level; keys() gives every dotted key)
        parts = [part for part in key.split(".") if part != "init_args"]
        keys.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return keys


def check_space(space: Space, fit: Sequence[str], where: str | Path) -> None:
    """Build the fit run once as given and once per value to check (without running it), so a key the fit
    parser does not know, or a value its classes reject, ends the sweep before any trial runs."""
    try:
        known = config_keys(build_run(fit_args(fit, {}, "unused")).config)
    except Rejected as err:
        raise ConfigError(f"the fit configuration is not accepted: {err}") from None
    for param in space.params:
        for value in param.values:  # both bounds of a range, or every choice
            try:
                build_run(fit_args(fit, {param.key: value}, "unused"))
            except Rejected as err:
                # A class chosen by class path reports an unknown option as a value its type refuses.
                if not any(k == param.key or k.startswith(param.key + ".") for k in known):
                    raise ConfigError(
                        f"{where}: {param.key} is not a key of the fit configuration (`logreg fit --help` lists them)."
                    ) from None
                raise ConfigError(f"{where}: {param.key}: the value {value!r} is not accepted: {err}") from None


def _one_line(err: BaseException) -> str:
    """An error's message as one sentence."""
    text = one_line(err)
    return text if text.endswith(".") else text + "."


def open_storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """The study database, with heartbeats so that a trial whose process died is failed and re-queued."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes write one SQLite file: wait for another's lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
        for attempt in range(3):
            try:
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_s,
                    grace_period=2 * heartbeat_s,
                    heartbeat_stale_trial_callback=retry,
                )
            except Exception as err:  # the drivers' errors share no base class: report any as one line
                # Two processes that create the tables at once collide; the second one's retry finds them made.
                if attempt < 2 and any(text in str(err) for text in ("already exists", "UNIQUE constraint", "locked")):
                    time.sleep(1.0)
                    continue
                reason = _one_line(str(err).split("\n")[0] or type(err).__name__).rstrip(".")
                raise DataError(f"--storage {url}: cannot open the study database ({reason}).") from None
    raise AssertionError("unreachable")


def mark_run(trainer: L.Trainer, pruned: bool) -> None:
    """After fit, record the trial's outcome in its run: ``sweep/pruned`` is 1 for a pruned trial and 0 for one
    that trained to the end, so TensorBoard's HPARAMS tab can filter pruned trials.

    Written by the sweep once training is over (no LightningModule hook can log then, and Optuna's pruning
    callback decides in ``on_validation_end``, where ``self.log`` is not allowed), at the run's last step.
    """
    for logger in trainer.loggers:
        logger.log_metrics({"sweep/pruned": float(pruned)}, step=max(trainer.global_step - 1, 0))
        logger.finalize("success")  # Lightning closed the run at the end of fit: flush the mark too


def run_trial(trial: optuna.Trial, space: Space, fit: Sequence[str], out: Path) -> float:
    """Train one trial as ``logreg fit`` would and return its final value of the space's metric."""
    values = {param.key: param.suggest(trial) for param in space.params}
    root = out / RUNS_DIR / f"trial_{trial.number:04d}"
    cli = build_run(fit_args(fit, values, root))
    cli.trainer.callbacks.append(PyTorchLightningPruningCallback(trial, space.metric))
    run_dir = Path(cli.trainer.log_dir)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
    trial.set_user_attr("root", str(root))
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("lr", getattr(cli.model, "lr", None))
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    except optuna.TrialPruned:
        mark_run(cli.trainer, pruned=True)
        raise
    except SystemExit as err:
        if cli.trainer.interrupted:  # Lightning turns a signal's KeyboardInterrupt into exit(1)
            raise KeyboardInterrupt from err
        raise
    finally:
        with contextlib.suppress(Exception):  # the split exists once setup ran; a run may stop before
            trial.set_user_attr("rows_per_update", cli.datamodule.train_batch_size)
        if (run_dir / "config.yaml").is_file():
            trial.set_user_attr("config", (run_dir / "config.yaml").read_text())
    mark_run(cli.trainer, pruned=False)
    value = cli.trainer.callback_metrics.get(space.metric)
    if value is None:
        logged = ", ".join(sorted(cli.trainer.callback_metrics))
        raise ConfigError(f"the runs log no metric {space.metric!r} to optimise; they log {logged}.")
    return float(value)


def write_table(study: optuna.Study, path: Path) -> None:
    """One CSV row per trial of the study: number, state, value, each searched key, and where its run is."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({key for trial in trials for key in trial.params})
    with _replaced(path) as tmp, tmp.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["number", "state", "value", *keys, "rows_per_update", "seconds", "retry_of", "run_dir"])
        for t in trials:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
            writer.writerow(
                [
                    t.number,
                    t.state.name,
                    "" if t.value is None else t.value,
                    *(t.params.get(key, "") for key in keys),
                    t.user_attrs.get("rows_per_update", ""),
                    f"{seconds:.2f}" if seconds != "" else "",
                    t.system_attrs.get("failed_trial", ""),
                    t.user_attrs.get("run_dir", ""),
                ]
            )


def write_best(study: optuna.Study, space: Space, out: Path) -> optuna.trial.FrozenTrial | None:
    """``OUT/best.yaml``: the best trial's resolved configuration, rerunning into ``OUT/best``."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    best = study.best_trial
    # The trial's root directory appears as the Trainer's default_root_dir and the logger's save_dir; the rerun
    # writes under OUT/best instead, so it adds no run to the trial's directory.
    config = _replace_strings(
        yaml.safe_load(best.user_attrs["config"]), best.user_attrs["root"], str(out / BEST_RUN_DIR)
    )
    header = (
        f"# Trial {best.number} of study {study.study_name!r}: {space.metric} = {best.value:.6g}, the best "
        f"({space.direction}) of {len(study.trials)} trials.\n# Rerun: logreg fit --config {out / 'best.yaml'}\n"
    )
    with _replaced(out / "best.yaml") as tmp:
        tmp.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return best


def _replace_strings(tree: Any, old: str, new: str) -> Any:
    """``tree`` (nested dicts and lists) with every string equal to ``old`` replaced by ``new``."""
    if isinstance(tree, dict):
        return {key: _replace_strings(value, old, new) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_replace_strings(value, old, new) for value in tree]
    return new if tree == old else tree


@contextlib.contextmanager
def _replaced(path: Path) -> Iterator[Path]:
    """Write to a temporary file and rename it over ``path``: processes sharing OUT never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def best_lr_per_batch_size(study: optuna.Study) -> dict[int, tuple[float, float]]:
    """{rows per update: (lr, value)} of the best finished trial for each batch size, smallest size first."""
    best: dict[int, tuple[float, float]] = {}
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rows, lr = t.user_attrs.get("rows_per_update"), t.user_attrs.get("lr")
        if rows is not None and lr is not None and (rows not in best or sign * t.value < sign * best[rows][1]):
            best[rows] = (lr, t.value)
    return dict(sorted(best.items()))


def write_figures(study: optuna.Study, space: Space, out: Path) -> list[Path]:
    """PNG figures: optimisation history, parameter importances, and the best lr for each batch size."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    written: list[Path] = []
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not finished:  # nothing to draw yet: every trial so far was pruned, failed or is running
        return written
    figures = {"history.png": optuna_plots.plot_optimization_history}
    # PED-ANOVA is Optuna's own estimator (fANOVA would need scikit-learn); it ranks how much each key matters
    # for reaching the best trials.
    importance = functools.partial(
        optuna_plots.plot_param_importances, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
    )
    # Importances compare the finished trials; they need two of them and a key that varied between them.
    if len(finished) >= 2 and any(len({repr(t.params.get(p.key)) for t in finished}) > 1 for p in space.params):
        figures["importance.png"] = importance
    # Optuna's plots switch matplotlib's global style to ggplot; rc_context gives the caller's style back.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in figures.items():
            axes = plot(study, target_name=space.metric)
            axes.figure.set_size_inches(7, 4.5)
            axes.figure.tight_layout()
            with _replaced(out / name) as tmp:
                axes.figure.savefig(tmp, dpi=100, format="png", bbox_inches="tight")  # the legend sits outside
            plt.close(axes.figure)
            written.append(out / name)
    best = best_lr_per_batch_size(study)
    if best:
        written.append(plot_lr_by_batch_size(study, space, best, out / "lr_by_batch_size.png"))
    return written


def plot_lr_by_batch_size(study: optuna.Study, space: Space, best: dict[int, tuple[float, float]], path: Path) -> Path:
    """The lesson's figure: the metric against lr for each batch size (left), and the best lr per size (right)."""
    import matplotlib.pyplot as plt

    finished = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "lr" in t.user_attrs and "rows_per_update" in t.user_attrs
    ]
    with plt.style.context("default"):  # not the ggplot style Optuna's plots leave behind
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        for i, (size, (best_lr, best_value)) in enumerate(best.items()):
            trials = sorted((t.user_attrs["lr"], t.value) for t in finished if t.user_attrs["rows_per_update"] == size)
            color = f"C{i % 10}"
            left.plot(*zip(*trials, strict=True), "o-", color=color, alpha=0.6, markersize=4, label=f"B = {size}")
            left.plot(best_lr, best_value, "*", color=color, markersize=14, markeredgecolor="black")
            right.plot(size, best_lr, "*", color=color, markersize=14, markeredgecolor="black")
        right.plot(list(best), [lr for lr, _ in best.values()], "-", color="grey", zorder=0)
        left.set(xscale="log", yscale="log", xlabel="learning rate", ylabel=f"{space.metric} (finished trials)")
        left.set_title(f"{space.metric} against the learning rate, per batch size (star: best)")
        left.legend(loc="best", fontsize="small")
        right.set(xscale="log", yscale="log", xlabel="batch size (rows per update)", ylabel="best learning rate")
        right.set_title("Best learning rate found for each batch size")
        for ax in (left, right):
            ax.grid(True, which="major", alpha=0.3)
        fig.tight_layout()
        with _replaced(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def build_parser() -> ArgumentParser:
    """The ``logreg sweep`` command line."""
    parser = ArgumentParser(
        prog="logreg sweep",
        description="Search hyperparameters of `logreg fit` with Optuna; each trial is one fit run. Arguments "
        "after `--` go to every trial's `logreg fit`, e.g. `-- --trainer.max_epochs 10`.",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument(
        "--config", action="append", default=[], help="A config `logreg fit` takes (repeatable, later ones win)."
    )
    parser.add_argument("--space", required=True, help="YAML: config keys and their ranges or choices, and the metric.")
    parser.add_argument("--trials", type=int, default=20, help="Trials this process runs (more processes add theirs).")
    parser.add_argument(
        "--out", default="sweep", help="Directory of the trials' runs, the results and the default study file."
    )
    parser.add_argument("--storage", default=None, help="Study database URL (default: sqlite:///OUT/study.db).")
    parser.add_argument("--study", default="logreg", help="Study name in the database.")
    parser.add_argument(
        "--seed", type=int | None, default=None, help="Sampler seed; give each process its own, or none."
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="Seconds between a trial's heartbeats; a trial silent for twice this is failed and re-queued.",
    )
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """``logreg sweep`` with ``args`` (the words after ``sweep``; default the command line): mistakes end in one
    line on stderr and exit code 1 (2 for the command line), before any trial runs; so does a signal, with its
    exit code. A stopped trial fails at once: nothing resumes it, so it does not wait for a batch end."""
    from argparse import ArgumentError

    with interrupt.reported(graceful=False):
        reporting(run, list(sys.argv[2:] if args is None else args), is_usage=lambda e: isinstance(e, ArgumentError))


def run(args: list[str]) -> None:
    """Check the inputs, run this process's trials on the study, and write the results under ``--out``."""
    # Words after `--` are `logreg fit` arguments for every trial, e.g. `-- --trainer.max_epochs 10`.
    extra = args[args.index("--") + 1 :] if "--" in args else []
    opts = build_parser().parse_args(args[: len(args) - len(extra) - 1] if "--" in args else args)
    if opts.trials < 0 or opts.heartbeat < 1:
        raise ConfigError(
            f"--trials must be 0 or more and --heartbeat at least 1; got {opts.trials} and {opts.heartbeat}."
        )
    for config in opts.config:
        if not Path(config).is_file():
            raise DataError(f"--config {config}: no such file.")
    space = Space.read(opts.space)
    fit = [*(word for config in opts.config for word in ("--config", config)), *extra]
    check_space(space, fit, opts.space)
    out = Path(opts.out)
    url = opts.storage or f"sqlite:///{out / 'study.db'}"
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # first: the database may be a file in it (--storage sqlite:///OUT/x.db)
    try:
        study = open_study(url, opts, space)
    except BaseException:
        if made:  # a study that cannot be opened leaves no empty OUT behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    started: list[optuna.Trial] = []

    def objective(trial: optuna.Trial) -> float:
        started.append(trial)
        try:
            return run_trial(trial, space, fit, out)
        except KeyboardInterrupt:
            # Optuna logs a trial's KeyboardInterrupt with its traceback; it lets a SystemExit through, and the
            # trial is failed below, with the stop said in one line.
            raise interrupt.Interrupted(interrupt.received() or signal.SIGINT) from None

    try:
        study.optimize(
            objective,
            n_trials=opts.trials,
            catch=(NonFiniteLossError, Rejected),  # that trial fails; the others still run
        )
    except (KeyboardInterrupt, interrupt.Interrupted):
        signum = interrupt.received() or signal.SIGINT
        stopped = interrupt.stop(signum)  # from here a further signal ends the process at once
        failed = _fail_running(study, started)
        which = f" in trial {failed}, which failed" if failed is not None else ""
        print(
            f"error: stopped by {interrupt.signal_name(signum)}{which}; the finished trials are kept: run the same "
            "command again to go on.",
            file=sys.stderr,
        )
        report(study, space, out)
        raise stopped from None
    report(study, space, out)


def open_study(url: str, opts: Any, space: Space) -> optuna.Study:
    """The study named ``--study`` in the database at ``url``, made if new, with the space's sampler and pruner.

    The sampler's seed is ``--seed`` for a new study. For one that has trials already it is ``--seed`` mixed with
    their number: the seed alone would propose the values of the study's first trials again, and a rerun of the
    same command must go on with new ones (and still be reproducible).
    """
    storage = open_storage(url, opts.heartbeat)

    def pruner() -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner() if space.pruner is None else optuna.pruners.MedianPruner(**dict(space.pruner))

    try:
        study = optuna.create_study(
            study_name=opts.study,
            storage=storage,
            sampler=SAMPLERS[space.sampler](seed=opts.seed),
            pruner=pruner(),
            direction=space.direction,
            load_if_exists=True,
        )
        done = len(study.get_trials(deepcopy=False))
        if opts.seed is not None and done:
            seed = int(numpy.random.SeedSequence([opts.seed, done]).generate_state(1)[0])
            study = optuna.load_study(
                study_name=opts.study, storage=storage, sampler=SAMPLERS[space.sampler](seed=seed), pruner=pruner()
            )
    except Exception as err:
        raise DataError(f"--storage {url}: cannot open study {opts.study!r}: {_one_line(err)}") from None
    if study.direction.name.lower() != space.direction:
        raise ConfigError(
            f"study {opts.study!r} in {url} was created to {study.direction.name.lower()}, but {opts.space} asks to {space.direction}."
        )
    return study


def _fail_running(study: optuna.Study, started: list[optuna.Trial]) -> int | None:
    """Fail this process's running trial (a stopped one), so it is not left to its heartbeat; its number."""
    if not started:
        return None
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if started[-1].number not in running:  # stopped between trials
        return None
    study.tell(started[-1], state=TrialState.FAIL)
    return started[-1].number


def report(study: optuna.Study, space: Space, out: Path) -> None:
    """Write the results of the whole study (every process's trials) under OUT and say where they are."""
    write_table(study, out / "trials.csv")
    best = write_best(study, space, out)
    figures = write_figures(study, space, out)
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
    print(f"study {study.study_name!r}: {len(states)} trials ({counts}); table {out / 'trials.csv'}")
    if best is not None:
        values = ", ".join(f"{k}={v!r}" for k, v in best.params.items())
        print(f"best: trial {best.number}, {space.metric} = {best.value:.6g} with {values}; config {out / 'best.yaml'}")
    if figures:
        print("figures: " + ", ".join(str(p) for p in figures))
