"""Train full batch, minibatch and per-example gradient descent on the same data and compare them.

Writes OUT/compare_modes.png (training loss vs epochs, weight updates and seconds), OUT/compare_modes.json
(the table it prints) and one TensorBoard run per mode under OUT (see them with `tensorboard --logdir OUT`).

Usage: python scripts/compare_modes.py [--dataset banknote] [--epochs 10] [--batch-size 32] [--lr 0.1 | --lr full=2 ...] [--out DIR]
"""

from __future__ import annotations

import argparse

from logreg.lessons.compare import DEFAULT_LR, FIGURE_NAME, MODES, TABLE_NAME, compare_modes, summary
from logreg.machinery.errors import DataError


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive; got {text}")
        return value

    return parse


def learning_rate(text: str) -> tuple[str | None, float]:
    """``0.1`` (every mode) or ``MODE=0.1``."""
    mode, _, value = text.rpartition("=")
    if mode and mode not in MODES:
        raise argparse.ArgumentTypeError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode or None, positive(float)(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", default="banknote", help="banknote, synthetic or a CSV path (default: %(default)s)"
    )
    parser.add_argument("--epochs", type=positive(int), default=10, help="epochs for every mode (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive(int), default=32, help="minibatch rows (default: %(default)s)")
    defaults = " ".join(f"{m}={v:g}" for m, v in DEFAULT_LR.items())
    parser.add_argument(
        "--lr",
        type=learning_rate,
        nargs="+",
        default=[],
        metavar="[MODE=]LR",
        help=f"one learning rate for every mode, or per mode (default: {defaults})",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the split and the shuffles (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="out/compare_modes", help=f"directory for the runs, {FIGURE_NAME} and {TABLE_NAME}"
    )
    parser.add_argument("--no-progress-bar", action="store_true", help="hide the training progress bar")
    return parser.parse_args(argv)


def learning_rates(pairs: list[tuple[str | None, float]]) -> dict[str, float]:
    """Per-mode learning rates from ``--lr`` values, later ones overriding earlier ones."""
    lr: dict[str, float] = {}
    for mode, value in pairs:
        lr.update(dict.fromkeys(MODES, value) if mode is None else {mode: value})
    return lr


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    lr = learning_rates(args.lr)
    try:
        results = compare_modes(
            args.out,
            dataset=args.dataset,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=lr,
            seed=args.seed,
            progress_bar=not args.no_progress_bar,
        )
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    print(summary(results))
    print(
        f"wrote {args.out}/{FIGURE_NAME} and {args.out}/{TABLE_NAME}; see the runs with: tensorboard --logdir {args.out}"
    )


if __name__ == "__main__":
    main()
