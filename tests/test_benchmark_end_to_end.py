import json

import pytest

from logreg.benchmarks.end_to_end import main


@pytest.mark.slow  # about a dozen processes, each importing torch and Lightning or pandas and scikit-learn
def test_benchmark_runs_every_case_on_a_small_file_and_both_fits_reach_the_same_loss(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--rows", "3000", "--repeats", "1", "--json", str(out)])
    r = json.loads(out.read_text())
    readers = [k for k in r if k.startswith("read_")]
    assert {"read_logreg", "read_previous", "read_polars", "read_pandas"} <= set(readers)
    assert {r[k]["rows"] for k in readers} == {3000}
    f, sk = r["fit_logreg"], r["fit_sklearn"]
    assert abs(f["train_loss"] - sk["train_loss"]) < 1e-4  # the same optimum, reached by both
    assert f["epochs"] == 40  # configs/lbfgs.yaml
    phases = ("startup_s", "read_and_split_s", "standardise_and_sanity_s", "training_s", "validation_s")
    assert sum(f[p] for p in (*phases, "fit_end_s", "exit_s")) == pytest.approx(f["wall_s"], abs=1e-3)
    assert all(f[p] > 0 for p in phases)
    assert r["prepare"]["rows"] == 3000 and 0 < r["prepare"]["seconds"] < r["prepare"]["wall_s"]
    assert r["full_in_memory"]["epochs"] == r["full_streamed"]["epochs"] == 20
    table = capsys.readouterr().out
    assert "| logreg fit --config configs/lbfgs.yaml |" in table and "| pandas + scikit-learn |" in table
