import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import separable_csv

from logreg.data.tables import load_banknote, read_csv
from logreg.machinery.errors import DataError
from logreg.streaming.data import PreparedData
from logreg.streaming.prepare import main, prepare, split_uniform


def sorted_rows(t: torch.Tensor) -> np.ndarray:
    """Rows in lexicographic order, to compare multisets of rows."""
    a = t.numpy()
    return a[np.lexsort(a.T[::-1])]


def test_banknote_rows_are_split_whole_and_the_stats_are_the_training_rows(tmp_path):
    meta = prepare("banknote", tmp_path / "bn")
    data = PreparedData.read(str(tmp_path / "bn"))
    assert data.feature_names == ("variance", "skewness", "curtosis", "entropy") and data.label_name == "class"
    splits = {s: data.load(s) for s in ("train", "val", "test")}
    assert {s: len(t) for s, t in splits.items()} == meta["rows"]
    # each of the 1372 rows lands in exactly one split, features then label
    table = load_banknote()
    everything = torch.cat([table.x, table.y[:, None]], dim=1)
    np.testing.assert_array_equal(sorted_rows(torch.cat(list(splits.values()))), sorted_rows(everything))
    # the split fractions are drawn per row: 0.6 / 0.2 / 0.2 in expectation
    assert abs(meta["rows"]["train"] / 1372 - 0.6) < 0.05
    x = splits["train"][:, :-1].double()
    torch.testing.assert_close(data.mean.double(), x.mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(data.std.double(), x.std(0), rtol=1e-6, atol=1e-7)
    # whole blocks: every item but the last of a split holds block_rows rows
    assert meta["block_rows"] == 13  # ceil(train rows / 64): at least 64 blocks for LitData to deal out


def test_the_split_and_stats_do_not_depend_on_workers_or_piece_size(tmp_path):
    csv = separable_csv(tmp_path / "data.csv", rows=3000)
    one = prepare(str(csv), tmp_path / "one", num_workers=1)
    many = prepare(str(csv), tmp_path / "many", num_workers=2, piece_bytes=4096)  # 30 pieces of ~100 lines
    assert one["rows"] == many["rows"]
    for split in ("train", "val", "test"):
        a = PreparedData.read(str(tmp_path / "one")).load(split)
        b = PreparedData.read(str(tmp_path / "many")).load(split)
        np.testing.assert_array_equal(sorted_rows(a), sorted_rows(b))
    # Chan's merge over 30 pieces against one piece's two-pass moments
    np.testing.assert_allclose(many["mean"], one["mean"], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(many["std"], one["std"], rtol=1e-12)
    # and the values are those of the in-memory reader's rows
    table = read_csv(csv)
    everything = torch.cat([table.x, table.y[:, None]], dim=1)
    loaded = torch.cat([PreparedData.read(str(tmp_path / "many")).load(s) for s in ("train", "val", "test")])
    np.testing.assert_array_equal(sorted_rows(loaded), sorted_rows(everything))


def test_the_split_is_seeded():
    keys = np.arange(10_000, dtype=np.uint64)
    assert np.array_equal(split_uniform(1, 0, keys), split_uniform(1, 0, keys))
    assert not np.array_equal(split_uniform(1, 0, keys), split_uniform(2, 0, keys))


def test_a_directory_or_glob_of_csv_files_is_one_dataset(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        separable_csv(folder / f"part{i}.csv", rows=200, seed=i)
    by_dir = prepare(str(folder), tmp_path / "dir")
    by_glob = prepare(str(folder / "part*.csv"), tmp_path / "glob")
    assert sum(by_dir["rows"].values()) == 600 and by_dir["rows"] == by_glob["rows"]
    assert by_dir["feature_names"] == ["a", "b", "c"] and by_dir["label_name"] == "label"


def test_synthetic_source_and_label_column(tmp_path):
    meta = prepare("synthetic", tmp_path / "s", synthetic_rows=1001, synthetic_features=5, seed=3)
    assert sum(meta["rows"].values()) == 1001 and meta["feature_names"] == [f"x{i}" for i in range(5)]
    labels = PreparedData.read(str(tmp_path / "s")).load("train")[:, -1]
    assert set(labels.tolist()) == {0.0, 1.0}
    csv = tmp_path / "first.csv"
    csv.write_text("label,a,b\n" + "".join(f"{i % 2},{i},{-i}\n" for i in range(50)))
    meta = prepare(str(csv), tmp_path / "l", label_column="label")
    assert meta["feature_names"] == ["a", "b"] and meta["label_name"] == "label"


BAD_ROWS = [
    ("a,b,c,label\n", "1,2,3,0\n" * 300 + "1,n/a,3,0\n", "column 'b' holds the non-numeric value 'n/a' on line 302"),
    ("a,b,c,label\n", "1,2,3,0\n" * 300 + "1,2,3\n", "line 302 has 3 fields but the header names 4 columns"),
    ("a,b,c,label\n", "1,2,3,0\n" * 300 + "1,2,3,7\n", "labels in column 'label' must be 0 or 1, found 7 on line 302"),
    ("a,b,c,label\n", "1,2,3,0\n" * 300 + "1,inf,3,1\n", "column 'b' holds inf on line 302; features must be finite"),
    ("a,b,c,label\n", "1,2,3,0\n" * 300 + "1,1_000,3,1\n", "'1_000' on line 302; write numbers without digit"),
    ("a,b,c,label\n", "1,2,3,0\n" * 300 + "1,2,1e39,1\n", "holds 1e+39 on line 302, beyond float32's range"),
]


@pytest.mark.parametrize(
    ("header", "rows", "message"), BAD_ROWS, ids=["text", "fields", "label", "inf", "separator", "float32"]
)
def test_a_bad_row_deep_in_a_large_file_is_named_as_the_in_memory_reader_names_it(tmp_path, header, rows, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(header + rows)
    with pytest.raises(DataError) as in_memory:
        read_csv(csv)
    assert message in str(in_memory.value)
    with pytest.raises(DataError) as streamed:
        prepare(str(csv), tmp_path / "out", num_workers=2, piece_bytes=512)  # the bad line is in piece 5
    assert str(streamed.value) == str(in_memory.value)
    assert not (tmp_path / "out").exists()  # nothing half-written is left


def test_a_file_that_is_not_utf8_is_named_as_the_in_memory_reader_names_it(tmp_path):
    csv = tmp_path / "latin1.csv"
    csv.write_bytes(b"a,b,label\n" + b"1,2,0\n" * 300 + b"1,caf\xe9,1\n")
    with pytest.raises(DataError) as in_memory:
        read_csv(csv)
    with pytest.raises(DataError) as streamed:
        prepare(str(csv), tmp_path / "out", num_workers=2, piece_bytes=512)
    assert "is not UTF-8 text (byte 0xe9 on line 302" in str(streamed.value)
    assert str(streamed.value) == str(in_memory.value)


def test_cli_refuses_a_non_empty_output_directory_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["banknote", str(out)])
    assert (
        exit_info.value.code
        == f"error: {out}: already exists and is not empty; choose a new directory for the prepared data."
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_writes_the_directory_and_reports_bad_options(tmp_path, capsys):
    main(["synthetic", str(tmp_path / "out"), "--synthetic_rows", "300", "--synthetic_features", "2", "--seed", "7"])
    assert "Prepared 300 rows of 2 features from synthetic" in capsys.readouterr().out
    meta = json.loads((tmp_path / "out" / "logreg.json").read_text())
    assert meta["seed"] == 7 and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "logreg.json",
        "test",
        "train",
        "val",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["synthetic", str(tmp_path / "x"), "--val_fraction", "0.7", "--test_fraction", "0.3"])
    assert exit_info.value.code == "error: val_fraction + test_fraction must be below 1 to leave training rows; got 1."
    with pytest.raises(SystemExit) as exit_info:
        main(["synthetic"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: logreg prepare: ") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["banknote", "s3://bucket/prepared"])
    assert exit_info.value.code.startswith("error: s3://bucket/prepared: OUT_DIR must be a local directory")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.csv"), str(tmp_path / "y")])
    assert "missing.csv: no such file, directory or pattern matching CSV files." in exit_info.value.code
    assert not Path(tmp_path / "y").exists()


def test_logreg_prepare_is_a_command_of_logreg(tmp_path, capsys):
    from logreg.launch import main as logreg

    logreg(["prepare", "banknote", str(tmp_path / "bn"), "--seed", "3"])
    assert "Prepared 1,372 rows of 4 features from banknote" in capsys.readouterr().out
    assert json.loads((tmp_path / "bn" / "logreg.json").read_text())["seed"] == 3


def test_a_source_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    for source, kind in ((fifo, "a named pipe (FIFO)"), ("/dev/zero", "a character device")):
        with pytest.raises(SystemExit) as exit_info:
            main([str(source), str(tmp_path / "out")])
        assert exit_info.value.code.startswith(f"error: {source}: is {kind}, not a regular file;")
        assert not (tmp_path / "out").exists()


def test_a_failure_while_packing_leaves_nothing_and_a_rerun_works(tmp_path, monkeypatch):
    def broken(spec):  # in a LitData worker of the packing process
        raise RuntimeError("a worker failed")

    out = tmp_path / "out"
    monkeypatch.setattr("logreg.streaming.prepare._load_block", broken)
    with pytest.raises(RuntimeError, match="a worker failed"):
        prepare("synthetic", out, synthetic_rows=500, synthetic_features=2)
    assert not out.exists()
    monkeypatch.undo()
    assert prepare("synthetic", out, synthetic_rows=500, synthetic_features=2)["rows"]["train"] > 0


def test_an_existing_empty_out_dir_is_left_empty_after_a_failure(tmp_path, monkeypatch):
    def short_write(file, array):  # what numpy raises when the disk fills: no errno, no file name
        raise OSError("179694 requested and 109536 written")

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr("logreg.streaming.prepare.np.save", short_write)
    with pytest.raises(SystemExit) as exit_info:
        main([str(separable_csv(tmp_path / "d.csv", rows=50)), str(out)])
    assert exit_info.value.code == (
        f"error: {out}/.work/000000-train.npy: cannot be written: 179694 requested and 109536 written; "
        "nothing of the run is left."
    )
    assert out.is_dir() and not list(out.iterdir())


def test_a_disk_without_room_for_the_chunks_is_named_before_packing(tmp_path, monkeypatch):
    """LitData's workers wait on each other for ever when a chunk cannot be written: refuse before packing."""
    real = shutil.disk_usage
    free = {"bytes": 10**12}  # room for the pieces, then none for the chunks

    def disk_usage(path):
        return real(path)._replace(free=free["bytes"])

    def process(task):
        free["bytes"] = 3 * 2**20  # after the pieces: 3 MiB left, the chunks of 150,000 x 3 float32 need 1.7 MiB more
        return real_process(task)

    from logreg.streaming import prepare as module

    real_process = module._process
    monkeypatch.setattr(module.shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(module, "_process", process)
    prepare("synthetic", tmp_path / "fits", synthetic_rows=150_000, synthetic_features=2, num_workers=1)
    free["bytes"] = 10**12
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                *("synthetic", str(tmp_path / "out"), "--synthetic_rows", "300000", "--synthetic_features", "2"),
                *("--num_workers", "1"),
            ]
        )
    assert exit_info.value.code == (
        f"error: {tmp_path / 'out'}: its disk has 3 MiB free, and the LitData chunks need 3 MiB more (the rows are "
        "on disk twice until they are packed); make room or choose a directory on another disk."
    )
    assert not (tmp_path / "out").exists()


def test_the_leftovers_of_a_killed_run_are_named(tmp_path):
    out = tmp_path / "out"
    (out / ".work").mkdir(parents=True)  # what kill -9 leaves
    with pytest.raises(SystemExit) as exit_info:
        main(["banknote", str(out)])
    assert exit_info.value.code == (
        f"error: {out}: holds the leftovers of a `logreg prepare` that was killed (its .work directory), or one is "
        f"writing into it now; delete it (rm -r {out}) or choose a new directory for the prepared data."
    )


# A `logreg prepare` process that signals itself from inside one of its phases, as a user's Ctrl+C (to the
# terminal's process group) or SIGTERM (to the process) would arrive there; it records the packing process
# group (LitData's processes) so the test can see that none of it outlives the command.
STOPPED_FROM_INSIDE = """
import os, signal, sys, time
from pathlib import Path
import logreg.streaming.prepare as prepare

main_pid, signum, phase, record = os.getpid(), int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def stop(*args):
    record.write_text(str(os.getpgid(0)))
    if signum == signal.SIGINT:
        os.killpg(os.getpgid(main_pid), signal.SIGINT)  # the terminal's Ctrl+C: every process of its group
    else:
        os.kill(main_pid, signum)
    time.sleep(120)

if phase == "pieces":
    prepare.process_piece = stop
else:
    prepare._load_block = stop
from logreg.launch import main
main(["prepare", *sys.argv[4:]])
"""


@pytest.mark.slow  # a fresh interpreter imports torch: seconds
@pytest.mark.parametrize(
    ("signum", "name", "phase"),
    [
        *((signal.SIGINT, "SIGINT (Ctrl+C)", phase) for phase in ("pieces", "packing")),
        *((signal.SIGTERM, "SIGTERM", phase) for phase in ("pieces", "packing")),
        (signal.SIGHUP, "SIGHUP", "packing"),  # the terminal closed
    ],
)
def test_a_signal_ends_prepare_in_one_line_with_its_code_and_leaves_nothing(tmp_path, phase, signum, name):
    out, record = tmp_path / "out", tmp_path / "group"
    args = ["synthetic", str(out), "--synthetic_rows", "250000", "--synthetic_features", "2", "--num_workers", "2"]
    process = subprocess.run(
        [sys.executable, "-c", STOPPED_FROM_INSIDE, str(int(signum)), phase, str(record), *args],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,  # its own process group, as a shell gives a command
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    assert process.returncode == 128 + signum, process.stderr
    assert process.stderr == f"error: logreg prepare was stopped by {name}; nothing of it is left in {out}.\n"
    assert not out.exists()
    group = int(record.read_text())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # killed processes end at once, but not within the call that kills them
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"processes of group {group} outlived logreg prepare")
    main(args)  # a rerun works
    assert (out / "logreg.json").is_file()
