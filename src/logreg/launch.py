"""The ``logreg`` command's entry point, free of heavy imports: Ctrl+C or SIGTERM while torch and Lightning
load (the first seconds of every run) ends in one line and exit code 130 or 143, not in an import traceback
or a silent exit."""

from __future__ import annotations

import signal
import sys
from types import FrameType

_NAMES = {signal.SIGINT: "SIGINT (Ctrl+C)", signal.SIGTERM: "SIGTERM"}


def main(args: list[str] | None = None) -> None:
    """Import the CLI, then run it on ``args`` (default: the command line)."""
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    earlier = {signum: signal.signal(signum, stop) for signum in _NAMES}
    try:
        from logreg.cli import main as run_cli
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        print(f"error: stopped by {_NAMES[signum]} during start-up; nothing was written.", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler)
    run_cli(args)
