import json

import pytest

from logreg.benchmarks.serving import BARE, CLIENTS, main


@pytest.mark.slow
def test_the_benchmark_serves_every_case_with_right_answers_and_writes_consistent_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--seconds", "0.5", "--repeats", "1", "--rows", "3", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["rows_per_request"] == 3 and set(report["in_process"]) == {
        "in-process module",
        "in-process, from JSON",
    }
    assert list(report["served"]) == [BARE, "batching off", "batching on (16 requests, 1 ms)"]
    for by_clients in report["served"].values():
        assert list(by_clients) == [str(c) for c in CLIENTS]  # JSON keys
        for r in by_clients.values():
            # every answer was checked against the in-process module's probabilities
            assert r["requests"] > 0 and r["errors"] == 0
            assert r["requests_per_s"] == r["samples"][0] and 0 < r["p50_ms"] <= r["p99_ms"]
    table = capsys.readouterr().out
    assert "| served, batching off | 8 |" in table and "| in-process module | 1 |" in table
