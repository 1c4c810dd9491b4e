"""``logreg prepare SOURCE OUT_DIR``: convert a table into LitData's streaming format, in one pass over it.

The source (a CSV file, a directory or glob of CSV files, ``banknote`` or ``synthetic``) is cut into
pieces (byte ranges of a file, aligned to whole lines; row ranges of synthetic data), and worker processes
parse the pieces in parallel, so no process ever holds more than a piece. Each row goes to train, val or
test by a hash of (seed, file, byte offset of its line): the split depends on neither the number of workers
nor the piece size, and needs no row count in advance. The training split's mean and variance are
accumulated per piece in float64 (two-pass within a piece, Chan et al.'s pairwise merge across pieces), so
they are as accurate as a two-pass computation over the whole split.

``litdata.optimize`` then packs each split into blocks of ``block_rows`` rows (every block full but the
last), one LitData item per block, so a reader gets whole (rows, D + 1) float32 arrays and never collates
row by row. The output directory::

    OUT_DIR/logreg.json          column names, training mean and std, rows per split, block_rows
    OUT_DIR/{train,val,test}/    LitData datasets (index.json and chunk files), readable from any path or URL

A row that cannot be used stops the run with the same one-line message as the in-memory CSV reader,
naming the file and the line; nothing is left in OUT_DIR then.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from logreg.data.csv import PIECE_BYTES, TextPiece, piece_ranges
from logreg.data.tables import BANKNOTE_COLUMNS, BANKNOTE_PATH, find_columns, read_header, read_rows
from logreg.machinery.errors import ConfigError, DataError
from logreg.streaming.data import import_litdata

METADATA = "logreg.json"
FORMAT = "logreg-prepared-1"
SPLITS = ("train", "val", "test")
SYNTHETIC_PIECE_ROWS = 100_000  # 100,000 x D float64 per worker at a time
MAX_BLOCK_ROWS = 4096
CHUNK_BYTES = 8 * 2**20  # LitData chunk file size to aim for: whole blocks, a few MB per file

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Source:
    """What to read: CSV files with one header (or the embedded banknote data), or synthetic rows."""

    name: str  # as given, for messages and the metadata
    files: tuple[Path, ...] = ()
    header: tuple[str, ...] = ()
    has_header_line: bool = True
    synthetic: tuple[int, int, float] | None = None  # rows, features, noise


@dataclass(frozen=True)
class Piece:
    """One worker task: rows of one file starting in [start, end) bytes, or synthetic rows [start, end)."""

    index: int
    file_index: int
    start: int
    end: int


@dataclass
class PieceResult:
    """Rows per split that a piece wrote, and its training rows' count, mean and sum of squared deviations."""

    index: int
    rows: dict[str, int]
    mean: np.ndarray
    m2: np.ndarray


@dataclass
class Settings:
    """Everything a worker needs besides its piece (sent to each worker process once per piece)."""

    source: Source
    work: Path
    features: list[int]
    label: int | None
    seed: int
    val_fraction: float
    test_fraction: float
    names: tuple[str, ...] = field(default=())


def split_uniform(seed: int, stream: int, keys: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per key, the same for a (seed, stream, key) wherever it is computed.

    splitmix64's finaliser over key + a seed-dependent offset: a counter-based generator, so a row's split
    depends only on its key (file and byte offset), never on which piece or worker reads it.

    >>> u = split_uniform(42, 0, np.arange(100_000, dtype=np.uint64))
    >>> bool(0 <= u.min() and u.max() < 1), round(float(u.mean()), 2)
    (True, 0.5)
    """
    offset = (seed * 0x9E3779B97F4A7C15 + (stream + 1) * 0xD1B54A32D192ED03) & _MASK
    z = keys.astype(np.uint64) + np.uint64(offset)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def resolve_source(source: str, synthetic_rows: int, synthetic_features: int, synthetic_noise: float) -> Source:
    """The files (or synthetic parameters) behind SOURCE; every CSV file must have the same header."""
    if source == "synthetic":
        if synthetic_rows < 1 or synthetic_features < 1:
            raise DataError(
                f"synthetic data needs at least one row and one feature, got rows={synthetic_rows}, "
                f"features={synthetic_features}."
            )
        if synthetic_noise < 0:
            raise DataError(f"synthetic noise must be 0 or more, got {synthetic_noise}.")
        names = tuple(f"x{i}" for i in range(synthetic_features))
        return Source(source, header=(*names, "y"), synthetic=(synthetic_rows, synthetic_features, synthetic_noise))
    if source == "banknote":
        return Source(source, files=(BANKNOTE_PATH,), header=BANKNOTE_COLUMNS, has_header_line=False)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.csv") if p.is_file())
        if not files:
            raise DataError(f"{source}: the directory holds no .csv file.")
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(source) if Path(p).is_file())
        if not files:
            raise DataError(f"{source}: no such file, directory or pattern matching CSV files.")
    header = read_header(files[0])
    for other in files[1:]:
        if read_header(other) != header:
            raise DataError(
                f"{other}: its columns {', '.join(read_header(other))} differ from those of {files[0]}: "
                f"{', '.join(header)}; every file of a dataset must have the same header."
            )
    return Source(source, files=tuple(files), header=tuple(header))


def make_pieces(source: Source, piece_bytes: int | None = None) -> list[Piece]:
    """Cut the source into worker tasks of about ``piece_bytes`` of text (or SYNTHETIC_PIECE_ROWS rows)."""
    if source.synthetic is not None:
        rows = source.synthetic[0]
        starts = range(0, rows, SYNTHETIC_PIECE_ROWS)
        return [Piece(i, 0, a, min(a + SYNTHETIC_PIECE_ROWS, rows)) for i, a in enumerate(starts)]
    pieces = []
    for file_index, path in enumerate(source.files):
        for start, end in piece_ranges(path, piece_bytes):
            pieces.append(Piece(len(pieces), file_index, start, end))
    return pieces


def _csv_piece(settings: Settings, piece: Piece) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n, D + 1) float32: the features, then the label; each row's file offset) of a CSV piece,
    checked as the in-memory reader checks them, with its messages."""
    source = settings.source
    path = source.files[piece.file_index]
    text = TextPiece.read(path, piece.start, piece.end, skip_header=source.has_header_line)
    x, y = read_rows(text, source.header, settings.features, settings.label)
    return np.column_stack([x, y.astype(np.float32)]), text.row_offsets()


def _synthetic_piece(settings: Settings, piece: Piece) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, end) of y = [x @ w / sqrt(D) + noise * e > 0]: w from the seed, x and e per piece."""
    _, features, noise = settings.source.synthetic
    w = np.random.default_rng([settings.seed, 0]).standard_normal(features)
    gen = np.random.default_rng([settings.seed, 1, piece.index])
    rows = piece.end - piece.start
    x = gen.standard_normal((rows, features)).astype(np.float32).astype(np.float64)
    logits = x @ w / math.sqrt(features) + noise * gen.standard_normal(rows)
    values = np.concatenate([x, (logits > 0).astype(np.float64)[:, None]], axis=1)
    return values, np.arange(piece.start, piece.end, dtype=np.int64)


def process_piece(settings: Settings, piece: Piece) -> PieceResult:
    """Read, check and split one piece; write each split's rows to ``work/<piece>-<split>.npy`` as float32."""
    # (n, D + 1) float32: the features in the model's order, then the label
    if settings.source.synthetic is not None:
        values, keys = _synthetic_piece(settings, piece)
        table = values[:, [*settings.features, settings.label]].astype(np.float32)
    else:
        table, keys = _csv_piece(settings, piece)
    u = split_uniform(settings.seed, piece.file_index, keys.astype(np.uint64))
    val_end = settings.val_fraction
    test_end = settings.val_fraction + settings.test_fraction
    masks = {"val": u < val_end, "test": (u >= val_end) & (u < test_end), "train": u >= test_end}
    rows = {}
    for split in SPLITS:
        part = table[masks[split]]
        np.save(settings.work / f"{piece.index:06d}-{split}.npy", part)
        rows[split] = len(part)
    x = table[masks["train"], :-1].astype(np.float64)  # the stored float32 values, in float64
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    m2 = ((x - mean) ** 2).sum(axis=0)
    return PieceResult(piece.index, rows, mean, m2)


def _process(args: tuple[Settings, Piece]) -> PieceResult:
    return process_piece(*args)


def merge_moments(parts: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s merge of (count, mean, sum of squared deviations) of disjoint parts, in the given order.

    >>> x = np.array([[1.0], [2.0], [4.0], [8.0]])
    >>> n, mean, m2 = merge_moments([(2, x[:2].mean(0), ((x[:2] - x[:2].mean(0)) ** 2).sum(0)),
    ...                              (2, x[2:].mean(0), ((x[2:] - x[2:].mean(0)) ** 2).sum(0))])
    >>> n, mean.tolist(), (m2 / (n - 1)).tolist() == x.var(0, ddof=1).tolist()
    (4, [3.75], True)
    """
    n, mean, m2 = 0, None, None
    for count, part_mean, part_m2 in parts:
        if count == 0:
            continue
        if mean is None:
            n, mean, m2 = count, part_mean.copy(), part_m2.copy()
            continue
        total = n + count
        delta = part_mean - mean
        mean = mean + delta * (count / total)
        m2 = m2 + part_m2 + delta**2 * (n * count / total)
        n = total
    return n, mean, m2


def _load_block(spec: tuple[tuple[str, int, int], ...]) -> np.ndarray:
    """One block: rows [start, stop) of each of the piece files in ``spec``, stacked, (rows, D + 1) float32."""
    parts = []
    for path, start, stop in spec:
        array = np.load(path, mmap_mode="r")
        parts.append(np.array(array[start:stop]))
        del array
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def block_specs(files: Sequence[tuple[str, int]], block_rows: int) -> list[tuple[tuple[str, int, int], ...]]:
    """Cut the concatenation of (file, rows) into blocks of ``block_rows`` rows (the last may be short).

    >>> block_specs([("a", 3), ("b", 0), ("c", 4)], 3)
    [(('a', 0, 3),), (('c', 0, 3),), (('c', 3, 4),)]
    """
    specs, current, room = [], [], block_rows
    for path, rows in files:
        start = 0
        while start < rows:
            take = min(room, rows - start)
            current.append((path, start, start + take))
            start += take
            room -= take
            if room == 0:
                specs.append(tuple(current))
                current, room = [], block_rows
    if current:
        specs.append(tuple(current))
    return specs


def default_block_rows(n_train: int) -> int:
    """Rows per block: up to MAX_BLOCK_ROWS, and at least 64 blocks of training rows where the data allows.

    Blocks are the unit LitData shuffles and deals out to processes, so a small dataset gets small blocks.
    """
    return max(1, min(MAX_BLOCK_ROWS, math.ceil(n_train / 64)))


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; choose a new directory for the prepared data.")


def prepare(
    source: str,
    out_dir: str | Path,
    label_column: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 42,
    synthetic_rows: int = 10_000,
    synthetic_features: int = 8,
    synthetic_noise: float = 0.5,
    num_workers: int | None = None,
    block_rows: int | None = None,
    piece_bytes: int = PIECE_BYTES,
) -> dict[str, Any]:
    """Convert SOURCE into a prepared directory (see the module's docstring); returns its metadata.

    Args:
        source: A CSV file, a directory of CSV files, a glob pattern, ``banknote`` or ``synthetic``.
        out_dir: A new or empty directory.
        label_column: Name of the 0/1 label column; default the last column.
        val_fraction: Expected fraction of rows for validation (each row is drawn independently).
        test_fraction: Expected fraction of rows for testing.
        seed: Seed of the split (and of synthetic data).
        synthetic_rows: Rows of ``synthetic`` data.
        synthetic_features: Features of ``synthetic`` data.
        synthetic_noise: Noise on the synthetic logits.
        num_workers: Worker processes; default the number of CPUs (never more than there are pieces).
        block_rows: Rows per LitData item; default :func:`default_block_rows`.
        piece_bytes: Bytes of CSV text per worker task.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ConfigError(f"{name} must lie strictly between 0 and 1; got {value}.")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 to leave training rows; got {val_fraction + test_fraction:g}."
        )
    if block_rows is not None and block_rows < 1:
        raise ConfigError(f"block_rows must be a positive number of rows; got {block_rows}.")
    if num_workers is not None and num_workers < 1:
        raise ConfigError(f"num_workers must be a positive number of processes; got {num_workers}.")
    if "://" in str(out_dir):
        raise ConfigError(
            f"{out_dir}: OUT_DIR must be a local directory; copy it to object storage afterwards "
            "(e.g. aws s3 sync OUT_DIR s3://bucket/path), and train on the URL."
        )
    out = Path(out_dir)
    _check_out_dir(out)
    src = resolve_source(source, synthetic_rows, synthetic_features, synthetic_noise)
    where = src.files[0] if src.files else source
    features, label = find_columns(where, list(src.header), label_column)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _prepare(
            src, out, features, label, seed, val_fraction, test_fraction, num_workers, block_rows, piece_bytes
        )
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:  # it was empty: leave it so
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _prepare(
    src: Source,
    out: Path,
    features: list[int],
    label: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    num_workers: int | None,
    block_rows: int | None,
    piece_bytes: int,
) -> dict[str, Any]:
    optimize = import_litdata().optimize  # imported here: the in-memory path does not need litdata

    started = time.perf_counter()
    work = out / ".work"
    work.mkdir()
    settings = Settings(src, work, features, label, seed, val_fraction, test_fraction)
    pieces = make_pieces(src, piece_bytes)
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(pieces)))
    tasks = [(settings, piece) for piece in pieces]
    if workers == 1:
        results = [_process(task) for task in tasks]
    else:
        # fork: the workers start at once (spawn would import torch in each, seconds apiece)
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(pool.imap(_process, tasks, chunksize=1))
    rows = {split: sum(r.rows[split] for r in results) for split in SPLITS}
    n = sum(rows.values())
    if n == 0:
        raise DataError(f"{src.name}: has a header but no data rows.")
    if min(rows.values()) < 1:
        raise DataError(
            f"{src.name}: {n} rows are too few to split into non-empty train ({rows['train']}), "
            f"val ({rows['val']}) and test ({rows['test']}) sets."
        )
    n_train, mean, m2 = merge_moments([(r.rows["train"], r.mean, r.m2) for r in results])
    std = np.sqrt(m2 / max(n_train - 1, 1))
    std = np.where(std > 0, std, 1.0)  # a constant column stays constant, as in memory
    block = block_rows or default_block_rows(rows["train"])
    width = len(features) + 1
    blocks_per_chunk = max(1, CHUNK_BYTES // (block * width * 4))
    for split in SPLITS:
        files = [(str(work / f"{r.index:06d}-{split}.npy"), r.rows[split]) for r in results]
        specs = block_specs(files, block)
        optimize(
            fn=_load_block,
            inputs=specs,
            output_dir=str(out / split),
            chunk_size=blocks_per_chunk,
            num_workers=max(1, min(workers, len(specs))),
            start_method="fork",
            keep_data_ordered=True,  # the same blocks in the same order for the same input and workers
            reorder_files=False,
            verbose=False,
        )
    shutil.rmtree(work)
    metadata = {
        "format": FORMAT,
        "source": src.name,
        "feature_names": [src.header[i] for i in features],
        "label_name": src.header[label],
        "mean": mean.tolist(),
        "std": std.tolist(),
        "rows": rows,
        "block_rows": block,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (out / METADATA).write_text(json.dumps(metadata, indent=1) + "\n")
    return metadata


class _Parser(argparse.ArgumentParser):
    """argparse that reports a malformed command line in one line (exit 2), like the rest of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: logreg prepare: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="logreg prepare",
        description="Convert a CSV file, a directory or glob of CSV files, 'banknote' or 'synthetic' into a "
        "directory of LitData chunks for `logreg fit --data.dataset OUT_DIR`, in one streaming pass.",
    )
    parser.add_argument(
        "source", metavar="SOURCE", help="CSV file, directory or glob of CSV files, banknote, synthetic"
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new or empty output directory")
    parser.add_argument("--label_column", default=None, help="name of the 0/1 label column (default: the last)")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="expected fraction of validation rows")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="expected fraction of test rows")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split and of synthetic data")
    parser.add_argument("--synthetic_rows", type=int, default=10_000)
    parser.add_argument("--synthetic_features", type=int, default=8)
    parser.add_argument("--synthetic_noise", type=float, default=0.5)
    parser.add_argument("--num_workers", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--block_rows", type=int, default=None, help="rows per LitData item (default: automatic)")
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """``logreg prepare``: mistakes end in one line on stderr and exit code 1 (2 for the command line)."""
    options = build_parser().parse_args(args)
    try:
        metadata = prepare(**vars(options))
    except (DataError, ConfigError) as err:
        raise SystemExit(f"error: {err}") from None
    rows = metadata["rows"]
    print(
        f"Prepared {sum(rows.values()):,} rows of {len(metadata['feature_names'])} features from {options.source} "
        f"in {options.out_dir}: train {rows['train']:,}, val {rows['val']:,}, test {rows['test']:,} rows "
        f"({metadata['seconds']:.1f} s)."
    )
