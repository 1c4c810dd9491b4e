"""``logreg serve --ckpt_path CKPT [--port 8000]``: predictions over HTTP with LitServe.

``POST /predict`` (see :mod:`logreg.serve.api` for the request and the answer), ``GET /health`` (``ok`` once the
workers are ready), ``GET /info`` (the model's columns). It listens on the loopback address unless ``--host`` says
otherwise. With ``--max_batch_size`` above 1, LitServe batches concurrent requests into one forward pass, waiting at
most ``--batch_timeout`` seconds for a batch to fill. Off by default: the template's models take microseconds per
forward pass on a CPU, so a request's cost is LitServe's passage through its processes, which batching does not
shorten, while the wait adds to every request's latency (docs/benchmarks.md, Serving).

LitServe runs the model in worker processes and HTTP servers in others. Its ``run`` stops them all on Ctrl+C, but
SIGTERM (``kill``, Docker, Kubernetes) ends only the main process and leaves them running: here SIGTERM takes
Ctrl+C's path, and any child still alive after LitServe's shutdown is ended too. The exit code is the shell's for
the signal (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from jsonargparse import ArgumentError, ArgumentParser

from logreg.machinery.errors import ConfigError, reporting
from logreg.machinery.interrupt import exit_code, signal_name
from logreg.predictor import load_predictor
from logreg.serve import optional

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the addresses LitServe listens on; the loopback address by default
STOP_SECONDS = 5  # how long a child left after LitServe's shutdown gets to end before it is killed


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="logreg serve",
        description="Serve a checkpoint's predictions over HTTP with LitServe: POST /predict, GET /health "
        "(see docs/serving.md).",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument("--ckpt_path", required=True, help="A checkpoint written by `logreg fit`.")
    parser.add_argument("--host", choices=HOSTS, default=HOSTS[0], help="Address to listen on (0.0.0.0: all).")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on, 1024 to 65535.")
    parser.add_argument(
        "--max_batch_size", type=int, default=1, help="Most concurrent requests run as one batch (1: no batching)."
    )
    parser.add_argument(
        "--batch_timeout", type=float, default=0.001, help="Seconds to wait for a batch to fill before running it."
    )
    parser.add_argument("--workers", type=int, default=1, help="Worker processes, each with its own model.")
    parser.add_argument("--threshold", type=float, default=0.5, help="Probability from which the prediction is 1.")
    return parser


def check_options(opts: Any) -> None:
    """Refuse option values the server cannot run with, naming each, before any process starts."""
    if not 1024 <= opts.port <= 65535:
        raise ConfigError(f"--port must lie between 1024 and 65535; got {opts.port}.")
    if opts.max_batch_size < 1 or opts.workers < 1:
        raise ConfigError(
            f"--max_batch_size and --workers must be 1 or more; got {opts.max_batch_size} and {opts.workers}."
        )
    if not 0 < opts.batch_timeout <= 1:  # at 0, LitServe polls its queue without pause: a busy core, even idle
        raise ConfigError(f"--batch_timeout must lie above 0 and at most 1 second; got {opts.batch_timeout}.")
    if not 0 < opts.threshold < 1:
        raise ConfigError(f"--threshold must lie strictly between 0 and 1; got {opts.threshold}.")
    family = socket.AF_INET6 if ":" in opts.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # uvicorn would exit with a logged traceback
        try:
            probe.bind((opts.host, opts.port))
        except OSError as err:
            raise ConfigError(
                f"--port {opts.port}: cannot listen on {opts.host}:{opts.port} ({err.strerror}); choose another port."
            ) from None


@contextlib.contextmanager
def stopping() -> Iterator[list[int]]:
    """SIGTERM raises KeyboardInterrupt in this process, as Ctrl+C does, so that LitServe shuts down its workers.

    Yields the signals received. The handler is inherited by the HTTP servers LitServe forks; there it restores
    the default and signals again, so a child stops as it would have."""
    received: list[int] = []
    main_pid = os.getpid()

    def stop(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        received.append(signum)
        raise KeyboardInterrupt

    earlier = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler)


def end_children() -> None:
    """End any process this one started that LitServe's shutdown left running: SIGTERM, then SIGKILL."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(STOP_SECONDS)
        if child.is_alive():
            child.kill()
            child.join()


def run(args: Sequence[str]) -> int | None:
    """Check the options and the checkpoint, serve until stopped, and return the stopping signal (None: none)."""
    opts = build_parser().parse_args(list(args))
    litserve = optional("litserve", "serve")
    check_options(opts)
    predictor = load_predictor(opts.ckpt_path)  # a checkpoint that cannot serve fails here, in one line

    from fastapi.exceptions import RequestValidationError

    from logreg.serve.api import PredictorAPI, unreadable_body

    # the workers load the checkpoint themselves, wherever LitServe starts them
    api = PredictorAPI(str(Path(opts.ckpt_path).resolve()), opts.threshold, opts.max_batch_size, opts.batch_timeout)
    metadata = {"checkpoint": str(opts.ckpt_path), "model": type(predictor.model).__name__}
    metadata |= {"feature_names": json.dumps(predictor.feature_names), "label_name": predictor.label_name or ""}
    # The CPU: rows of a few features cost less to compute than to copy to a GPU and back.
    server = litserve.LitServer(api, accelerator="cpu", workers_per_device=opts.workers, model_metadata=metadata)
    server.app.add_exception_handler(RequestValidationError, unreadable_body)
    columns = ", ".join(predictor.feature_names)
    print(
        f"Serving {opts.ckpt_path} on http://{opts.host}:{opts.port}: POST /predict with rows of {columns}; "
        f"GET /health. Ctrl+C or SIGTERM stops it.",
        file=sys.stderr,
        flush=True,
    )
    with stopping() as received:
        try:
            server.run(host=opts.host, port=opts.port, generate_client_file=False, log_level="warning")
        except KeyboardInterrupt:  # a signal before LitServe's own handling began
            pass
        finally:
            end_children()
    return received[0] if received else None


def main(args: Sequence[str] | None = None) -> None:
    """``logreg serve``: mistakes end in one line (exit code 1, 2 for the command line); a signal stops the
    server and its workers, with the signal's exit code."""
    signum = reporting(
        run, list(sys.argv[2:] if args is None else args), is_usage=lambda e: isinstance(e, ArgumentError)
    )
    if signum is not None:
        print(f"Stopped by {signal_name(signum)}: the server and its workers have ended.", file=sys.stderr)
        raise SystemExit(exit_code(signum))
