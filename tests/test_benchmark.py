import json
import math

import pytest

from logreg.benchmarks.training import main


@pytest.mark.slow
def test_benchmark_runs_all_five_paths_on_tiny_data_and_writes_consistent_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(
        [
            "--rows",
            "300",
            "--batch-size",
            "64",
            "--repeats",
            "1",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    modes = {r["mode"]: r for r in report["modes"]}
    assert set(modes) == {"full", "minibatch", "example"}
    n_train = modes["full"]["train_rows"]
    assert n_train == 298  # 300 rows less one validation and one test row
    assert modes["full"]["updates_per_epoch"] == 1
    assert modes["minibatch"]["updates_per_epoch"] == math.ceil(n_train / 64)
    assert modes["example"]["updates_per_epoch"] == n_train
    for r in modes.values():
        assert all(len(r["samples"][path]) == 1 for path in ("project", "bare", "bare_callbacks", "hand", "naive"))
        assert r["callbacks"] == [
            "TQDMProgressBar",
            "StopOnNonFiniteLoss",
            "SaveConfigCallback",
            "ModelCheckpoint",
            "LastCheckpoint",
        ]
        assert r["project_over_bare"] == pytest.approx(r["project_s"] / r["bare_s"])
        assert r["project_over_hand"] == pytest.approx(r["project_s"] / r["hand_s"])
        assert r["naive_over_project"] == pytest.approx(r["naive_s"] / r["project_s"])
    assert report["memory"]["data_bytes"] == 300 * 33 * 4
    table = capsys.readouterr().out
    assert "| example | 300 x 32 | 298 |" in table and "project / bare" in table


@pytest.mark.slow
def test_ablation_times_the_project_without_each_default_callback_and_without_the_logger(tmp_path, monkeypatch):
    from logreg.benchmarks import training as benchmark

    left_out = []
    time_project = benchmark.time_project

    def recorded(*args, without: str = "", **kwargs):
        left_out.append(without)
        return time_project(*args, without=without, **kwargs)

    monkeypatch.setattr(benchmark, "time_project", recorded)
    out = tmp_path / "ablate.json"
    main(["--ablate", "--modes", "example", "--rows", "300", "--repeats", "2", "--epochs", "1", "--json", str(out)])
    (report,) = json.loads(out.read_text())["ablations"]
    callbacks = list(benchmark.default_callbacks())
    assert left_out == ["", *callbacks, "logger"] * 2  # interleaved, the whole project first in each round
    assert report["updates_per_epoch"] == 298
    assert list(report["cost_us_per_update"]) == [*callbacks, "logger"]
    assert all(len(seconds) == 2 for seconds in report["samples"].values())
