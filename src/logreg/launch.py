"""The ``logreg`` command's entry point, free of heavy imports: Ctrl+C while torch and Lightning load (the
first seconds of every run) ends in one line and exit code 130, not in an import traceback."""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> None:
    """Import the CLI, then run it on ``args`` (default: the command line)."""
    try:
        from logreg.cli import main as run_cli
    except KeyboardInterrupt:
        print("error: interrupted by SIGINT (Ctrl+C) during start-up; nothing was written.", file=sys.stderr)
        raise SystemExit(130) from None
    run_cli(args)
