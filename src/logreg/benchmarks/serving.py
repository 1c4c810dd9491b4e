"""Served predictions against the in-process module: requests per second and p50/p99 latency of ``logreg serve``
at 1, 8 and 32 concurrent clients, with LitServe's batching off and on.

Every request carries the same banknote rows (``--rows`` per request, from a cycle over the data) and every answer
is checked against the in-process module's probabilities (to 1e-6): a wrong or failed answer counts as an error.
The clients are threads of this process, each with its own keep-alive connection, running for ``--seconds`` after
a warm-up; they share the machine's cores with the server's processes. Each server configuration is started in
turn, ``--repeats`` times, interleaved (off, on, off, on...); requests per second are the median over repeats, the
latency percentiles come from all of them pooled. The in-process module is timed in this process on the same
request rows: the predictor alone, and with the JSON parsing and checks the server does per request. LitServe's
own floor is a bare server answering every request with a constant (no model, no checks), started the same way.

python scripts/benchmark_serving.py --json out.json               # the figures of docs/benchmarks.md
python scripts/benchmark_serving.py --seconds 2 --repeats 1        # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import torch

from logreg.data.tables import BANKNOTE_COLUMNS, load_banknote
from logreg.predictor import Predictor, load_predictor

CLIENTS = (1, 8, 32)
START_SECONDS = 300  # a cold start imports torch and Lightning in three processes
TOLERANCE = 1e-6


BARE = "bare LitServe, a constant answer"


def configurations(batch: int, timeout: float) -> dict[str, list[str]]:
    """The server configurations compared, by name: ``logreg serve`` options (the bare server takes none)."""
    return {
        BARE: [],
        "batching off": ["--max_batch_size", "1"],
        f"batching on ({batch} requests, {timeout * 1000:g} ms)": [
            *("--max_batch_size", str(batch), "--batch_timeout", str(timeout))
        ],
    }


def request_bodies(rows_per_request: int, count: int = 64) -> tuple[list[bytes], list[torch.Tensor]]:
    """``count`` request bodies of consecutive banknote rows (label column included, as a client may send it),
    and each one's rows as the in-process module takes them."""
    table = load_banknote()
    names = BANKNOTE_COLUMNS
    bodies, rows = [], []
    for i in range(count):
        picked = torch.arange(i * rows_per_request, (i + 1) * rows_per_request) % len(table.x)
        x, y = table.x[picked], table.y[picked]
        body = [dict(zip(names, [*map(float, r), int(label)], strict=True)) for r, label in zip(x, y, strict=True)]
        bodies.append(json.dumps({"rows": body}).encode())
        rows.append(x)
    return bodies, rows


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def time_in_process(predictor: Predictor, bodies: list[bytes], rows: list[torch.Tensor], seconds: float) -> dict:
    """The module alone on each request's rows, then with the server's per-request work (JSON, checks) added."""
    from logreg.serve.api import rows_to_tensor

    def alone(i: int) -> None:
        predictor(rows[i])

    def from_json(i: int) -> None:
        predictor(rows_to_tensor(json.loads(bodies[i])["rows"], predictor.feature_names))

    report = {}
    with torch.inference_mode():
        for name, call in (("in-process module", alone), ("in-process, from JSON", from_json)):
            latencies, end, i = [], time.perf_counter() + seconds, 0
            for _ in range(100):  # warm-up
                call(0)
            while time.perf_counter() < end:
                started = time.perf_counter()
                call(i % len(bodies))
                latencies.append(time.perf_counter() - started)
                i += 1
            report[name] = {"requests_per_s": len(latencies) / sum(latencies), **percentiles(latencies)}
    return report


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server(ckpt: Path, name: str, options: list[str], work: Path) -> Iterator[int]:
    """``logreg serve`` (or the bare server) on a free loopback port, until it answers GET /health; stopped after,
    with every process of its session."""
    port = free_port()
    if name == BARE:
        command = [sys.executable, "-m", "logreg.benchmarks.serving", "--bare", str(port)]
    else:
        logreg = Path(sys.executable).parent / "logreg"
        command = [str(logreg), "serve", "--ckpt_path", str(ckpt), "--port", str(port), *options]
    log = work / "server.log"  # a file, not a pipe nobody reads while it runs, which could fill and block it
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield port
    finally:
        try:
            if name != BARE:  # logreg serve ends its workers on SIGTERM
                process.send_signal(signal.SIGTERM)
                process.wait(60)
        finally:
            # The bare server, and anything left: its whole session. A plain LitServe server ends its workers only
            # on Ctrl+C, which a benchmark started in the background (SIGINT ignored) cannot send it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Constant(ls.LitAPI):
    """LitServe with nothing of logreg: every request answered with a constant."""

    def setup(self, device: str) -> None:
        pass

    def decode_request(self, request):  # unannotated: LitServe passes the parsed JSON body
        return request

    def predict(self, x: Any) -> Any:
        return x

    def encode_response(self, output: Any) -> dict:
        return {"probabilities": []}


def bare_server(port: int) -> None:
    """:class:`Constant` on LitServe, batching off, as ``logreg serve`` runs its API."""
    server = ls.LitServer(Constant(), accelerator="cpu")
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


def healthy(port: int) -> bool:
    with contextlib.suppress(OSError):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/health")
        return connection.getresponse().read() == b"ok"
    return False


def load(port: int, clients: int, bodies: list[bytes], expected: list[np.ndarray] | None, seconds: float) -> dict:
    """``clients`` threads posting requests back to back for ``seconds`` (after one second of warm-up); answers
    are checked against ``expected`` (None: only their status)."""
    start = time.perf_counter() + 1.0
    end = start + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        i = k
        while (now := time.perf_counter()) < end:
            body = bodies[i % len(bodies)]
            connection.request("POST", "/predict", body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            took = time.perf_counter() - now
            right = answer.status == 200 and (
                expected is None
                or np.allclose(json.loads(data)["probabilities"], expected[i % len(bodies)], rtol=0, atol=TOLERANCE)
            )
            if now >= start:
                latencies[k].append(took)
                errors[k] += not right
            i += clients
        connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pooled = [t for per_client in latencies for t in per_client]
    return {
        "requests": len(pooled),
        "errors": sum(errors),
        "requests_per_s": len(pooled) / seconds,
        "latencies": pooled,
    }


def train_checkpoint(work: Path) -> Path:
    """A logistic regression trained briefly on the banknote data (the model's size hardly matters here)."""
    logreg = Path(sys.executable).parent / "logreg"
    args = ["fit", "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false"]
    subprocess.run([str(logreg), *args, "--trainer.default_root_dir", str(work)], check=True, capture_output=True)
    return work / "minibatch" / "version_0" / "checkpoints" / "last.ckpt"


def measure(
    ckpt: Path, rows_per_request: int, seconds: float, repeats: int, batch: int, timeout: float, work: Path
) -> dict:
    predictor = load_predictor(ckpt)
    bodies, rows = request_bodies(rows_per_request)
    with torch.inference_mode():
        expected = [predictor(x).numpy() for x in rows]
    report: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "rows_per_request": rows_per_request,
        "seconds": seconds,
        "repeats": repeats,
        "in_process": time_in_process(predictor, bodies, rows, seconds),
        "served": {},
    }
    runs: dict[str, dict[int, list[dict]]] = {}
    for _ in range(repeats):
        for name, options in configurations(batch, timeout).items():
            with server(ckpt, name, options, work) as port:
                for clients in CLIENTS:
                    answers = None if name == BARE else expected
                    runs.setdefault(name, {}).setdefault(clients, []).append(
                        load(port, clients, bodies, answers, seconds)
                    )
    for name, by_clients in runs.items():
        report["served"][name] = {
            clients: {
                "requests_per_s": statistics.median(r["requests_per_s"] for r in results),
                "samples": [r["requests_per_s"] for r in results],
                "requests": sum(r["requests"] for r in results),
                "errors": sum(r["errors"] for r in results),
                **percentiles([t for r in results for t in r["latencies"]]),
            }
            for clients, results in by_clients.items()
        }
    return report


def format_report(report: dict) -> str:
    rows = report["rows_per_request"]
    lines = [
        f"{rows} row{'s' if rows != 1 else ''} per request, {report['seconds']:g} s per measurement, "
        f"{report['repeats']} interleaved repeats, {report['cpus']} CPUs",
        "",
        "| path | clients | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["in_process"].items():
        lines.append(f"| {name} | 1 | {r['requests_per_s']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | 0 |")
    for name, by_clients in report["served"].items():
        for clients, r in by_clients.items():
            lines.append(
                f"| {'' if name == BARE else 'served, '}{name} | {clients} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['errors']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", type=Path, default=None, help="checkpoint to serve (default: train one)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved starts of each server configuration")
    parser.add_argument("--max_batch_size", type=int, default=16, help="requests per batch when batching is on")
    parser.add_argument("--batch_timeout", type=float, default=0.001, help="seconds to fill a batch when on")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--bare", type=int, default=None, help=argparse.SUPPRESS)  # the bare server's port
    args = parser.parse_args(argv)
    if args.bare is not None:
        bare_server(args.bare)
        return
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        ckpt = args.ckpt_path or train_checkpoint(work)
        report = measure(ckpt, args.rows, args.seconds, args.repeats, args.max_batch_size, args.batch_timeout, work)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
