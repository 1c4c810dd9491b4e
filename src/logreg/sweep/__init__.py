"""Optional extra: ``logreg sweep``, a hyperparameter search on Optuna whose trials are ``logreg fit`` runs."""

from __future__ import annotations

from collections.abc import Sequence


def main(args: Sequence[str] | None = None) -> None:
    """``logreg sweep``; says how to install Optuna, in one line, where it is missing."""
    from logreg.machinery.errors import ConfigError, exit_with

    try:
        from logreg.sweep.sweep import main as run
    except ConfigError as err:  # raised by the module when Optuna, an optional extra, cannot be imported
        exit_with(str(err), 1)
    run(args)
