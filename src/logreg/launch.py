"""The ``logreg`` command: ``fit | validate | test | predict`` go to the LightningCLI (``logreg.cli``), the
commands of the optional extras to theirs (``prepare``: ``logreg.streaming.prepare``, ``sweep``:
``logreg.sweep``), each imported only when used.

Free of heavy imports itself: Ctrl+C, SIGTERM or SIGHUP while torch and Lightning load (the first seconds of
every run) ends in one line and exit code 130, 143 or 129, not in an import traceback or a silent exit."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from types import FrameType

from logreg.machinery import interrupt  # the standard library only: light

# Commands that are not Trainer methods: each has its own parser and reports its own mistakes in one line.
EXTRA_COMMANDS = {
    "prepare": "logreg.streaming.prepare",
    "sweep": "logreg.sweep",
    "export": "logreg.serve.export",
    "serve": "logreg.serve.server",
}


def main(args: list[str] | None = None) -> None:
    """Import the command's module, then run it on ``args`` (default: the command line)."""
    argv = sys.argv[1:] if args is None else list(args)
    if args is None and "" not in sys.path and os.getcwd() not in sys.path:
        # As `python -m logreg` does: a class path may name a module of the current directory (--model my.Model).
        sys.path.insert(0, os.getcwd())
    module = EXTRA_COMMANDS.get(argv[0], "logreg.cli") if argv else "logreg.cli"
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    earlier = {signum: signal.signal(signum, stop) for signum in interrupt.SIGNALS}
    try:
        run = importlib.import_module(module).main
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        print(
            f"error: stopped by {interrupt.signal_name(signum)} during start-up; nothing was written.", file=sys.stderr
        )
        raise SystemExit(interrupt.exit_code(signum)) from None
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler)
    try:
        run(argv[1:] if module != "logreg.cli" else argv)
    finally:
        if args is None:  # the process ends now: a signal while Python shuts down (joins threads) ends it at once
            for signum in interrupt.SIGNALS:
                signal.signal(signum, _exit_at_once)


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    with contextlib.suppress(Exception):  # what was printed is kept; a write under way may refuse a flush
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(interrupt.exit_code(signum))
