"""Stopping a run with a signal: Ctrl+C (SIGINT), SIGTERM (what SLURM, Kubernetes and ``kill`` send) or SIGHUP
(the terminal closed, an ssh session dropped).

During training the first signal does not stop the process where it happens to be (half-way through an
update, the weights and the step count would disagree): :class:`logreg.machinery.callbacks.LastCheckpoint` stops it at
the end of the current training batch, saves ``last.ckpt`` at that step, prints one line naming it and how to
resume, and exits with the shell's code for the signal (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP), so a
scheduler never reads a stopped run as a success. A second signal stops at once, without saving, in one line.
Outside training (start-up, validation, prediction) a signal stops at once, and the CLI ends in one line with the
same exit code. Once a stop is under way, a further signal ends the process at once and quietly.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []  # signals received by this process, in order
_graceful = False  # whether a training loop with LastCheckpoint is running, to stop at its next batch end
_allow_graceful = True  # False: every signal stops at once (a sweep fails a stopped trial; nothing resumes it)
_deferred = False  # whether the first signal was left for LastCheckpoint to act on at a batch end
_stopping = False  # whether the stop has been decided (and said): a further signal only ends the process


class Interrupted(SystemExit):
    """A run stopped by a signal; its code is the shell's 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(exit_code(signum))
        self.signum = signum


def exit_code(signum: int) -> int:
    """128 + the signal's number, as a shell reports a process a signal stopped: 130 (SIGINT), 143 (SIGTERM)."""
    return 128 + signum


def stopping() -> bool:
    """Whether a stop has been decided and said (see :func:`stop`)."""
    return _stopping


def stop(signum: int) -> Interrupted:
    """The exception that ends the run for ``signum``, once its stop has been said; from now on a further signal
    ends the process at once (it does not interrupt the shutdown with a traceback)."""
    global _stopping
    _stopping = True
    return Interrupted(signum)


def signal_name(signum: int) -> str:
    """``SIGINT (Ctrl+C)`` or the signal's plain name."""
    name = signal.Signals(signum).name
    return f"{name} (Ctrl+C)" if signum == signal.SIGINT else name


def received() -> int | None:
    """The first signal this process received since :func:`install_handlers`, if any."""
    return _received[0] if _received else None


def install_handlers(graceful: bool = True) -> None:
    """Catch SIGINT, SIGTERM and SIGHUP from now on: they stop training at a batch end (see module doc; not when
    ``graceful`` is False) or, outside training, raise KeyboardInterrupt where the process is, for the command to
    end in one line."""
    global _graceful, _allow_graceful, _deferred, _stopping
    _received.clear()
    _graceful, _allow_graceful, _deferred, _stopping = False, graceful, False, False
    for signum in SIGNALS:
        signal.signal(signum, _handle)


@contextlib.contextmanager
def handlers(graceful: bool = True) -> Iterator[None]:
    """:func:`install_handlers` for the duration of a ``with`` block, then the earlier handlers again (the CLI
    may run inside a larger program, a test session say, whose own handling of Ctrl+C must come back)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    earlier = {signum: signal.getsignal(signum) for signum in SIGNALS}
    install_handlers(graceful)
    try:
        yield
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def reported(graceful: bool = True) -> Iterator[None]:
    """:func:`handlers`, and a stop outside training (start-up, evaluation, prediction) that ends in one line and
    the signal's exit code; a stop during training has saved ``last.ckpt`` and said so already."""
    with handlers(graceful):
        try:
            yield
        except Interrupted:
            raise
        except (KeyboardInterrupt, SystemExit) as err:
            signum = received()
            if signum is None and isinstance(err, SystemExit):
                raise
            if _stopping:  # said already (LastCheckpoint saved at an epoch's end, where Lightning stopped)
                raise Interrupted(_received[0]) from None
            signum = signum or signal.SIGINT  # a KeyboardInterrupt is Ctrl+C
            if _deferred and len(_received) > 1:  # Lightning turned the second one into exit(1)
                message = (
                    f"stopped at once by a second {signal_name(_received[1])}, before the step could be saved; "
                    "--ckpt_path last resumes from the run's last save."
                )
            else:
                message = (
                    f"stopped by {signal_name(signum)} outside training (start-up, evaluation or prediction); "
                    "nothing was saved."
                )
            stopped = stop(signum)  # from here a further signal ends the process at once
            print(f"error: {message}", file=sys.stderr)
            raise stopped from None


def stop_at_batch_end(on: bool) -> None:
    """Whether the first signal waits for the end of the current training batch (``LastCheckpoint`` turns this on
    while training runs) or raises KeyboardInterrupt at once."""
    global _graceful
    _graceful = on and _allow_graceful


def _handle(signum: int, frame: FrameType | None) -> None:
    global _deferred
    _received.append(signum)
    if _stopping:  # the stop is said and under way: end it here, without a KeyboardInterrupt's traceback
        raise Interrupted(_received[0])
    if _graceful and len(_received) == 1:
        _deferred = True
        return  # LastCheckpoint saves and stops at the end of the current training batch
    raise KeyboardInterrupt  # Lightning turns it into its shutdown; the CLI maps it to the signal's exit code
