import json

import pytest

from logreg.benchmarks.streaming import main


@pytest.mark.slow
def test_benchmark_measures_every_case_on_tiny_data_and_writes_consistent_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(
        [
            *("--rows", "3000", "--throughput-rows", "3000", "--prepare-rows", "2000"),
            *("--epochs", "1", "--repeats", "1", "--example-steps", "50", "--json", str(out)),
        ]
    )
    report = json.loads(out.read_text())
    memory = report["memory"]
    assert memory["data_bytes"] == 3000 * 33 * 4
    assert sum(memory["prepare"]["rows"].values()) == 3000
    n_train = memory["prepare"]["rows"]["train"]
    assert memory["full"]["updates"] == 1 and memory["full"]["train_rows"] == n_train
    assert memory["minibatch"]["updates"] == -(-n_train // 256)
    assert memory["example"]["updates"] == 50  # capped by --example-steps
    for case in ("prepare", "full", "minibatch", "example"):
        # the child's own peak is at least what it held after its imports; /proc gives the tree's PSS
        assert memory[case]["peak_rss_bytes"] >= memory[case]["baseline_rss_bytes"] > 0
        assert memory[case]["peak_tree_pss_bytes"] > 0
    for mode in ("minibatch", "full"):
        r = report["throughput"][mode]
        assert len(r["samples"]["in_memory"]) == len(r["samples"]["streamed"]) == 1
        assert r["streamed_over_in_memory"] == pytest.approx(r["rows_per_s"]["streamed"] / r["rows_per_s"]["in_memory"])
    assert sum(report["prepare"]["prepare"]["rows"].values()) == report["prepare"]["read_csv_in_memory"]["rows"] == 2000
    table = capsys.readouterr().out
    assert "Peak memory, 3,000 x 32 rows" in table and "| full |" in table and "| read_csv_in_memory |" in table
