"""A user's own CSV file, end to end: reading it, ``logreg fit`` against pandas + scikit-learn, ``logreg prepare``.

``python scripts/benchmark_csv.py --json out.json`` on a generated 1,000,000 x 32 CSV file (``%.6g`` values
and a 0/1 label, 0.3 GB). Every case is a fresh process; the cases run interleaved (all of them, then all
again, ``--repeats`` times) and each reports its best run:

- **read**: the file into float32 features and labels by ``logreg.data.tables.read_csv``, by the reader logreg
  had before (``numpy.loadtxt`` in float64, then the checks, then float32), and the bare reads of polars (the
  library logreg uses), pandas and pyarrow (when installed), each into its own table; seconds, and the peak
  resident memory above what the process held after its imports;
- **fit**: the whole ``logreg fit --config configs/lbfgs.yaml --data.dataset FILE`` process, against one Python
  process doing ``pandas.read_csv``, standardisation and scikit-learn's ``LogisticRegression(C=inf)`` (lbfgs) on
  the same training rows, and the training log-loss each reaches (in float64, from logreg's last checkpoint);
  logreg's time split by a callback into start-up (interpreter, imports, configuration), reading and splitting,
  standardising and the sanity validation, training, validation, and the end (checkpoint, logger, exit);
- **prepare**: the whole ``logreg prepare FILE DIR`` process, and the conversion's own seconds, against
  polars' bare read;
- **streamed**: ``logreg fit --config configs/full_batch.yaml`` on the prepared directory against the same on
  the CSV file in memory: the whole process, and training rows per second over the epochs after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Only the standard library at the top: the children that read with pandas or polars, or fit with
# scikit-learn, import nothing else (Lightning would bring scipy and more, and flatter their imports).

REPO = Path(__file__).resolve().parents[3]
ROWS, FEATURES = 1_000_000, 32
READERS = ("logreg", "previous", "polars", "pyarrow", "pandas")  # pyarrow only when installed
STREAMED_EPOCHS = 20
PHASES_ENV = "LOGREG_BENCHMARK_PHASES"  # where logreg.benchmarks.phases.Phases writes its time stamps


# -- the child processes ---------------------------------------------------------------------------------


def _rss(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def read_child(reader: str, path: str) -> dict[str, Any]:
    """Read ``path`` with ``reader`` in this fresh process: seconds, rows and peak memory over the imports."""
    if reader in ("logreg", "previous"):
        import numpy as np
        import torch

        from logreg.data.tables import check_values, read_csv, read_header
    elif reader == "pyarrow":
        import pyarrow.csv
    elif reader == "pandas":
        import pandas
    elif reader == "polars":
        import polars
    baseline = _rss()
    started = time.perf_counter()
    if reader == "logreg":
        rows = len(read_csv(path).x)
    elif reader == "previous":
        # logreg's reader before issue 17: numpy in float64, the value checks, then float32
        header = read_header(path)
        values = np.loadtxt(path, delimiter=",", quotechar='"', skiprows=1, dtype=np.float64, ndmin=2)
        x, y = values[:, :-1], values[:, -1]
        check_values(path, header[:-1], header[-1], x, y)
        x, y = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
        rows = len(x)
    elif reader == "pyarrow":
        rows = pyarrow.csv.read_csv(path).num_rows
    elif reader == "pandas":
        rows = len(pandas.read_csv(path))
    else:
        rows = len(polars.read_csv(path))
    return {"seconds": time.perf_counter() - started, "rows": rows, "peak_over_imports_bytes": _rss("VmHWM") - baseline}


def sklearn_child(path: str, train_index: str) -> dict[str, Any]:
    """What a user would write instead: pandas, standardisation, scikit-learn; time stamps and the log-loss."""
    stamps = {}
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    stamps["imports"] = time.time()
    table = pd.read_csv(path)
    x, y = table.iloc[:, :-1].to_numpy(), table.iloc[:, -1].to_numpy()
    stamps["read"] = time.time()
    train = np.load(train_index)  # the training rows of logreg's split, so both fit the same rows
    x, y = x[train], y[train]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    stamps["split"] = time.time()
    model = LogisticRegression(C=np.inf, solver="lbfgs").fit(x, y)
    stamps["fit"] = time.time()
    z = model.decision_function(x)
    return {
        "stamps": stamps,
        "train_loss": float(np.mean(np.logaddexp(0, z) - y * z)),
        "iterations": int(model.n_iter_[0]),
    }


# -- the parent: run the processes -------------------------------------------------------------------------


def _child(kind: str, **options: Any) -> dict[str, Any]:
    """Run a case in a fresh process; its report, with ``launched`` and ``wall_s`` of the whole process."""
    spec = json.dumps({"kind": kind, **options})
    launched = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "logreg.benchmarks.end_to_end", "--child", spec], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark case {spec} failed:\n{result.stderr[-3000:]}")
    return {
        **json.loads(result.stdout.strip().splitlines()[-1]),
        "launched": launched,
        "wall_s": time.time() - launched,
    }


def _logreg(args: list[str], phases: Path | None = None) -> tuple[float, float]:
    """Run ``logreg ARGS`` as a user would (``python -m logreg``); (launch time, wall seconds)."""
    env = {**os.environ, **({PHASES_ENV: str(phases)} if phases else {})}
    launched = time.time()
    result = subprocess.run([sys.executable, "-m", "logreg", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"logreg {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return launched, time.time() - launched


def fit_case(csv: Path, work: Path, config: str, dataset: str, extra: list[str] = ()) -> dict[str, Any]:
    """A whole ``logreg fit`` process on ``dataset`` with ``config``, its phases, and its run directory."""
    root = Path(tempfile.mkdtemp(dir=work))
    phases = root / "phases.json"
    args = ["fit", "--config", str(REPO / "configs" / config), "--data.dataset", dataset, *extra]
    args += ["--trainer.default_root_dir", str(root), "--trainer.callbacks+=logreg.benchmarks.phases.Phases"]
    launched, wall = _logreg(args, phases)
    s = json.loads(phases.read_text())
    epochs = s["epochs"][1:] or s["epochs"]
    return {
        "wall_s": wall,
        "root": str(root),
        "startup_s": s["configured"] - launched,
        "read_and_split_s": s["setup"] - s["configured"],
        # the splits standardised and put on the device, and the sanity check's validation
        "standardise_and_sanity_s": s["train_start"] - s["setup"],
        "training_s": s["train_end"] - s["train_start"] - s["validation_s"],
        "validation_s": s["validation_s"],
        "fit_end_s": s["teardown"] - s["train_end"],  # the last checkpoint, the logger's close
        "exit_s": launched + wall - s["teardown"],
        "epochs": len(s["epochs"]),
        "train_rows_per_s": s["train_rows"] / statistics.median(epochs),
    }


def train_loss(csv: Path, root: str) -> float:
    """Training log-loss (float64) of a run's last checkpoint, on the training split its data module makes."""
    import torch

    from logreg.data import TabularDataModule

    (ckpt,) = Path(root).rglob("last.ckpt")
    state = torch.load(ckpt, weights_only=True)
    dm = TabularDataModule(dataset=str(csv), batch_mode="full")
    dm.setup("fit")
    x, y = (t.double() for t in dm.split("train"))
    z = x @ state["state_dict"]["linear.weight"][0].double() + state["state_dict"]["linear.bias"].double()
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z, y))


def write_train_index(csv: Path, path: Path) -> None:
    """The training rows of logreg's split of ``csv`` (the data module's defaults), for the scikit-learn process."""
    import numpy as np
    import torch

    from logreg.data import TabularDataModule
    from logreg.data.tables import read_csv

    dm = TabularDataModule(dataset=str(csv))
    n = len(read_csv(csv).y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(dm.hparams.seed))
    train = order[: n - round(n * dm.hparams.val_fraction) - round(n * dm.hparams.test_fraction)]
    dm.setup("fit")
    if not torch.equal(dm.split("train")[0], dm.standardize(read_csv(csv).x[train])):
        raise RuntimeError("the data module's training split is no longer the one this benchmark recomputes")
    np.save(path, np.sort(train.numpy()))


def _best(samples: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return min(samples, key=lambda r: r[key])


def run(rows: int, repeats: int, work: Path, csv: Path | None = None) -> dict[str, Any]:
    from logreg.benchmarks.streaming import write_csv

    if csv is None:
        csv = work / f"table_{rows}x{FEATURES}.csv"
        write_csv(csv, rows, FEATURES)
    index = work / "train_index.npy"
    write_train_index(csv, index)
    readers = [r for r in READERS if r != "pyarrow" or _installed("pyarrow")]
    samples: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(repeats):
        for reader in readers:
            samples.setdefault(f"read_{reader}", []).append(_child("read", reader=reader, path=str(csv)))
        samples.setdefault("fit_logreg", []).append(fit_case(csv, work, "lbfgs.yaml", str(csv)))
        samples.setdefault("fit_sklearn", []).append(_child("sklearn", path=str(csv), train_index=str(index)))
        out = work / f"prepared_{repeat}"
        _, wall = _logreg(["prepare", str(csv), str(out)])
        meta = json.loads((out / "logreg.json").read_text())
        prepared = {"wall_s": wall, "seconds": meta["seconds"], "rows": sum(meta["rows"].values())}
        samples.setdefault("prepare", []).append(prepared)
        epochs = ["--trainer.max_epochs", str(STREAMED_EPOCHS)]
        samples.setdefault("full_in_memory", []).append(fit_case(csv, work, "full_batch.yaml", str(csv), epochs))
        samples.setdefault("full_streamed", []).append(fit_case(csv, work, "full_batch.yaml", str(out), epochs))
    report: dict[str, Any] = {"rows": rows, "features": FEATURES, "csv_bytes": csv.stat().st_size}
    report["table_bytes"] = rows * (FEATURES + 1) * 4
    report["repeats"] = repeats
    for reader in readers:
        report[f"read_{reader}"] = _best(samples[f"read_{reader}"], "seconds")
    report["fit_logreg"] = _best(samples["fit_logreg"], "wall_s")
    report["fit_logreg"]["train_loss"] = train_loss(csv, report["fit_logreg"]["root"])
    report["fit_sklearn"] = _best(samples["fit_sklearn"], "wall_s")
    report["prepare"] = _best(samples["prepare"], "seconds")
    report["prepare"]["wall_s"] = min(p["wall_s"] for p in samples["prepare"])
    report["full_in_memory"] = _best(samples["full_in_memory"], "wall_s")
    report["full_streamed"] = _best(samples["full_streamed"], "wall_s")
    for name in ("full_in_memory", "full_streamed"):
        report[name]["train_rows_per_s"] = max(r["train_rows_per_s"] for r in samples[name])
    report["samples"] = samples
    return report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def format_report(r: dict[str, Any]) -> str:
    mb = r["table_bytes"] / 2**20
    previous = r["read_previous"]["seconds"]
    lines = [
        f"Reading a {r['rows']:,} x {r['features']} CSV file ({r['csv_bytes'] / 1e6:.0f} MB; float32 table "
        f"{mb:.0f} MiB), best of {r['repeats']}, each in a fresh process:",
        "| reader | seconds | previous / this | peak memory over imports | / float32 table |",
        "|---|---|---|---|---|",
    ]
    for reader in READERS:
        if f"read_{reader}" in r:
            c = r[f"read_{reader}"]
            peak = c["peak_over_imports_bytes"]
            lines.append(
                f"| {reader} | {c['seconds']:.2f} | {_ratio(previous, c['seconds'])} | {peak / 2**20:.0f} MiB "
                f"| {peak / r['table_bytes']:.2f} |"
            )
    f, sk = r["fit_logreg"], r["fit_sklearn"]
    st = {"start": sk["launched"], **sk["stamps"]}
    lines += [
        "",
        "End to end, whole processes (seconds):",
        "| process | wall | start-up | read (+ split) | standardise, sanity check | training | validation "
        "| fit's end | exit | train log-loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| logreg fit --config configs/lbfgs.yaml | {f['wall_s']:.2f} | {f['startup_s']:.2f} "
        f"| {f['read_and_split_s']:.2f} | {f['standardise_and_sanity_s']:.2f} | {f['training_s']:.2f} "
        f"| {f['validation_s']:.2f} | {f['fit_end_s']:.2f} | {f['exit_s']:.2f} | {f['train_loss']:.7f} |",
        f"| pandas + scikit-learn | {sk['wall_s']:.2f} | {st['imports'] - st['start']:.2f} "
        f"| {st['read'] - st['imports']:.2f} (+ {st['split'] - st['read']:.2f}) | - | {st['fit'] - st['split']:.2f} "
        f"| - | - | {sk['launched'] + sk['wall_s'] - st['fit']:.2f} | {sk['train_loss']:.7f} |",
        f"logreg / pandas + scikit-learn: {_ratio(f['wall_s'], sk['wall_s'])}; log-losses differ by "
        f"{abs(f['train_loss'] - sk['train_loss']):.1e}",
        "",
        "logreg prepare:",
        "| what | seconds | / polars' bare read |",
        "|---|---|---|",
    ]
    bare = r["read_polars"]["seconds"]
    p = r["prepare"]
    lines += [
        f"| the conversion (its own clock) | {p['seconds']:.2f} | {_ratio(p['seconds'], bare)} |",
        f"| the whole process | {p['wall_s']:.2f} | {_ratio(p['wall_s'], bare)} |",
        "",
        f"Full batch, {STREAMED_EPOCHS} epochs (configs/full_batch.yaml), whole processes:",
        "| data | wall seconds | training rows/s (median epoch) |",
        "|---|---|---|",
    ]
    for name in ("full_in_memory", "full_streamed"):
        c = r[name]
        lines.append(
            f"| {name.split('_', 1)[1].replace('_', ' ')} | {c['wall_s']:.2f} | {c['train_rows_per_s']:,.0f} |"
        )
    m, s = r["full_in_memory"], r["full_streamed"]
    lines.append(
        f"streamed / in memory: wall {_ratio(s['wall_s'], m['wall_s'])}, "
        f"rows/s {_ratio(s['train_rows_per_s'], m['train_rows_per_s'])}"
    )
    return "\n".join(lines)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS, help="rows of the generated CSV file")
    parser.add_argument("--csv", type=Path, default=None, help="use this CSV file (32 features and a label) instead")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of every case")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        kind = spec.pop("kind")
        print(json.dumps(read_child(**spec) if kind == "read" else sklearn_child(**spec)))
        return
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        report = run(args.rows, args.repeats, Path(scratch), args.csv)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
