"""``logreg serve``: a real server on a free loopback port answers good and bad requests as ``logreg predict``
would, and a signal ends it with every process it started."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from logreg.launch import main

LOGREG = Path(sys.executable).parent / "logreg"  # the command, as a user runs it
START_SECONDS = 240  # a cold start imports torch and Lightning in three processes; a shared machine is slow
COLUMNS = ("variance", "skewness", "curtosis", "entropy")
# Bad requests, each with the one sentence of its 422 answer.
ROW = {"variance": 3.6, "skewness": 8.7, "curtosis": -2.8, "entropy": -0.4}
EXPECTED = '; expected {"rows": [{column: number, ...}, ...]} as application/json.'
BAD = [
    ({"rows": [ROW, {**ROW, "skewness": "8.7"}]}, "rows[1]: column 'skewness' holds the non-numeric value \"8.7\"."),
    ({"rows": [{**ROW, "entropy": None}]}, "rows[0]: column 'entropy' holds the non-numeric value null."),
    ({"rows": [{**ROW, "variance": True}]}, "rows[0]: column 'variance' holds the non-numeric value true."),
    ({"rows": [{**ROW, "curtosis": float("nan")}]}, "rows[0]: column 'curtosis' holds nan; features must be finite."),
    ({"rows": [{**ROW, "curtosis": float("inf")}]}, "rows[0]: column 'curtosis' holds inf; features must be finite."),
    (
        {"rows": [{**ROW, "variance": 1e39}]},
        "rows[0]: column 'variance' holds 1e+39, beyond float32's range (magnitude at most 3.4e+38).",
    ),
    (
        {"rows": [{k: v for k, v in ROW.items() if k != "entropy"}]},
        "rows[0]: no column 'entropy'; the model takes 4 features: variance, skewness, curtosis, entropy.",
    ),
    ({"row": [ROW]}, "rows: Field required" + EXPECTED),
    ({"rows": [ROW, [1, 2, 3, 4]]}, "rows[1]: Input should be a valid dictionary" + EXPECTED),
    (b'{"rows": [', "body, character 10: JSON decode error (Expecting value)" + EXPECTED),
]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def post(self, body: object) -> tuple[int, dict]:
        """POST /predict: (status, JSON answer); a bytes body is sent as it is."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + "/predict", data=data, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return answer.read().decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``, from /proc; the start time tells a reused pid apart."""
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in map(int, (task / "children").read_text().split()):
                    found.add((child, started(child)))
                    todo.append(child)
    return found


def started(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those still running (a zombie has ended: it only waits for its parent to read its exit code)."""
    running = set()
    for pid, start in processes:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if stat[19] == start and stat[0] != "Z":
                running.add((pid, start))
    return running


@contextlib.contextmanager
def serving(ckpt: Path, log: Path, *options: str) -> Iterator[Server]:
    """``logreg serve`` in a session of its own (as a terminal's job), until it answers GET /health; its output
    goes to ``log`` (a pipe nobody reads while it runs could fill and block it)."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(LOGREG), "serve", "--ckpt_path", str(ckpt), "--port", str(port), *options],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert process.poll() is None, f"logreg serve ended at start: {log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                if server.get("/health") == "ok":
                    break
            assert time.monotonic() < deadline, f"logreg serve not ready after {START_SECONDS} s"
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:  # a failed test: leave nothing running
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop(server: Server, signum: int, group: bool) -> tuple[int, str]:
    """Send ``signum`` (to the process, or to its whole group as a terminal's Ctrl+C does); return its exit code
    and output after checking that no process it started is left running."""
    children = descendants(server.process.pid)
    assert len(children) >= 3  # LitServe's inference worker, its HTTP server, multiprocessing's helpers
    if group:
        os.killpg(server.process.pid, signum)
    else:
        os.kill(server.process.pid, signum)
    server.process.wait(timeout=60)
    deadline = time.monotonic() + 10  # orphans of a dead parent are reaped by init: give them a moment
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(children), f"left running: {alive(children)}"
    return server.process.returncode, server.log.read_text()


def banknote_rows(data: Path, rows: slice) -> list[dict]:
    """Rows of the banknote CSV as JSON objects, the label column included (the server ignores it)."""
    header = data.read_text().splitlines()[0].split(",")
    values = np.loadtxt(data, delimiter=",", skiprows=1)[rows]
    return [
        {name: float(v) if name in COLUMNS else int(v) for name, v in zip(header, row, strict=True)} for row in values
    ]


@pytest.mark.slow
def test_the_server_answers_as_predict_batches_concurrent_requests_and_stops_on_sigterm(banknote, tmp_path):
    expected = banknote["probabilities"]
    with serving(
        banknote["ckpt"], tmp_path / "serve.log", "--max_batch_size", "8", "--batch_timeout", "0.05"
    ) as server:
        status, answer = server.post({"rows": banknote_rows(banknote["data"], slice(0, 5))})
        assert status == 200 and answer["label"] == "class"
        np.testing.assert_allclose(answer["probabilities"], expected[:5], rtol=0, atol=1e-6)
        assert answer["predictions"] == [int(p >= 0.5) for p in answer["probabilities"]]
        for body, sentence in BAD:  # each one alone fails, and the server goes on answering
            assert server.post(body) == (422, {"detail": sentence})
            assert server.post({"rows": banknote_rows(banknote["data"], slice(5, 6))})[0] == 200

        # 24 concurrent requests, 8 of them bad, batched together (50 ms to fill a batch): each answered alone
        answers: dict[int, tuple[int, dict]] = {}

        def send(i: int) -> None:
            rows = banknote_rows(banknote["data"], slice(10 * i, 10 * i + 10))
            answers[i] = server.post({"rows": rows if i % 3 else [*rows, {"variance": 1.0}]})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(answers) == 24
        for i, (status, answer) in answers.items():
            if i % 3:
                assert status == 200
                np.testing.assert_allclose(answer["probabilities"], expected[10 * i : 10 * i + 10], rtol=0, atol=1e-6)
            else:
                assert (status, answer["detail"]) == (422, "rows[10]: no column 'skewness'; the model takes 4 "
                                                              "features: variance, skewness, curtosis, entropy.")  # fmt: skip
        assert json.loads(server.get("/info"))["model"]["feature_names"] == json.dumps(list(COLUMNS))
        code, err = stop(server, signal.SIGTERM, group=False)  # `kill PID`, as Docker or Kubernetes stop it
    assert code == 143 and err.splitlines()[-1] == "Stopped by SIGTERM: the server and its workers have ended."


@pytest.mark.slow
def test_without_batching_the_threshold_applies_and_ctrl_c_stops_every_process(banknote, tmp_path):
    with serving(banknote["ckpt"], tmp_path / "serve.log", "--threshold", "0.9") as server:  # batching off: default
        status, answer = server.post({"rows": banknote_rows(banknote["data"], slice(600, 900))})  # both classes
        assert status == 200
        np.testing.assert_allclose(answer["probabilities"], banknote["probabilities"][600:900], rtol=0, atol=1e-6)
        assert answer["predictions"] == [int(p >= 0.9) for p in answer["probabilities"]]
        assert 0 < sum(answer["predictions"]) < sum(p >= 0.5 for p in answer["probabilities"])
        assert server.post(BAD[0][0]) == (422, {"detail": BAD[0][1]})
        assert server.post({"rows": []}) == (200, {"label": "class", "probabilities": [], "predictions": []})
        code, err = stop(server, signal.SIGINT, group=True)  # Ctrl+C in a terminal reaches the whole group
    assert code == 130 and "Traceback" not in err
    assert err.splitlines()[-1] == "Stopped by SIGINT (Ctrl+C): the server and its workers have ended."


def test_options_the_server_cannot_run_with_fail_in_one_line_before_it_starts(banknote):
    ckpt = str(banknote["ckpt"])
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--ckpt_path", ckpt, "--threshold", "1.5", "--port", str(free_port())])
    assert stop.value.code == "error: --threshold must lie strictly between 0 and 1; got 1.5."
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--ckpt_path", ckpt, "--max_batch_size", "8", "--batch_timeout", "0"])
    assert stop.value.code == "error: --batch_timeout must lie above 0 and at most 1 second; got 0.0."
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--ckpt_path", ckpt, "--port", "80"])
    assert stop.value.code == "error: --port must lie between 1024 and 65535; got 80."
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as stop:
            main(["serve", "--ckpt_path", ckpt, "--port", str(port)])
    assert stop.value.code == (
        f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); choose another port."
    )
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--ckpt_path", "no/such.ckpt", "--port", str(free_port())])
    assert stop.value.code == "error: no/such.ckpt: no such checkpoint file."


def test_a_host_it_cannot_bind_is_a_usage_error(banknote, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--ckpt_path", str(banknote["ckpt"]), "--host", "10.1.2.3"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "error: argument --host: invalid choice: '10.1.2.3' (choose from '127.0.0.1', '0.0.0.0', '::')\n"
    )


def test_a_missing_extra_is_named_in_one_line(banknote, monkeypatch):
    monkeypatch.setitem(sys.modules, "litserve", None)  # as if not installed
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--ckpt_path", str(banknote["ckpt"])])
    assert stop.value.code == (
        'error: logreg serve needs litserve, of the optional serve extra: pip install -e ".[serve]" '
        '(or pip install "logreg[serve]").'
    )
