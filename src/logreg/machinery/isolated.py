"""Run a function in a child process that cannot outlive this one, nor take its signals: for library code that
handles signals in ways this program must not inherit (LitData's ``optimize`` ends its process on Ctrl+C).

The child is forked (it shares the parent's state, nothing is pickled but the outcome), in a process group of
its own, so a Ctrl+C at the terminal reaches only the parent. The parent waits for the outcome; when it stops
waiting (a signal raised KeyboardInterrupt, an error) it kills the child's whole group, the child's own
worker processes included, before it goes on. Should the parent die without that (``kill -9``), the child
notices within half a second and kills its group itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

from logreg.machinery.errors import WriteError
from logreg.machinery.interrupt import SIGNALS


class ChildDied(WriteError):
    """The child ended without an outcome: killed (out of memory, say) or ended by a signal of its own."""


def run_isolated(run: Callable[[], None], what: str) -> None:
    """``run()`` in a forked child process of its own process group; its exception, if any, is raised here.

    Args:
        run: What the child does.
        what: What it is, for the message should the child die without an outcome (``"packing OUT_DIR"``).
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(run, send, os.getpid()), name=what)
    with signals_held():  # no signal between the fork and the child's own process group: it would reach both
        child.start()
        with contextlib.suppress(OSError):  # the child does this too: whichever is first
            os.setpgid(child.pid, child.pid)
    send.close()
    try:
        try:
            outcome = receive.recv()
        except EOFError:
            outcome = None
        child.join()
    finally:
        # The whole group, whether the child still runs (this process is stopping) or has ended: a library's
        # worker may outlive it (LitData's, when another worker failed), waiting on a queue for ever.
        with signals_held():  # a second Ctrl+C must not stop this half-way
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.join()
            _wait_for_group(child.pid)
    if outcome is None:
        code = child.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"ended with exit code {code}"
        raise ChildDied(f"{what}: its process {how} before it finished (out of memory?); nothing of it was kept.")
    if isinstance(outcome, BaseException):
        raise outcome


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait (blocked) while the block runs, then arrive: for steps that must not stop half-way
    (a fork and its set-up, a clean-up). Only the main thread can receive them, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    earlier = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, earlier)


def _child(run: Callable[[], None], send: Connection, parent: int) -> None:
    os.setpgid(0, 0)
    for signum in SIGNALS:  # the parent's handlers raise KeyboardInterrupt; here a signal just ends the group
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    try:
        run()
        outcome: BaseException | bool = True
    except BaseException as err:  # sent to the parent, which raises it
        outcome = err
    try:
        send.send(outcome)
    except Exception:  # an exception that does not pickle: its text, which does
        send.send(RuntimeError("".join(traceback.format_exception(outcome))))


def _end_with(parent: int) -> None:
    """Kill this process group once ``parent`` is gone (its child is then adopted by another process)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(0, signal.SIGKILL)


def _wait_for_group(group: int, timeout: float = 5.0) -> None:
    """Wait until no process of ``group`` runs (killed ones end at once, but not within the call that killed
    them), so none writes after this returns; one that nobody reaps yet (a zombie) no longer runs."""
    deadline = time.monotonic() + timeout
    while _runs(group) and time.monotonic() < deadline:
        time.sleep(0.01)


def _runs(group: int) -> bool:
    """Whether a process of ``group`` runs: exists and is not a zombie (Linux's /proc says which; elsewhere a
    zombie counts as running)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        state, _, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]  # after "pid (name) ": state ppid pgrp ...
        if int(pgrp) == group and state not in ("Z", "X"):
            return True
    return False
