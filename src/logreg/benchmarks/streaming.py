"""Streaming against in-memory training: peak memory and throughput, each case in a fresh child process.

Three measurements (``python scripts/benchmark_streaming.py --rows N --json PATH``):

- **memory**: ``logreg prepare synthetic`` on N x 32 rows, then one epoch of ``logreg fit`` on the prepared
  directory in each batch mode (per-example SGD capped at ``--example-steps`` updates: a full epoch of
  single-row updates over millions of rows takes hours, and its memory is flat after the first window);
- **throughput**: training rows per second, streamed (a prepared 1,000,000 x 32 synthetic table) against
  in-memory (``--data.dataset synthetic`` of the same size, generator and features), in minibatch 256 and
  full-batch modes, runs interleaved, the first epoch of each run a warm-up, median of the rest;
- **prepare**: ``logreg prepare`` on a 2,000,000 x 20 CSV file, against the in-memory CSV reader on it.

Peak memory is the largest PSS (proportional set size: shared pages split among the processes sharing them)
summed over the child and all its descendants (prepare's and LitData's workers), sampled every 50 ms from
/proc, next to the child's own peak RSS and its RSS after the imports (about 0.6 GB for Python, torch and
Lightning, whatever the data). Only Linux has /proc; elsewhere the PSS column reads 0. Each child runs torch
on one thread (THREADS), so that timings on a shared machine measure the work, not threads waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 32
THROUGHPUT_ROWS = 1_000_000
PREPARE_ROWS, PREPARE_FEATURES = 2_000_000, 20
MODES = ("full", "minibatch", "example")
THREADS = 1  # torch threads per child: on a shared 2-core machine two threads contend and time noise, not work


# -- the parent: run a case in a child, watch its memory --------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the task ended meanwhile
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def tree_pss(pid: int) -> int:
    """Bytes of PSS of ``pid`` and its descendants (0 where /proc cannot tell)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        todo += _children(p)
    return total


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Run ``case`` in a child process; its JSON report plus the tree's peak PSS and the wall time."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "logreg.benchmarks.streaming", "--child", json.dumps(case)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss(child.pid))
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = child.communicate()
    done.set()
    watcher.join()
    if child.returncode != 0:
        raise RuntimeError(f"benchmark case {case} failed with exit code {child.returncode}:\n{err[-3000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    report.update(peak_tree_pss_bytes=peak[0], wall_s=time.perf_counter() - started)
    return report


# -- the child: one case ------------------------------------------------------------------------------------


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _fit(case: dict[str, Any]) -> dict[str, Any]:
    """``logreg fit`` as the CLI builds it, validation off, with each epoch timed."""
    from logreg.benchmarks.training import EpochTimer
    from logreg.cli import build_cli

    with tempfile.TemporaryDirectory() as root:
        args = [
            *("--data.dataset", case["dataset"], "--data.batch_mode", case["mode"]),
            *("--data.batch_size", str(case.get("batch_size", 256)), "--model.lr", "0.1"),
            *("--trainer.max_epochs", str(case["epochs"]), "--trainer.limit_val_batches", "0"),
            *("--trainer.default_root_dir", root, "--trainer.accelerator", "cpu", "--trainer.devices", "1"),
            *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
            *case.get("extra", []),
        ]
        cli = build_cli(args, run=False)
        timer = EpochTimer(lambda: None)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        rows = cli.datamodule.train_rows
        steps = cli.trainer.global_step
    return {"epoch_seconds": timer.seconds, "train_rows": rows, "updates": steps}


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(case: dict[str, Any]) -> None:
    """Run one case in this process and print its report as the last line of stdout.

    ``baseline_rss_bytes`` is the memory after the imports, before any data: Python with torch and
    Lightning takes about half a GB by itself, whatever the data.
    """
    import torch

    from logreg.cli import build_cli  # noqa: F401 -- every case imports what `logreg` imports
    from logreg.data.tables import read_csv
    from logreg.streaming.prepare import prepare

    torch.set_num_threads(THREADS)  # the cores are shared: more threads would wait on each other
    baseline = _rss_now()
    started = time.perf_counter()
    kind = case["kind"]
    if kind == "prepare":
        report = {"rows": prepare(case["source"], case["out"], **case.get("options", {}))["rows"]}
    elif kind == "read_csv":
        report = {"rows": len(read_csv(case["source"]).x)}
    elif kind == "fit":
        report = _fit(case)
    else:
        raise ValueError(f"unknown case {kind!r}")
    report.update(
        kind=kind, seconds=time.perf_counter() - started, peak_rss_bytes=_peak_rss(), baseline_rss_bytes=baseline
    )
    print(json.dumps(report))


# -- the measurements -------------------------------------------------------------------------------------


def write_csv(path: Path, rows: int, features: int, seed: int = 0) -> None:
    """A synthetic CSV (features with 6 significant digits, 0/1 label), written in slices of 100,000 rows."""
    gen = np.random.default_rng(seed)
    w = gen.standard_normal(features)
    with path.open("w") as f:
        f.write(",".join([*(f"x{i}" for i in range(features)), "y"]) + "\n")
        for start in range(0, rows, 100_000):
            x = gen.standard_normal((min(100_000, rows - start), features))
            y = (x @ w + 0.5 * gen.standard_normal(len(x)) > 0).astype(float)
            np.savetxt(f, np.column_stack([x, y]), fmt=["%.6g"] * features + ["%d"], delimiter=",")


def measure_memory(rows: int, work: Path, example_steps: int, epochs: int) -> dict[str, Any]:
    out = work / f"memory_{rows}"
    prepared = run_case(
        {"kind": "prepare", "source": "synthetic", "out": str(out), "options": _synthetic(rows, FEATURES)}
    )
    result = {"rows": rows, "features": FEATURES, "data_bytes": rows * (FEATURES + 1) * 4, "prepare": prepared}
    for mode in MODES:
        extra = ["--trainer.max_steps", str(example_steps)] if mode == "example" else []
        result[mode] = run_case(
            {
                "kind": "fit",
                "dataset": str(out),
                "mode": mode,
                "epochs": epochs if mode != "example" else 1,
                "extra": extra,
            }
        )
    return result


def _synthetic(rows: int, features: int) -> dict[str, Any]:
    return {"synthetic_rows": rows, "synthetic_features": features}


def measure_throughput(rows: int, work: Path, epochs: int, repeats: int) -> dict[str, Any]:
    out = work / f"throughput_{rows}"
    run_case({"kind": "prepare", "source": "synthetic", "out": str(out), "options": _synthetic(rows, FEATURES)})
    in_memory = ["--data.synthetic_rows", str(rows), "--data.synthetic_features", str(FEATURES)]
    result: dict[str, Any] = {"rows": rows, "features": FEATURES}
    for mode in ("minibatch", "full"):
        samples: dict[str, list[float]] = {"in_memory": [], "streamed": []}
        for _ in range(repeats):  # interleaved: in memory, streamed, in memory, ...
            for path, dataset, extra in (("in_memory", "synthetic", in_memory), ("streamed", str(out), [])):
                report = run_case(
                    {"kind": "fit", "dataset": dataset, "mode": mode, "epochs": epochs + 1, "extra": extra}
                )
                samples[path] += [report["train_rows"] / s for s in report["epoch_seconds"][1:]]
        medians = {path: statistics.median(values) for path, values in samples.items()}
        result[mode] = {
            "rows_per_s": medians,
            "samples": samples,
            "streamed_over_in_memory": medians["streamed"] / medians["in_memory"],
        }
    return result


def measure_prepare(rows: int, features: int, work: Path) -> dict[str, Any]:
    csv = work / f"table_{rows}x{features}.csv"
    if not csv.exists():
        write_csv(csv, rows, features)
    result = {"rows": rows, "features": features, "csv_bytes": csv.stat().st_size}
    result["prepare"] = run_case(
        {"kind": "prepare", "source": str(csv), "out": str(work / f"prepared_{rows}x{features}")}
    )
    result["read_csv_in_memory"] = run_case({"kind": "read_csv", "source": str(csv)})
    return result


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _memory_row(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['seconds']:.1f} | {_gb(r['peak_tree_pss_bytes'])} | {_gb(r['peak_rss_bytes'])} "
        f"| {_gb(r['baseline_rss_bytes'])} |"
    )


def format_report(report: dict[str, Any]) -> str:
    lines = []
    if "memory" in report:
        m = report["memory"]
        lines += [
            f"Peak memory, {m['rows']:,} x {m['features']} rows ({_gb(m['data_bytes'])} of float32):",
            "| case | seconds | peak PSS (process tree) | peak RSS (main process) | RSS after imports |",
            "|---|---|---|---|---|",
        ]
        for name in ("prepare", *MODES):
            lines.append(_memory_row(name, m[name]))
    if "throughput" in report:
        t = report["throughput"]
        lines += [
            "",
            f"Throughput, rows/s on {t['rows']:,} x {t['features']}:",
            "| mode | in memory | streamed | ratio |",
        ]
        lines.append("|---|---|---|---|")
        for mode in ("minibatch", "full"):
            r = t[mode]
            lines.append(
                f"| {mode} | {r['rows_per_s']['in_memory']:,.0f} | {r['rows_per_s']['streamed']:,.0f} "
                f"| {r['streamed_over_in_memory']:.2f} |"
            )
    if "prepare" in report:
        p = report["prepare"]
        lines += [
            "",
            f"logreg prepare on a {p['rows']:,} x {p['features']} CSV ({_gb(p['csv_bytes'])}):",
            "| path | seconds | peak PSS (process tree) | peak RSS (main process) | RSS after imports |",
            "|---|---|---|---|---|",
        ]
        for name in ("prepare", "read_csv_in_memory"):
            lines.append(_memory_row(name, p[name]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000_000, help="rows of the memory measurement")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--throughput-rows", type=int, default=THROUGHPUT_ROWS)
    parser.add_argument("--prepare-rows", type=int, default=PREPARE_ROWS)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per throughput run (plus a warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per path and mode")
    parser.add_argument("--example-steps", type=int, default=100_000, help="updates of the per-example run")
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "throughput", "prepare"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        report: dict[str, Any] = {"cpus": os.cpu_count(), "torch_threads": THREADS}
        if "memory" not in args.skip:
            report["memory"] = measure_memory(args.rows, work, args.example_steps, epochs=1)
        if "throughput" not in args.skip:
            report["throughput"] = measure_throughput(args.throughput_rows, work, args.epochs, args.repeats)
        if "prepare" not in args.skip:
            report["prepare"] = measure_prepare(args.prepare_rows, PREPARE_FEATURES, work)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
